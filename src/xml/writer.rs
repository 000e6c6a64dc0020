//! Serialisation: elements to XML text with escaping. Attribute values use single quotes;
//! both quote characters are escaped anyway so no value can break out.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::element::{Element, Node};
use crate::xml::ns;

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
    write_hoisted(out, el, ns::SERVER, stream_prefix(&el.ns))
}

/// An upper bound of what [`write_top`] writes for `el`, found without writing it: every
/// byte of text and attribute values counted at its longest escape, every element with room
/// for a namespace declaration (inline or hoisted) and prefixes on both tags. A size check
/// serialises only the stanzas this bound cannot clear.
pub fn len_bound(el: &Element) -> usize {
    let mut n = 0;
    bound_in(el, &mut n);
    n
}

/// Longest escape of one byte (`&quot;`).
const ESCAPED: usize = 6;
/// Room for a prefix (`stream:`, `n12:`, `a3:`) and its separators.
const PREFIX: usize = 24;

fn bound_in(el: &Element, n: &mut usize) {
    // `<p:name xmlns='ns'>` … `</p:name>`, or `/>`.
    *n += 2 * (el.name.len() + PREFIX) + 5 + 12 + ESCAPED * el.ns.len();
    for (k, v) in &el.attrs {
        *n += k.len() + 4 + ESCAPED * v.len();
    }
    for (ans, local, v) in &el.ns_attrs {
        // ` xmlns:aN='ns' aN:local='v'`, or hoisted ` nI:local='v'` and one declaration.
        *n += 2 * PREFIX + 16 + ESCAPED * ans.len() + local.len() + ESCAPED * v.len();
    }
    for c in &el.children {
        match c {
            Node::Text(t) => *n += ESCAPED * t.len(),
            Node::Element(e) => bound_in(e, n),
        }
    }
}

/// Write `el` given the default namespace in scope (`parent_ns`).
pub fn write_element(out: &mut String, el: &Element, parent_ns: &str) {
    write_hoisted(out, el, parent_ns, None)
}

/// Namespace declarations written inline beyond this many bytes make the writer look for
/// namespaces worth declaring once on the top element. So a written element is at most a
/// few times the size of what was parsed, plus this.
pub const INLINE_BUDGET: usize = 256;

/// Output stays proportional to the parsed tree: a namespace that would be declared inline
/// on many elements (a hostile frame declares one long namespace once and uses it on
/// thousands of children) is declared once, with a prefix, on the top element. Ordinary
/// stanzas stay byte-for-byte as before (their inline declarations are few and short).
fn write_hoisted(out: &mut String, el: &Element, parent_ns: &str, prefix: Option<&str>) {
    let mut inline = 0usize;
    inline_decls(el, parent_ns, prefix.is_some(), &mut |n| inline += n.len() + 10);
    if inline <= INLINE_BUDGET {
        return write_inner(out, el, parent_ns, prefix, None, true);
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    inline_decls(el, parent_ns, prefix.is_some(), &mut |n| {
        let c = counts.entry(n).or_insert(0);
        if *c == 0 {
            order.push(n);
        }
        *c += 1;
    });
    // The null namespace cannot be bound to a prefix (Namespaces in XML §3): it stays
    // inline as `xmlns=''`, a few bytes each.
    let hoisted: HashMap<&str, usize> =
        order.into_iter().filter(|n| counts[n] > 1 && !n.is_empty()).enumerate().map(|(i, n)| (n, i + 1)).collect();
    write_inner(out, el, parent_ns, prefix, Some(&hoisted), true)
}

/// Call `f` with every namespace the plain writer would declare inline in `el`'s subtree.
fn inline_decls<'e>(el: &'e Element, parent_ns: &str, prefixed: bool, f: &mut impl FnMut(&'e str)) {
    if !prefixed && el.ns != parent_ns {
        f(&el.ns);
    }
    for (ans, _, _) in &el.ns_attrs {
        f(ans);
    }
    let default_ns: &str = if prefixed { parent_ns } else { &el.ns };
    for c in &el.children {
        if let Node::Element(e) = c {
            inline_decls(e, default_ns, false, f);
        }
    }
}

fn write_inner(out: &mut String, el: &Element, parent_ns: &str, prefix: Option<&str>, hoisted: Option<&HashMap<&str, usize>>, top: bool) {
    let hoisted_ns = |n: &str| hoisted.and_then(|h| h.get(n).copied());
    out.push('<');
    let own = if prefix.is_none() && el.ns != parent_ns { hoisted_ns(&el.ns) } else { None };
    if let Some(p) = prefix {
        out.push_str(p);
        out.push(':');
    } else if let Some(i) = own {
        let _ = write!(out, "n{i}:");
    }
    out.push_str(&el.name);
    let default_ns = if prefix.is_some() || own.is_some() { parent_ns } else { &*el.ns };
    if prefix.is_none() && own.is_none() && el.ns != parent_ns {
        out.push_str(" xmlns='");
        escape_attr(out, &el.ns);
        out.push('\'');
    }
    if top && let Some(h) = hoisted {
        let mut decls: Vec<(&str, usize)> = h.iter().map(|(n, i)| (*n, *i)).collect();
        decls.sort_by_key(|d| d.1);
        for (n, i) in decls {
            let _ = write!(out, " xmlns:n{i}='");
            escape_attr(out, n);
            out.push('\'');
        }
    }
    for (k, v) in &el.attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("='");
        escape_attr(out, v);
        out.push('\'');
    }
    for (n, (ans, local, v)) in el.ns_attrs.iter().enumerate() {
        match hoisted_ns(ans) {
            Some(i) => {
                let _ = write!(out, " n{i}:{local}='");
            }
            None => {
                // Declare a private prefix for it.
                let _ = write!(out, " xmlns:a{}='", n + 1);
                escape_attr(out, ans);
                let _ = write!(out, "' a{}:{local}='", n + 1);
            }
        }
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
            Node::Element(e) => write_inner(out, e, default_ns, None, hoisted, false),
        }
    }
    out.push_str("</");
    if let Some(p) = prefix {
        out.push_str(p);
        out.push(':');
    } else if let Some(i) = own {
        let _ = write!(out, "n{i}:");
    }
    out.push_str(&el.name);
    out.push('>');
}

/// For transcripts: a dialback element carrying a key, written with the key replaced by a
/// marker (and nothing else inside: a dialback element holds only its key), and the key.
pub fn masked_key(el: &Element) -> Option<(String, String)> {
    if el.ns != ns::DIALBACK || !el.children.iter().any(|c| matches!(c, Node::Text(t) if !t.trim().is_empty())) {
        return None;
    }
    let key = el.text_content().trim().to_owned();
    let masked = Element {
        name: el.name.clone(),
        ns: el.ns.clone(),
        attrs: el.attrs.clone(),
        ns_attrs: el.ns_attrs.clone(),
        children: vec![Node::Text(KEY_MARKER.into())],
    };
    let mut out = String::new();
    write_top(&mut out, &masked);
    Some((out, key))
}

/// What a masked dialback key shows as.
pub const KEY_MARKER: &str = "[dialback key hidden]";
