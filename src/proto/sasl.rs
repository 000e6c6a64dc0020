//! SASL EXTERNAL for servers (RFC 6120 §6, XEP-0178): the authorization identity, encoded
//! in base64, is empty, `=` or the domain itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Decode standard base64 (RFC 4648 §4), strictly: canonical padding, no padding inside, no
/// stray bits (RFC 6120 §6.4.2 wants `<incorrect-encoding/>` for anything else); `None` if
/// malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s.trim()).ok()
}

/// Standard base64 with padding (what a peer's `<auth/>` carries).
pub fn base64_encode(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// The `<auth/>` text is not base64 of UTF-8 (RFC 6120 §6.4.2: `<incorrect-encoding/>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the authorization identity is not base64-encoded UTF-8")]
pub struct IncorrectEncoding;

/// The authorization identity of an EXTERNAL `<auth/>`: `Ok(None)` for none (empty or
/// `=`), `Ok(Some(id))`, or an error when it is not valid base64 / UTF-8.
pub fn authzid(text: &str) -> Result<Option<String>, IncorrectEncoding> {
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Ok(None);
    }
    let raw = base64_decode(t).ok_or(IncorrectEncoding)?;
    let id = String::from_utf8(raw).map_err(|_| IncorrectEncoding)?;
    Ok(if id.is_empty() { None } else { Some(id) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "example.org", "xmpp.example.net"] {
            assert_eq!(base64_decode(&base64_encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_encode(b"example.org"), "ZXhhbXBsZS5vcmc=");
        assert!(base64_decode("abc").is_none());
        assert!(base64_decode("a===").is_none());
    }

    /// Strict decoding: padding only at the end, and no bits left over in the last symbol.
    #[test]
    fn base64_is_strict() {
        assert!(base64_decode("ab==ab==").is_none(), "padding in the middle");
        assert!(base64_decode("aQ==aQ==").is_none(), "padding in the middle, no stray bits");
        assert!(base64_decode("aQ=").is_none());
        assert!(base64_decode("aQ").is_none(), "padding is required");
        assert_eq!(base64_decode("aQ==").unwrap(), [0x69]);
        assert!(base64_decode("ab==").is_none(), "bits left over in the last symbol");
        assert!(base64_decode("a Q==").is_none());
        assert_eq!(authzid("ab==ab=="), Err(IncorrectEncoding));
    }

    #[test]
    fn authzid_rules() {
        assert_eq!(authzid(""), Ok(None));
        assert_eq!(authzid("="), Ok(None));
        assert_eq!(authzid("ZXhhbXBsZS5vcmc="), Ok(Some("example.org".into())));
        assert_eq!(authzid("!!"), Err(IncorrectEncoding));
    }
}
