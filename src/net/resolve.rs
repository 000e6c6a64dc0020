//! Finding a remote domain's servers (RFC 6120 §3.2): overrides, then DNS SRV
//! `_xmpp-server._tcp`, then the domain's own A/AAAA on port 5269.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::domain::Domain;

/// `[dns]`: where lookups go, how long they may take, static targets.
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    /// Empty → the system resolver (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub overrides: Vec<DnsOverride>,
}

/// A static target for a domain, checked before DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOverride {
    pub domain: Domain,
    pub host: String,
    pub port: u16,
}

/// One SRV record's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Where a connection attempt goes, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub source: TargetSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    Override,
    Srv,
    /// `_xmpps-server._tcp`: TLS from the first byte (XEP-0368).
    SrvDirectTls,
    /// No SRV record: the domain itself on 5269 (RFC 6120 §3.2.2).
    Fallback,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let src = match self.source {
            TargetSource::Override => "override",
            TargetSource::Srv => "SRV",
            TargetSource::SrvDirectTls => "SRV, direct TLS",
            TargetSource::Fallback => "A/AAAA fallback",
        };
        write!(f, "{}:{} ({src})", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// RFC 2782: a single SRV record with target "." — the service is decidedly not available.
    #[error("DNS: {0} says it offers no XMPP server-to-server service (SRV target \".\")")]
    NoService(String),
    #[error("DNS: {domain}: {msg}")]
    Lookup { domain: String, msg: String },
}

/// RFC 2782 ordering: ascending priority; within one priority, weighted random order, where
/// `rand(n)` returns a uniform number in `0..=n`. Pure, so it is tested without DNS.
pub fn order_srv(mut records: Vec<SrvRecord>, mut rand: impl FnMut(u32) -> u32) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut i = 0;
    while i < records.len() {
        let prio = records[i].priority;
        let end = records[i..].iter().position(|r| r.priority != prio).map_or(records.len(), |p| i + p);
        // Zero-weight records first, as RFC 2782 describes, so they keep a small chance.
        let mut group: Vec<SrvRecord> = records[i..end].to_vec();
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| r.weight as u32).sum();
            let pick = rand(total);
            let mut running = 0u32;
            let idx = group
                .iter()
                .position(|r| {
                    running += r.weight as u32;
                    running >= pick
                })
                .unwrap_or(group.len() - 1);
            out.push(group.remove(idx));
        }
        i = end;
    }
    out
}

/// XEP-0368 §3: one list from the STARTTLS and the direct-TLS records, each already in
/// RFC 2782 order: by priority, direct TLS first when priorities are equal.
pub fn merge_srv(starttls: Vec<SrvRecord>, direct: Vec<SrvRecord>) -> Vec<(SrvRecord, bool)> {
    let mut all: Vec<(SrvRecord, bool)> = direct.into_iter().map(|r| (r, true)).chain(starttls.into_iter().map(|r| (r, false))).collect();
    // Stable: keeps each list's weighted order, and direct (listed first) before STARTTLS.
    all.sort_by_key(|(r, _)| r.priority);
    all
}

/// A uniform random number in `0..=n` from the OS.
pub fn os_rand(n: u32) -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("OS randomness");
    if n == u32::MAX { u32::from_le_bytes(b) } else { u32::from_le_bytes(b) % (n + 1) }
}

/// The resolver: static overrides first, then DNS.
pub struct Resolver {
    dns: TokioResolver,
    overrides: Vec<DnsOverride>,
}

impl Resolver {
    pub fn new(settings: &DnsSettings) -> Result<Resolver, ResolveError> {
        let mut builder = if settings.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolveError::Lookup {
                domain: "/etc/resolv.conf".into(),
                msg: format!("cannot read the system resolver configuration: {e} (set dns.nameservers)"),
            })?
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default())
        };
        let opts = builder.options_mut();
        opts.timeout = settings.timeout;
        opts.attempts = 2;
        if !settings.nameservers.is_empty() {
            opts.use_hosts_file = ResolveHosts::Never;
            opts.cache_size = 0;
        }
        let dns = builder.build().map_err(|e| ResolveError::Lookup { domain: "resolver".into(), msg: e.to_string() })?;
        Ok(Resolver { dns, overrides: settings.overrides.clone() })
    }

    /// The ordered targets for `domain`.
    pub async fn targets(&self, domain: &Domain) -> Result<Vec<Target>, ResolveError> {
        let ov: Vec<Target> = self
            .overrides
            .iter()
            .filter(|o| &o.domain == domain)
            .map(|o| Target { host: o.host.clone(), port: o.port, source: TargetSource::Override })
            .collect();
        if !ov.is_empty() {
            return Ok(ov);
        }
        // Both services, looked up together (XEP-0368 §3).
        let asked = tokio::time::Instant::now();
        let (starttls, direct) = tokio::join!(self.srv(domain, "_xmpp-server"), self.srv(domain, "_xmpps-server"));
        crate::latency::of(&crate::latency::DNS, "srv").observe(asked.elapsed());
        let (starttls, direct) = (starttls?, direct.unwrap_or_default());
        let no_service = |v: &Vec<SrvRecord>| v.len() == 1 && v[0].target.is_empty();
        if no_service(&starttls) && (direct.is_empty() || no_service(&direct)) {
            return Err(ResolveError::NoService(domain.to_string()));
        }
        let usable = |v: Vec<SrvRecord>| order_srv(v.into_iter().filter(|r| !r.target.is_empty()).collect(), os_rand);
        let merged = merge_srv(usable(starttls), usable(direct));
        if merged.is_empty() {
            return Ok(vec![fallback(domain)]);
        }
        Ok(merged
            .into_iter()
            .map(|(r, d)| Target { host: r.target, port: r.port, source: if d { TargetSource::SrvDirectTls } else { TargetSource::Srv } })
            .collect())
    }

    /// SRV records of `service` for `domain` (none when there are none).
    async fn srv(&self, domain: &Domain, service: &str) -> Result<Vec<SrvRecord>, ResolveError> {
        let name = format!("{service}._tcp.{}.", domain.ascii());
        match self.dns.srv_lookup(name.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii().trim_end_matches('.').to_owned(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(ResolveError::Lookup { domain: name, msg: e.to_string() }),
        }
    }

    /// Addresses of a target host (an IP literal is used as is).
    pub async fn addresses(&self, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = target.host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        }
        let name = format!("{}.", target.host);
        let asked = tokio::time::Instant::now();
        let looked_up = self.dns.lookup_ip(name.as_str()).await;
        crate::latency::of(&crate::latency::DNS, "address").observe(asked.elapsed());
        match looked_up {
            Ok(ips) => {
                let v: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, target.port)).collect();
                if v.is_empty() {
                    return Err(ResolveError::Lookup { domain: target.host.clone(), msg: "no A/AAAA records".into() });
                }
                Ok(v)
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(ResolveError::Lookup { domain: target.host.clone(), msg: "no A/AAAA records".into() })
            }
            Err(e) => Err(ResolveError::Lookup { domain: target.host.clone(), msg: e.to_string() }),
        }
    }
}

fn fallback(domain: &Domain) -> Target {
    Target { host: domain.ascii().into_owned(), port: 5269, source: TargetSource::Fallback }
}

/// How long DNS may take in all, for callers that bound it.
pub const DNS_BUDGET: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord { priority, weight, port: 5269, target: target.into() }
    }

    #[test]
    fn priority_first() {
        let out = order_srv(vec![rec(20, 0, "c"), rec(10, 5, "a"), rec(30, 1, "d"), rec(10, 5, "b")], |n| n / 2);
        let prios: Vec<u16> = out.iter().map(|r| r.priority).collect();
        assert_eq!(prios, vec![10, 10, 20, 30]);
    }

    #[test]
    fn weight_selects() {
        // rand returns 0 → the first running sum ≥ 0: the zero-weight record first.
        let out = order_srv(vec![rec(0, 10, "a"), rec(0, 0, "z"), rec(0, 90, "b")], |_| 0);
        assert_eq!(out[0].target, "z");
        // rand returns the maximum → the last record of the group.
        let out = order_srv(vec![rec(0, 10, "a"), rec(0, 90, "b")], |n| n);
        assert_eq!(out[0].target, "b");
        // rand 5 of 100: within a's share.
        let out = order_srv(vec![rec(0, 10, "a"), rec(0, 90, "b")], |n| if n == 100 { 5 } else { 0 });
        assert_eq!(out.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn direct_tls_first_on_equal_priority() {
        let merged = merge_srv(vec![rec(10, 0, "s10"), rec(20, 0, "s20")], vec![rec(10, 0, "d10"), rec(5, 0, "d5")]);
        let order: Vec<(&str, bool)> = merged.iter().map(|(r, d)| (r.target.as_str(), *d)).collect();
        assert_eq!(order, vec![("d5", true), ("d10", true), ("s10", false), ("s20", false)]);
    }

    #[test]
    fn weights_are_respected_statistically() {
        let mut seed = 12345u64;
        let mut rng = |n: u32| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as u32) % (n + 1)
        };
        let mut first_b = 0;
        for _ in 0..10_000 {
            let out = order_srv(vec![rec(0, 10, "a"), rec(0, 90, "b")], &mut rng);
            if out[0].target == "b" {
                first_b += 1;
            }
        }
        assert!((8500..9500).contains(&first_b), "b first {first_b} of 10000, expected ~9000");
    }
}
