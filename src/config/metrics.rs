//! `[metrics]`: the OpenMetrics endpoint (off unless `listen` is set).

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, Ctx};
use crate::domain::Domain;
use crate::net::dial::IpRange;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct MetricsFile {
    listen: Vec<String>,
    allow: Vec<String>,
    per_domain: Vec<String>,
}

impl Default for MetricsFile {
    fn default() -> Self {
        MetricsFile { listen: Vec::new(), allow: vec!["127.0.0.1/32".into(), "::1/128".into()], per_domain: Vec::new() }
    }
}

/// `[metrics]`, validated.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served; none: no endpoint (`ctl metrics` still answers).
    pub listen: Vec<SocketAddr>,
    /// Who may scrape; others get 403.
    pub allow: Vec<IpRange>,
    /// Remote domains given a label of their own (by default no metric names a domain: a
    /// label per peer would grow without bound).
    pub per_domain: Vec<Domain>,
}

/// Labels per domain at most: each is a time series in every scrape.
const MAX_PER_DOMAIN: usize = 100;

impl MetricsFile {
    pub fn validate(&self, cx: &Ctx<'_>, taken: &[SocketAddr]) -> Result<MetricsSettings, ConfigError> {
        let listen = cx.addresses("metrics.listen", &self.listen, "\"127.0.0.1:9269\"")?;
        for (i, a) in listen.iter().enumerate() {
            if a.port() != 0 && taken.contains(a) {
                return Err(cx.bad(&format!("metrics.listen[{i}]"), format!("{a} is already a listener of this server; pick another port")));
            }
        }
        let mut allow = Vec::new();
        for (i, r) in self.allow.iter().enumerate() {
            allow.push(IpRange::parse(r).map_err(|e| cx.bad(&format!("metrics.allow[{i}]"), e))?);
        }
        if self.per_domain.len() > MAX_PER_DOMAIN {
            return Err(cx.bad("metrics.per_domain", format!("at most {MAX_PER_DOMAIN} domains (each is a series of its own)")));
        }
        let mut per_domain = Vec::new();
        for (i, d) in self.per_domain.iter().enumerate() {
            per_domain
                .push(Domain::parse(d).map_err(|e| cx.bad(&format!("metrics.per_domain[{i}]"), format!("{d:?} is not a domain: {e}")))?);
        }
        Ok(MetricsSettings { listen, allow, per_domain })
    }
}
