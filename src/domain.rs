//! The `Domain` newtype: a normalised, length-checked domain name, the only key for peers.

use std::fmt;

/// A domain name as used in XMPP addressing (RFC 7622 §3.2): lower-cased ASCII letters,
/// no trailing dot, labels 1–63 bytes, at most 1023 bytes in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

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
        Ok(Domain(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
        d.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(Domain::parse("Example.COM.").unwrap().as_str(), "example.com");
        assert_eq!(Domain::parse("").unwrap_err(), DomainError::Empty);
        assert!(matches!(Domain::parse("a..b"), Err(DomainError::BadLabel(_))));
        assert!(matches!(Domain::parse("a b"), Err(DomainError::BadChar(_, ' '))));
        assert!(matches!(Domain::parse(&"a".repeat(64)), Err(DomainError::BadLabel(_))));
        assert!(Domain::parse("[::1]").is_ok());
    }
}
