//! Just enough of JIDs (RFC 7622) for routing: split and take the domainpart.

/// A parsed address `[local@]domain[/resource]`, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jid<'a> {
    pub local: Option<&'a str>,
    pub domain: &'a str,
    pub resource: Option<&'a str>,
}

/// The domain of an address, normalised; `None` if the address is malformed. One parse of
/// the domainpart (this runs for every stanza's 'from' and 'to').
pub fn domain_of(s: &str) -> Option<crate::domain::Domain> {
    let (j, d) = Jid::split(s)?;
    let _ = j;
    Some(d)
}

impl<'a> Jid<'a> {
    /// Split a JID; `None` if it is malformed (empty parts, bad domain).
    pub fn parse(s: &'a str) -> Option<Jid<'a>> {
        Jid::split(s).map(|(j, _)| j)
    }

    /// Split a JID and normalise its domain.
    pub fn split(s: &'a str) -> Option<(Jid<'a>, crate::domain::Domain)> {
        let (bare, resource) = match s.find('/') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let (local, domain) = match bare.find('@') {
            Some(i) => (Some(&bare[..i]), &bare[i + 1..]),
            None => (None, bare),
        };
        if local.is_some_and(|l| l.is_empty() || l.len() > 1023) || resource.is_some_and(|r| r.is_empty() || r.len() > 1023) {
            return None;
        }
        let d = crate::domain::Domain::parse(domain).ok()?;
        Some((Jid { local, domain, resource }, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let j = Jid::parse("user@example.com/res/x").unwrap();
        assert_eq!(j.local, Some("user"));
        assert_eq!(j.domain, "example.com");
        assert_eq!(j.resource, Some("res/x"));
        assert_eq!(Jid::parse("example.com").unwrap().local, None);
        assert!(Jid::parse("@example.com").is_none());
        assert!(Jid::parse("a@").is_none());
        assert!(Jid::parse("a@b/").is_none());
        assert!(Jid::parse("a@exa mple").is_none());
    }
}
