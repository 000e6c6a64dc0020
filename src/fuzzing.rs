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
        let _ = crate::proto::stanza::error_reply(el, crate::proto::stanza::StanzaErrorCondition::BadRequest, Some("fuzz"));
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

/// The stream machine, either role (the first byte), fed a sequence of inputs decoded from
/// the rest: frames from a vocabulary of everything s2s peers send (and arbitrary bytes
/// through a framer), TLS results, dialback answers, verification requests, stanzas, policy
/// changes, operator closes and timers in virtual time. Properties for any sequence: no
/// panic; nothing is output after the close; a stanza is delivered only on a domain pair the
/// machine observed valid (and did not take back); each verification request is answered at
/// most once; one input yields a bounded number of outputs.
pub fn machine(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut bytes = rest.iter().copied();
    let mut run = MachineRun::new(flags);
    run.check_outputs();
    for _ in 0..256 {
        let Some(op) = bytes.next() else { break };
        let a = bytes.next().unwrap_or(0);
        if let Some(input) = run.input(op, a, &mut bytes) {
            run.step(input);
        }
        if let Some(d) = run.m.deadline() {
            assert!(d >= run.t0, "a deadline before the stream began");
        }
    }
}

/// One run of [`machine`]: the machine under test and what its outputs have shown so far.
struct MachineRun {
    fuzz: Fuzz,
    m: crate::proto::machine::Machine,
    t0: std::time::Instant,
    now: std::time::Instant,
    /// The framer for arbitrary bytes; it lives across inputs.
    raw: crate::xml::Framer,
    /// The pairs observed valid (local, remote) and not taken back.
    valid: std::collections::HashSet<(String, String)>,
    /// The dialback answers the machine asked for.
    asks: Vec<(crate::domain::Domain, crate::domain::Domain)>,
    tokens_fed: u64,
    tokens_answered: std::collections::HashSet<u64>,
    answered: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    closed: bool,
    /// Closing on purpose, an originating machine asks for the queue: none here, as a
    /// driver with an empty queue answers.
    drain_asked: bool,
}

impl MachineRun {
    /// The role and the environment's rules chosen by `flags`.
    fn new(flags: u8) -> MachineRun {
        use crate::proto::machine::{Machine, TlsFacts};
        let fuzz = fuzz_env(flags);
        let now = std::time::Instant::now();
        let m = if flags & 1 == 1 {
            Machine::originating(fuzz.env.clone(), "fuzz".into(), now, domain(LOCALS[0]), domain(REMOTES[0]), flags & 2 == 2)
        } else {
            let direct = (flags & 2 == 2).then(|| TlsFacts { chain: vec![vec![1u8].into()], at: rustls::pki_types::UnixTime::now() });
            Machine::receiving(fuzz.env.clone(), "fuzz".into(), now, direct, Box::new(FuzzSlot(flags & 4 == 4)))
        };
        MachineRun {
            fuzz,
            m,
            t0: now,
            now,
            raw: crate::xml::Framer::new(16 * 1024, 16),
            valid: Default::default(),
            asks: Vec::new(),
            tokens_fed: 0,
            tokens_answered: Default::default(),
            answered: Default::default(),
            closed: false,
            drain_asked: false,
        }
    }

    /// Handles one input and checks its outputs; a drain asked for is answered at once.
    fn step(&mut self, input: crate::proto::machine::Input) {
        use crate::proto::machine::Input;
        self.m.handle(self.now, input);
        self.check_outputs();
        if std::mem::take(&mut self.drain_asked) {
            self.m.handle(self.now, Input::Drained);
            self.check_outputs();
        }
    }

    /// The input for `op` and its argument `a` (more bytes taken from `bytes` for raw
    /// data), or none when the op has nothing to give.
    fn input(&mut self, op: u8, a: u8, bytes: &mut impl Iterator<Item = u8>) -> Option<crate::proto::machine::Input> {
        use crate::proto::machine::{Input, ReadError, TlsFacts};
        use std::time::Duration;
        let (l, r) = (LOCALS[usize::from(a) % LOCALS.len()], REMOTES[usize::from(a / 4) % REMOTES.len()]);
        match op % 16 {
            0..=4 => {
                let text = vocabulary(op / 16, a, l, r, &self.fuzz.env);
                Some(Input::Frame { frame: parse_in_stream(&text), buffered: usize::from(a % 8 == 7) })
            }
            5 => self.raw_bytes(a, bytes),
            6 => {
                self.now += Duration::from_secs(u64::from(a) * 7);
                Some(Input::Timer)
            }
            7 => self.asks.get(usize::from(a) % self.asks.len().max(1)).cloned().map(|(local, remote)| Input::Answer {
                local,
                remote,
                answer: match a % 3 {
                    0 => crate::proto::dialback::Answer::Valid,
                    1 => crate::proto::dialback::Answer::Invalid,
                    _ => crate::proto::dialback::Answer::error(crate::proto::stanza::StanzaErrorCondition::RemoteServerTimeout, "fuzz"),
                },
                detail: None,
            }),
            8 => {
                self.fuzz.policy.set(usize::from(a) % REMOTES.len(), a / 8);
                Some(Input::PolicyChanged)
            }
            9 => Some(Input::TlsEstablished(TlsFacts {
                chain: if a.is_multiple_of(2) { vec![] } else { vec![vec![a].into()] },
                at: rustls::pki_types::UnixTime::now(),
            })),
            10 => Some(Input::TlsFailed("fuzz".into())),
            11 => Some(Input::Close { reason: "fuzz".into(), error: None }),
            12 => {
                self.tokens_fed += 1;
                let reply = Box::new(FuzzReply { token: self.tokens_fed, answered: self.answered.clone() });
                Some(Input::Verify { stream_id: format!("s{a}"), key: "k".into(), reply })
            }
            13 => Some(Input::Stanza(crate::xml::Element::new("message", crate::proto::ns::SERVER).attr("to", r).attr("from", l))),
            14 => Some(match a % 3 {
                0 => Input::Read,
                1 => Input::ReadError(ReadError::Eof),
                _ => Input::WriteFailed("fuzz".into()),
            }),
            _ => Some(Input::Frame { frame: crate::xml::Frame::StreamClose, buffered: 0 }),
        }
    }

    /// Up to 63 arbitrary bytes (`a` says how many) through the framer that lives across
    /// inputs; a frame, a read error or nothing yet.
    fn raw_bytes(&mut self, a: u8, bytes: &mut impl Iterator<Item = u8>) -> Option<crate::proto::machine::Input> {
        use crate::proto::machine::{Input, ReadError};
        let len = usize::from(a % 64);
        let chunk: Vec<u8> = (0..len).map_while(|_| bytes.next()).collect();
        self.raw.feed(&chunk);
        match self.raw.next_frame() {
            Ok(Some(frame)) => Some(Input::Frame { frame, buffered: self.raw.pending() }),
            Ok(None) => None,
            Err(e) => Some(Input::ReadError(ReadError::Xml(e))),
        }
    }

    /// Takes every output and checks the properties: nothing after the close, a bounded
    /// number, delivery only on a valid pair, each verification answered once.
    fn check_outputs(&mut self) {
        use crate::proto::machine::{Observed, Output};
        use crate::types::PairStatus;
        let mut n = 0;
        while let Some(o) = self.m.poll_output() {
            n += 1;
            assert!(!self.closed, "output after the close: {o:?}");
            assert!(n <= 4096, "unbounded outputs for one input");
            match o {
                Output::Close(_) => self.closed = true,
                Output::Drain => self.drain_asked = true,
                Output::Observe(Observed::Pair { local, remote, status, .. }) => {
                    if status == PairStatus::Valid {
                        self.valid.insert((local.to_string(), remote.to_string()));
                    } else {
                        self.valid.remove(&(local.to_string(), remote.to_string()));
                    }
                }
                Output::Observe(Observed::PairRemoved { local, remote }) => {
                    self.valid.remove(&(local.to_string(), remote.to_string()));
                }
                Output::Observe(Observed::PairsReset) => self.valid.clear(),
                Output::Deliver(d) => {
                    let el = d.stanza();
                    let to = el.get_attr("to").and_then(crate::proto::jid::domain_of).expect("delivered stanzas have a 'to'");
                    let from = el.get_attr("from").and_then(crate::proto::jid::domain_of).expect("and a 'from'");
                    assert!(self.valid.contains(&(to.to_string(), from.to_string())), "delivered on a pair never valid: {}", el.to_xml());
                }
                Output::Ask(a) => self.asks.push((a.local, a.remote)),
                Output::VerifyAnswer { reply, answer, detail } => {
                    reply.send(answer, detail);
                    for token in self.answered.lock().unwrap().drain(..) {
                        assert!(token >= 1 && token <= self.tokens_fed, "an answer for a request never made");
                        assert!(self.tokens_answered.insert(token), "answered twice");
                    }
                }
                _ => {}
            }
        }
    }
}

/// The component role of the stream machine (XEP-0114): arbitrary bytes through a framer on
/// a component stream, interleaved with the right handshake, the router's answers, stanzas to
/// the component, timers and closes. Properties: no panic; nothing after the close; nothing
/// is delivered before the router attached the domain, and only from the component's domain
/// or its subdomains; one input yields a bounded number of outputs.
pub fn component(data: &[u8]) {
    let mut run = ComponentRun::new();
    let mut bytes = data.iter().copied();
    let mut inputs = 0;
    while let Some(op) = bytes.next() {
        inputs += 1;
        if inputs > 512 {
            break;
        }
        let a = bytes.next().unwrap_or(0);
        let mut feed = run.inputs(op, a, &mut bytes);
        run.frames(&mut feed);
        for input in feed {
            run.step(input);
        }
        if let Some(d) = run.m.deadline() {
            assert!(d >= run.t0, "a deadline before the stream began");
        }
    }
}

const COMP: &str = "comp.here.test";
const COMP_SECRET: &str = "fuzz component secret";

/// One run of [`component`]: the machine under test, the framer before it and what its
/// outputs have shown so far.
struct ComponentRun {
    m: crate::proto::machine::Machine,
    framer: crate::xml::Framer,
    t0: std::time::Instant,
    now: std::time::Instant,
    closed: bool,
    attach_asked: bool,
    attached: bool,
}

impl ComponentRun {
    fn new() -> ComponentRun {
        use crate::proto::machine::Machine;
        use std::collections::HashMap;
        let fuzz = fuzz_env(0);
        let now = std::time::Instant::now();
        let secrets = std::sync::Arc::new(HashMap::from([(domain(COMP), COMP_SECRET.to_owned())]));
        let m = Machine::component(fuzz.env.clone(), "fuzz".into(), now, secrets, Box::new(FuzzSlot(false)));
        ComponentRun {
            m,
            framer: crate::xml::Framer::new(16 * 1024, 16),
            t0: now,
            now,
            closed: false,
            attach_asked: false,
            attached: false,
        }
    }

    /// What `op` and its argument `a` do: bytes for the framer (more taken from `bytes`
    /// for arbitrary data) or inputs straight to the machine, returned.
    fn inputs(&mut self, op: u8, a: u8, bytes: &mut impl Iterator<Item = u8>) -> Vec<crate::proto::machine::Input> {
        use crate::proto::machine::Input;
        use crate::proto::machine::component::handshake_digest;
        use std::time::Duration;
        let mut feed: Vec<Input> = Vec::new();
        match op % 8 {
            0..=2 => {
                let len = usize::from(a % 64);
                let chunk: Vec<u8> = (0..len).map_while(|_| bytes.next()).collect();
                self.framer.feed(&chunk);
            }
            3 => self.framer.feed(
                format!(
                    "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
                    if a.is_multiple_of(4) { "other.test" } else { COMP }
                )
                .as_bytes(),
            ),
            // The handshake for the first stream id the environment hands out (or a wrong one).
            4 => self.framer.feed(
                format!("<handshake>{}</handshake>", handshake_digest("id0", if a.is_multiple_of(4) { "wrong" } else { COMP_SECRET }))
                    .as_bytes(),
            ),
            5 => {
                if a.is_multiple_of(3) {
                    feed.push(Input::Attached(Err((crate::proto::stream::StreamErrorCondition::Conflict, "fuzz conflict".into()))));
                } else {
                    self.attached |= self.attach_asked;
                    feed.push(Input::Attached(Ok(())));
                }
            }
            6 => {
                let from = ["comp.here.test", "muc.comp.here.test", "here.test", "xcomp.here.test"][usize::from(a) % 4];
                self.framer.feed(
                    format!("<message xmlns='jabber:component:accept' from='{from}' to='b.test'><body>x</body></message>").as_bytes(),
                );
            }
            _ => feed.push(match a % 4 {
                0 => {
                    self.now += Duration::from_secs(u64::from(a) * 5);
                    Input::Timer
                }
                1 => Input::Stanza(crate::xml::Element::new("message", crate::proto::ns::SERVER).attr("to", COMP).attr("from", "b.test")),
                2 => Input::Close { reason: "fuzz".into(), error: None },
                _ => Input::ReadError(crate::proto::machine::ReadError::Eof),
            }),
        }
        feed
    }

    /// The frames the framer holds now, after `feed`; a read error ends them.
    fn frames(&mut self, feed: &mut Vec<crate::proto::machine::Input>) {
        use crate::proto::machine::Input;
        loop {
            match self.framer.next_frame() {
                Ok(Some(frame)) => feed.push(Input::Frame { frame, buffered: self.framer.pending() }),
                Ok(None) => break,
                Err(e) => {
                    feed.push(Input::ReadError(crate::proto::machine::ReadError::Xml(e)));
                    break;
                }
            }
        }
    }

    /// Handles one input and checks its outputs: nothing after the close, a bounded number,
    /// the attach for the component's domain, delivery only once attached and only from it.
    fn step(&mut self, input: crate::proto::machine::Input) {
        use crate::proto::machine::Output;
        self.m.handle(self.now, input);
        let mut n = 0;
        while let Some(o) = self.m.poll_output() {
            n += 1;
            assert!(!self.closed, "output after the close: {o:?}");
            assert!(n <= 64, "unbounded outputs for one input");
            match o {
                Output::Close(_) => self.closed = true,
                Output::Attach(d) => {
                    assert_eq!(d.as_str(), COMP);
                    self.attach_asked = true;
                }
                Output::Deliver(d) => {
                    let el = d.stanza();
                    assert!(self.attached, "delivered before the domain was attached: {}", el.to_xml());
                    let from = el.get_attr("from").and_then(crate::proto::jid::domain_of).expect("a 'from'");
                    assert!(from.as_str() == COMP || from.as_str().ends_with(".comp.here.test"), "delivered from {from}");
                    assert_eq!(el.ns.as_ref(), crate::proto::ns::SERVER, "retagged for federation");
                }
                _ => {}
            }
        }
    }
}

const LOCALS: [&str; 2] = ["here.test", "other-here.test"];
const REMOTES: [&str; 3] = ["a.test", "b.test", "c.test"];

fn domain(s: &str) -> crate::domain::Domain {
    crate::domain::Domain::parse(s).expect("a fixed test domain")
}

/// One element a peer may send, chosen by `kind` and `a`, between `l` (ours) and `r`.
fn vocabulary(kind: u8, a: u8, l: &str, r: &str, env: &crate::proto::machine::Env) -> String {
    let key = if a.is_multiple_of(2) { env.keys.derive(r, l, "id0") } else { "00ff".into() };
    match kind % 16 {
        0 => format!("<db:result from='{r}' to='{l}'>{key}</db:result>"),
        1 => format!("<db:result from='{r}' to='{l}' type='{}'/>", ["valid", "invalid", "error"][usize::from(a) % 3]),
        2 => format!("<db:verify from='{r}' to='{l}' id='id{}'>{key}</db:verify>", a % 3),
        3 => format!("<db:verify from='{r}' to='{l}' id='s{a}' type='{}'/>", ["valid", "invalid"][usize::from(a) % 2]),
        4 => "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into(),
        5 => ["<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"][usize::from(a) % 2]
            .into(),
        6 => [
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms></stream:features>",
            "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
            "<stream:features/>",
        ][usize::from(a) % 4]
            .into(),
        7 => format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            if a.is_multiple_of(5) { "PLAIN" } else { "EXTERNAL" },
            ["=", "YS50ZXN0", "!!", ""][usize::from(a) % 4]
        ),
        8 => [
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
            "<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        ][usize::from(a) % 3]
            .into(),
        9 => format!("<message from='x@{r}' to='y@{l}' id='m{a}'><body>hi</body></message>"),
        10 => format!("<iq from='{r}' to='{l}' type='{}'><ping xmlns='urn:xmpp:ping'/></iq>", ["get", "result", "bogus"][usize::from(a) % 3]),
        11 => format!("<presence from='{r}' to='{l}' type='{}'/>", ["probe", "bogus"][usize::from(a) % 2]),
        12 => "<stream:error><host-gone xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>".into(),
        13 => format!("<message from='{l}' to='{r}'/>"),
        14 => "<unknown xmlns='urn:example'/>".into(),
        // The stream header (and after a restart, the new one).
        _ => String::new(),
    }
}

/// The header a peer opens with, then `element` parsed in its scope; the header itself when
/// `element` is empty.
fn parse_in_stream(element: &str) -> crate::xml::Frame {
    let mut f = crate::xml::Framer::new(64 * 1024, 16);
    f.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0' from='a.test' to='here.test' id='id0'>");
    let header = f.next_frame().expect("a valid header").expect("complete");
    if element.is_empty() {
        return header;
    }
    f.feed(element.as_bytes());
    f.next_frame().expect("the vocabulary is well-formed").expect("complete")
}

struct FuzzPolicy(std::sync::Mutex<[u8; 3]>);

impl FuzzPolicy {
    fn set(&self, remote: usize, v: u8) {
        self.0.lock().unwrap()[remote] = v;
    }
}

impl crate::proto::machine::PolicyView for FuzzPolicy {
    fn verdict(&self, remote: &crate::domain::Domain) -> crate::types::Verdict {
        let i = REMOTES.iter().position(|r| *r == remote.as_str());
        match i.map(|i| self.0.lock().unwrap()[i] % 3) {
            Some(1) => crate::types::Verdict::Hold,
            Some(2) => crate::types::Verdict::Refuse("fuzz".into()),
            _ => crate::types::Verdict::Allow,
        }
    }
}

struct FuzzJudge;

impl crate::proto::machine::CertJudge for FuzzJudge {
    fn judge(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'_>],
        _domain: &crate::domain::Domain,
        _at: rustls::pki_types::UnixTime,
    ) -> crate::types::CertVerdict {
        match chain.first().map(|c| c.as_ref().first().copied().unwrap_or(0) % 2) {
            Some(1) => crate::types::CertVerdict::Valid,
            Some(_) => crate::types::CertVerdict::SelfSigned,
            None => crate::types::CertVerdict::NoCertificate,
        }
    }
}

/// A verification's asker: records which request was answered.
#[derive(Debug)]
struct FuzzReply {
    token: u64,
    answered: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl crate::proto::machine::Reply for FuzzReply {
    fn send(self: Box<Self>, _: crate::proto::dialback::Answer, _: Option<String>) {
        self.answered.lock().unwrap().push(self.token);
    }
}

struct FuzzSlot(bool);

impl crate::proto::machine::Admission for FuzzSlot {
    fn authenticated(&mut self) -> Result<(), crate::types::LimitKey> {
        if self.0 { Err(crate::types::LimitKey::MaxInbound) } else { Ok(()) }
    }
}

struct Fuzz {
    env: std::sync::Arc<crate::proto::machine::Env>,
    policy: std::sync::Arc<FuzzPolicy>,
}

/// Small limits so sequences reach them; the security rules chosen by `flags`.
fn fuzz_env(flags: u8) -> Fuzz {
    use crate::proto::machine::{Env, Limits, Timeouts};
    use std::time::Duration;
    let policy = std::sync::Arc::new(FuzzPolicy(std::sync::Mutex::new([0; 3])));
    let auth = if flags & 8 == 8 { crate::types::AuthMode::CertOnly } else { crate::types::AuthMode::CertOrDialback };
    let ids = std::sync::atomic::AtomicU64::new(0);
    let env = Env {
        hosted: LOCALS.iter().map(|d| domain(d)).collect(),
        serves_world: false,
        with_subdomains: Vec::new(),
        timeouts: Timeouts {
            negotiation: Duration::from_secs(30),
            dialback: Duration::from_secs(20),
            idle_inbound: Duration::from_secs(1200),
            idle_outbound: Duration::from_secs(600),
            keepalive: Duration::from_secs(60),
            approval_wait: Duration::from_secs(300),
        },
        limits: Limits {
            max_pairs_per_stream: 4,
            max_verifications_in_flight: 2,
            verifications_per_minute: 5,
            held_stanzas: 3,
            held_bytes: 2000,
            max_bytes: 4096,
        },
        security: crate::types::Security { auth, require_encryption: flags & 16 == 16, rules: vec![] },
        keys: crate::proto::dialback::DialbackKeys::new(b"fuzz"),
        policy: policy.clone(),
        certs: std::sync::Arc::new(FuzzJudge),
        stream_ids: Box::new(move || format!("id{}", ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed))),
        issued_here: Box::new(|_| false),
    };
    Fuzz { env: std::sync::Arc::new(env), policy }
}
