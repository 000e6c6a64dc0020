//! `[policy]` (who may federate: open, approval, allowlist) and `[store]` (how much of the
//! record is kept, and how often it is written).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Ctx, PolicySettings, StoreSettings};
use crate::store::ClusterSettings;

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
    backend: Option<String>,
    postgres: Option<String>,
    buffer: Option<usize>,
}

/// `[cluster]`: this node's name among the nodes sharing one PostgreSQL store, and how it
/// shows itself to them (its heartbeat) and judges them gone.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ClusterFile {
    node: Option<String>,
    heartbeat: Option<String>,
    node_timeout: Option<String>,
}

impl ClusterFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<ClusterSettings, ConfigError> {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => crate::store::host_name(),
        };
        if node.is_empty() || node.len() > 64 || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(cx.bad(
                "cluster.node",
                format!("\"{}\" is not a node name (1 to 64 letters, digits, '-', '_' or '.')", crate::text::escape(&node)),
            ));
        }
        let heartbeat = cx.duration("cluster.heartbeat", &self.heartbeat, ClusterSettings::HEARTBEAT)?;
        if heartbeat < Duration::from_millis(100) || heartbeat > Duration::from_secs(60) {
            return Err(cx.bad("cluster.heartbeat", "is out of range (100ms to 60s)"));
        }
        let node_timeout = cx.duration("cluster.node_timeout", &self.node_timeout, ClusterSettings::default_timeout(heartbeat))?;
        if node_timeout <= heartbeat {
            return Err(cx.bad(
                "cluster.node_timeout",
                format!(
                    "must be longer than cluster.heartbeat ({}): a node would be taken for gone between two heartbeats (three heartbeats or more is safe)",
                    humantime::format_duration(heartbeat)
                ),
            ));
        }
        Ok(ClusterSettings { node, heartbeat, node_timeout })
    }
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
    pub fn validate(&self, cx: &Ctx<'_>, cluster: ClusterSettings) -> Result<StoreSettings, ConfigError> {
        let max_records = self.max_records.unwrap_or(100_000);
        if max_records < 100 {
            return Err(cx.bad("store.max_records", format!("{max_records} is too small (at least 100)")));
        }
        let backend = match (self.backend.as_deref(), &self.postgres) {
            (None | Some("sled"), None) => crate::store::Backend::Sled,
            (None | Some("sled"), Some(_)) => {
                return Err(cx.bad("store.postgres", "is set but store.backend is not \"postgres\": set both, or remove store.postgres"));
            }
            (Some("postgres"), Some(conninfo)) => {
                crate::store::postgres::parse_conninfo(conninfo).map_err(|e| cx.bad("store.postgres", e))?;
                crate::store::Backend::Postgres { conninfo: conninfo.clone() }
            }
            (Some("postgres"), None) => {
                return Err(cx.bad(
                    "store.postgres",
                    "is missing: with store.backend = \"postgres\" it names the database (e.g. \"host=/run/postgresql dbname=drawbridge user=drawbridge\")",
                ));
            }
            (Some(other), _) => return Err(cx.bad("store.backend", format!("{other:?} is not one of sled, postgres"))),
        };
        let buffer = self.buffer.unwrap_or(20_000);
        if !(100..=10_000_000).contains(&buffer) {
            return Err(cx.bad("store.buffer", format!("{buffer} is out of range (100 to 10000000 records)")));
        }
        Ok(StoreSettings {
            backend,
            buffer,
            node: cluster.node.clone(),
            cluster,
            max_records,
            max_age: cx.duration("store.max_age", &self.max_age, Duration::from_secs(90 * 86400))?,
            flush_interval: cx.duration("store.flush_interval", &self.flush_interval, Duration::from_secs(1))?,
            snapshot_interval: cx.duration("store.snapshot_interval", &self.snapshot_interval, Duration::from_secs(30))?,
        })
    }
}
