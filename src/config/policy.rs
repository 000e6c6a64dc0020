//! `[policy]` (who may federate: open, approval, allowlist) and `[store]` (how much of the
//! record is kept, and how often it is written).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Ctx, PolicySettings, StoreSettings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct PolicyFile {
    mode: Option<String>,
    approval_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct StoreFile {
    max_records: Option<usize>,
    max_age: Option<String>,
    flush_interval: Option<String>,
    snapshot_interval: Option<String>,
}

impl PolicyFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<PolicySettings, ConfigError> {
        let mode = match &self.mode {
            None => crate::policy::Mode::Open,
            Some(m) => crate::policy::Mode::parse(m)
                .ok_or_else(|| cx.bad("policy.mode", format!("{m:?} is not one of open, approval, allowlist")))?,
        };
        Ok(PolicySettings { mode, approval_wait: cx.duration("policy.approval_wait", &self.approval_wait, Duration::from_secs(60))? })
    }
}

impl StoreFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<StoreSettings, ConfigError> {
        let max_records = self.max_records.unwrap_or(100_000);
        if max_records < 100 {
            return Err(cx.bad("store.max_records", format!("{max_records} is too small (at least 100)")));
        }
        Ok(StoreSettings {
            max_records,
            max_age: cx.duration("store.max_age", &self.max_age, Duration::from_secs(90 * 86400))?,
            flush_interval: cx.duration("store.flush_interval", &self.flush_interval, Duration::from_secs(1))?,
            snapshot_interval: cx.duration("store.snapshot_interval", &self.snapshot_interval, Duration::from_secs(30))?,
        })
    }
}
