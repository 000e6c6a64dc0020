//! `[outbound]`: where drawbridge may dial (address ranges refused) and how much it dials.

use serde::Deserialize;

use super::{ConfigError, Ctx, OutboundSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct OutboundFile {
    deny: Vec<String>,
    max_dials: usize,
    max_targets: usize,
    max_addresses: usize,
}

/// The defaults of `[outbound]`.
impl Default for OutboundFile {
    fn default() -> Self {
        OutboundFile {
            deny: crate::net::dial::DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
            max_dials: 64,
            max_targets: 6,
            max_addresses: 4,
        }
    }
}

impl OutboundFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<OutboundSettings, ConfigError> {
        let mut deny = Vec::new();
        for (i, r) in self.deny.iter().enumerate() {
            deny.push(crate::net::dial::IpRange::parse(r).map_err(|e| cx.bad(&format!("outbound.deny[{i}]"), e))?);
        }
        for (key, v) in [
            ("outbound.max_dials", self.max_dials),
            ("outbound.max_targets", self.max_targets),
            ("outbound.max_addresses", self.max_addresses),
        ] {
            if v == 0 {
                return Err(cx.bad(key, "must be at least 1"));
            }
        }
        Ok(OutboundSettings {
            deny,
            max_dials: self.max_dials,
            max_targets: self.max_targets,
            max_addresses: self.max_addresses,
            own: Default::default(),
        })
    }
}
