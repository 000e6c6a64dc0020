//! A stream's transcript as kept in memory, and the budget all transcripts share.
//!
//! An idle stream keeps its negotiation transcript for its whole life (it is what tells the
//! operator how the stream was verified), so its form is what memory per stream is made of:
//! the lines are records in one byte buffer (no allocation per line), and while the stream
//! is quiet and nobody watches it the buffer is packed — LZ4 against a dictionary of the
//! text every s2s negotiation repeats (stream headers, features, STARTTLS, dialback), which
//! keeps ~1.5 KiB of negotiation in a few hundred bytes. A line recorded later unpacks it;
//! reading decodes without unpacking.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::events::TranscriptLine;

/// Bytes a transcript line is charged beyond its text and key (its record header and the
/// buffer's slack); what the `[limits] transcript_*` budgets count.
pub const LINE_OVERHEAD: usize = 32;

/// Bytes a line is charged against the budgets.
pub fn line_size(l: &TranscriptLine) -> usize {
    l.text.len() + l.key.as_ref().map_or(0, String::len) + LINE_OVERHEAD
}

/// A record: time (u64), direction (u8), text length (u32), key length (u32; `u32::MAX`: no
/// key), all little-endian, then the text and the key.
const HEADER: usize = 8 + 1 + 4 + 4;
const NO_KEY: u32 = u32::MAX;

/// The ring's first allocation: what a dialback or SASL negotiation records.
const FIRST_BUFFER: usize = 2048;

/// What every s2s negotiation says, as the packing dictionary: LZ4 finds the repeats of a
/// transcript in it (a stream header, the features, `<proceed/>`) instead of storing them.
/// Changing it makes transcripts packed before unreadable, which is fine: they live only in
/// memory.
const DICTIONARY: &[u8] = concat!(
    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/><stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    "certificate verdict: valid for certificate verdict: self-signed certificate verdict: untrusted",
    "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' xmlns:db='jabber:server:dialback' version='1.0' xml:lang='en' id='",
    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>",
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth><success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    "TLS established: TLS 1.2 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384; TLS 1.3 TLS13_AES_128_GCM_SHA256; TLS13_CHACHA20_POLY1305_SHA256;",
    "TLS established: TLS 1.3 TLS13_AES_256_GCM_SHA384; peer certificate: CN=",
    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
    "<db:verify from='' to='' id='' type='valid'/>[dialback key hidden]</db:verify>",
    "<db:result from='' to='' type='valid'/>[dialback key hidden]</db:result>",
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0' from='",
    "' to='",
    "' id='",
    "'>",
)
.as_bytes();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    In = 0,
    Out = 1,
    Note = 2,
}

impl Dir {
    fn of(s: &str) -> Dir {
        match s {
            "in" => Dir::In,
            "out" => Dir::Out,
            _ => Dir::Note,
        }
    }

    fn from_byte(b: u8) -> Dir {
        match b {
            0 => Dir::In,
            1 => Dir::Out,
            _ => Dir::Note,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
            Dir::Note => "note",
        }
    }
}

/// One stream's transcript: its lines as records, open (a ring) or packed, and what they
/// are charged against the budgets.
#[derive(Debug, Default)]
pub struct Transcript {
    ring: VecDeque<u8>,
    /// The records, compressed; `ring` is empty while this is set.
    packed: Option<Packed>,
    lines: usize,
    /// What the lines are charged ([`line_size`] summed).
    pub bytes: usize,
}

#[derive(Debug)]
struct Packed {
    data: Box<[u8]>,
    len: usize,
}

impl Transcript {
    pub fn len(&self) -> usize {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Add a line; what lines that could not be read back were charged (released by the
    /// caller: 0 unless a packed transcript was unreadable).
    #[must_use]
    pub fn push(&mut self, line: &TranscriptLine) -> usize {
        let lost = self.unpack();
        if self.ring.capacity() == 0 {
            // A negotiation's size at once: no trail of outgrown buffers per stream.
            self.ring.reserve(FIRST_BUFFER);
        }
        let key = line.key.as_deref();
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(&line.time_ms.to_le_bytes());
        h[8] = Dir::of(&line.dir) as u8;
        h[9..13].copy_from_slice(&len32(line.text.len()).to_le_bytes());
        h[13..].copy_from_slice(&key.map_or(NO_KEY, |k| len32(k.len())).to_le_bytes());
        self.ring.extend(h);
        self.ring.extend(line.text.as_bytes());
        if let Some(k) = key {
            self.ring.extend(k.as_bytes());
        }
        self.lines += 1;
        self.bytes += line_size(line);
        lost
    }

    /// Drop the oldest line; what it was charged (with whatever could not be read back).
    pub fn pop_front(&mut self) -> usize {
        let lost = self.unpack();
        if self.lines == 0 {
            return lost;
        }
        let mut h = [0u8; HEADER];
        for (d, s) in h.iter_mut().zip(self.ring.iter()) {
            *d = *s;
        }
        let (text, key) = lengths(&h);
        self.ring.drain(..HEADER + text + key.unwrap_or(0));
        self.lines -= 1;
        let charged = text + key.unwrap_or(0) + LINE_OVERHEAD;
        self.bytes -= charged;
        if self.lines == 0 {
            self.ring = VecDeque::new();
        }
        charged + lost
    }

    /// The lines, decoded (the transcript stays as it is kept).
    pub fn lines(&self) -> Vec<TranscriptLine> {
        let records: Vec<u8> = match &self.packed {
            Some(p) => match lz4_flex::block::decompress_with_dict(&p.data, p.len, DICTIONARY) {
                Ok(r) => r,
                Err(e) => {
                    // Packed by this process from records it wrote: cannot happen short of a bug.
                    tracing::error!("transcript unreadable: {e}");
                    return Vec::new();
                }
            },
            None => self.ring.iter().copied().collect(),
        };
        decode(&records)
    }

    /// Pack the records (the stream is quiet and nobody watches it).
    pub fn pack(&mut self) {
        if self.packed.is_some() || self.ring.is_empty() {
            return;
        }
        let records = self.ring.make_contiguous();
        let data = lz4_flex::block::compress_with_dict(records, DICTIONARY).into_boxed_slice();
        self.packed = Some(Packed { data, len: records.len() });
        self.ring = VecDeque::new();
    }

    /// Back to records; if the packed form cannot be read (a bug: it was packed here), the
    /// transcript starts over and what its lines were charged is returned for release.
    fn unpack(&mut self) -> usize {
        let Some(p) = self.packed.take() else { return 0 };
        match lz4_flex::block::decompress_with_dict(&p.data, p.len, DICTIONARY) {
            Ok(r) => {
                self.ring = r.into();
                0
            }
            Err(e) => {
                tracing::error!("transcript unreadable, starting it over: {e}");
                self.lines = 0;
                std::mem::take(&mut self.bytes)
            }
        }
    }

    /// Whether the transcript is packed now.
    #[cfg(test)]
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Bytes of memory the records take (packed or not).
    #[cfg(test)]
    pub fn footprint(&self) -> usize {
        self.packed.as_ref().map_or(self.ring.capacity(), |p| p.data.len())
    }
}

/// Text and key lengths from a record header (lines are cut to the budget, far below 4 GiB).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX - 1)
}

fn lengths(h: &[u8; HEADER]) -> (usize, Option<usize>) {
    let text = u32::from_le_bytes(h[9..13].try_into().unwrap()) as usize;
    let key = u32::from_le_bytes(h[13..].try_into().unwrap());
    (text, (key != NO_KEY).then_some(key as usize))
}

fn decode(mut r: &[u8]) -> Vec<TranscriptLine> {
    let mut out = Vec::new();
    while r.len() >= HEADER {
        let h: &[u8; HEADER] = r[..HEADER].try_into().unwrap();
        let (text_len, key_len) = lengths(h);
        let end = HEADER + text_len + key_len.unwrap_or(0);
        if r.len() < end {
            break;
        }
        let text = String::from_utf8_lossy(&r[HEADER..HEADER + text_len]).into_owned();
        let key = key_len.map(|_| String::from_utf8_lossy(&r[HEADER + text_len..end]).into_owned());
        out.push(TranscriptLine {
            time_ms: u64::from_le_bytes(h[..8].try_into().unwrap()),
            dir: Dir::from_byte(h[8]).name().to_owned(),
            text,
            key,
        });
        r = &r[end..];
    }
    out
}

/// Transcript limits: per stream (lines and bytes) and for all streams together, live and
/// recently closed (`[limits] transcript_lines`, `transcript_bytes`, `transcript_total_bytes`).
///
/// What is charged is each line's text and key and [`LINE_OVERHEAD`] (more than its record
/// header), so the records of all transcripts stay within `transcript_total_bytes`; memory
/// can exceed the charge only by an open ring's unused capacity (it grows by doubling, from
/// `FIRST_BUFFER`: at most twice the charge plus 2 KiB per stream still negotiating or
/// watched) — packed transcripts take less than they are charged. The rows' own strings
/// are not charged here: a row keeps a certificate's names clipped (`compact_cert`), and
/// closed rows have their own byte budget (`limits.closed_streams_bytes`).
#[derive(Debug)]
pub struct TranscriptBudget {
    pub(super) lines: usize,
    pub(super) per_stream: usize,
    pub(super) total: usize,
    used: AtomicUsize,
    /// Transcripts of recently closed streams (packed), oldest first.
    closed: Mutex<VecDeque<(String, Transcript)>>,
}

impl TranscriptBudget {
    pub fn new(lines: usize, per_stream: usize, total: usize) -> Self {
        TranscriptBudget { lines, per_stream, total, used: AtomicUsize::new(0), closed: Mutex::new(VecDeque::new()) }
    }

    /// Bytes held by all transcripts now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(super) fn reserve(&self, n: usize) -> bool {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u + n <= self.total).then_some(u + n)).is_ok()
    }

    pub(super) fn release(&self, n: usize) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
    }

    /// Drop the oldest closed stream's transcript; false if there is none.
    pub(super) fn evict_closed(&self) -> bool {
        let Some((_, t)) = self.closed.lock().unwrap().pop_front() else { return false };
        self.release(t.bytes);
        true
    }

    pub(super) fn keep_closed(&self, id: &str, mut t: Transcript, keep: usize) {
        if keep == 0 {
            self.release(t.bytes);
            return;
        }
        t.pack();
        let mut c = self.closed.lock().unwrap();
        while c.len() >= keep {
            let Some((_, old)) = c.pop_front() else { break };
            self.release(old.bytes);
        }
        c.push_back((id.to_owned(), t));
    }

    pub(super) fn closed_transcript(&self, id: &str) -> Option<Vec<TranscriptLine>> {
        self.closed.lock().unwrap().iter().find(|(i, _)| i == id).map(|(_, t)| t.lines())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(dir: &str, text: &str, key: Option<&str>) -> TranscriptLine {
        TranscriptLine { time_ms: 1_700_000_000_123, dir: dir.into(), text: text.into(), key: key.map(Into::into) }
    }

    /// A dialback negotiation as the bench's inbound streams record it.
    fn negotiation(peer: &str) -> Vec<TranscriptLine> {
        let header_in = format!(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0' from='{peer}' to='a.example'>"
        );
        let header_out = |id: &str| {
            format!(
                "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0' from='a.example' to='{peer}' id='{id}'>"
            )
        };
        vec![
            line("in", &header_in, None),
            line("out", &header_out("0f4c2b9e8a7d6c5b4a39281706f5e4d3"), None),
            line(
                "out",
                "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
                None,
            ),
            line("in", "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", None),
            line("out", "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", None),
            line(
                "note",
                &format!(
                    "TLS established: TLS 1.3 TLS13_AES_256_GCM_SHA384; peer certificate: CN={peer} (issuer CN=Example CA, names {peer})"
                ),
                None,
            ),
            line("note", "certificate verdict: self-signed", None),
            line("in", &header_in, None),
            line("out", &header_out("9a8b7c6d5e4f30211203f4e5d6c7b8a9"), None),
            line("out", "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>", None),
            line(
                "in",
                &format!("<db:result from='{peer}' to='a.example'>[dialback key hidden]</db:result>"),
                Some("37c69b1cf07a3f67c04a5ef5902fa5114f2c169ae9c3e4d6b6ec3e1f81d0f3a1"),
            ),
            line("out", &format!("<db:result from='a.example' to='{peer}' type='valid'/>"), None),
        ]
    }

    #[test]
    fn lines_read_back_as_recorded_open_and_packed() {
        let lines = negotiation("b.example");
        let mut t = Transcript::default();
        for l in &lines {
            let _ = t.push(l);
        }
        assert_eq!(t.lines(), lines);
        assert_eq!(t.bytes, lines.iter().map(line_size).sum::<usize>());
        t.pack();
        assert!(t.is_packed());
        assert_eq!(t.lines(), lines, "reading a packed transcript");
        // A later line unpacks it; the order and the charges stay.
        let more = line("in", "<iq type='get' id='p1' from='b.example' to='a.example'><ping xmlns='urn:xmpp:ping'/></iq>", None);
        let _ = t.push(&more);
        assert!(!t.is_packed());
        let mut all = lines.clone();
        all.push(more);
        assert_eq!(t.lines(), all);
        // The oldest go first; a packed transcript pops the same way.
        t.pack();
        let first = t.pop_front();
        assert_eq!(first, line_size(&all[0]));
        assert_eq!(t.lines(), all[1..].to_vec());
        while t.pop_front() > 0 {}
        assert!(t.is_empty() && t.lines().is_empty() && t.bytes == 0 && t.footprint() == 0);
    }

    #[test]
    fn an_unreadable_packed_transcript_gives_its_charges_back() {
        let lines = negotiation("b.example");
        let mut t = Transcript::default();
        for l in &lines {
            assert_eq!(t.push(l), 0);
        }
        let charged = t.bytes;
        t.pack();
        t.packed.as_mut().unwrap().data = vec![0xff; 8].into_boxed_slice();
        assert_eq!(t.pop_front(), charged, "everything it was charged, for the budget");
        assert!(t.is_empty() && t.bytes == 0);
        // And through a push: the new line stays, the lost ones are returned.
        for l in &lines {
            let _ = t.push(l);
        }
        t.pack();
        t.packed.as_mut().unwrap().data = vec![0xff; 8].into_boxed_slice();
        assert_eq!(t.push(&lines[0]), charged);
        assert_eq!((t.len(), t.lines()), (1, vec![lines[0].clone()]));
    }

    #[test]
    fn a_packed_negotiation_takes_a_fraction_of_its_text() {
        let lines = negotiation("b42.example");
        let text: usize = lines.iter().map(|l| l.text.len() + l.key.as_ref().map_or(0, String::len)).sum();
        let mut t = Transcript::default();
        for l in &lines {
            let _ = t.push(l);
        }
        t.pack();
        // What is kept per idle stream: measured 1/4 of the text with this dictionary.
        assert!(t.footprint() * 3 < text, "{} packed bytes for {text} bytes of text", t.footprint());
    }

    #[test]
    fn empty_lines_keys_and_non_ascii_text_survive_packing() {
        let mut t = Transcript::default();
        let odd = [line("note", "", None), line("in", "ünïcödé ✓ \u{10FFFF}", Some("")), line("weird-dir", "x", None)];
        for l in &odd {
            let _ = t.push(l);
        }
        t.pack();
        let back = t.lines();
        assert_eq!(back[0], odd[0]);
        assert_eq!(back[1], odd[1]);
        assert_eq!(back[2].dir, "note", "an unknown direction reads as a note");
    }
}
