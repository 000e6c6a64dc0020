//! `[certs]`: when a certificate's coming expiry is worth a warning.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Ctx};

/// `certs.warn_before` by default: two weeks, enough to chase a peer's operator (or renew
/// our own) before streams start failing.
pub const DEFAULT_WARN_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CertsFile {
    warn_before: Option<String>,
}

/// `[certs]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsSettings {
    /// A certificate with less than this left is expiring: our own is warned about in the
    /// log, a remote domain's is marked (dashboard, `ctl certs`) and counted (metric).
    pub warn_before: Duration,
}

impl Default for CertsSettings {
    fn default() -> Self {
        CertsSettings { warn_before: DEFAULT_WARN_BEFORE }
    }
}

impl CertsFile {
    pub(super) fn validate(&self, cx: &Ctx) -> Result<CertsSettings, ConfigError> {
        Ok(CertsSettings { warn_before: cx.duration("certs.warn_before", &self.warn_before, DEFAULT_WARN_BEFORE)? })
    }
}
