//! A namespace-resolved element tree: what a stanza or a stream-level element is once parsed.

use std::borrow::Cow;
use std::fmt::Write as _;

/// An element or attribute name, or a namespace: the common ones are static (no allocation
/// per stanza), others owned.
pub type Name = Cow<'static, str>;

/// The static copy of a well-known name or namespace, else an owned one. Bucketed by
/// length so a lookup costs one or two comparisons (it runs for every element parsed).
pub fn intern(s: &str) -> Name {
    use crate::proto::ns;
    let known: &[&'static str] = match s.len() {
        1 => &["c", "x"],
        2 => &["iq", "to", "id"],
        3 => &["ver"],
        4 => &["body", "show", "text", "ping", "from", "type", "hash", "node"],
        5 => &["error", "query", "delay", "stamp"],
        6 => &["thread", "status", "active", "paused", "result", "verify", "errors"],
        7 => &["message", "subject", "proceed"],
        8 => &["presence", "priority", "xml:lang", "features", "starttls", "required", "dialback"],
        9 => &["composing"],
        13 => &[ns::SERVER, ns::CLIENT, ns::PING],
        14 => &["urn:xmpp:delay"],
        17 => &[ns::VERSION, "urn:xmpp:receipts"],
        22 => &[ns::DIALBACK],
        31 => &[ns::TLS, "http://jabber.org/protocol/caps"],
        32 => &[ns::STREAMS, ns::SASL],
        35 => &[ns::STANZA_ERRORS, ns::STREAM_ERRORS],
        37 => &[ns::DISCO_INFO, "http://jabber.org/protocol/chatstates"],
        _ => &[],
    };
    match known.iter().find(|k| **k == s) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s.to_owned()),
    }
}

/// A child of an element: another element or character data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// One XML element with its namespace resolved. Attribute names are local names; an
/// attribute in a namespace other than none or `xml` is stored as `{ns}local`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: Name,
    pub ns: Name,
    pub attrs: Vec<(Name, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: &str, ns: &str) -> Self {
        Element { name: intern(name), ns: intern(ns), attrs: Vec::new(), children: Vec::new() }
    }

    /// Builder: set an attribute.
    pub fn attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: add a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: add text.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((intern(name), value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let i = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(i).1)
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// The concatenated character data directly inside this element.
    pub fn text_content(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serialise with `jabber:server` as the ambient default namespace (for logs and tests).
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        super::writer::write_element(&mut out, self, crate::proto::ns::SERVER);
        out
    }

    /// A short description for logs: `<iq type='get' id='x'>`.
    pub fn describe(&self) -> String {
        let mut s = format!("<{}", self.name);
        for (k, v) in self.attrs.iter().take(4) {
            let _ = write!(s, " {k}='{v}'");
        }
        s.push('>');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_returns_static_for_known_and_owned_otherwise() {
        assert!(matches!(intern("jabber:server"), Cow::Borrowed("jabber:server")));
        assert!(matches!(intern("message"), Cow::Borrowed("message")));
        assert!(matches!(intern("messagf"), Cow::Owned(ref s) if s == "messagf"));
        assert!(matches!(intern(""), Cow::Owned(ref s) if s.is_empty()));
    }
}
