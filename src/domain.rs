//! The `Domain` newtype: a normalised, length-checked domain name, the only key for peers.
//!
//! Internationalised names are mapped by UTS #46 (RFC 7622 §3.2 defers to IDNA):
//! `böse.example` and `xn--bse-sna.example` are one domain to the policy, the router and the
//! store. The canonical form is the U-label one, as XMPP addresses carry it (RFC 7622 §3.2:
//! a domainpart holds NR-LDH labels or U-labels); DNS, TLS names and certificates use the
//! A-label form ([`Domain::ascii`]).

use std::fmt;

/// A domain name as used in XMPP addressing (RFC 7622 §3.2): UTS #46-mapped (lower case,
/// U-labels), no trailing dot, A-labels 1–63 bytes, at most 1023 bytes in all. IP literals
/// stay as they are (and are refused where a domain is needed). Shared, not copied: a clone
/// (route keys, pairs, proofs) costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(std::sync::Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("empty domain")]
    Empty,
    #[error("domain longer than 1023 bytes")]
    TooLong,
    #[error("domain label empty or longer than 63 bytes in {0:?}")]
    BadLabel(String),
    #[error("character {1:?} not allowed in domain {0:?}")]
    BadChar(String, char),
    #[error("{0:?} is not a valid internationalised domain name (UTS #46)")]
    Idna(String),
}

impl Domain {
    pub fn parse(s: &str) -> Result<Domain, DomainError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(DomainError::Empty);
        }
        if s.len() > 1023 {
            return Err(DomainError::TooLong);
        }
        // The common case, in one pass: letters, digits and hyphens in labels of 1–63 bytes,
        // none an A-label. UTS #46 maps such a name to its lower case (this runs for every
        // stanza's addresses).
        if let Some(d) = ldh(s) {
            return Ok(d);
        }
        let is_ip6 = s.starts_with('[') && s.ends_with(']');
        if !is_ip6 {
            for label in s.split('.') {
                if label.is_empty() || label.len() > 63 {
                    return Err(DomainError::BadLabel(s.to_owned()));
                }
            }
        }
        if let Some(c) =
            s.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '/' | '"' | '\'' | '<' | '>' | '&' | '\\'))
        {
            return Err(DomainError::BadChar(s.to_owned(), c));
        }
        if is_ip6 || s.parse::<std::net::Ipv4Addr>().is_ok() {
            return Ok(Domain(s.to_lowercase().into()));
        }
        let ascii = idna::domain_to_ascii_cow(s.as_bytes(), idna::AsciiDenyList::URL).map_err(|_| DomainError::Idna(s.to_owned()))?;
        if ascii.is_empty() {
            return Err(DomainError::Empty);
        }
        if ascii.len() > 1023 {
            return Err(DomainError::TooLong);
        }
        if ascii.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(DomainError::BadLabel(s.to_owned()));
        }
        if ascii.is_ascii() && !ascii.split('.').any(|l| l.starts_with("xn--")) {
            return Ok(Domain(ascii.into_owned().into()));
        }
        match idna::domain_to_unicode(&ascii) {
            (u, Ok(())) => Ok(Domain(u.into())),
            _ => Err(DomainError::Idna(s.to_owned())),
        }
    }

    /// The canonical (U-label) form: what XMPP addresses, the policy and the store use.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A proper subdomain of `parent` (`sub.c.test` of `c.test`; not `xc.test`, not `c.test`
    /// itself): the one subdomain check, for component domains and the blacklist alike.
    pub fn is_subdomain_of(&self, parent: &Domain) -> bool {
        self.0.strip_suffix(&*parent.0).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
    }

    /// `parent` itself or a subdomain of it: what a component answers for.
    pub fn is_within(&self, parent: &Domain) -> bool {
        self == parent || self.is_subdomain_of(parent)
    }

    /// The A-label form: what DNS, TLS server names and certificate names use.
    pub fn ascii(&self) -> std::borrow::Cow<'_, str> {
        if self.0.is_ascii() {
            return (&*self.0).into();
        }
        idna::domain_to_ascii_cow(self.0.as_bytes(), idna::AsciiDenyList::URL).map_or_else(|_| (&*self.0).into(), |a| a.into_owned().into())
    }
}

/// `s` as a [`Domain`] if it is plain LDH (no A-label, no other character), else `None`.
fn ldh(s: &str) -> Option<Domain> {
    let b = s.as_bytes();
    let mut label_start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'.' {
            if i == label_start || i - label_start > 63 {
                return None;
            }
            label_start = i + 1;
        } else if !(c.is_ascii_alphanumeric() || c == b'-') || (i == label_start + 3 && b[label_start..=i].eq_ignore_ascii_case(b"xn--")) {
            return None;
        }
    }
    if label_start == b.len() || b.len() - label_start > 63 || s.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    Some(Domain(s.to_ascii_lowercase().into()))
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Domain {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Domain::parse(&s)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0.to_string()
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Domain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Whether a domain is an IP literal (RFC 7622 §3.2 allows them in JIDs, but a federation
/// peer is a DNS name: dialback and certificates name domains, not addresses).
pub fn is_ip_literal(domain: &str) -> bool {
    let d = domain.trim_start_matches('[').trim_end_matches(']');
    d.parse::<std::net::IpAddr>().is_ok() || (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_are_whole_labels() {
        let d = |s: &str| Domain::parse(s).unwrap();
        assert!(d("sub.c.test").is_subdomain_of(&d("c.test")));
        assert!(d("a.b.c.test").is_subdomain_of(&d("c.test")));
        assert!(!d("xc.test").is_subdomain_of(&d("c.test")), "a name that only ends alike");
        assert!(!d("c.test").is_subdomain_of(&d("c.test")), "not a proper subdomain");
        assert!(!d("c.test").is_subdomain_of(&d("sub.c.test")));
        assert!(d("c.test").is_within(&d("c.test")) && d("sub.c.test").is_within(&d("c.test")));
        assert!(!d("xc.test").is_within(&d("c.test")));
    }

    #[test]
    fn normalises() {
        assert_eq!(Domain::parse("Example.COM.").unwrap().as_str(), "example.com");
        assert_eq!(Domain::parse("").unwrap_err(), DomainError::Empty);
        assert!(matches!(Domain::parse("a..b"), Err(DomainError::BadLabel(_))));
        assert!(matches!(Domain::parse("a b"), Err(DomainError::BadChar(_, ' '))));
        assert!(matches!(Domain::parse(&"a".repeat(64)), Err(DomainError::BadLabel(_))));
        assert!(Domain::parse("[::1]").is_ok());
    }

    #[test]
    fn u_labels_and_a_labels_are_one_domain() {
        let u = Domain::parse("Böse.Example").unwrap();
        let a = Domain::parse("xn--bse-sna.example").unwrap();
        assert_eq!(u, a);
        assert_eq!(u.as_str(), "böse.example");
        assert_eq!(a.ascii(), "xn--bse-sna.example");
        assert_eq!(Domain::parse("plain.example").unwrap().ascii(), "plain.example");
        // UTS #46 mapping: full-width letters and the ideographic full stop.
        assert_eq!(Domain::parse("ｅｘａｍｐｌｅ。com").unwrap().as_str(), "example.com");
        assert!(matches!(Domain::parse("xn--zz.example"), Err(DomainError::Idna(_))));
        assert!(Domain::parse(&format!("{}.example", "ü".repeat(60))).is_err(), "A-label over 63 bytes");
    }

    /// A `Domain` is safe to log and print as it is: no control character, bidi override or
    /// invisible mark survives parsing, whether written out, as a U-label or hidden in an
    /// A-label (every such character tried, in each position and form).
    #[test]
    fn no_unsafe_character_survives() {
        let unsafe_chars: Vec<char> = (0..=0x10ffffu32).filter_map(char::from_u32).filter(|&c| crate::text::is_unsafe(c)).collect();
        assert!(unsafe_chars.len() > 60, "{}", unsafe_chars.len());
        let mut tried = 0;
        for c in unsafe_chars {
            let labels = [format!("a{c}b"), format!("{c}"), format!("ä{c}"), format!("{c}ü")];
            for label in &labels {
                let mut forms = vec![format!("{label}.example"), format!("x.{label}"), format!("{label}.example.")];
                if let Some(p) = idna::punycode::encode_str(label) {
                    forms.push(format!("xn--{p}.example"));
                }
                for form in forms {
                    tried += 1;
                    if let Ok(d) = Domain::parse(&form) {
                        assert!(!d.as_str().chars().any(crate::text::is_unsafe), "{form:?} parsed as {:?}", d.as_str());
                        assert!(!d.ascii().chars().any(crate::text::is_unsafe), "{form:?}");
                    }
                }
            }
        }
        assert!(tried > 1000);
    }
}
