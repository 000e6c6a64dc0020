//! Server Dialback (XEP-0220): keys (XEP-0185) and the `db:result` / `db:verify` elements.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::xml::Element;

use super::ns;
use super::stanza::StanzaErrorCondition;

/// XEP-0185 §3: key = HEX( HMAC-SHA256( HEX(SHA256(secret)), "Receiving Originating StreamID" ) ).
pub fn derive_key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    hex::encode(keyed(secret, receiving, originating, stream_id).finalize().into_bytes())
}

/// The dialback secret as a capability: keys derived and checked, the secret never handed
/// out (nor printed by `Debug`).
#[derive(Clone)]
pub struct DialbackKeys(std::sync::Arc<[u8]>);

impl DialbackKeys {
    pub fn new(secret: &[u8]) -> DialbackKeys {
        DialbackKeys(secret.into())
    }

    /// The key we send as Originating Server (XEP-0185 §3).
    pub fn derive(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        derive_key(&self.0, receiving, originating, stream_id)
    }

    /// Whether a key is ours, as Authoritative Server (constant time).
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        verify_key(&self.0, receiving, originating, stream_id, key)
    }
}

impl std::fmt::Debug for DialbackKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialbackKeys(..)")
    }
}

/// Check a key we are asked about as the Authoritative Server, in constant time.
pub fn verify_key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
    let Some(raw) = unhex(key.trim()) else { return false };
    keyed(secret, receiving, originating, stream_id).verify_slice(&raw).is_ok()
}

/// The HMAC over "Receiving Originating StreamID", keyed with the hex SHA-256 of the secret.
fn keyed(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> Hmac<Sha256> {
    let hashed = hex::encode(Sha256::digest(secret));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(hashed.as_bytes()).expect("HMAC takes keys of any length");
    for (i, part) in [receiving, originating, stream_id].into_iter().enumerate() {
        if i > 0 {
            mac.update(b" ");
        }
        mac.update(part.as_bytes());
    }
    mac
}

/// A key or id as it is sent: at most 128 bytes of hex (a SHA-256 HMAC is 32); `None` if
/// longer or not hex.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() > 256 {
        return None;
    }
    hex::decode(s).ok()
}

/// The `type` of a dialback answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Valid,
    Invalid,
    /// XEP-0220 §2.4: an error with its stanza-error condition and text.
    Error {
        condition: StanzaErrorCondition,
        text: Option<String>,
    },
}

impl Answer {
    pub fn error(condition: StanzaErrorCondition, text: impl Into<String>) -> Answer {
        Answer::Error { condition, text: Some(text.into()) }
    }

    pub fn describe(&self) -> String {
        match self {
            Answer::Valid => "valid".into(),
            Answer::Invalid => "invalid".into(),
            Answer::Error { condition, text: Some(t) } => {
                let clip = crate::xml::element::clip;
                format!("error <{condition}/>: {}", clip(t, crate::proto::stream::PEER_TEXT))
            }
            Answer::Error { condition, text: None } => format!("error <{condition}/>"),
        }
    }
}

/// A parsed `db:result` or `db:verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbElement {
    pub verify: bool,
    pub from: String,
    pub to: String,
    pub id: Option<String>,
    /// `None` for a request; `Some` for an answer.
    pub answer: Option<Answer>,
    pub key: String,
}

impl DbElement {
    /// Parse a dialback element; `None` if it is not one or lacks from/to.
    pub fn parse(el: &Element) -> Option<DbElement> {
        if el.ns != ns::DIALBACK {
            return None;
        }
        let verify = match &*el.name {
            "result" => false,
            "verify" => true,
            _ => return None,
        };
        let from = el.get_attr("from")?.to_owned();
        let to = el.get_attr("to")?.to_owned();
        let answer = match el.get_attr("type") {
            None => None,
            Some("valid") => Some(Answer::Valid),
            Some("invalid") => Some(Answer::Invalid),
            Some("error") => {
                let (condition, text) = el
                    .elements()
                    .find(|e| e.name == "error")
                    .map(|e| {
                        let mut cond = StanzaErrorCondition::UndefinedCondition;
                        let mut text = None;
                        for c in e.elements() {
                            // The peer's words: escaped and clipped where they are taken.
                            if c.name == "text" {
                                text = Some(crate::text::clip(&c.text_content(), crate::proto::stream::PEER_TEXT).into_owned());
                            } else {
                                cond = StanzaErrorCondition::parse(&c.name);
                            }
                        }
                        (cond, text)
                    })
                    .unwrap_or((StanzaErrorCondition::UndefinedCondition, None));
                Some(Answer::Error { condition, text })
            }
            Some(_) => Some(Answer::error(StanzaErrorCondition::BadRequest, "unknown type")),
        };
        Some(DbElement { verify, from, to, id: el.get_attr("id").map(str::to_owned), answer, key: el.text_content().trim().to_owned() })
    }
}

fn db(name: &str, from: &str, to: &str) -> Element {
    Element::new(name, ns::DIALBACK).attr("from", from).attr("to", to)
}

/// OS → RS: `<db:result from to>key</db:result>` (XEP-0220 §2.1.1).
pub fn result_request(from: &str, to: &str, key: &str) -> Element {
    db("result", from, to).text(key)
}

/// RS → OS: the answer to a `db:result` (XEP-0220 §2.1.3, §2.4).
pub fn result_answer(from: &str, to: &str, answer: &Answer) -> Element {
    with_answer(db("result", from, to), answer)
}

/// RS → AS: `<db:verify from to id>key</db:verify>` (XEP-0220 §2.1.2).
pub fn verify_request(from: &str, to: &str, id: &str, key: &str) -> Element {
    db("verify", from, to).attr("id", id).text(key)
}

/// AS → RS: the answer to a `db:verify`.
pub fn verify_answer(from: &str, to: &str, id: &str, answer: &Answer) -> Element {
    with_answer(db("verify", from, to).attr("id", id), answer)
}

fn with_answer(el: Element, answer: &Answer) -> Element {
    match answer {
        Answer::Valid => el.attr("type", "valid"),
        Answer::Invalid => el.attr("type", "invalid"),
        Answer::Error { condition, text } => {
            let mut err = Element::new("error", ns::DIALBACK)
                .attr("type", condition.error_type().as_str())
                .child(Element::new(condition.as_str(), ns::STANZA_ERRORS));
            if let Some(t) = text {
                err = err.child(Element::new("text", ns::STANZA_ERRORS).text(t.clone()));
            }
            el.attr("type", "error").child(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0185 §3 example: secret "s3cr3tf0rd14lb4ck", Receiving xmpp.example.com,
    /// Originating example.org, stream id D60000229F.
    #[test]
    fn xep0185_example_vector() {
        let k = derive_key(b"s3cr3tf0rd14lb4ck", "xmpp.example.com", "example.org", "D60000229F");
        assert_eq!(k, "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643");
        assert!(verify_key(b"s3cr3tf0rd14lb4ck", "xmpp.example.com", "example.org", "D60000229F", &k));
        assert!(verify_key(b"s3cr3tf0rd14lb4ck", "xmpp.example.com", "example.org", "D60000229F", &k.to_uppercase()));
    }

    #[test]
    fn wrong_inputs_fail() {
        let k = derive_key(b"secret", "r", "o", "id");
        assert!(!verify_key(b"secret", "r", "o", "id2", &k));
        assert!(!verify_key(b"secret", "o", "r", "id", &k));
        assert!(!verify_key(b"other", "r", "o", "id", &k));
        assert!(!verify_key(b"secret", "r", "o", "id", "zz"));
        assert!(!verify_key(b"secret", "r", "o", "id", ""));
    }

    #[test]
    fn parse_answers() {
        let el = result_answer("b", "a", &Answer::error(StanzaErrorCondition::RemoteConnectionFailed, "no route"));
        let p = DbElement::parse(&el).unwrap();
        assert!(!p.verify);
        assert_eq!(
            p.answer,
            Some(Answer::Error { condition: StanzaErrorCondition::RemoteConnectionFailed, text: Some("no route".into()) })
        );
        let v = DbElement::parse(&verify_request("b", "a", "id1", "k")).unwrap();
        assert!(v.verify && v.answer.is_none());
        assert_eq!((v.id.as_deref(), v.key.as_str()), (Some("id1"), "k"));
    }
}
