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
/// answer with (type, condition, text). Checked on authenticated streams before routing,
/// whatever the stanza is routed to.
pub fn check(el: &Element) -> Result<(), (ErrorType, &'static str, &'static str)> {
    let typ = el.get_attr("type");
    let bad = |text| Err((ErrorType::Modify, "bad-request", text));
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
/// §8.3.1 allows), or `None` where an error must not be sent.
pub fn error_reply(el: &Element, etype: ErrorType, condition: &str, text: Option<&str>) -> Option<Element> {
    if !may_bounce(el) {
        return None;
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
    let mut err = Element::new("error", ns::SERVER).attr("type", etype.as_str()).child(Element::new(condition, ns::STANZA_ERRORS));
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
            assert_eq!(check(&bad).unwrap_err().1, "bad-request", "{}", bad.to_xml());
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
        assert!(error_reply(&iq, ErrorType::Cancel, "service-unavailable", None).is_none());
        let res = Element::new("iq", ns::SERVER).attr("type", "result");
        assert!(error_reply(&res, ErrorType::Cancel, "service-unavailable", None).is_none());
    }

    #[test]
    fn reply_swaps_addresses() {
        let iq = Element::new("iq", ns::SERVER).attr("type", "get").attr("id", "1").attr("from", "a@x").attr("to", "y");
        let r = error_reply(&iq, ErrorType::Cancel, "service-unavailable", Some("why")).unwrap();
        assert_eq!(r.get_attr("to"), Some("a@x"));
        assert_eq!(r.get_attr("from"), Some("y"));
        assert_eq!(r.get_attr("id"), Some("1"));
        assert_eq!(error_of(&r), Some(("service-unavailable".into(), Some("why".into()))));
    }
}
