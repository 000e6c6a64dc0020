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
                text = Some(c.text_content());
            } else {
                cond = c.name.to_string();
            }
        }
    }
    Some((cond, text))
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
