//! Stanzas (RFC 6120 §8) and stanza errors (§8.3).

use crate::xml::Element;

use super::ns;

/// Error types (RFC 6120 §8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// Stanza error conditions (RFC 6120 §8.3.3), and XEP-0220 §2.4's remote-connection-failed,
/// each knowing its error type: one rule for every bounce and dialback error this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaErrorCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    /// XEP-0220 §2.4 (RFC 6120 has it as a stream error only).
    RemoteConnectionFailed,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

/// Stanza errors built here (bounces and refusals), by condition since the process started
/// (`drawbridge_stanza_errors_total`; process-wide: every error reply is built by
/// [`error_reply`], which knows no engine). Only errors pay for it.
static ERRORS: [std::sync::atomic::AtomicU64; 23] = [const { std::sync::atomic::AtomicU64::new(0) }; 23];

/// The stanza errors built since start, by condition (those built at least once).
pub fn errors_built() -> Vec<(&'static str, u64)> {
    StanzaErrorCondition::ALL
        .iter()
        .zip(&ERRORS)
        .map(|(c, n)| (c.as_str(), n.load(std::sync::atomic::Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

impl StanzaErrorCondition {
    const ALL: [StanzaErrorCondition; 23] = {
        use StanzaErrorCondition::*;
        [
            BadRequest,
            Conflict,
            FeatureNotImplemented,
            Forbidden,
            Gone,
            InternalServerError,
            ItemNotFound,
            JidMalformed,
            NotAcceptable,
            NotAllowed,
            NotAuthorized,
            PolicyViolation,
            RecipientUnavailable,
            Redirect,
            RegistrationRequired,
            RemoteConnectionFailed,
            RemoteServerNotFound,
            RemoteServerTimeout,
            ResourceConstraint,
            ServiceUnavailable,
            SubscriptionRequired,
            UndefinedCondition,
            UnexpectedRequest,
        ]
    };

    /// The element name (in `urn:ietf:params:xml:ns:xmpp-stanzas`).
    pub fn as_str(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteConnectionFailed => "remote-connection-failed",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// A peer's condition by its element name; an unknown one is `undefined-condition`
    /// (RFC 6120 §8.3.2: the recipient treats what it does not understand so).
    pub fn parse(name: &str) -> StanzaErrorCondition {
        Self::ALL.into_iter().find(|c| c.as_str() == name).unwrap_or(StanzaErrorCondition::UndefinedCondition)
    }

    /// The error type RFC 6120 §8.3.3 gives the condition. Where it allows two, the first
    /// (policy-violation: modify, unexpected-request: wait, feature-not-implemented:
    /// cancel); undefined-condition, which may take any, and remote-connection-failed,
    /// which XEP-0220 leaves untyped: a connection that failed may succeed later (wait).
    pub fn error_type(self) -> ErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => ErrorType::Modify,
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => ErrorType::Auth,
            RecipientUnavailable | RemoteConnectionFailed | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => ErrorType::Wait,
            Conflict
            | FeatureNotImplemented
            | Gone
            | InternalServerError
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => ErrorType::Cancel,
        }
    }
}

/// A name read off the wire (or written in a test) compares with the condition.
impl PartialEq<str> for StanzaErrorCondition {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for StanzaErrorCondition {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for StanzaErrorCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an element is a stanza in the server namespace.
pub fn is_stanza(el: &Element) -> bool {
    (el.ns == ns::SERVER || el.ns == ns::CLIENT) && matches!(&*el.name, "message" | "presence" | "iq")
}

/// Whether a stanza may be answered with an error (never an error to an error, RFC 6120
/// §8.3.1; nor to an iq result).
pub fn may_bounce(el: &Element) -> bool {
    match el.get_attr("type") {
        Some("error") => false,
        Some("result") if el.name == "iq" => false,
        _ => true,
    }
}

/// What is wrong with a stanza by RFC 6120 §8.1–8.2 and RFC 6121 §4.7.1, as the error to
/// answer with (condition, text). Checked on authenticated streams before routing,
/// whatever the stanza is routed to.
pub fn check(el: &Element) -> Result<(), (StanzaErrorCondition, &'static str)> {
    let typ = el.get_attr("type");
    let bad = |text| Err((StanzaErrorCondition::BadRequest, text));
    match &*el.name {
        "iq" => {
            // §8.2.3: id and type are required; get/set carry exactly one payload, a result
            // at most one.
            if el.get_attr("id").is_none_or(str::is_empty) {
                return bad("an iq needs an 'id' (RFC 6120 §8.2.3)");
            }
            let payloads = el.elements().count();
            match typ {
                Some("get" | "set") if payloads != 1 => bad("an iq get or set carries exactly one payload (RFC 6120 §8.2.3)"),
                Some("get" | "set") => Ok(()),
                Some("result") if payloads > 1 => bad("an iq result carries at most one payload (RFC 6120 §8.2.3)"),
                Some("result" | "error") => Ok(()),
                _ => bad("iq type must be get, set, result or error (RFC 6120 §8.2.3)"),
            }
        }
        "presence" => match typ {
            None | Some("unavailable" | "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" | "probe" | "error") => Ok(()),
            Some(_) => bad("unknown presence type (RFC 6121 §4.7.1)"),
        },
        // Unknown message types are handled as 'normal' (RFC 6121 §5.2.2).
        _ => Ok(()),
    }
}

/// Build the error reply to `el` (to and from swapped, original children kept as RFC 6120
/// §8.3.1 allows), or `None` where an error must not be sent. The type is the condition's
/// ([`StanzaErrorCondition::error_type`]).
pub fn error_reply(el: &Element, condition: StanzaErrorCondition, text: Option<&str>) -> Option<Element> {
    if !may_bounce(el) {
        return None;
    }
    if let Some(i) = StanzaErrorCondition::ALL.iter().position(|c| *c == condition) {
        ERRORS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let mut reply = Element::new(&el.name, ns::SERVER);
    if let Some(id) = el.get_attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = el.get_attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = el.get_attr("from") {
        reply.set_attr("to", from);
    }
    reply.set_attr("type", "error");
    if el.name != "iq" {
        for c in el.elements() {
            if c.name == "body" || c.name == "subject" || c.name == "thread" {
                reply.children.push(crate::xml::Node::Element(c.clone()));
            }
        }
    }
    let mut err = Element::new("error", ns::SERVER)
        .attr("type", condition.error_type().as_str())
        .child(Element::new(condition.as_str(), ns::STANZA_ERRORS));
    if let Some(t) = text {
        err = err.child(Element::new("text", ns::STANZA_ERRORS).attr("xml:lang", "en").text(t));
    }
    reply.children.push(crate::xml::Node::Element(err));
    Some(reply)
}

/// The condition and text of a stanza error, if `el` is one.
pub fn error_of(el: &Element) -> Option<(String, Option<String>)> {
    if el.get_attr("type") != Some("error") {
        return None;
    }
    let err = el.elements().find(|e| e.name == "error")?;
    let mut cond = String::from("undefined-condition");
    let mut text = None;
    for c in err.elements() {
        if c.ns == ns::STANZA_ERRORS {
            if c.name == "text" {
                text = Some(crate::xml::element::clip(&c.text_content(), crate::proto::stream::PEER_TEXT).into_owned());
            } else {
                cond = crate::xml::element::clip(&c.name, 64).into_owned();
            }
        }
    }
    Some((cond, text))
}

#[cfg(test)]
mod check_tests {
    use super::*;
    use crate::xml::Element;

    fn iq(typ: &str, id: Option<&str>, payloads: usize) -> Element {
        let mut e = Element::new("iq", ns::SERVER).attr("type", typ);
        if let Some(id) = id {
            e.set_attr("id", id);
        }
        for _ in 0..payloads {
            e = e.child(Element::new("ping", ns::PING));
        }
        e
    }

    #[test]
    fn iq_semantics() {
        assert!(check(&iq("get", Some("1"), 1)).is_ok());
        assert!(check(&iq("result", Some("1"), 0)).is_ok());
        assert!(check(&iq("error", Some("1"), 2)).is_ok());
        for bad in [
            iq("get", Some("1"), 0),
            iq("set", Some("1"), 2),
            iq("get", None, 1),
            iq("get", Some(""), 1),
            iq("result", Some("1"), 2),
            iq("fetch", Some("1"), 1),
        ] {
            assert_eq!(check(&bad).unwrap_err().0, StanzaErrorCondition::BadRequest, "{}", bad.to_xml());
        }
        let p = Element::new("presence", ns::SERVER).attr("type", "dance");
        assert!(check(&p).is_err());
        assert!(check(&Element::new("presence", ns::SERVER)).is_ok());
        assert!(check(&Element::new("message", ns::SERVER).attr("type", "whatever")).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_error_on_error() {
        let iq = Element::new("iq", ns::SERVER).attr("type", "error").attr("from", "a").attr("to", "b");
        assert!(error_reply(&iq, StanzaErrorCondition::ServiceUnavailable, None).is_none());
        let res = Element::new("iq", ns::SERVER).attr("type", "result");
        assert!(error_reply(&res, StanzaErrorCondition::ServiceUnavailable, None).is_none());
    }

    #[test]
    fn reply_swaps_addresses() {
        let iq = Element::new("iq", ns::SERVER).attr("type", "get").attr("id", "1").attr("from", "a@x").attr("to", "y");
        let r = error_reply(&iq, StanzaErrorCondition::ServiceUnavailable, Some("why")).unwrap();
        assert_eq!(r.get_attr("to"), Some("a@x"));
        assert_eq!(r.get_attr("from"), Some("y"));
        assert_eq!(r.get_attr("id"), Some("1"));
        assert_eq!(error_of(&r), Some(("service-unavailable".into(), Some("why".into()))));
    }

    /// One rule for the type, by RFC 6120 §8.3.3: the wait conditions are temporary (the
    /// sender may retry), the cancel ones are not; the reply carries the condition's type.
    #[test]
    fn each_condition_carries_its_rfc_type() {
        use StanzaErrorCondition as C;
        let t = |c: C| c.error_type();
        assert_eq!(t(C::RemoteServerTimeout), ErrorType::Wait);
        assert_eq!(t(C::ResourceConstraint), ErrorType::Wait);
        assert_eq!(t(C::RecipientUnavailable), ErrorType::Wait);
        assert_eq!(t(C::RemoteConnectionFailed), ErrorType::Wait);
        assert_eq!(t(C::RemoteServerNotFound), ErrorType::Cancel);
        assert_eq!(t(C::ServiceUnavailable), ErrorType::Cancel);
        assert_eq!(t(C::ItemNotFound), ErrorType::Cancel);
        assert_eq!(t(C::InternalServerError), ErrorType::Cancel);
        assert_eq!(t(C::PolicyViolation), ErrorType::Modify);
        assert_eq!(t(C::BadRequest), ErrorType::Modify);
        assert_eq!(t(C::NotAuthorized), ErrorType::Auth);
        assert_eq!(t(C::Forbidden), ErrorType::Auth);
        for c in C::ALL {
            assert_eq!(C::parse(c.as_str()), c);
        }
        assert_eq!(C::parse("no-such-condition"), C::UndefinedCondition);
        let msg = Element::new("message", ns::SERVER).attr("from", "a@x").attr("to", "b@y");
        let r = error_reply(&msg, C::RemoteServerTimeout, None).unwrap();
        assert_eq!(r.get_child("error", ns::SERVER).and_then(|e| e.get_attr("type")), Some("wait"));
        let r = error_reply(&msg, C::RemoteServerNotFound, None).unwrap();
        assert_eq!(r.get_child("error", ns::SERVER).and_then(|e| e.get_attr("type")), Some("cancel"));
    }
}
