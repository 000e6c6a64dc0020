//! The bodies of the fuzz targets (`fuzz/`), kept in the library so `cargo test` replays
//! their corpora on stable (tests/fuzz_corpus.rs). Each takes arbitrary bytes and checks
//! the properties that must hold for any input: no panic, and output bounded by input.

use crate::xml::{Element, Frame, Framer, framer::parse_fragment, writer::write_top};

/// How much larger than the frame its re-serialisation may be (namespaces declared once
/// by the writer; a few bytes of prefix per element).
pub const WRITE_FACTOR: usize = 4;

/// The heap one input may take at its peak while [`framer`] handles it: a constant times
/// its size (the parsed tree, its written form and the framer's buffer) plus a fixed base.
pub fn heap_budget(input: usize) -> usize {
    96 * input + (1 << 20)
}

/// Framer: bytes in chunks chosen by the first byte; every frame parsed is checked (header
/// rules, dialback and stanza views, the transcript indenter), written back and re-parsed
/// to the same tree, and the written form stays within [`WRITE_FACTOR`] of the wire form.
pub fn framer(data: &[u8]) {
    let Some((&chunk, input)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 64) + 1;
    let mut f = Framer::new(64 * 1024, 16);
    let mut scope: Vec<(String, String)> = Vec::new();
    for piece in input.chunks(chunk) {
        f.feed(piece);
        loop {
            let frame = match f.next_frame() {
                Ok(Some(fr)) => fr,
                Ok(None) => break,
                Err(_) => return,
            };
            let wire = f.last_frame_text().to_owned();
            let _ = crate::xml::pretty::indent(&wire, 1 << 20);
            match frame {
                Frame::StreamOpen(h) => {
                    let _ = crate::proto::stream::check_header(&h);
                    // What our own stream header declares, for re-parsing what we write.
                    scope = vec![
                        (String::new(), crate::proto::ns::SERVER.to_owned()),
                        ("db".into(), crate::proto::ns::DIALBACK.into()),
                        ("stream".into(), crate::proto::ns::STREAMS.into()),
                    ];
                }
                Frame::Element(el) => {
                    // A namespace declared on the peer's header costs its length where it
                    // is used; each is written at most once per frame.
                    let header_ns: usize = f.header_scope().iter().map(|(_, n)| n.len() + 16).sum();
                    element(&el, wire.len() + header_ns, &scope)
                }
                Frame::StreamClose => return,
            }
        }
    }
}

/// `budget`: the frame's bytes plus what its header's namespaces may add.
fn element(el: &Element, budget: usize, scope: &[(String, String)]) {
    let _ = crate::proto::dialback::DbElement::parse(el);
    let _ = crate::proto::stanza::error_of(el);
    if crate::proto::stanza::is_stanza(el) {
        let _ = crate::proto::stanza::error_reply(el, crate::proto::stanza::ErrorType::Cancel, "bad-request", Some("fuzz"));
    }
    let _ = crate::proto::stream::StreamError::from_element(el);
    let _ = crate::xml::writer::masked_key(el);
    let mut out = String::new();
    write_top(&mut out, el);
    let bound = WRITE_FACTOR * budget + crate::xml::writer::INLINE_BUDGET + 64;
    assert!(out.len() <= bound, "{} bytes written for a frame of budget {budget}", out.len());
    let back = parse_fragment(&out, scope, 64).expect("what we write parses");
    assert_eq!(&back, el, "written: {out}");
}

/// The config parser: any text gives settings or an error naming the problem.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Settings::parse(text, std::path::Path::new("fuzz.toml"));
    }
}

/// The control socket's request parser: any line gives a request or an error.
pub fn control(data: &[u8]) {
    let _ = crate::control::parse_request(data);
}

/// One hostile peer before authentication against a running server at `addr`: write the
/// bytes (in pieces chosen by the first byte), then read whatever comes back until the
/// server closes, within `limit`. Returns the bytes the server sent.
pub async fn preauth_exchange(addr: std::net::SocketAddr, data: &[u8], limit: std::time::Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return Vec::new() };
    let (chunk, input) = data.split_first().map_or((1, data), |(c, rest)| (usize::from(*c) * 16 + 1, rest));
    let mut got = Vec::new();
    let run = async {
        for piece in input.chunks(chunk) {
            if s.write_all(piece).await.is_err() {
                break;
            }
        }
        let _ = s.shutdown().await;
        let _ = s.read_to_end(&mut got).await;
    };
    let _ = tokio::time::timeout(limit, run).await;
    got
}

/// A global allocator that counts the heap of the calling thread and its peak, for the heap
/// budgets of the fuzz target, the corpus replay and the hostile-frame benchmark (install
/// with `#[global_allocator] static A: HeapCounter = HeapCounter;`). Thread-local, so other
/// threads' work does not count.
pub struct HeapCounter;

thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

impl HeapCounter {
    /// Start measuring: the peak is reset to what is live now, which is returned.
    pub fn start() -> isize {
        let live = LIVE.with(|l| l.get());
        PEAK.with(|p| p.set(live));
        live
    }

    /// The peak since [`HeapCounter::start`] returned `base`, in bytes above it.
    pub fn peak_since(base: isize) -> usize {
        (PEAK.with(|p| p.get()) - base).max(0) as usize
    }
}

// SAFETY: allocation is delegated to the system allocator unchanged; only counters move.
unsafe impl std::alloc::GlobalAlloc for HeapCounter {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        let p = unsafe { std::alloc::System.alloc(l) };
        if !p.is_null() {
            let _ = LIVE.try_with(|live| {
                live.set(live.get() + l.size() as isize);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
            });
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.dealloc(p, l) };
        let _ = LIVE.try_with(|live| live.set(live.get() - l.size() as isize));
    }
}
