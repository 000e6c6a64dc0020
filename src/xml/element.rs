//! A namespace-resolved element tree: what a stanza or a stream-level element is once parsed.

use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;

/// An element or attribute name, or a namespace. The common ones are static (no allocation
/// per stanza); others are reference-counted, so a namespace declared once in a frame is
/// stored once however many elements use it: the parsed form of a frame stays proportional
/// to its size on the wire (a hostile peer cannot multiply one long declaration by the
/// number of its children).
#[derive(Clone)]
pub enum Name {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    pub fn as_str(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Shared(s) => s,
        }
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::Static("")
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Name {}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        intern(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        match known(&s) {
            Some(k) => Name::Static(k),
            None => Name::Shared(Arc::from(s)),
        }
    }
}

/// The static copy of a well-known name or namespace. Bucketed by length so a lookup costs
/// one or two comparisons (it runs for every element parsed).
pub(crate) fn known(s: &str) -> Option<&'static str> {
    use crate::xml::ns;
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
    known.iter().find(|k| **k == s).copied()
}

/// The static copy of a well-known name or namespace, else a shared one.
pub fn intern(s: &str) -> Name {
    match known(s) {
        Some(k) => Name::Static(k),
        None => Name::Shared(Arc::from(s)),
    }
}

/// A child of an element: another element or character data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// One XML element with its namespace resolved. Attribute names in `attrs` are local names
/// (or `xml:lang`); attributes in any other namespace are kept apart in `ns_attrs` as
/// (namespace, local name, value), their namespace shared rather than copied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: Name,
    pub ns: Name,
    pub attrs: Vec<(Name, String)>,
    pub ns_attrs: Vec<(Name, Name, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: &str, ns: &str) -> Self {
        Element { name: intern(name), ns: intern(ns), ..Default::default() }
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

    /// About what this element costs in bytes, in memory and once written (queues bound
    /// themselves by it): a namespace that differs from its parent's counts its length, as
    /// the writer may have to declare it there.
    pub fn weight(&self) -> usize {
        self.weight_in("")
    }

    fn weight_in(&self, parent_ns: &str) -> usize {
        let mut w = std::mem::size_of::<Element>() + self.name.len();
        if self.ns != parent_ns && matches!(self.ns, Name::Shared(_)) {
            w += self.ns.len();
        }
        w += self.attrs.iter().map(|(k, v)| 48 + k.len() + v.len()).sum::<usize>();
        w += self.ns_attrs.iter().map(|(n, l, v)| 72 + n.len() + l.len() + v.len()).sum::<usize>();
        for c in &self.children {
            w += match c {
                Node::Text(t) => 32 + t.len(),
                Node::Element(e) => e.weight_in(&self.ns),
            };
        }
        w
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
        super::writer::write_element(&mut out, self, crate::xml::ns::SERVER);
        out
    }

    /// A short description for logs: `<iq type='get' id='x'>`.
    pub fn describe(&self) -> String {
        let mut s = format!("<{}", clip(&self.name, 64));
        for (k, v) in self.attrs.iter().take(4) {
            let _ = write!(s, " {}='{}'", clip(k, 32), clip(v, 64));
        }
        s.push('>');
        s
    }
}

pub use crate::text::clip;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_returns_static_for_known_and_owned_otherwise() {
        assert!(matches!(intern("jabber:server"), Name::Static("jabber:server")));
        assert!(matches!(intern("message"), Name::Static("message")));
        assert!(matches!(intern("messagf"), Name::Shared(ref s) if &**s == "messagf"));
        assert!(matches!(intern(""), Name::Shared(ref s) if s.is_empty()));
    }
}
