//! Incremental XML stream framer (RFC 6120 §4, §11): bytes in, frames out, no I/O.
//!
//! The framer owns the byte buffer. A small resumable scanner finds the boundaries of the
//! stream header and of each top-level child; only a *complete* element is handed to
//! quick-xml, which builds a namespace-resolved [`Element`]. Partial input is `Ok(None)`
//! ("not enough data yet", as in mini-redis), so chunks of any size work, including one
//! byte at a time and splits inside a multi-byte UTF-8 character. Memory is bounded by the
//! stanza size limit: a top-level element growing beyond it is an error before it is
//! ever parsed.

use std::borrow::Cow;

use memchr::{memchr, memchr3};
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use std::collections::HashMap;

use super::element::{Element, Name, Node, clip, intern};
use crate::xml::ns;

/// What the framer yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The peer's `<stream:stream …>` header.
    StreamOpen(StreamHeader),
    /// One complete top-level child of the stream (stanza, dialback, features, …).
    Element(Element),
    /// The peer's `</stream:stream>`.
    StreamClose,
}

/// The attributes of a stream header (RFC 6120 §4.7), with its names resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamHeader {
    /// Local name of the root element (must be `stream`).
    pub name: String,
    /// Namespace of the root element (must be `http://etherx.jabber.org/streams`).
    pub ns: String,
    /// The default namespace declared (must be `jabber:server` for s2s).
    pub default_ns: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// Whether the dialback namespace is declared (XEP-0220 §2.1: `xmlns:db`).
    pub dialback_declared: bool,
}

/// Why the input cannot be framed. Each maps to one stream error condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// RFC 6120 §11.1: comments, PIs, DTDs, non-predefined entities → `<restricted-xml/>`.
    #[error("restricted XML: {0}")]
    Restricted(String),
    /// Not well-formed XML or not UTF-8 → `<not-well-formed/>`.
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    /// A top-level element over the configured limit → `<policy-violation/>`.
    #[error("element exceeds the size limit of {limit} bytes (limits.max_stanza_size)")]
    TooLarge { limit: usize },
    /// A top-level element over the smaller limit that holds until the stream authenticates
    /// → `<policy-violation/>`.
    #[error(
        "element exceeds the size limit of {limit} bytes that holds until the stream is authenticated (limits.max_stanza_size applies after)"
    )]
    TooLargeUnauthenticated { limit: usize },
    /// Nesting beyond the configured depth → `<policy-violation/>`.
    #[error("elements nested deeper than {limit} levels (limits.max_depth)")]
    TooDeep { limit: usize },
    /// Character data between top-level elements → `<bad-format/>`.
    #[error("character data outside of any stanza")]
    TextAtTopLevel,
}

/// Scanner state, resumable at any byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Character data; looking for `<`.
    Text,
    /// Just after `<`.
    Lt,
    /// Inside a start tag; `quote` is the open quote byte or 0.
    Start { quote: u8 },
    /// Inside an end tag.
    End,
    /// After `<!`; `matched` bytes of `[CDATA[` seen.
    Bang { matched: usize },
    /// Inside a CDATA section.
    CData,
    /// Inside the XML declaration `<?xml … ?>` before the header.
    Decl,
}

const CDATA_OPEN: &[u8] = b"[CDATA[";

/// The incremental framer. One per stream; replaced by a fresh one at each stream restart
/// (after STARTTLS), which is how everything learned before TLS is forgotten.
pub struct Framer {
    buf: Vec<u8>,
    /// First byte not yet consumed by a frame.
    start: usize,
    /// Scan position.
    pos: usize,
    /// Where the current markup token (`<…`) began.
    tag_start: usize,
    /// Where the current top-level element began.
    elem_start: usize,
    depth: usize,
    state: Scan,
    header_seen: bool,
    closed: bool,
    max_size: usize,
    /// `max_size` is the limit for unauthenticated streams (see [`Framer::set_max_size`]).
    unauthenticated: bool,
    max_depth: usize,
    /// Namespace bindings from the stream header: (prefix, namespace); "" is the default.
    scope: Vec<(String, String)>,
    /// Where the last frame's own bytes lie in `buf` (valid until the next feed).
    last: (usize, usize),
}

impl Framer {
    pub fn new(max_size: usize, max_depth: usize) -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            tag_start: 0,
            elem_start: 0,
            depth: 0,
            state: Scan::Text,
            header_seen: false,
            closed: false,
            max_size,
            unauthenticated: false,
            max_depth: max_depth.max(2),
            scope: Vec::new(),
            last: (0, 0),
        }
    }

    /// Change the element size limit, in the middle of the stream too (an element being
    /// read gets the new room). `unauthenticated`: the limit is the one that holds until the
    /// stream authenticates (its error says so).
    pub fn set_max_size(&mut self, max_size: usize, unauthenticated: bool) {
        self.max_size = max_size;
        self.unauthenticated = unauthenticated;
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// A buffer to read into directly (tokio's `read_buf` fills its spare capacity).
    pub fn read_buf(&mut self, reserve: usize) -> &mut Vec<u8> {
        self.compact();
        let want = self.buf.len() + reserve;
        if want > self.buf.capacity() {
            // Doubling, but not past what one element at the size limit needs (and what is
            // consumed but not compacted away yet): a stream's read buffer stays about the
            // limit, not twice it.
            let ceiling = self.start + self.max_size + 2 * reserve;
            let target = (self.buf.capacity() * 2).min(ceiling).max(want);
            self.buf.reserve_exact(target - self.buf.len());
        }
        &mut self.buf
    }

    /// Bytes received but not yet consumed by a frame. After `<starttls/>` or `<proceed/>`
    /// anything here is plaintext injection (RFC 6120 §5.3.3 pitfalls).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes of the frame just returned, as received (the header, or one element), for
    /// the transcript: what crossed the wire, not a re-serialisation. Valid until the next
    /// [`Framer::feed`] / [`Framer::read_buf`]; checked UTF-8 when the frame was parsed.
    pub fn last_frame_text(&self) -> &str {
        std::str::from_utf8(&self.buf[self.last.0..self.last.1]).unwrap_or("")
    }

    /// The namespace bindings the peer's stream header declared (prefix, namespace).
    pub fn header_scope(&self) -> &[(String, String)] {
        &self.scope
    }

    /// Give the read buffer back while nothing is pending (an idle stream holds no buffer;
    /// the next read allocates one).
    pub fn trim(&mut self) {
        if self.pending() == 0 && self.buf.capacity() > 0 {
            self.compact();
            if self.buf.is_empty() {
                self.buf = Vec::new();
                self.last = (0, 0);
            }
        }
    }

    /// Bytes currently held, for memory accounting.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
        } else if self.start > 4096 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
        } else {
            return;
        }
        self.pos -= self.start;
        self.tag_start = self.tag_start.saturating_sub(self.start);
        self.elem_start = self.elem_start.saturating_sub(self.start);
        self.start = 0;
        self.last = (0, 0);
        // Give back memory after an unusually large stanza.
        if self.buf.capacity() > 64 * 1024 && self.buf.len() < 16 * 1024 {
            self.buf.shrink_to(16 * 1024);
        }
    }

    /// The next complete frame, `Ok(None)` if more input is needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, XmlError> {
        if self.closed {
            return Ok(None);
        }
        loop {
            let len = self.buf.len();
            match self.state {
                Scan::Text => {
                    let found = memchr(b'<', &self.buf[self.pos..]);
                    let end = found.map_or(len, |i| self.pos + i);
                    if self.depth <= 1 {
                        // Between top-level elements only whitespace is allowed (keepalives).
                        if !self.buf[self.pos..end].iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
                            return Err(XmlError::TextAtTopLevel);
                        }
                        self.start = end;
                        self.elem_start = end;
                    }
                    self.pos = end;
                    if found.is_none() {
                        self.check_size()?;
                        return Ok(None);
                    }
                    self.tag_start = self.pos;
                    self.pos += 1;
                    self.state = Scan::Lt;
                }
                Scan::Lt => {
                    if self.pos >= len {
                        return Ok(None);
                    }
                    match self.buf[self.pos] {
                        b'/' => {
                            self.pos += 1;
                            self.state = Scan::End;
                        }
                        b'!' => {
                            self.pos += 1;
                            self.state = Scan::Bang { matched: 0 };
                        }
                        b'?' => {
                            if self.header_seen || self.depth > 0 {
                                return Err(XmlError::Restricted("processing instruction".into()));
                            }
                            self.pos += 1;
                            self.state = Scan::Decl;
                        }
                        _ => self.state = Scan::Start { quote: 0 },
                    }
                }
                Scan::Start { quote } => {
                    let rest = &self.buf[self.pos..];
                    let hit = if quote == 0 { memchr3(b'"', b'\'', b'>', rest) } else { memchr(quote, rest) };
                    let Some(i) = hit else {
                        self.pos = len;
                        self.check_size()?;
                        return Ok(None);
                    };
                    let p = self.pos + i;
                    self.pos = p + 1;
                    let b = self.buf[p];
                    if quote != 0 {
                        self.state = Scan::Start { quote: 0 };
                    } else if b != b'>' {
                        self.state = Scan::Start { quote: b };
                    } else {
                        self.state = Scan::Text;
                        let empty = p > self.tag_start + 1 && self.buf[p - 1] == b'/';
                        if let Some(frame) = self.on_start_tag(empty)? {
                            return Ok(Some(frame));
                        }
                    }
                }
                Scan::End => {
                    let Some(i) = memchr(b'>', &self.buf[self.pos..]) else {
                        self.pos = len;
                        self.check_size()?;
                        return Ok(None);
                    };
                    self.pos += i + 1;
                    self.state = Scan::Text;
                    if let Some(frame) = self.on_end_tag()? {
                        return Ok(Some(frame));
                    }
                }
                Scan::Bang { matched } => {
                    if self.pos >= len {
                        return Ok(None);
                    }
                    let b = self.buf[self.pos];
                    if matched == 0 && b == b'-' {
                        return Err(XmlError::Restricted("comment".into()));
                    }
                    if matched == 0 && (b == b'D' || b == b'd') {
                        return Err(XmlError::Restricted("document type declaration".into()));
                    }
                    if b != CDATA_OPEN[matched] {
                        return Err(XmlError::NotWellFormed("invalid markup after '<!'".into()));
                    }
                    if self.depth < 2 {
                        return Err(XmlError::TextAtTopLevel);
                    }
                    self.pos += 1;
                    self.state = if matched + 1 == CDATA_OPEN.len() { Scan::CData } else { Scan::Bang { matched: matched + 1 } };
                }
                Scan::CData => {
                    let Some(i) = memchr(b'>', &self.buf[self.pos..]) else {
                        self.pos = len;
                        self.check_size()?;
                        return Ok(None);
                    };
                    let p = self.pos + i;
                    self.pos = p + 1;
                    if p >= self.tag_start + 11 && &self.buf[p - 2..p] == b"]]" {
                        self.state = Scan::Text;
                    }
                }
                Scan::Decl => {
                    let Some(i) = memchr(b'>', &self.buf[self.pos..]) else {
                        self.pos = len;
                        self.check_size()?;
                        return Ok(None);
                    };
                    let p = self.pos + i;
                    self.pos = p + 1;
                    if self.buf[p - 1] == b'?' && p > self.tag_start + 2 {
                        let decl = &self.buf[self.tag_start..self.pos];
                        let ok = decl.len() > 7 && &decl[..5] == b"<?xml" && decl[5].is_ascii_whitespace();
                        if !ok {
                            return Err(XmlError::Restricted("processing instruction".into()));
                        }
                        self.state = Scan::Text;
                        self.start = self.pos;
                    }
                }
            }
            self.check_size()?;
        }
    }

    fn check_size(&self) -> Result<(), XmlError> {
        if self.pos - self.elem_start.min(self.pos) > self.max_size {
            let limit = self.max_size;
            return Err(if self.unauthenticated { XmlError::TooLargeUnauthenticated { limit } } else { XmlError::TooLarge { limit } });
        }
        Ok(())
    }

    fn on_start_tag(&mut self, empty: bool) -> Result<Option<Frame>, XmlError> {
        self.check_size()?;
        match self.depth {
            0 => {
                if empty {
                    return Err(XmlError::NotWellFormed("empty stream root element".into()));
                }
                let header = self.parse_header()?;
                self.last = (self.tag_start, self.pos);
                self.header_seen = true;
                self.depth = 1;
                self.start = self.pos;
                self.elem_start = self.pos;
                Ok(Some(Frame::StreamOpen(header)))
            }
            1 if empty => {
                let el = self.parse_element()?;
                self.last = (self.elem_start, self.pos);
                self.start = self.pos;
                self.elem_start = self.pos;
                Ok(Some(Frame::Element(el)))
            }
            d => {
                if !empty {
                    if d >= self.max_depth {
                        return Err(XmlError::TooDeep { limit: self.max_depth });
                    }
                    self.depth += 1;
                }
                Ok(None)
            }
        }
    }

    fn on_end_tag(&mut self) -> Result<Option<Frame>, XmlError> {
        match self.depth {
            0 => Err(XmlError::NotWellFormed("end tag before the stream header".into())),
            1 => {
                let tag = &self.buf[self.tag_start + 2..self.pos - 1];
                let tag = std::str::from_utf8(tag).map_err(|_| XmlError::NotWellFormed("invalid UTF-8".into()))?;
                let tag = tag.trim_end();
                let (prefix, local) = split_qname(tag);
                if local != "stream" || resolve_owned(&self.scope, prefix) != Some(ns::STREAMS) {
                    return Err(XmlError::NotWellFormed(format!("unexpected end tag </{}>", clip(tag, 64))));
                }
                self.depth = 0;
                self.closed = true;
                self.start = self.pos;
                Ok(Some(Frame::StreamClose))
            }
            2 => {
                self.depth = 1;
                let el = self.parse_element()?;
                self.last = (self.elem_start, self.pos);
                self.start = self.pos;
                self.elem_start = self.pos;
                Ok(Some(Frame::Element(el)))
            }
            _ => {
                self.depth -= 1;
                Ok(None)
            }
        }
    }

    fn slice_str(&self, from: usize) -> Result<&str, XmlError> {
        let bytes = &self.buf[from..self.pos];
        check_chars(bytes)?;
        std::str::from_utf8(bytes).map_err(|_| XmlError::NotWellFormed("invalid UTF-8".into()))
    }

    fn parse_header(&mut self) -> Result<StreamHeader, XmlError> {
        let text = self.slice_str(self.tag_start)?;
        let mut reader = Reader::from_str(text);
        let start = match reader.read_event().map_err(map_qx)? {
            Event::Start(s) => s,
            other => return Err(XmlError::NotWellFormed(format!("expected the stream header, got {}", clip(&format!("{other:?}"), 64)))),
        };
        let mut scope = Vec::new();
        let attrs = collect_attrs(text, &start, &mut scope)?;
        let (prefix, local) = qname(start.name().0)?;
        let ns = resolve_cow(&scope, prefix).ok_or_else(|| unbound(prefix))?.to_owned();
        let mut h = StreamHeader { name: local.to_owned(), ns, ..Default::default() };
        for (k, v) in attrs {
            let v = v.into_owned();
            match k {
                "from" => h.from = Some(v),
                "to" => h.to = Some(v),
                "id" => h.id = Some(v),
                "version" => h.version = Some(v),
                "xml:lang" => h.lang = Some(v),
                _ => {}
            }
        }
        h.default_ns = scope.iter().rev().find(|(p, _)| p.is_empty()).map(|(_, n)| n.to_string());
        h.dialback_declared = scope.iter().any(|(_, n)| n == ns::DIALBACK);
        let owned: Vec<(String, String)> = scope.into_iter().map(|(p, n)| (p.to_owned(), n.into_owned())).collect();
        self.scope = owned;
        Ok(h)
    }

    fn parse_element(&self) -> Result<Element, XmlError> {
        let text = self.slice_str(self.elem_start)?;
        parse_fragment(text, &self.scope, self.max_depth)
    }
}

/// Namespace bindings while parsing one fragment: the stream header's, plus any declared
/// inside the fragment. Each declaration becomes one shared [`Name`] that every element and
/// attribute in its scope points to; lookups are hashed, so neither memory nor time grows
/// with (declarations × uses).
struct Scope<'b, 'a> {
    base: &'b [(String, String)],
    base_default: Name,
    /// Prefixes declared inside the fragment, innermost last; scanned while few.
    local: Vec<(&'a str, Name)>,
    /// Prefix → positions in `local`, built once a fragment declares many (so neither
    /// memory nor time grows with declarations × uses).
    index: Option<HashMap<&'a str, Vec<usize>>>,
    /// The namespaces of the header's prefixes, shared once used.
    base_names: HashMap<&'b str, Name>,
    /// Every namespace named in the fragment, once: equal names are one `Name` (so they
    /// compare by address, and a long one is hashed once per declaration, not per use).
    pool: Vec<Name>,
    pool_set: Option<std::collections::HashSet<Name>>,
}

/// Declarations in one fragment beyond which lookups are hashed.
const SCAN_DECLARATIONS: usize = 16;

impl<'b, 'a> Scope<'b, 'a> {
    /// The shared `Name` for a namespace string: the static one for a well-known namespace,
    /// else one per distinct string in the fragment (scanned while few, hashed beyond).
    fn pooled(&mut self, ns: Cow<'_, str>) -> Name {
        if let Some(k) = super::element::known(&ns) {
            return Name::Static(k);
        }
        if let Some(set) = &mut self.pool_set {
            if let Some(n) = set.get(ns.as_ref()) {
                return n.clone();
            }
            let n = Name::Shared(std::sync::Arc::from(ns.as_ref()));
            set.insert(n.clone());
            return n;
        }
        if let Some(n) = self.pool.iter().find(|n| n.as_str() == ns.as_ref()) {
            return n.clone();
        }
        let n = Name::Shared(std::sync::Arc::from(ns.as_ref()));
        self.pool.push(n.clone());
        if self.pool.len() > 16 {
            self.pool_set = Some(self.pool.drain(..).collect());
        }
        n
    }

    fn mark(&self) -> usize {
        self.local.len()
    }

    fn declare(&mut self, prefix: &'a str, ns: Name) {
        self.local.push((prefix, ns));
        match &mut self.index {
            Some(ix) => ix.entry(prefix).or_default().push(self.local.len() - 1),
            None if self.local.len() > SCAN_DECLARATIONS => {
                let mut ix: HashMap<&'a str, Vec<usize>> = HashMap::new();
                for (i, (p, _)) in self.local.iter().enumerate() {
                    ix.entry(*p).or_default().push(i);
                }
                self.index = Some(ix);
            }
            None => {}
        }
    }

    fn truncate(&mut self, mark: usize) {
        if let Some(ix) = &mut self.index {
            for (p, _) in &self.local[mark.min(self.local.len())..] {
                if let Some(v) = ix.get_mut(p) {
                    v.pop();
                }
            }
        }
        self.local.truncate(mark);
    }

    fn resolve(&mut self, prefix: &str) -> Option<Name> {
        if !self.local.is_empty() {
            let found = match &self.index {
                Some(ix) => ix.get(prefix).and_then(|v| v.last()).map(|&i| &self.local[i].1),
                None => self.local.iter().rev().find(|(p, _)| *p == prefix).map(|(_, n)| n),
            };
            if let Some(n) = found {
                return Some(n.clone());
            }
        }
        if prefix.is_empty() {
            return Some(self.base_default.clone());
        }
        if prefix == "xml" {
            return Some(Name::Static(ns::XML));
        }
        if let Some(n) = self.base_names.get(prefix) {
            return Some(n.clone());
        }
        let (bp, bn) = self.base.iter().rev().find(|(bp, _)| bp == prefix)?;
        let n = self.pooled(Cow::Borrowed(bn.as_str()));
        self.base_names.insert(bp.as_str(), n.clone());
        Some(n)
    }
}

/// Parse one complete element, resolving names against `base` bindings (prefix, namespace).
pub fn parse_fragment(text: &str, base: &[(String, String)], max_depth: usize) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(text);
    let base_default = intern(base.iter().rev().find(|(p, _)| p.is_empty()).map_or("", |(_, n)| n.as_str()));
    let mut scope =
        Scope { base, base_default, local: Vec::new(), index: None, base_names: HashMap::new(), pool: Vec::new(), pool_set: None };
    // Open elements, each with the length of `scope.local` before it.
    let mut stack: Vec<(Element, usize)> = Vec::with_capacity(4);
    loop {
        let ev = reader.read_event().map_err(map_qx)?;
        match ev {
            Event::Start(_) | Event::Empty(_) if stack.len() >= max_depth => {
                return Err(XmlError::TooDeep { limit: max_depth });
            }
            Event::Start(s) => {
                let mark = scope.mark();
                let el = start_element(text, &s, &mut scope)?;
                stack.push((el, mark));
            }
            Event::Empty(s) => {
                let mark = scope.mark();
                let el = start_element(text, &s, &mut scope)?;
                scope.truncate(mark);
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(Node::Element(el)),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let (mut el, mark) = stack.pop().ok_or_else(|| XmlError::NotWellFormed("unbalanced end tag".into()))?;
                // Give back what doubling left unused in a long child list.
                if el.children.capacity() > el.children.len() + 16 {
                    el.children.shrink_to_fit();
                }
                scope.truncate(mark);
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(Node::Element(el)),
                    None => return Ok(el),
                }
            }
            Event::Text(t) => {
                if let Some((top, _)) = stack.last_mut() {
                    push_text(top, &t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some((top, _)) = stack.last_mut() {
                    push_text(top, &c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref().map_err(map_qx)? {
                    Some(c) => c,
                    None => match &*r {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(XmlError::Restricted(format!("entity reference &{other};"))),
                    },
                };
                if !is_xml_char(ch) {
                    return Err(XmlError::NotWellFormed(format!("character reference to U+{:04X}", ch as u32)));
                }
                if let Some((top, _)) = stack.last_mut() {
                    let mut b = [0u8; 4];
                    push_text(top, ch.encode_utf8(&mut b));
                }
            }
            Event::Comment(_) => return Err(XmlError::Restricted("comment".into())),
            Event::PI(_) | Event::Decl(_) => return Err(XmlError::Restricted("processing instruction".into())),
            Event::DocType(_) => return Err(XmlError::Restricted("document type declaration".into())),
            Event::Eof => return Err(XmlError::NotWellFormed("element not closed".into())),
        }
    }
}

fn push_text(el: &mut Element, t: &str) {
    if t.is_empty() {
        return;
    }
    if let Some(Node::Text(last)) = el.children.last_mut() {
        last.push_str(t);
    } else {
        el.children.push(Node::Text(t.to_owned()));
    }
}

/// An attribute value, normalised (XML §3.3.3) and checked for illegal characters that a
/// character reference could smuggle in (raw bytes were checked already).
fn attr_value<'a>(a: &quick_xml::events::attributes::Attribute<'a>) -> Result<Cow<'a, str>, XmlError> {
    let v = a.normalized_value(XmlVersion::Implicit1_0).map_err(map_qx)?;
    if memchr(b'&', a.value.as_bytes()).is_some() && v.chars().any(|c| !is_xml_char(c)) {
        return Err(XmlError::NotWellFormed("illegal character in attribute value".into()));
    }
    Ok(v)
}

/// Attributes of one start tag, without quick-xml's own duplicate check (it compares each
/// name with every earlier one: quadratic in the attribute count). Duplicates are found by
/// [`Duplicates`] instead.
fn attributes<'a>(raw: &'a str, name_len: usize) -> quick_xml::events::attributes::Attributes<'a> {
    let mut a = quick_xml::events::attributes::Attributes::new(raw, name_len);
    a.with_checks(false);
    a
}

/// Duplicate detection for one start tag, linear in its attributes: the first few are kept
/// in place and scanned (most tags have a handful; no allocation), more are hashed.
struct Duplicates<'a, K> {
    inline: [K; INLINE_KEYS],
    n: usize,
    set: Option<std::collections::HashSet<K>>,
    _p: std::marker::PhantomData<&'a ()>,
}

const INLINE_KEYS: usize = 12;

impl<K: std::hash::Hash + Eq + Copy + Default> Duplicates<'_, K> {
    fn new() -> Self {
        Duplicates { inline: [K::default(); INLINE_KEYS], n: 0, set: None, _p: std::marker::PhantomData }
    }

    /// False when `k` was seen before.
    fn insert(&mut self, k: K) -> bool {
        if let Some(set) = &mut self.set {
            return set.insert(k);
        }
        if self.inline[..self.n].contains(&k) {
            return false;
        }
        if self.n < INLINE_KEYS {
            self.inline[self.n] = k;
            self.n += 1;
        } else {
            let mut set: std::collections::HashSet<K> = self.inline.iter().copied().collect();
            set.insert(k);
            self.set = Some(set);
        }
        true
    }
}

fn attr_err(e: quick_xml::events::attributes::AttrError) -> XmlError {
    XmlError::NotWellFormed(format!("attribute: {e}"))
}

fn start_element<'a>(text: &'a str, s: &BytesStart<'_>, scope: &mut Scope<'_, 'a>) -> Result<Element, XmlError> {
    let raw: &'a str = reborrow(text, s);
    let name_len = s.name().0.len();
    // Namespace declarations first (they apply to this element's own name); most elements
    // have none, so look before parsing the attributes twice.
    static XMLNS: std::sync::LazyLock<memchr::memmem::Finder<'static>> = std::sync::LazyLock::new(|| memchr::memmem::Finder::new("xmlns"));
    let declares = XMLNS.find(&raw.as_bytes()[name_len..]).is_some();
    let mut raw_names: Duplicates<'a, &'a str> = Duplicates::new();
    if declares {
        for a in attributes(raw, name_len) {
            let a = a.map_err(attr_err)?;
            let key: &'a str = a.key.0;
            if key == "xmlns" {
                let v = attr_value(&a)?;
                let n = scope.pooled(v);
                scope.declare("", n);
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                let v = attr_value(&a)?;
                if p.is_empty() || p.contains(':') {
                    return Err(XmlError::NotWellFormed(format!("{:?} is not a namespace prefix", clip(p, 64))));
                }
                if v.is_empty() {
                    return Err(XmlError::NotWellFormed(format!("empty namespace for prefix {}", clip(p, 64))));
                }
                let n = scope.pooled(v);
                scope.declare(p, n);
            } else {
                continue;
            }
            if !raw_names.insert(key) {
                return Err(XmlError::NotWellFormed(format!("duplicate attribute {}", clip(key, 64))));
            }
        }
    }
    let (prefix, local) = qname(s.name().0)?;
    let ns = scope.resolve(prefix).ok_or_else(|| unbound(prefix))?;
    let mut el = Element { name: intern(local), ns, ..Default::default() };
    // Pooled namespaces: equal ones share an address, so the address stands for the name.
    let mut expanded: Duplicates<'_, (usize, &'a str)> = Duplicates::new();
    for a in attributes(raw, name_len) {
        let a = a.map_err(attr_err)?;
        let k: &'a str = a.key.0;
        if declares && (k == "xmlns" || k.starts_with("xmlns:")) {
            continue;
        }
        if !raw_names.insert(k) {
            return Err(XmlError::NotWellFormed(format!("duplicate attribute {}", clip(k, 64))));
        }
        let (p, l) = qname(k)?;
        match p {
            "" => el.attrs.push((intern(l), attr_value(&a)?.into_owned())),
            "xml" => el.attrs.push((intern(k), attr_value(&a)?.into_owned())),
            p => {
                // Namespaces in XML §6.3: two prefixes bound to one namespace make a duplicate.
                let ans = scope.resolve(p).ok_or_else(|| unbound(p))?;
                if !expanded.insert((ans.as_ptr() as usize, l)) {
                    return Err(XmlError::NotWellFormed(format!("duplicate attribute {}", clip(k, 64))));
                }
                el.ns_attrs.push((ans, intern(l), attr_value(&a)?.into_owned()));
            }
        }
    }
    Ok(el)
}

/// Read a start tag's attributes: namespace declarations go into `scope`, the rest are
/// returned (raw qualified name, normalised value). Used for the stream header.
fn collect_attrs<'a>(
    text: &'a str,
    s: &BytesStart<'_>,
    scope: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<Vec<(&'a str, Cow<'a, str>)>, XmlError> {
    let mut out = Vec::new();
    let raw: &'a str = reborrow(text, s);
    let mut names: Duplicates<'a, &'a str> = Duplicates::new();
    for a in attributes(raw, s.name().0.len()) {
        let a = a.map_err(attr_err)?;
        let key: &'a str = a.key.0;
        if !names.insert(key) {
            return Err(XmlError::NotWellFormed(format!("duplicate attribute {}", clip(key, 64))));
        }
        let value = attr_value(&a)?;
        if key == "xmlns" {
            scope.push(("", value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(XmlError::NotWellFormed(format!("empty namespace for prefix {p}")));
            }
            scope.push((p, value));
        } else {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// Re-borrow `part`, a slice of `text`, with `text`'s lifetime (the slice reader's events
/// borrow from the input; the accessor methods shorten that lifetime to the event's).
fn reborrow<'a>(text: &'a str, part: &str) -> &'a str {
    let off = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    match text.get(off..off + part.len()) {
        Some(s) if s.as_ptr() == part.as_ptr() => s,
        _ => unreachable!("slice reader events borrow from the input"),
    }
}

fn split_qname(q: &str) -> (&str, &str) {
    match memchr(b':', q.as_bytes()) {
        Some(i) => (&q[..i], &q[i + 1..]),
        None => ("", q),
    }
}

/// A QName (Namespaces in XML §4): `local` or `prefix:local`, neither part empty nor holding
/// another colon. Anything else could not be written back under the same name.
fn qname(q: &str) -> Result<(&str, &str), XmlError> {
    let (p, l) = split_qname(q);
    if !is_ncname(l) || (!p.is_empty() && !is_ncname(p)) || (p.is_empty() && q.starts_with(':')) {
        return Err(XmlError::NotWellFormed(format!("{:?} is not a qualified name", clip(q, 64))));
    }
    Ok((p, l))
}

/// XML 1.0 `Name` without colons (Namespaces in XML `NCName`): a letter, `_` or a non-ASCII
/// name character first, then also digits, `-` and `.`. quick-xml takes whatever runs up
/// to whitespace as a name, so `<a<b>` would otherwise be an element named `a<b`.
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return false };
    let start = |c: char| c.is_ascii_alphabetic() || c == '_' || is_name_start_nonascii(c);
    start(first) && chars.all(|c| start(c) || c.is_ascii_digit() || c == '-' || c == '.' || is_name_nonascii(c))
}

/// XML 1.0 (5th ed.) §2.3 `NameStartChar` beyond ASCII.
fn is_name_start_nonascii(c: char) -> bool {
    matches!(c, '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 (5th ed.) §2.3 `NameChar` beyond ASCII and `NameStartChar`.
fn is_name_nonascii(c: char) -> bool {
    matches!(c, '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn resolve_owned<'s>(scope: &'s [(String, String)], prefix: &str) -> Option<&'s str> {
    if prefix == "xml" {
        return Some(ns::XML);
    }
    scope.iter().rev().find(|(p, _)| p == prefix).map(|(_, n)| n.as_str())
}

fn resolve_cow<'s>(scope: &'s [(&str, Cow<'_, str>)], prefix: &str) -> Option<&'s str> {
    if prefix == "xml" {
        return Some(ns::XML);
    }
    match scope.iter().rev().find(|(p, _)| *p == prefix) {
        Some((_, n)) => Some(n),
        // No default namespace declared: the null namespace.
        None if prefix.is_empty() => Some(""),
        None => None,
    }
}

fn unbound(prefix: &str) -> XmlError {
    XmlError::NotWellFormed(format!("namespace prefix '{}' is not declared", clip(prefix, 64)))
}

fn map_qx(e: quick_xml::Error) -> XmlError {
    match e {
        quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, name)) => {
            XmlError::Restricted(format!("entity reference &{name};"))
        }
        other => XmlError::NotWellFormed(other.to_string()),
    }
}

/// XML 1.0 `Char` production (§2.2).
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Raw control characters and U+FFFE/U+FFFF (UTF-8 `EF BF BE`/`EF BF BF`) are not XML
/// characters (§2.2). The control check is branch-free per byte so it vectorises; the
/// second looks only where a 0xEF byte is.
fn check_chars(bytes: &[u8]) -> Result<(), XmlError> {
    let mut bad = false;
    for chunk in bytes.chunks(64) {
        bad |= chunk.iter().fold(false, |acc, &b| acc | ((b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r')));
    }
    if bad {
        return Err(XmlError::NotWellFormed("control character in XML".into()));
    }
    for i in memchr::memchr_iter(0xEF, bytes) {
        if bytes.get(i + 1) == Some(&0xBF) && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) {
            return Err(XmlError::NotWellFormed("U+FFFE or U+FFFF in XML".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' to='b.test' from='a.test' version='1.0'>";

    fn frames(input: &[u8], chunk: usize) -> Result<Vec<Frame>, XmlError> {
        let mut f = Framer::new(1 << 16, 32);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            f.feed(c);
            while let Some(fr) = f.next_frame()? {
                out.push(fr);
            }
        }
        Ok(out)
    }

    fn after_header(s: &str) -> Result<Vec<Frame>, XmlError> {
        frames(format!("{HEADER}{s}").as_bytes(), 4096)
    }

    #[test]
    fn header_and_stanzas_any_chunking() {
        let body = "<message to='x@b.test' from='y@a.test' id='1'><body>h\u{e9}llo \u{1F600} &amp; &#x41;</body></message>\n \
                    <db:result from='a.test' to='b.test'>abc</db:result><iq type='get'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>";
        let input = format!("{HEADER}{body}");
        let whole = frames(input.as_bytes(), input.len()).unwrap();
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(frames(input.as_bytes(), chunk).unwrap(), whole, "chunk size {chunk}");
        }
        assert_eq!(whole.len(), 5);
        let Frame::StreamOpen(h) = &whole[0] else { panic!() };
        assert_eq!((h.from.as_deref(), h.to.as_deref(), h.version.as_deref()), (Some("a.test"), Some("b.test"), Some("1.0")));
        assert_eq!(h.ns, ns::STREAMS);
        assert_eq!(h.default_ns.as_deref(), Some(ns::SERVER));
        assert!(h.dialback_declared);
        let Frame::Element(m) = &whole[1] else { panic!() };
        assert!(m.is("message", ns::SERVER));
        assert_eq!(m.get_child("body", ns::SERVER).unwrap().text_content(), "h\u{e9}llo \u{1F600} & A");
        let Frame::Element(d) = &whole[2] else { panic!() };
        assert!(d.is("result", ns::DIALBACK));
        let Frame::Element(iq) = &whole[3] else { panic!() };
        assert!(iq.get_child("ping", ns::PING).is_some());
        assert_eq!(whole[4], Frame::StreamClose);
    }

    #[test]
    fn split_inside_utf8_char() {
        let input = format!("{HEADER}<message><body>\u{1F600}\u{e9}</body></message>");
        let bytes = input.as_bytes();
        let cut = input.find('\u{1F600}').unwrap() + 2; // inside the 4-byte sequence
        let mut f = Framer::new(1 << 16, 32);
        f.feed(&bytes[..cut]);
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamOpen(_)))));
        assert_eq!(f.next_frame(), Ok(None));
        f.feed(&bytes[cut..]);
        let Ok(Some(Frame::Element(m))) = f.next_frame() else { panic!() };
        assert_eq!(m.elements().next().unwrap().text_content(), "\u{1F600}\u{e9}");
    }

    #[test]
    fn restricted_xml() {
        for bad in [
            "<!-- hi -->",
            "<message><!-- hi --></message>",
            "<?pi x?>",
            "<message><?pi x?></message>",
            "<!DOCTYPE x>",
            "<message><body>&ent;</body></message>",
            "<message a='&ent;'/>",
        ] {
            assert!(matches!(after_header(bad), Err(XmlError::Restricted(_))), "{bad}: {:?}", after_header(bad));
        }
        assert!(matches!(frames(b"<!DOCTYPE stream><stream:stream>", 4096), Err(XmlError::Restricted(_))));
    }

    #[test]
    fn not_well_formed() {
        for bad in [
            &b"<message><body></message></x>"[..],
            b"<message a='1' a='2'/>",
            b"<x:message/>",
            b"<message><body>\xff\xfe</body></message>",
            b"<message><body>&#x1;</body></message>",
            b"<message><body>\x01</body></message>",
            b"<message a=noquote/>",
            b"<:p:c/>",
            "<message a='\u{FFFF}'/>".as_bytes(),
            "<message><body>\u{FFFE}</body></message>".as_bytes(),
            b"<message<body/>",
            b"<message a<b='1'/>",
            b"<1message/>",
            b"<message><p:q:c xmlns:p='urn:x'/></message>",
            b"<message :a='1'/>",
            b"</wrong>",
        ] {
            let mut input = HEADER.as_bytes().to_vec();
            input.extend_from_slice(bad);
            let r = frames(&input, 4096);
            assert!(matches!(r, Err(XmlError::NotWellFormed(_))), "{}: {r:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn text_between_stanzas_is_bad_format() {
        assert_eq!(after_header("hello<message/>"), Err(XmlError::TextAtTopLevel));
        // Whitespace keepalives are fine.
        assert_eq!(after_header(" \n\t <message/> ").unwrap().len(), 2);
    }

    #[test]
    fn size_and_depth_limits() {
        let mut f = Framer::new(1024, 8);
        f.feed(HEADER.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamOpen(_)))));
        f.feed(b"<message><body>");
        assert_eq!(f.next_frame(), Ok(None));
        f.feed(&[b'a'; 2000]);
        assert_eq!(f.next_frame(), Err(XmlError::TooLarge { limit: 1024 }));
        // An unterminated attribute value is bounded too.
        let mut f = Framer::new(1024, 8);
        f.feed(HEADER.as_bytes());
        f.next_frame().unwrap();
        f.feed(b"<message a='");
        for _ in 0..10 {
            f.feed(&[b'x'; 200]);
            if f.next_frame().is_err() {
                break;
            }
        }
        assert_eq!(f.next_frame(), Err(XmlError::TooLarge { limit: 1024 }));
        let deep = "<a>".repeat(20);
        let mut f = Framer::new(1 << 16, 8);
        f.feed(format!("{HEADER}{deep}").as_bytes());
        f.next_frame().unwrap();
        assert_eq!(f.next_frame(), Err(XmlError::TooDeep { limit: 8 }));
    }

    /// At the default limit (512 KiB), read as a connection reads (2 KiB into the framer's
    /// own buffer): a 500 KiB stanza passes; a 600 KiB one is refused once the limit is
    /// passed, the buffer never having grown much past the limit (doubling alone took it
    /// to 1 MiB); after the stanza the buffer is given back.
    #[test]
    fn the_default_limit_passes_500_kib_refuses_600_kib_and_bounds_the_buffer() {
        // `limits.max_stanza_size`'s default (config's builtin_default test holds it there).
        let limit = 512 * 1024;
        let stanza = |kib: usize| {
            let mut s = b"<message><body>".to_vec();
            s.extend(std::iter::repeat_n(b'a', kib * 1024));
            s.extend_from_slice(b"</body></message>");
            s
        };
        let read = |f: &mut Framer, bytes: &[u8]| -> (Result<Option<Frame>, XmlError>, usize) {
            let mut peak = 0;
            for chunk in bytes.chunks(2048) {
                f.read_buf(2048).extend_from_slice(chunk);
                peak = peak.max(f.capacity());
                match f.next_frame() {
                    Ok(None) => {}
                    other => return (other, peak),
                }
            }
            (Ok(None), peak)
        };
        let mut f = Framer::new(limit, 32);
        f.feed(HEADER.as_bytes());
        f.next_frame().unwrap();
        let (r, peak) = read(&mut f, &stanza(500));
        assert!(matches!(r, Ok(Some(Frame::Element(ref e))) if e.name.as_ref() == "message"), "{r:?}");
        assert!(peak <= limit + 8 * 1024, "peak buffer {peak}");
        f.trim();
        assert_eq!(f.capacity(), 0, "given back once consumed");
        let (r, peak) = read(&mut f, &stanza(600));
        assert_eq!(r, Err(XmlError::TooLarge { limit }));
        assert!(peak <= limit + 8 * 1024, "peak buffer {peak}");
    }

    #[test]
    fn many_stanzas_keep_buffer_small() {
        let mut f = Framer::new(1 << 16, 16);
        f.feed(HEADER.as_bytes());
        f.next_frame().unwrap();
        for _ in 0..10_000 {
            f.feed(b"<message to='a@b' from='c@d'><body>x</body></message>");
            assert!(matches!(f.next_frame(), Ok(Some(Frame::Element(_)))));
        }
        assert!(f.capacity() < 64 * 1024);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn cdata_and_prefixed_elements() {
        let r = after_header("<message><body><![CDATA[<not> & markup]]></body><x:y xmlns:x='urn:x'><x:z/></x:y></message>").unwrap();
        let Frame::Element(m) = &r[1] else { panic!() };
        assert_eq!(m.elements().next().unwrap().text_content(), "<not> & markup");
        let y = m.get_child("y", "urn:x").unwrap();
        assert!(y.get_child("z", "urn:x").is_some());
    }

    #[test]
    fn expanded_duplicate_attributes_are_not_well_formed() {
        // Namespaces in XML §6.3: two prefixes for one namespace name the same attribute.
        let r = after_header("<message xmlns:p='urn:x' xmlns:q='urn:x' p:a='1' q:a='2'/>");
        assert!(matches!(r, Err(XmlError::NotWellFormed(ref m)) if m.contains("duplicate")), "{r:?}");
        let many: String = (0..100).map(|i| format!(" a{i}='x'")).collect();
        let r = after_header(&format!("<message{many} a7='y'/>"));
        assert!(matches!(r, Err(XmlError::NotWellFormed(ref m)) if m.contains("duplicate attribute a7")), "{r:?}");
        assert!(after_header(&format!("<message{many}/>")).is_ok());
    }

    #[test]
    fn namespace_declared_once_is_shared_not_copied() {
        let ns_ = format!("urn:{}", "n".repeat(10_000));
        let mut s = format!("<message xmlns:p='{ns_}' p:x='1'>");
        for _ in 0..500 {
            s.push_str("<p:c/>");
        }
        s.push_str("</message>");
        let r = after_header(&s).unwrap();
        let Frame::Element(m) = &r[1] else { panic!() };
        let ptr = |n: &Name| n.as_ptr();
        let first = ptr(&m.elements().next().unwrap().ns);
        assert!(m.elements().all(|c| ptr(&c.ns) == first && c.ns == ns_.as_str()));
        assert_eq!(ptr(&m.ns_attrs[0].0), first);
        // Written back, the namespace is declared once, not once per child.
        let mut out = String::new();
        super::super::writer::write_top(&mut out, m);
        assert!(out.len() < 2 * s.len(), "{} bytes written for {} read", out.len(), s.len());
        let back = after_header(&out).unwrap();
        assert_eq!(&back[1], &r[1]);
    }

    #[test]
    fn writer_roundtrips_hostile_values() {
        let hostile = "'\"<>&\u{e9}\t\n\r]]>&amp;";
        let el = Element::new("message", ns::SERVER)
            .attr("to", hostile)
            .attr("from", "a@b")
            .child(Element::new("body", ns::SERVER).text(hostile))
            .child(Element::new("x", "urn:'evil\"").text("</message><message>"));
        let mut s = String::new();
        super::super::writer::write_top(&mut s, &el);
        let r = after_header(&s).unwrap();
        let Frame::Element(back) = &r[1] else { panic!() };
        assert_eq!(back, &el);
    }

    /// The writer's size bound, which lets the XEP-0478 check skip serialising most
    /// stanzas, is never below what is written: escapes, inline and hoisted namespaces,
    /// namespaced attributes, prefixed top elements, many levels.
    #[test]
    fn the_writers_length_bound_is_an_upper_bound() {
        use super::super::writer::{len_bound, write_top};
        let hostile = "'\"<>&\u{e9}\t\n\r]]>&amp;";
        let mut many = format!("<message xmlns:p='urn:{}' p:x='{}' xmlns:q='urn:q'>", "n".repeat(300), "&amp;".repeat(50));
        for i in 0..300 {
            many.push_str(&format!("<p:c q:a='{i}'><q:d xmlns='' b='&lt;'>&amp;&#13;</q:d></p:c>"));
        }
        many.push_str("</message>");
        let Frame::Element(parsed) = after_header(&many).unwrap().remove(1) else { panic!() };
        let deep = (0..30).fold(Element::new("leaf", "urn:x").text(hostile), |inner, i| {
            Element::new("n", if i % 2 == 0 { "urn:a" } else { "urn:b" }).child(inner)
        });
        let cases = vec![
            Element::new("message", ns::SERVER).attr("to", "a@b").attr("from", "c@d").child(Element::new("body", ns::SERVER).text("hi")),
            Element::new("message", ns::SERVER)
                .attr("to", hostile)
                .child(Element::new("body", ns::SERVER).text(hostile))
                .child(Element::new("x", "urn:'evil\"").text("</message>")),
            Element::new("error", ns::STREAMS).child(Element::new("reset", ns::STREAM_ERRORS)),
            Element::new("result", ns::DIALBACK).attr("to", "a").text("k"),
            Element::new("iq", ns::SERVER),
            deep,
            parsed,
        ];
        for el in &cases {
            let mut out = String::new();
            write_top(&mut out, el);
            assert!(len_bound(el) >= out.len(), "bound {} < {} written: {}", len_bound(el), out.len(), &out[..out.len().min(200)]);
        }
    }
}
