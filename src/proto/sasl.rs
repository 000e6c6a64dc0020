//! SASL EXTERNAL for servers (RFC 6120 §6, XEP-0178): the authorization identity, encoded
//! in base64, is empty, `=` or the domain itself.

/// Decode standard base64 (RFC 4648 §4); `None` if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

pub fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
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

    #[test]
    fn authzid_rules() {
        assert_eq!(authzid(""), Ok(None));
        assert_eq!(authzid("="), Ok(None));
        assert_eq!(authzid("ZXhhbXBsZS5vcmc="), Ok(Some("example.org".into())));
        assert_eq!(authzid("!!"), Err(IncorrectEncoding));
    }
}
