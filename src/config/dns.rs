//! `[dns]`: the resolvers asked, their timeout, and fixed answers for chosen domains.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Ctx, DnsOverride, DnsSettings};
use crate::domain::Domain;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct DnsFile {
    nameservers: Vec<String>,
    timeout: Option<String>,
    #[serde(rename = "override")]
    overrides: Vec<OverrideFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    domain: String,
    host: String,
    #[serde(default = "default_port")]
    port: u16,
}

fn default_port() -> u16 {
    5269
}

impl DnsFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<DnsSettings, ConfigError> {
        let mut nameservers = Vec::new();
        for (i, n) in self.nameservers.iter().enumerate() {
            let addr = n
                .parse::<SocketAddr>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| cx.bad(&format!("dns.nameservers[{i}]"), format!("{n:?} is not an IP address (optionally with :port)")))?;
            nameservers.push(addr);
        }
        let mut overrides = Vec::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let domain =
                Domain::parse(&o.domain).map_err(|e| cx.bad(&format!("dns.override[{i}].domain"), format!("{:?}: {e}", o.domain)))?;
            if o.host.trim().is_empty() {
                return Err(cx.bad(&format!("dns.override[{i}].host"), "must name a host or IP address"));
            }
            if o.port == 0 {
                return Err(cx.bad(&format!("dns.override[{i}].port"), "must be 1-65535"));
            }
            overrides.push(DnsOverride { domain, host: o.host.clone(), port: o.port });
        }
        let timeout = cx.duration("dns.timeout", &self.timeout, Duration::from_secs(5))?;
        Ok(DnsSettings { nameservers, timeout, overrides })
    }
}
