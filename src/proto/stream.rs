//! Stream headers, features and stream errors (RFC 6120 §4.3, §4.9).

use crate::xml::writer::escape_attr;
use crate::xml::{Element, StreamHeader};

use super::ns;

/// Stream error conditions (RFC 6120 §4.9.3) that drawbridge sends or understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamErrorCondition {
    BadFormat,
    ConnectionTimeout,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    ResourceConstraint,
    RestrictedXml,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedStanzaType,
    UnsupportedVersion,
    Conflict,
    HostGone,
    Reset,
    SeeOtherHost,
    UnsupportedEncoding,
    UnsupportedFeature,
}

impl StreamErrorCondition {
    pub const ALL: [StreamErrorCondition; 23] = {
        use StreamErrorCondition::*;
        [
            BadFormat,
            ConnectionTimeout,
            HostUnknown,
            ImproperAddressing,
            InternalServerError,
            InvalidFrom,
            InvalidNamespace,
            NotAuthorized,
            NotWellFormed,
            PolicyViolation,
            RemoteConnectionFailed,
            ResourceConstraint,
            RestrictedXml,
            SystemShutdown,
            UndefinedCondition,
            UnsupportedStanzaType,
            UnsupportedVersion,
            Conflict,
            HostGone,
            Reset,
            SeeOtherHost,
            UnsupportedEncoding,
            UnsupportedFeature,
        ]
    };

    pub fn as_str(self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            ConnectionTimeout => "connection-timeout",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
            Conflict => "conflict",
            HostGone => "host-gone",
            Reset => "reset",
            SeeOtherHost => "see-other-host",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for StreamErrorCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream error: condition plus a human-readable text saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: String,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError { condition, text: text.into() }
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error", ns::STREAMS).child(Element::new(self.condition.as_str(), ns::STREAM_ERRORS));
        if !self.text.is_empty() {
            el = el.child(Element::new("text", ns::STREAM_ERRORS).attr("xml:lang", "en").text(self.text.clone()));
        }
        el
    }

    /// Parse a received `<stream:error/>` (its text cut to what a log line and the history
    /// should carry from a peer).
    pub fn from_element(el: &Element) -> Self {
        let mut condition = StreamErrorCondition::UndefinedCondition;
        let mut text = String::new();
        for c in el.elements() {
            if c.ns == ns::STREAM_ERRORS {
                if c.name == "text" {
                    text = crate::xml::element::clip(&c.text_content(), PEER_TEXT).into_owned();
                } else if let Some(cond) = StreamErrorCondition::from_name(&c.name) {
                    condition = cond;
                }
            }
        }
        StreamError { condition, text }
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.text.is_empty() { write!(f, "<{}/>", self.condition) } else { write!(f, "<{}/> ({})", self.condition, self.text) }
    }
}

/// A stream error a peer sent us (RFC 6120 §4.9.3, §4.9.4): its condition (kept by name,
/// an unknown one too), its text and any application-specific condition, each clipped and
/// escaped ([`crate::xml::element::clip`]) — they reach logs, outcomes, the closed row and
/// screens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStreamError {
    pub condition: String,
    pub text: String,
    /// `{namespace}name` of an application-specific condition (§4.9.4), if any.
    pub app: Option<String>,
}

impl PeerStreamError {
    /// The `<stream:error/>` in `el`, prefixed or in the default-namespace form (both parse
    /// to the streams namespace); `None` for anything else.
    pub fn parse(el: &Element) -> Option<Self> {
        if !el.is("error", ns::STREAMS) {
            return None;
        }
        let clip = crate::xml::element::clip;
        let (mut condition, mut text, mut app) = (None, String::new(), None);
        for c in el.elements() {
            if c.ns == ns::STREAM_ERRORS {
                if c.name == "text" {
                    text = clip(&c.text_content(), PEER_TEXT).into_owned();
                } else if condition.is_none() {
                    condition = Some(clip(&c.name, 64).into_owned());
                }
            } else if app.is_none() {
                app = Some(format!("{{{}}}{}", clip(&c.ns, 128), clip(&c.name, 64)));
            }
        }
        Some(PeerStreamError { condition: condition.unwrap_or_else(|| "undefined-condition".into()), text, app })
    }
}

impl std::fmt::Display for PeerStreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}/>", self.condition)?;
        if !self.text.is_empty() {
            write!(f, " ({})", self.text)?;
        }
        if let Some(a) = &self.app {
            write!(f, " [application condition {a}]")?;
        }
        Ok(())
    }
}

/// Our stream header (RFC 6120 §4.7). `db:` is declared for dialback (XEP-0220 §2.1).
pub fn header(from: Option<&str>, to: Option<&str>, id: Option<&str>) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0'");
    for (k, v) in [("from", from), ("to", to), ("id", id)] {
        if let Some(v) = v {
            s.push(' ');
            s.push_str(k);
            s.push_str("='");
            escape_attr(&mut s, v);
            s.push('\'');
        }
    }
    s.push_str(" xml:lang='en'>");
    s
}

pub const CLOSE: &str = "</stream:stream>";

/// Bytes of a peer's error text kept (logs, outcomes, history).
pub const PEER_TEXT: usize = 512;

/// RFC 6120 §4.7: header checks common to both directions. Returns the stream error to send.
pub fn check_header(h: &StreamHeader) -> Result<(), StreamError> {
    use StreamErrorCondition::*;
    if h.name != "stream" || h.ns != ns::STREAMS {
        return Err(StreamError::new(InvalidNamespace, format!("root element must be stream in {}", ns::STREAMS)));
    }
    if h.default_ns.as_deref() != Some(ns::SERVER) {
        return Err(StreamError::new(
            InvalidNamespace,
            format!(
                "default namespace must be jabber:server, got {}",
                crate::xml::element::clip(h.default_ns.as_deref().unwrap_or("none"), 64)
            ),
        ));
    }
    match h.version.as_deref() {
        Some(v) => {
            let major = v.split('.').next().and_then(|m| m.parse::<u32>().ok());
            if major != Some(1) {
                return Err(StreamError::new(
                    UnsupportedVersion,
                    format!("version {} is not supported; 1.0 is", crate::xml::element::clip(v, 16)),
                ));
            }
        }
        None => return Err(StreamError::new(UnsupportedVersion, "a version='1.0' stream is required (RFC 6120 §4.7.5)")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> StreamHeader {
        StreamHeader {
            name: "stream".into(),
            ns: ns::STREAMS.into(),
            default_ns: Some(ns::SERVER.into()),
            version: Some("1.0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn header_checks() {
        assert!(check_header(&hdr()).is_ok());
        let mut h = hdr();
        h.default_ns = Some(ns::CLIENT.into());
        assert_eq!(check_header(&h).unwrap_err().condition, StreamErrorCondition::InvalidNamespace);
        let mut h = hdr();
        h.version = None;
        assert_eq!(check_header(&h).unwrap_err().condition, StreamErrorCondition::UnsupportedVersion);
        let mut h = hdr();
        h.version = Some("2.0".into());
        assert_eq!(check_header(&h).unwrap_err().condition, StreamErrorCondition::UnsupportedVersion);
        let mut h = hdr();
        h.ns = "urn:other".into();
        assert_eq!(check_header(&h).unwrap_err().condition, StreamErrorCondition::InvalidNamespace);
    }

    #[test]
    fn error_roundtrip() {
        let e = StreamError::new(StreamErrorCondition::PolicyViolation, "no <tls> & such");
        let back = StreamError::from_element(&e.to_element());
        assert_eq!(back, e);
    }

    #[test]
    fn header_escapes() {
        let h = header(Some("a'b"), Some("<x>"), None);
        assert!(h.contains("from='a&apos;b'"));
        assert!(h.contains("to='&lt;x&gt;'"));
    }
}
