//! Where drawbridge may connect (`[outbound]`): address ranges it never dials, whatever DNS
//! says (a hostile domain can publish any address), and caps on how much one domain can
//! make it dial.

use std::net::IpAddr;

/// An address range (`10.0.0.0/8`, `fe80::/10`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(s: &str) -> Result<IpRange, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = ip.trim().parse().map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: prefix must be 0–{max}"))?,
            None => max,
        };
        Ok(IpRange { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => masked(u128::from(u32::from(n)), u128::from(u32::from(a)), self.prefix, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => masked(u128::from(n), u128::from(a), self.prefix, 128),
            _ => false,
        }
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn masked(net: u128, addr: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (net >> shift) == (addr >> shift)
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps (so `::ffff:169.254.169.254`
/// cannot slip past a v4 rule).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `[outbound] deny` by default: unspecified, link-local (with the cloud metadata services
/// in it), multicast, broadcast, and the metadata addresses outside link-local. Loopback and
/// private ranges stay allowed: internal federation uses them.
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "100.100.100.200/32",
    "::/128",
    "fe80::/10",
    "ff00::/8",
    "fd00:ec2::254/128",
];

/// The range of `deny` that holds `ip`, if any.
pub fn denied(deny: &[IpRange], ip: IpAddr) -> Option<IpRange> {
    deny.iter().find(|r| r.contains(ip)).copied()
}

pub use crate::domain::is_ip_literal;

/// `[outbound]`: where drawbridge may connect, and how much dialling one domain can cause.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Address ranges never dialled (checked after DNS, before connecting).
    pub deny: Vec<IpRange>,
    /// Outbound connection attempts in progress at once, for all domains together.
    pub max_dials: usize,
    /// SRV targets tried per domain.
    pub max_targets: usize,
    /// Addresses tried per SRV target.
    pub max_addresses: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny() -> Vec<IpRange> {
        DEFAULT_DENY.iter().map(|s| IpRange::parse(s).unwrap()).collect()
    }

    #[test]
    fn default_deny_covers_metadata_link_local_and_multicast_not_loopback_or_private() {
        let d = deny();
        for bad in ["169.254.169.254", "::ffff:169.254.169.254", "fe80::1", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "fd00:ec2::254"] {
            assert!(denied(&d, bad.parse().unwrap()).is_some(), "{bad}");
        }
        for ok in ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "fd12::1", "93.184.216.34", "2001:db8::1"] {
            assert!(denied(&d, ok.parse().unwrap()).is_none(), "{ok}");
        }
    }

    #[test]
    fn ranges_parse_and_match() {
        let r = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains("10.255.0.1".parse().unwrap()) && !r.contains("11.0.0.1".parse().unwrap()));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(IpRange::parse("10.0.0.0/33").is_err() && IpRange::parse("nope").is_err());
        assert_eq!(IpRange::parse("fe80::/10").unwrap().to_string(), "fe80::/10");
    }

    #[test]
    fn ip_literals() {
        for d in ["1.2.3.4", "[::1]", "::1", "10.0.0.1", "300.1.1.1"] {
            assert!(is_ip_literal(d), "{d}");
        }
        for d in ["example.com", "1.example", "xn--bse-sna.example"] {
            assert!(!is_ip_literal(d), "{d}");
        }
    }
}
