//! The connection table: every live stream plus recently closed ones. The table's lock is
//! taken on open, state change and close — never per stanza: counters are atomics in each
//! stream's own entry.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::Domain;
use crate::events::*;
use crate::proto::machine::Observed;
use crate::proto::stream::{StreamError, StreamErrorCondition};
use crate::types::CertVerdict;

mod transcript;
use transcript::Transcript;
pub use transcript::{LINE_OVERHEAD, TranscriptBudget, line_size};

/// Per-stream counters, updated by the stream's own task.
#[derive(Debug, Default)]
pub struct Counters {
    pub stanzas_in: AtomicU64,
    pub stanzas_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub last_activity_ms: AtomicU64,
}

/// Why a stream is asked to close, and the stream error to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub reason: String,
    pub error: Option<StreamError>,
}

/// A stream task's end of its control channel: close requests from the operator or the
/// policy, and the server's shutdown.
#[derive(Clone)]
pub struct StreamControl {
    entry: Arc<ConnEntry>,
}

impl StreamControl {
    /// Resolves when the stream is asked to close (at once if it already was). Cancel-safe.
    pub async fn closed(&mut self) -> CloseRequest {
        let e = &*self.entry;
        loop {
            // Registered before the request is read: a request made in between still wakes it.
            let mut notified = std::pin::pin!(e.close_notify.notified());
            notified.as_mut().enable();
            if let Some(r) = e.info.lock().unwrap().close_request.clone() {
                return r;
            }
            if e.shutdown.is_cancelled() {
                return CloseRequest {
                    reason: "server shutting down".into(),
                    error: Some(StreamError::new(StreamErrorCondition::SystemShutdown, "server shutting down")),
                };
            }
            tokio::select! {
                _ = notified => {}
                _ = e.shutdown.cancelled() => {}
            }
        }
    }
}

/// One stream's entry, shared between its task and the table.
#[derive(Debug)]
pub struct ConnEntry {
    pub id: String,
    pub direction: Direction,
    /// Federation, the internal server (gateway mode) or a component.
    pub kind: StreamKind,
    pub opened_ms: u64,
    pub counters: Counters,
    info: Mutex<Info>,
    /// The stream's control channel: wakes its task for a close request (operator, policy;
    /// the request itself is in `info`).
    close_notify: Notify,
    /// Server shutdown, which closes every stream.
    shutdown: CancellationToken,
    events: bus::Sender,
    transcript: Mutex<Transcript>,
    budget: Arc<TranscriptBudget>,
    /// Everything is recorded until the stream is established (and what it wrote in the
    /// same turn: the answer that established it); afterwards only while someone watches
    /// (the stanza path then pays nothing for transcripts). A [`Capture`] as a byte.
    capture: AtomicU8,
    watchers: AtomicUsize,
}

#[derive(Debug, Default, Clone)]
struct Info {
    local: Option<String>,
    remote: Option<String>,
    peer_addr: Option<String>,
    state: Option<ConnState>,
    stream_id: Option<String>,
    tls: Option<TlsInfo>,
    pairs: Vec<PairInfo>,
    close_reason: Option<String>,
    close_request: Option<CloseRequest>,
    limits: Option<StreamLimits>,
}

impl ConnEntry {
    pub fn snapshot(&self) -> ConnSnapshot {
        let i = self.info.lock().unwrap().clone();
        let c = &self.counters;
        ConnSnapshot {
            id: self.id.clone(),
            direction: self.direction,
            kind: self.kind,
            local: i.local,
            remote: i.remote,
            peer_addr: i.peer_addr,
            state: i.state.unwrap_or(ConnState::Connecting),
            stream_id: i.stream_id,
            tls: i.tls,
            pairs: i.pairs,
            opened_ms: self.opened_ms,
            last_activity_ms: c.last_activity_ms.load(Ordering::Relaxed),
            stanzas_in: c.stanzas_in.load(Ordering::Relaxed),
            stanzas_out: c.stanzas_out.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            close_reason: i.close_reason,
            limits: i.limits,
        }
    }

    pub fn state(&self) -> ConnState {
        self.info.lock().unwrap().state.unwrap_or(ConnState::Connecting)
    }

    pub fn set_state(&self, state: ConnState) {
        if state == ConnState::Established {
            let _ = self.capture.compare_exchange(Capture::Negotiating as u8, Capture::Ending as u8, Ordering::Relaxed, Ordering::Relaxed);
        }
        {
            let mut i = self.info.lock().unwrap();
            if i.state == Some(state) {
                return;
            }
            i.state = Some(state);
        }
        let _ = self.events.send(Event::StreamUpdated { stream: self.snapshot() });
    }

    pub fn set_domains(&self, local: Option<&str>, remote: Option<&str>) {
        let mut i = self.info.lock().unwrap();
        if let Some(l) = local {
            i.local = Some(l.to_owned());
        }
        if let Some(r) = remote {
            i.remote = Some(r.to_owned());
        }
    }

    pub fn set_peer_addr(&self, addr: SocketAddr) {
        self.info.lock().unwrap().peer_addr = Some(addr.to_string());
    }

    pub fn set_stream_id(&self, id: &str) {
        self.info.lock().unwrap().stream_id = Some(id.to_owned());
    }

    /// A TLS handshake finished: record the session and certificate facts (and the verdict,
    /// when the claimed domain is known) and say so in the transcript.
    pub fn tls_established(&self, how: &str, session: &rustls::CommonState, cert_verdict: Option<crate::net::certs::CertVerdict>) {
        let (version, cipher) = crate::net::tls::session_facts(session);
        let peer_cert = session.peer_certificates().and_then(|c| c.first()).map(|c| crate::net::tls::peer_cert_info(c));
        let peer_cert = peer_cert.map(compact_cert);
        let cert_verdict = cert_verdict.map(compact_verdict);
        let cert = peer_cert.as_ref().map_or("none".to_owned(), |c| {
            // A certificate may name hundreds of domains; the note shows a few (the row's
            // copy is compacted already: its names are clipped and counted).
            let mut names = c.names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
            if c.names.len() > 8 {
                names.push_str(&format!(" and {} more", c.names.len() - 8));
            }
            format!("{} (issuer {}, names {names})", c.subject, c.issuer)
        });
        let verdict = cert_verdict.as_ref().map(|v| format!("; verdict: {v}")).unwrap_or_default();
        self.record("note", format!("{how} established: {version} {cipher}; peer certificate: {cert}{verdict}"), None);
        self.set_tls(TlsInfo { version, cipher, peer_cert, cert_verdict });
    }

    pub fn set_tls(&self, mut tls: TlsInfo) {
        tls.peer_cert = tls.peer_cert.map(compact_cert);
        tls.cert_verdict = tls.cert_verdict.map(compact_verdict);
        self.info.lock().unwrap().tls = Some(tls);
        let _ = self.events.send(Event::StreamUpdated { stream: self.snapshot() });
    }

    /// Forget what was learned before a stream restart (STARTTLS).
    pub fn reset_pairs(&self) {
        self.info.lock().unwrap().pairs.clear();
    }

    pub fn set_pair(&self, local: &Domain, remote: &Domain, status: PairStatus, method: AuthMethod) {
        {
            let mut i = self.info.lock().unwrap();
            match i.pairs.iter_mut().find(|p| p.local == local.as_str() && p.remote == remote.as_str()) {
                Some(p) => {
                    p.status = status;
                    p.method = method;
                }
                None => i.pairs.push(PairInfo { local: local.to_string(), remote: remote.to_string(), status, method }),
            }
        }
        if status == PairStatus::Valid {
            let _ = self.events.send(Event::PairAuthorised {
                id: self.id.clone(),
                local: local.to_string(),
                remote: remote.to_string(),
                method,
            });
        }
    }

    pub fn remove_pair(&self, local: &Domain, remote: &Domain) {
        self.info.lock().unwrap().pairs.retain(|p| !(p.local == local.as_str() && p.remote == remote.as_str()));
    }

    pub fn peer_addr(&self) -> Option<String> {
        self.info.lock().unwrap().peer_addr.clone()
    }

    /// Ask the stream to close; its task picks the reason up.
    pub fn request_close(&self, reason: &str) {
        self.request_close_with(reason, None);
    }

    /// Ask the stream to close with a stream error (e.g. `<policy-violation/>`), over its
    /// control channel.
    pub fn request_close_with(&self, reason: &str, error: Option<StreamError>) {
        self.info.lock().unwrap().close_request = Some(CloseRequest { reason: reason.to_owned(), error });
        self.close_notify.notify_waiters();
    }

    /// The stream's end of its control channel.
    pub fn control(self: &Arc<Self>) -> StreamControl {
        StreamControl { entry: self.clone() }
    }

    /// The projection: a stream's row follows what its machine observed — state, domains,
    /// stream id, pairs, certificate verdict. (Outcomes and pending domains are recorded
    /// elsewhere; they are not the row's.)
    pub fn apply(&self, o: &Observed) {
        match o {
            Observed::State(s) => self.set_state(*s),
            Observed::Domains { local, remote } => self.set_domains(local.as_deref(), remote.as_deref()),
            Observed::StreamId(id) => self.set_stream_id(id),
            Observed::Pair { local, remote, status, method } => self.set_pair(local, remote, *status, *method),
            Observed::PairRemoved { local, remote } => self.remove_pair(local, remote),
            Observed::PairsReset => self.reset_pairs(),
            Observed::Limits(l) => {
                let changed = {
                    let mut i = self.info.lock().unwrap();
                    i.limits.replace(*l) != Some(*l)
                };
                if changed {
                    let _ = self.events.send(Event::StreamUpdated { stream: self.snapshot() });
                }
            }
            Observed::Certificate(verdict) => {
                let tls = self.info.lock().unwrap().tls.clone();
                if let Some(mut tls) = tls {
                    let verdict = compact_verdict(verdict.clone());
                    self.record("note", format!("certificate verdict: {verdict}"), None);
                    tls.cert_verdict = Some(verdict);
                    self.set_tls(tls);
                }
            }
            Observed::Outcome { .. } | Observed::Pending(_) => {}
        }
    }

    /// Every remote domain on this stream: the header's and each pair's.
    pub fn remotes(&self) -> Vec<String> {
        let i = self.info.lock().unwrap();
        let mut v: Vec<String> = i.remote.iter().cloned().collect();
        for p in &i.pairs {
            if !v.contains(&p.remote) {
                v.push(p.remote.clone());
            }
        }
        v
    }

    pub fn touch_in(&self, bytes: usize) {
        self.counters.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        self.counters.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn touch_out(&self, bytes: usize) {
        self.counters.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.counters.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn stanza_in(&self) {
        self.counters.stanzas_in.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stanza_out(&self) {
        self.counters.stanzas_out.fetch_add(1, Ordering::Relaxed);
    }

    pub fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// Whether transcript lines are being recorded now.
    pub fn capturing(&self) -> bool {
        self.capture.load(Ordering::Relaxed) != Capture::Done as u8 || self.watchers.load(Ordering::Relaxed) > 0
    }

    /// The stream's task finished a turn (its machine's outputs are written out): a
    /// negotiation that ended in it is over for the transcript.
    pub fn turn_done(&self) {
        let _ = self.capture.compare_exchange(Capture::Ending as u8, Capture::Done as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The stream is quiet: unless someone watches or it still negotiates, its transcript
    /// is packed (see [`transcript`]).
    pub fn quiet(&self) {
        if !self.capturing() {
            self.transcript.lock().unwrap().pack();
        }
    }

    /// Record a transcript line (call only when [`ConnEntry::capturing`]): the bytes as
    /// they crossed the wire, cut to the per-stream cap; the oldest lines go first when this
    /// stream's or everyone's budget is spent.
    pub fn record(&self, dir: &str, mut text: String, key: Option<String>) {
        let b = &self.budget;
        if b.lines == 0 || b.per_stream == 0 {
            return;
        }
        let cap = b.per_stream.saturating_sub(LINE_OVERHEAD).min(b.total.saturating_sub(LINE_OVERHEAD));
        if text.len() > cap {
            let cut = text.len() - cap;
            let mut end = cap.saturating_sub(32);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(&format!(" …(+{cut} bytes not kept)"));
        }
        let line = TranscriptLine { time_ms: now_ms(), dir: dir.to_owned(), text, key };
        let size = line_size(&line);
        {
            let mut t = self.transcript.lock().unwrap();
            let mut freed = 0;
            while !t.is_empty() && (t.len() >= b.lines || t.bytes + size > b.per_stream) {
                freed += t.pop_front();
            }
            b.release(freed);
            // Everyone's budget: closed streams' transcripts go first, then this one's oldest.
            let mut reserved = b.reserve(size);
            while !reserved {
                if !b.evict_closed() {
                    if t.is_empty() {
                        break;
                    }
                    b.release(t.pop_front());
                }
                reserved = b.reserve(size);
            }
            if reserved {
                b.release(t.push(&line));
            }
        }
        // The event channel keeps up to its capacity of events for a slow subscriber: each
        // carries at most EVENT_TEXT bytes (the whole line stays in the transcript).
        let mut line = line;
        if line.text.len() > EVENT_TEXT {
            line.text = crate::xml::element::clip(&line.text, EVENT_TEXT).into_owned();
        }
        let _ = self.events.send(Event::Transcript { id: self.id.clone(), line });
    }

    pub fn transcript(&self) -> Vec<TranscriptLine> {
        self.transcript.lock().unwrap().lines()
    }

    /// A viewer starts or stops following this stream's transcript.
    pub fn watch(&self, on: bool) {
        if on {
            self.watchers.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self.watchers.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| w.checked_sub(1));
        }
    }
}

/// Where a stream's transcript capture is.
#[repr(u8)]
enum Capture {
    Negotiating,
    /// Established in the task's current turn.
    Ending,
    /// Only while watched.
    Done,
}

/// Bytes of a transcript line carried by its live event.
pub const EVENT_TEXT: usize = 8 * 1024;

impl Drop for ConnEntry {
    fn drop(&mut self) {
        // A stream closed through the table handed its transcript over; any other gives
        // its bytes back here.
        let bytes = self.transcript.get_mut().map_or(0, |t| t.bytes);
        self.budget.release(bytes);
    }
}

/// All streams.
pub struct ConnTable {
    inner: Mutex<Inner>,
    events: bus::Sender,
    keep_closed: usize,
    /// Bytes of closed rows kept (each charged its size: a row carries its certificate's
    /// names, so a count alone does not bound it).
    keep_closed_bytes: usize,
    budget: Arc<TranscriptBudget>,
}

struct Inner {
    live: HashMap<String, Arc<ConnEntry>>,
    /// Recently closed streams (their transcripts are in the budget, so a failed attempt
    /// can be read), with what each is charged.
    closed: VecDeque<(ConnSnapshot, usize)>,
    closed_bytes: usize,
}

impl ConnTable {
    /// `keep_closed`: recently closed rows kept, in entries and in bytes.
    pub fn new(events: bus::Sender, (keep_closed, keep_closed_bytes): (usize, usize), budget: TranscriptBudget) -> Self {
        ConnTable {
            inner: Mutex::new(Inner { live: HashMap::new(), closed: VecDeque::new(), closed_bytes: 0 }),
            events,
            keep_closed,
            keep_closed_bytes,
            budget: Arc::new(budget),
        }
    }

    /// The transcript budget (for `ctl status`).
    pub fn transcript_budget(&self) -> &TranscriptBudget {
        &self.budget
    }

    /// Register a new stream; it stays until [`ConnTable::close`].
    /// `kind`: what is at the other end.
    pub fn open(&self, direction: Direction, parent: &CancellationToken, kind: StreamKind) -> Arc<ConnEntry> {
        let entry = Arc::new(ConnEntry {
            id: random_id(),
            direction,
            kind,
            opened_ms: now_ms(),
            counters: Counters::default(),
            info: Mutex::new(Info::default()),
            close_notify: Notify::new(),
            shutdown: parent.clone(),
            events: self.events.clone(),
            transcript: Mutex::new(Transcript::default()),
            budget: self.budget.clone(),
            capture: AtomicU8::new(Capture::Negotiating as u8),
            watchers: AtomicUsize::new(0),
        });
        entry.counters.last_activity_ms.store(entry.opened_ms, Ordering::Relaxed);
        // The transcript says what it is a transcript of, when it is not federation.
        match kind {
            StreamKind::Internal => entry.record("note", "internal link (gateway mode): a stream with the internal server".into(), None),
            StreamKind::Component => entry.record("note", "external component stream (XEP-0114)".into(), None),
            StreamKind::Federation => {}
        }
        self.inner.lock().unwrap().live.insert(entry.id.clone(), entry.clone());
        let _ = self.events.send(Event::StreamOpened { stream: entry.snapshot() });
        entry
    }

    /// Move a stream to the closed list with its final figures.
    pub fn close(&self, entry: &ConnEntry, reason: &str) {
        let snap = {
            let mut i = entry.info.lock().unwrap();
            i.state = Some(ConnState::Closed);
            if i.close_reason.is_none() {
                i.close_reason = Some(reason.to_owned());
            }
            drop(i);
            entry.snapshot()
        };
        // Packed before the table's lock is taken; handed over under it, so whoever finds
        // the stream among the closed ones finds its transcript too.
        let mut t = std::mem::take(&mut *entry.transcript.lock().unwrap());
        t.pack();
        {
            let mut inner = self.inner.lock().unwrap();
            if inner.live.remove(&entry.id).is_none() {
                // Closed before: the entry keeps it (and gives its bytes back when dropped).
                *entry.transcript.lock().unwrap() = t;
                return;
            }
            let size = row_size(&snap);
            if self.keep_closed > 0 && size <= self.keep_closed_bytes {
                while !inner.closed.is_empty()
                    && (inner.closed.len() >= self.keep_closed || inner.closed_bytes + size > self.keep_closed_bytes)
                {
                    if let Some((_, n)) = inner.closed.pop_front() {
                        inner.closed_bytes -= n;
                    }
                }
                inner.closed.push_back((snap.clone(), size));
                inner.closed_bytes += size;
            }
            self.budget.keep_closed(&entry.id, t, self.keep_closed);
        }
        let _ = self.events.send(Event::StreamClosed { stream: snap });
    }

    pub fn get(&self, id: &str) -> Option<Arc<ConnEntry>> {
        self.inner.lock().unwrap().live.get(id).cloned()
    }

    pub fn live(&self) -> Vec<Arc<ConnEntry>> {
        self.inner.lock().unwrap().live.values().cloned().collect()
    }

    pub fn live_count(&self) -> usize {
        self.inner.lock().unwrap().live.len()
    }

    pub fn snapshots(&self, include_closed: bool) -> Vec<ConnSnapshot> {
        let (live, closed): (Vec<_>, Vec<_>) = {
            let inner = self.inner.lock().unwrap();
            (
                inner.live.values().cloned().collect(),
                if include_closed { inner.closed.iter().map(|(s, _)| s.clone()).collect() } else { Vec::new() },
            )
        };
        let mut v: Vec<ConnSnapshot> = live.iter().map(|e| e.snapshot()).collect();
        v.sort_by_key(|s| s.opened_ms);
        v.extend(closed);
        v
    }

    pub fn closed(&self) -> Vec<ConnSnapshot> {
        self.inner.lock().unwrap().closed.iter().map(|(s, _)| s.clone()).collect()
    }

    /// Closed rows kept and the bytes they are charged.
    pub fn closed_usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.closed.len(), inner.closed_bytes)
    }

    /// The transcript of a live or recently closed stream.
    pub fn transcript(&self, id: &str) -> Option<Vec<TranscriptLine>> {
        let live = self.inner.lock().unwrap().live.get(id).cloned();
        match live {
            Some(e) => Some(e.transcript()),
            None => self.budget.closed_transcript(id),
        }
    }
}

/// Bytes of one certificate name (and of a subject, issuer or verdict detail) a row keeps.
pub const ROW_NAME: usize = 256;
/// Names of a certificate a row keeps (the rest are counted).
pub const ROW_NAMES: usize = 16;

/// The certificate facts a row keeps: names clipped to [`ROW_NAME`] bytes, at most
/// [`ROW_NAMES`] of them and a count of the rest, so a row (and every event that carries
/// it, and the transcript note about it) costs a bounded amount whatever the certificate
/// names. Small certificates keep their shared copy.
pub fn compact_cert(c: std::sync::Arc<PeerCertInfo>) -> std::sync::Arc<PeerCertInfo> {
    let long = |s: &str| s.len() > ROW_NAME || s.chars().any(crate::text::is_unsafe);
    if c.names.len() <= ROW_NAMES && !long(&c.subject) && !long(&c.issuer) && !c.names.iter().any(|n| long(n)) {
        return c;
    }
    let clip = |s: &str| crate::text::clip(s, ROW_NAME).into_owned();
    let mut names: Vec<String> = c.names.iter().take(ROW_NAMES).map(|n| clip(n)).collect();
    if c.names.len() > ROW_NAMES {
        names.push(format!("…(+{} more names)", c.names.len() - ROW_NAMES));
    }
    std::sync::Arc::new(PeerCertInfo {
        subject: clip(&c.subject),
        issuer: clip(&c.issuer),
        names,
        not_after: clip(&c.not_after),
        fingerprint_sha256: clip(&c.fingerprint_sha256),
    })
}

/// A certificate verdict as a row keeps it (its issuer, names or detail clipped).
pub fn compact_verdict(v: CertVerdict) -> CertVerdict {
    let clip = |s: String| match crate::text::clip(&s, ROW_NAME) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(c) => c,
    };
    match v {
        CertVerdict::UntrustedIssuer(i) => CertVerdict::UntrustedIssuer(clip(i)),
        CertVerdict::Expired(d) => CertVerdict::Expired(clip(d)),
        CertVerdict::NotYetValid(d) => CertVerdict::NotYetValid(clip(d)),
        CertVerdict::Invalid(e) => CertVerdict::Invalid(clip(e)),
        CertVerdict::NameMismatch(names) => {
            let n = names.len();
            let mut kept: Vec<String> = names.into_iter().take(ROW_NAMES).map(clip).collect();
            if n > ROW_NAMES {
                kept.push(format!("…(+{} more names)", n - ROW_NAMES));
            }
            CertVerdict::NameMismatch(kept)
        }
        v => v,
    }
}

/// What a closed row is charged: its size in memory and the text it holds.
fn row_size(s: &ConnSnapshot) -> usize {
    std::mem::size_of::<ConnSnapshot>() + bus::json_size(s)
}

/// A random 128-bit identifier, hex (RFC 6120 §4.7.3: stream ids must be unpredictable).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("OS randomness");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lines: usize, per_stream: usize, total: usize, keep_closed: usize) -> ConnTable {
        ConnTable::new(bus::channel(bus::Backlog::default()), (keep_closed, usize::MAX), TranscriptBudget::new(lines, per_stream, total))
    }

    #[test]
    fn rows_keep_certificate_names_clipped_and_counted() {
        let big = "n".repeat(30_000);
        let info = std::sync::Arc::new(PeerCertInfo {
            subject: format!("CN={big}"),
            issuer: format!("CN={big}\x1b[2J"),
            names: (0..40).map(|i| format!("{i}.{big}")).collect(),
            not_after: "2030-01-01".into(),
            fingerprint_sha256: "AB:CD".into(),
        });
        let c = compact_cert(info);
        assert!(bus::json_size(&*c) < 8 * 1024, "{} bytes", bus::json_size(&*c));
        assert_eq!(c.names.len(), ROW_NAMES + 1);
        assert_eq!(c.names.last().unwrap(), "…(+24 more names)");
        assert!(c.names[0].starts_with("0.nnn") && c.subject.starts_with("CN=nnn"));
        assert!(!c.issuer.contains('\x1b'));
        // Small certificates keep their shared copy.
        let small = std::sync::Arc::new(PeerCertInfo {
            subject: "CN=b.example".into(),
            issuer: "CN=CA".into(),
            names: vec!["b.example".into()],
            not_after: "x".into(),
            fingerprint_sha256: "y".into(),
        });
        assert!(std::sync::Arc::ptr_eq(&compact_cert(small.clone()), &small));
        let v = compact_verdict(CertVerdict::NameMismatch((0..40).map(|_| big.clone()).collect()));
        assert!(v.to_string().len() < 8 * 1024, "{}", v.to_string().len());
        // The live row, whatever the certificate names.
        let t = table(100, 1 << 20, 1 << 22, 10);
        let a = t.open(Direction::In, &CancellationToken::new(), StreamKind::Federation);
        a.set_tls(TlsInfo {
            version: "TLS 1.3".into(),
            cipher: "x".into(),
            peer_cert: Some(std::sync::Arc::new(PeerCertInfo {
                subject: big.clone(),
                issuer: big.clone(),
                names: vec![big.clone()],
                not_after: "x".into(),
                fingerprint_sha256: "y".into(),
            })),
            cert_verdict: Some(CertVerdict::UntrustedIssuer(big.clone())),
        });
        assert!(bus::json_size(&a.snapshot()) < 4 * 1024, "{}", bus::json_size(&a.snapshot()));
    }

    #[test]
    fn closed_rows_are_bounded_in_bytes_as_well_as_in_entries() {
        let t = ConnTable::new(bus::channel(bus::Backlog::default()), (100, 64 * 1024), TranscriptBudget::new(10, 1024, 4096));
        let root = CancellationToken::new();
        let big = "n".repeat(30_000);
        for i in 0..50 {
            let a = t.open(Direction::In, &root, StreamKind::Federation);
            a.set_domains(None, Some(&format!("{i}.{big}")));
            t.close(&a, "gone");
        }
        let (rows, bytes) = t.closed_usage();
        assert!(bytes <= 64 * 1024, "{bytes} bytes kept");
        assert_eq!(rows, 2, "as many as fit: {rows}");
        // The newest are kept.
        let closed = t.closed();
        assert!(closed.last().unwrap().remote.as_deref().unwrap().starts_with("49."));
        // Small rows are held by the count.
        let t = ConnTable::new(bus::channel(bus::Backlog::default()), (100, 1024 * 1024), TranscriptBudget::new(10, 1024, 4096));
        for _ in 0..150 {
            let a = t.open(Direction::In, &root, StreamKind::Federation);
            t.close(&a, "gone");
        }
        assert_eq!(t.closed_usage().0, 100);
        // A row bigger than the whole budget is not kept at all.
        let t = ConnTable::new(bus::channel(bus::Backlog::default()), (100, 1024), TranscriptBudget::new(10, 1024, 4096));
        let a = t.open(Direction::In, &root, StreamKind::Federation);
        a.set_domains(None, Some(&big));
        t.close(&a, "gone");
        assert_eq!(t.closed_usage(), (0, 0));
    }

    #[tokio::test]
    async fn close_requests_and_shutdown_reach_the_stream_over_its_control_channel() {
        let t = table(10, 1024, 4096, 10);
        let root = CancellationToken::new();
        let a = t.open(Direction::In, &root, StreamKind::Federation);
        let mut control = a.control();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(1), control.closed()).await;
        assert!(pending.is_err(), "nothing asked yet");
        a.request_close_with("policy: blocked", Some(StreamError::new(StreamErrorCondition::PolicyViolation, "blocked")));
        let r = control.closed().await;
        assert_eq!((r.reason.as_str(), r.error.unwrap().condition), ("policy: blocked", StreamErrorCondition::PolicyViolation));
        let b = t.open(Direction::Out, &root, StreamKind::Federation);
        let mut control = b.control();
        root.cancel();
        let r = control.closed().await;
        assert_eq!(r.error.unwrap().condition, StreamErrorCondition::SystemShutdown);
    }

    #[test]
    fn the_row_is_a_projection_of_what_the_machine_observed() {
        let t = table(10, 1024, 4096, 10);
        let a = t.open(Direction::In, &CancellationToken::new(), StreamKind::Federation);
        let d = |s: &str| Domain::parse(s).unwrap();
        a.apply(&Observed::Domains { local: Some("here.test".into()), remote: Some("there.test".into()) });
        a.apply(&Observed::Pair {
            local: d("here.test"),
            remote: d("there.test"),
            status: PairStatus::Pending,
            method: AuthMethod::Dialback,
        });
        a.apply(&Observed::Pair {
            local: d("here.test"),
            remote: d("there.test"),
            status: PairStatus::Valid,
            method: AuthMethod::Dialback,
        });
        a.apply(&Observed::State(ConnState::Established));
        let s = a.snapshot();
        assert_eq!((s.state, s.pairs.len(), s.pairs[0].status), (ConnState::Established, 1, PairStatus::Valid));
        a.apply(&Observed::PairsReset);
        assert!(a.snapshot().pairs.is_empty());
    }

    #[test]
    fn live_transcript_events_carry_a_bounded_text() {
        let tx = bus::channel(bus::Backlog::default());
        let mut rx = tx.subscribe();
        let t = ConnTable::new(tx, (10, usize::MAX), TranscriptBudget::new(100, 1 << 20, 1 << 22));
        let a = t.open(Direction::In, &CancellationToken::new(), StreamKind::Federation);
        a.record("in", "x".repeat(200_000), None);
        let mut seen = None;
        while let Some(ev) = rx.try_recv() {
            if let Event::Transcript { line, .. } = ev {
                seen = Some(line.text.len());
            }
        }
        let n = seen.expect("a transcript event");
        assert!(n < EVENT_TEXT + 64, "{n}");
        assert_eq!(a.transcript()[0].text.len(), 200_000, "the transcript keeps the whole line");
    }

    #[test]
    fn negotiation_is_recorded_to_the_end_of_its_turn_then_packed_while_quiet() {
        let t = table(100, 1 << 20, 1 << 22, 10);
        let a = t.open(Direction::In, &CancellationToken::new(), StreamKind::Federation);
        a.record("in", "<db:result from='b.test' to='a.test'>[dialback key hidden]</db:result>".into(), Some("k".repeat(64)));
        a.apply(&Observed::State(ConnState::Established));
        assert!(a.capturing(), "what the turn that established the stream writes is still recorded");
        a.record("out", "<db:result from='a.test' to='b.test' type='valid'/>".into(), None);
        a.quiet();
        assert!(!a.transcript.lock().unwrap().is_packed(), "not while the negotiation's turn is open");
        a.turn_done();
        assert!(!a.capturing(), "established and its turn over: stanzas are not recorded");
        let before = a.transcript();
        a.quiet();
        assert!(a.transcript.lock().unwrap().is_packed());
        assert_eq!(a.transcript(), before, "read back from the packed form");
        // Someone watches: lines are recorded again after the packed ones; not packed then.
        a.watch(true);
        a.record("in", "<message from='x@b.test' to='y@a.test'/>".into(), None);
        a.quiet();
        let now = a.transcript();
        assert!(!a.transcript.lock().unwrap().is_packed());
        assert_eq!((now.len(), &now[..2], now[1].dir.as_str()), (3, &before[..], "out"));
        assert_eq!(now[0].key.as_deref().map(str::len), Some(64));
        a.watch(false);
        a.quiet();
        assert!(a.transcript.lock().unwrap().is_packed());
        assert_eq!(t.transcript_budget().used(), now.iter().map(line_size).sum::<usize>());
    }

    #[test]
    fn transcript_bytes_are_capped_per_stream_and_in_all() {
        let t = table(10_000, 4096, 16 * 1024, 10);
        let root = CancellationToken::new();
        let a = t.open(Direction::In, &root, StreamKind::Federation);
        for _ in 0..100 {
            a.record("in", "x".repeat(1000), None);
        }
        let kept: usize = a.transcript().iter().map(line_size).sum();
        assert!(kept <= 4096 && kept > 2000, "{kept}");
        assert_eq!(t.transcript_budget().used(), kept);
        // One line bigger than the stream's budget is cut, not refused.
        a.record("in", "y".repeat(100_000), None);
        let last = a.transcript().pop().unwrap();
        assert!(last.text.len() < 4096 && last.text.contains("bytes not kept"));
        // Closed streams count, and go first when the total is spent.
        t.close(&a, "done");
        let before = t.transcript_budget().used();
        assert!(before > 0 && t.transcript(&a.id).is_some());
        let streams: Vec<_> = (0..6).map(|_| t.open(Direction::In, &root, StreamKind::Federation)).collect();
        for s in &streams {
            for _ in 0..4 {
                s.record("in", "z".repeat(900), None);
            }
        }
        assert!(t.transcript_budget().used() <= 16 * 1024);
        assert!(t.transcript(&a.id).is_none(), "the closed stream's transcript went first");
        for s in &streams {
            t.close(s, "done");
        }
        assert!(t.transcript_budget().used() <= 16 * 1024);
        // A stream dropped without closing gives its bytes back.
        let b = t.open(Direction::In, &root, StreamKind::Federation);
        b.record("in", "w".repeat(500), None);
        let with_b = t.transcript_budget().used();
        t.inner.lock().unwrap().live.remove(&b.id);
        drop(b);
        assert_eq!(t.transcript_budget().used(), with_b - 500 - LINE_OVERHEAD);
    }
}
