//! Serialisation: elements to XML text with escaping. Attribute values use single quotes;
//! both quote characters are escaped anyway so no value can break out.

use super::element::{Element, Node};
use crate::proto::ns;

/// Escape character data (`&`, `<`, `>`; `\r` as a reference so end-of-line
/// normalisation keeps it).
pub fn escape_text(out: &mut String, s: &str) {
    escape(out, s, false)
}

/// Escape an attribute value: also both quotes and the whitespace attribute-value
/// normalisation would turn into spaces.
pub fn escape_attr(out: &mut String, s: &str) {
    escape(out, s, true)
}

fn escape(out: &mut String, s: &str, attr: bool) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'\r' => "&#13;",
            b'\'' if attr => "&apos;",
            b'"' if attr => "&quot;",
            b'\t' if attr => "&#9;",
            b'\n' if attr => "&#10;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// The prefix we declare on our own stream headers for a namespace used at the top level.
fn stream_prefix(ns_: &str) -> Option<&'static str> {
    match ns_ {
        ns::STREAMS => Some("stream"),
        ns::DIALBACK => Some("db"),
        _ => None,
    }
}

/// Write a top-level element on one of our streams (where `jabber:server` is the default
/// namespace and `stream:` / `db:` are declared on the header).
pub fn write_top(out: &mut String, el: &Element) {
    match stream_prefix(&el.ns) {
        Some(p) => write_inner(out, el, ns::SERVER, Some(p)),
        None => write_element(out, el, ns::SERVER),
    }
}

/// Write `el` given the default namespace in scope (`parent_ns`).
pub fn write_element(out: &mut String, el: &Element, parent_ns: &str) {
    write_inner(out, el, parent_ns, None)
}

fn write_inner(out: &mut String, el: &Element, parent_ns: &str, prefix: Option<&str>) {
    out.push('<');
    if let Some(p) = prefix {
        out.push_str(p);
        out.push(':');
    }
    out.push_str(&el.name);
    let default_ns = if prefix.is_some() { parent_ns } else { &*el.ns };
    if prefix.is_none() && el.ns != parent_ns {
        out.push_str(" xmlns='");
        escape_attr(out, &el.ns);
        out.push('\'');
    }
    let mut n = 0;
    for (k, v) in &el.attrs {
        out.push(' ');
        if let Some(rest) = k.strip_prefix('{') {
            // Namespaced attribute: declare a private prefix for it.
            let (ans, local) = rest.split_once('}').unwrap_or(("", rest));
            n += 1;
            out.push_str(&format!("xmlns:a{n}='"));
            escape_attr(out, ans);
            out.push_str(&format!("' a{n}:{local}"));
        } else {
            out.push_str(k);
        }
        out.push_str("='");
        escape_attr(out, v);
        out.push('\'');
    }
    if el.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for c in &el.children {
        match c {
            Node::Text(t) => escape_text(out, t),
            Node::Element(e) => write_inner(out, e, default_ns, None),
        }
    }
    out.push_str("</");
    if let Some(p) = prefix {
        out.push_str(p);
        out.push(':');
    }
    out.push_str(&el.name);
    out.push('>');
}

/// Pretty-print a top-level element for people (transcripts): two-space indentation, text
/// kept inline when an element holds only text.
pub fn pretty_top(el: &Element) -> String {
    let mut out = String::new();
    pretty_inner(&mut out, el, ns::SERVER, stream_prefix(&el.ns), 0);
    out
}

fn pretty_inner(out: &mut String, el: &Element, parent_ns: &str, prefix: Option<&str>, depth: usize) {
    let only_text = el.children.iter().all(|c| matches!(c, Node::Text(_)));
    if only_text {
        for _ in 0..depth {
            out.push_str("  ");
        }
        write_inner(out, el, parent_ns, prefix);
        return;
    }
    let mut open = String::new();
    let shallow = Element { children: Vec::new(), ..el.clone() };
    write_inner(&mut open, &shallow, parent_ns, prefix);
    // `<name …/>` → `<name …>`
    open.truncate(open.len() - 2);
    open.push('>');
    for _ in 0..depth {
        out.push_str("  ");
    }
    out.push_str(&open);
    let default_ns = if prefix.is_some() { parent_ns } else { &*el.ns };
    for c in &el.children {
        out.push('\n');
        match c {
            Node::Element(e) => pretty_inner(out, e, default_ns, None, depth + 1),
            Node::Text(t) => {
                for _ in 0..=depth {
                    out.push_str("  ");
                }
                escape_text(out, t.trim());
            }
        }
    }
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
    out.push_str("</");
    if let Some(p) = prefix {
        out.push_str(p);
        out.push(':');
    }
    out.push_str(&el.name);
    out.push('>');
}

/// For transcripts: a dialback element with its key replaced by a marker, and the key.
pub fn mask_key(el: &Element) -> (std::borrow::Cow<'_, Element>, Option<String>) {
    if el.ns == ns::DIALBACK && el.children.iter().any(|c| matches!(c, Node::Text(t) if !t.trim().is_empty())) {
        let key = el.text_content().trim().to_owned();
        let mut masked = el.clone();
        masked.children.retain(|c| !matches!(c, Node::Text(_)));
        masked.children.push(Node::Text(KEY_MARKER.into()));
        return (std::borrow::Cow::Owned(masked), Some(key));
    }
    (std::borrow::Cow::Borrowed(el), None)
}

/// What a masked dialback key shows as.
pub const KEY_MARKER: &str = "[dialback key hidden]";
