//! The connection table: every live stream plus recently closed ones. Each stream's entry
//! holds three things side by side: its row (what the views show, changed only by folding
//! observations through [`ConnEntry::apply`], which sends the one event each change makes),
//! its control channel (close requests, shutdown) and its transcript. The table's lock is
//! taken on open and close — never per stanza: counters are atomics in each entry.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::events::*;
use crate::proto::machine::Observed;
use crate::proto::stream::StreamError;
use crate::types::CertVerdict;

mod control;
mod recording;
mod row;
mod transcript;
pub use control::{CloseRequest, StreamControl};
pub use recording::EVENT_TEXT;
use recording::Recording;
pub use row::{Change, Observation, Row};
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

/// One stream's entry, shared between its task and the table: the row, and beside it the
/// control channel and the transcript.
#[derive(Debug)]
pub struct ConnEntry {
    pub id: String,
    pub direction: Direction,
    /// Federation, the internal server (gateway mode) or a component.
    pub kind: StreamKind,
    pub opened_ms: u64,
    pub counters: Counters,
    /// The row's facts: written only by [`ConnEntry::apply`] (and the table's close).
    row: Mutex<Row>,
    events: bus::Sender,
    close: control::CloseChannel,
    recording: Recording,
    /// The table's metrics: what this stream's observations count (a few per stream).
    metrics: Arc<crate::metrics::StreamMetrics>,
}

impl ConnEntry {
    pub fn snapshot(&self) -> ConnSnapshot {
        let r = self.row.lock().unwrap().clone();
        self.view(r)
    }

    /// The row with the entry's own facts and counters: what the views get.
    fn view(&self, r: Row) -> ConnSnapshot {
        let c = &self.counters;
        ConnSnapshot {
            id: self.id.clone(),
            direction: self.direction,
            kind: self.kind,
            local: r.local,
            remote: r.remote,
            peer_addr: r.peer_addr,
            state: r.state.unwrap_or(ConnState::Connecting),
            stream_id: r.stream_id,
            tls: r.tls,
            pairs: r.pairs,
            opened_ms: self.opened_ms,
            last_activity_ms: c.last_activity_ms.load(Ordering::Relaxed),
            stanzas_in: c.stanzas_in.load(Ordering::Relaxed),
            stanzas_out: c.stanzas_out.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            close_reason: r.close_reason,
            limits: r.limits,
        }
    }

    pub fn state(&self) -> ConnState {
        self.row.lock().unwrap().state.unwrap_or(ConnState::Connecting)
    }

    /// The one way a row changes: fold `o` into it ([`Row::apply`]) and send the event the
    /// change makes — exactly one, or none when nothing changed. (The transcript beside the
    /// row notes TLS facts and verdicts, and learns when the negotiation is over.)
    pub fn apply<'a>(&self, o: impl Into<Observation<'a>>) {
        let o = o.into();
        if let Some(ev) = self.fold(&o) {
            let _ = self.events.send(ev);
        }
    }

    /// [`ConnEntry::apply`] without sending: the event, if the row changed. A row update
    /// is built only for someone listening; the close always (the table keeps it).
    fn fold(&self, o: &Observation<'_>) -> Option<Event> {
        if matches!(o, Observation::Machine(Observed::State(ConnState::Established))) {
            self.recording.established();
        }
        let (change, tls, first_pair) = {
            let mut r = self.row.lock().unwrap();
            let change = r.apply(o)?;
            let tls = matches!(o, Observation::Tls { .. } | Observation::Machine(Observed::Certificate(_))).then(|| r.tls.clone());
            let first_pair = change == Change::Authorised && r.pairs.iter().filter(|p| p.status == PairStatus::Valid).count() == 1;
            (change, tls.flatten(), first_pair)
        };
        self.count(o, change, first_pair);
        if let Some(tls) = tls
            && self.capturing()
        {
            self.record("note", tls_note(o, &tls), None);
        }
        match change {
            Change::Closed => Some(Event::StreamClosed { stream: self.snapshot() }),
            _ if self.events.receiver_count() == 0 => None,
            Change::Updated => Some(Event::StreamUpdated { stream: self.snapshot() }),
            Change::Authorised => match o {
                Observation::Machine(Observed::Pair { local, remote, method, .. }) => Some(Event::PairAuthorised {
                    id: self.id.clone(),
                    local: local.to_string(),
                    remote: remote.to_string(),
                    method: *method,
                }),
                _ => None,
            },
        }
    }

    /// The metrics an observation that changed the row counts.
    fn count(&self, o: &Observation<'_>, change: Change, first_pair: bool) {
        match o {
            Observation::Tls { info, .. } => self.metrics.tls(&info.version, &info.cipher),
            Observation::Machine(Observed::Certificate(v)) => self.metrics.certificate(v),
            Observation::Machine(Observed::Pair { method, .. }) if change == Change::Authorised => {
                self.metrics.authenticated(self.direction, *method);
                if first_pair {
                    self.metrics.setup.observe(now_ms().saturating_sub(self.opened_ms) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }

    /// The peer certificate of the stream's TLS session (as the row keeps it), if any.
    pub fn peer_cert(&self) -> Option<std::sync::Arc<PeerCertInfo>> {
        self.row.lock().unwrap().tls.as_ref().and_then(|t| t.peer_cert.clone())
    }

    pub fn peer_addr(&self) -> Option<String> {
        self.row.lock().unwrap().peer_addr.clone()
    }

    /// Ask the stream to close; its task picks the reason up.
    pub fn request_close(&self, reason: &str) {
        self.request_close_with(reason, None);
    }

    /// Ask the stream to close with a stream error (e.g. `<policy-violation/>`), over its
    /// control channel.
    pub fn request_close_with(&self, reason: &str, error: Option<StreamError>) {
        self.close.request(CloseRequest { reason: reason.to_owned(), error });
    }

    /// The stream's end of its control channel.
    pub fn control(self: &Arc<Self>) -> StreamControl {
        StreamControl { entry: self.clone() }
    }

    /// Every remote domain on this stream: the header's and each pair's.
    pub fn remotes(&self) -> Vec<String> {
        let r = self.row.lock().unwrap();
        let mut v: Vec<String> = r.remote.iter().cloned().collect();
        for p in &r.pairs {
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

    /// Whether transcript lines are being recorded now.
    pub fn capturing(&self) -> bool {
        self.recording.capturing()
    }

    /// The stream's task finished a turn (its machine's outputs are written out): a
    /// negotiation that ended in it is over for the transcript.
    pub fn turn_done(&self) {
        self.recording.turn_done()
    }

    /// The stream is quiet: unless someone watches or it still negotiates, its transcript
    /// is packed (see [`transcript`]).
    pub fn quiet(&self) {
        self.recording.quiet()
    }

    /// Record a transcript line (call only when [`ConnEntry::capturing`]): the bytes as
    /// they crossed the wire, cut to the per-stream cap; the oldest lines go first when this
    /// stream's or everyone's budget is spent.
    pub fn record(&self, dir: &str, text: String, key: Option<String>) {
        self.recording.record(&self.id, &self.events, dir, text, key)
    }

    pub fn transcript(&self) -> Vec<TranscriptLine> {
        self.recording.lines()
    }

    /// A viewer starts or stops following this stream's transcript.
    pub fn watch(&self, on: bool) {
        self.recording.watch(on)
    }
}

/// The transcript's note about a TLS session that came up, or a verdict on its
/// certificate (`tls`: the row's, compacted).
fn tls_note(o: &Observation<'_>, tls: &TlsInfo) -> String {
    let verdict = tls.cert_verdict.as_ref();
    let Observation::Tls { how, .. } = o else {
        return format!("certificate verdict: {}", verdict.map(|v| v.to_string()).unwrap_or_default());
    };
    let cert = tls.peer_cert.as_ref().map_or("none".to_owned(), |c| {
        // A certificate may name hundreds of domains; the note shows a few (the row's
        // copy is compacted already: its names are clipped and counted).
        let mut names = c.names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        if c.names.len() > 8 {
            names.push_str(&format!(" and {} more", c.names.len() - 8));
        }
        format!("{} (issuer {}, names {names})", c.subject, c.issuer)
    });
    let verdict = verdict.map(|v| format!("; verdict: {v}")).unwrap_or_default();
    format!("{how} established: {} {}; peer certificate: {cert}{verdict}", tls.version, tls.cipher)
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
    metrics: Arc<crate::metrics::StreamMetrics>,
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
            metrics: Arc::default(),
        }
    }

    /// The live streams for a scrape, under the lock a close moves counters under: by
    /// (direction, kind, how the first pair authenticated), and their stanza and byte
    /// counters, (in, out).
    #[allow(clippy::type_complexity)]
    pub fn scrape(&self) -> (Vec<((Direction, StreamKind, String), u64)>, (u64, u64), (u64, u64)) {
        let inner = self.inner.lock().unwrap();
        let mut by: Vec<((Direction, StreamKind, String), u64)> = Vec::new();
        let (mut st, mut by_) = ((0, 0), (0, 0));
        for e in inner.live.values() {
            let auth = e
                .row
                .lock()
                .unwrap()
                .pairs
                .iter()
                .find(|p| p.status == PairStatus::Valid)
                .map_or("none".to_owned(), |p| p.method.as_str().to_owned());
            let key = (e.direction, e.kind, auth);
            match by.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => by.push((key, 1)),
            }
            let c = &e.counters;
            st.0 += c.stanzas_in.load(Ordering::Relaxed);
            st.1 += c.stanzas_out.load(Ordering::Relaxed);
            by_.0 += c.bytes_in.load(Ordering::Relaxed);
            by_.1 += c.bytes_out.load(Ordering::Relaxed);
        }
        (by, st, by_)
    }

    /// What the streams counted as they went (see [`crate::metrics`]).
    pub fn metrics(&self) -> &crate::metrics::StreamMetrics {
        &self.metrics
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
            row: Mutex::new(Row::default()),
            events: self.events.clone(),
            close: control::CloseChannel::new(parent.clone()),
            recording: Recording::new(self.budget.clone()),
            metrics: self.metrics.clone(),
        });
        self.metrics.opened(direction, kind);
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
        // The row's last fold (nothing when it was closed before: the table has it already).
        let Some(Event::StreamClosed { stream: snap }) = entry.fold(&Observation::Closed { reason }) else { return };
        {
            // Taken and handed over under the table's lock (as `transcript` reads it), so
            // whoever finds the stream, live or among the closed ones, finds its transcript.
            let mut inner = self.inner.lock().unwrap();
            if inner.live.remove(&entry.id).is_none() {
                // Closed before: the entry keeps it (and gives its bytes back when dropped).
                return;
            }
            // Its counters move to the closed streams' totals under the lock a scrape reads
            // the live ones under: counted once, whenever the scrape comes.
            self.metrics.closed(snap.direction, reason, (snap.stanzas_in, snap.stanzas_out), (snap.bytes_in, snap.bytes_out));
            let mut t = std::mem::take(&mut *entry.recording.transcript.lock().unwrap());
            t.pack();
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
        // Under the table's lock: `close` moves a transcript from its row to the closed
        // ones under it, and a reader in between would find neither.
        let inner = self.inner.lock().unwrap();
        match inner.live.get(id) {
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
        not_after_s: c.not_after_s,
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
    use crate::proto::stream::StreamErrorCondition;

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
            not_after_s: None,
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
            not_after_s: None,
            fingerprint_sha256: "y".into(),
        });
        assert!(std::sync::Arc::ptr_eq(&compact_cert(small.clone()), &small));
        let v = compact_verdict(CertVerdict::NameMismatch((0..40).map(|_| big.clone()).collect()));
        assert!(v.to_string().len() < 8 * 1024, "{}", v.to_string().len());
        // The live row, whatever the certificate names.
        let t = table(100, 1 << 20, 1 << 22, 10);
        let a = t.open(Direction::In, &CancellationToken::new(), StreamKind::Federation);
        a.apply(Observation::Tls {
            how: "TLS",
            info: TlsInfo {
                version: "TLS 1.3".into(),
                cipher: "x".into(),
                peer_cert: Some(std::sync::Arc::new(PeerCertInfo {
                    subject: big.clone(),
                    issuer: big.clone(),
                    names: vec![big.clone()],
                    not_after: "x".into(),
                    not_after_s: None,
                    fingerprint_sha256: "y".into(),
                })),
                cert_verdict: Some(CertVerdict::UntrustedIssuer(big.clone())),
            },
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
            a.apply(&Observed::Domains { local: None, remote: Some(format!("{i}.{big}")) });
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
        a.apply(&Observed::Domains { local: None, remote: Some(big.clone()) });
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
        let d = |s: &str| crate::domain::Domain::parse(s).unwrap();
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

    /// Events of `rx` now: updates (with their state), authorisations and closes.
    fn row_events(rx: &mut bus::Receiver) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv())
            .filter_map(|ev| match ev {
                Event::StreamUpdated { stream } => Some(format!("updated {}", stream.state.as_str())),
                Event::PairAuthorised { remote, .. } => Some(format!("authorised {remote}")),
                Event::StreamClosed { stream } => Some(format!("closed {}", stream.close_reason.unwrap_or_default())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_change_of_a_row_sends_one_event_and_no_change_none() {
        let tx = bus::channel(bus::Backlog::default());
        let mut rx = tx.subscribe();
        let t = ConnTable::new(tx, (10, usize::MAX), TranscriptBudget::new(100, 1 << 20, 1 << 22));
        let a = t.open(Direction::In, &CancellationToken::new(), StreamKind::Federation);
        let d = |s: &str| crate::domain::Domain::parse(s).unwrap();
        let pair = |status| Observed::Pair { local: d("here.test"), remote: d("there.test"), status, method: AuthMethod::Dialback };
        row_events(&mut rx);
        a.apply(Observation::PeerAddr("127.0.0.1:1".parse().unwrap()));
        a.apply(&Observed::Domains { local: Some("here.test".into()), remote: Some("there.test".into()) });
        a.apply(&Observed::Domains { local: Some("here.test".into()), remote: None });
        a.apply(&pair(PairStatus::Pending));
        a.apply(&pair(PairStatus::Valid));
        a.apply(&pair(PairStatus::Valid));
        a.apply(&Observed::State(ConnState::Established));
        a.apply(&Observed::State(ConnState::Established));
        a.apply(&Observed::Pending(d("there.test")));
        assert_eq!(
            row_events(&mut rx),
            ["updated connecting", "updated connecting", "updated connecting", "authorised there.test", "updated established"]
        );
        // The TLS facts change the row and put a note in the transcript beside it.
        let tls = TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), peer_cert: None, cert_verdict: None };
        a.apply(Observation::Tls { how: "TLS", info: tls });
        a.apply(&Observed::Certificate(CertVerdict::SelfSigned));
        assert_eq!(row_events(&mut rx), ["updated established", "updated established"]);
        let notes: Vec<String> = a.transcript().into_iter().filter(|l| l.dir == "note").map(|l| l.text).collect();
        assert_eq!(notes, ["TLS established: TLSv1.3 X; peer certificate: none", "certificate verdict: self-signed"]);
        // The close is the table's event, once; the row is final after it.
        t.close(&a, "gone");
        t.close(&a, "again");
        a.apply(Observation::Closing);
        assert_eq!(row_events(&mut rx), ["closed gone"]);
        assert_eq!(t.closed()[0].state, ConnState::Closed);
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
        assert!(!a.recording.transcript.lock().unwrap().is_packed(), "not while the negotiation's turn is open");
        a.turn_done();
        assert!(!a.capturing(), "established and its turn over: stanzas are not recorded");
        let before = a.transcript();
        a.quiet();
        assert!(a.recording.transcript.lock().unwrap().is_packed());
        assert_eq!(a.transcript(), before, "read back from the packed form");
        // Someone watches: lines are recorded again after the packed ones; not packed then.
        a.watch(true);
        a.record("in", "<message from='x@b.test' to='y@a.test'/>".into(), None);
        a.quiet();
        let now = a.transcript();
        assert!(!a.recording.transcript.lock().unwrap().is_packed());
        assert_eq!((now.len(), &now[..2], now[1].dir.as_str()), (3, &before[..], "out"));
        assert_eq!(now[0].key.as_deref().map(str::len), Some(64));
        a.watch(false);
        a.quiet();
        assert!(a.recording.transcript.lock().unwrap().is_packed());
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
