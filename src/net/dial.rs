//! Where drawbridge may connect (`[outbound]`): address ranges it never dials, whatever DNS
//! says (a hostile domain can publish any address), and caps on how much one domain can
//! make it dial.

use std::net::{IpAddr, SocketAddr};

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

/// The addresses drawbridge itself listens on (every listener: `server.listen`,
/// `server.direct_tls`, `gateway.listen`, `components.listen`, as bound), which it never
/// dials: a domain whose DNS points at one of them would make drawbridge talk to itself
/// (with a gateway, for ever — issue 16). Checked after DNS, like `[outbound] deny`, on
/// (address, port) pairs: another port of the same address is someone else.
#[derive(Debug, Clone, Default)]
pub struct OwnListeners {
    /// (listener kind, bound address).
    addrs: Vec<(&'static str, SocketAddr)>,
}

impl OwnListeners {
    pub fn new(addrs: impl IntoIterator<Item = (&'static str, SocketAddr)>) -> OwnListeners {
        OwnListeners { addrs: addrs.into_iter().collect() }
    }

    /// The listener (its key and bound address) that `target` would reach, if it is ours. A
    /// wildcard bind (`0.0.0.0`, `::`) listens on every address of the machine: loopback, the
    /// unspecified address and each interface's address (`getifaddrs`, read when a port
    /// matches, so addresses added later count).
    pub fn reached_by(&self, target: SocketAddr) -> Option<(&'static str, SocketAddr)> {
        // Connecting to the unspecified address (`0.0.0.0`, `::`) reaches loopback (Linux,
        // the BSDs): a DNS answer of 0.0.0.0 is this machine, whatever `[outbound] deny` says.
        let ip = match canonical(target.ip()) {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let mut interfaces: Option<Vec<IpAddr>> = None;
        for &(kind, own) in &self.addrs {
            if own.port() != target.port() {
                continue;
            }
            let own_ip = canonical(own.ip());
            if own_ip == ip {
                return Some((kind, own));
            }
            if own_ip.is_unspecified() {
                // `0.0.0.0` takes IPv4 only; `::` takes both (unless IPV6_V6ONLY, which we
                // do not set; counting it as both errs on the side of not dialling).
                if own_ip.is_ipv4() && !ip.is_ipv4() {
                    continue;
                }
                if ip.is_loopback() || ip.is_unspecified() {
                    return Some((kind, own));
                }
                let ifs = interfaces.get_or_insert_with(interface_addresses);
                if ifs.iter().any(|a| canonical(*a) == ip) {
                    return Some((kind, own));
                }
            }
        }
        None
    }
}

/// The machine's interface addresses (`getifaddrs(3)`); empty if it fails.
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then free exactly once;
    // each sockaddr is read as the family it declares.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

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
    /// drawbridge's own listeners (filled in when they are bound), never dialled.
    pub own: std::sync::Arc<OwnListeners>,
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

    #[test]
    fn own_listeners_are_matched_by_address_and_port_wildcards_by_every_local_address() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let own = OwnListeners::new([
            ("server.listen", a("127.0.0.1:5269")),
            ("gateway.listen", a("0.0.0.0:5270")),
            ("components.listen", a("[::]:5347")),
        ]);
        assert_eq!(own.reached_by(a("127.0.0.1:5269")), Some(("server.listen", a("127.0.0.1:5269"))));
        assert_eq!(own.reached_by(a("[::ffff:127.0.0.1]:5269")).map(|o| o.0), Some("server.listen"));
        // Another port of the same address is someone else (tests, namespaces).
        assert_eq!(own.reached_by(a("127.0.0.1:5280")), None);
        // A wildcard listens on loopback, the unspecified address and every interface.
        for t in ["127.0.0.1:5270", "127.0.0.9:5270", "0.0.0.0:5270"] {
            assert_eq!(own.reached_by(a(t)).map(|o| o.0), Some("gateway.listen"), "{t}");
        }
        for ip in interface_addresses() {
            assert!(own.reached_by(SocketAddr::new(ip, 5347)).is_some(), "{ip}");
            if ip.is_ipv4() {
                assert!(own.reached_by(SocketAddr::new(ip, 5270)).is_some(), "{ip}");
            }
        }
        assert!(interface_addresses().iter().any(|ip| ip.is_loopback()), "getifaddrs reads the loopback interface at least");
        assert_eq!(own.reached_by(a("[::1]:5270")), None, "0.0.0.0 is IPv4 only");
        assert_eq!(own.reached_by(a("[::1]:5347")).map(|o| o.0), Some("components.listen"));
        assert_eq!(own.reached_by(a("192.0.2.1:5270")), None, "not an address of this machine");
        // 0.0.0.0 and :: as targets are loopback: they reach a listener bound there.
        let own = OwnListeners::new([("server.listen", a("127.0.0.1:5269")), ("server.direct_tls", a("[::1]:5223"))]);
        assert_eq!(own.reached_by(a("0.0.0.0:5269")).map(|o| o.0), Some("server.listen"));
        assert_eq!(own.reached_by(a("[::ffff:0.0.0.0]:5269")).map(|o| o.0), Some("server.listen"));
        assert_eq!(own.reached_by(a("[::]:5223")).map(|o| o.0), Some("server.direct_tls"));
        assert_eq!(own.reached_by(a("[::]:5269")), None, ":: reaches ::1, where nothing of ours listens on 5269");
    }
}
