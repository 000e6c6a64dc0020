//! The one loop every stream runs around its [`Machine`] (`Driver::run`): parse buffered
//! frames one at a time (a restart or TLS upgrade asked for by one frame applies before the
//! next is parsed), carry out the outputs every role has, write in batches, and project what
//! the machine observed onto the connection table, the store and the dashboard's events;
//! what differs by role (its queues, its own outputs, its TLS side) is behind `Role`.
//!
//! A stanza this stream hands the router that meets a full link queue waits here
//! ([`Delivering`]): the stream reads no further frames until the link made room (TCP
//! pushes back on its peer), at most `timeouts.write`; past that the overflow rule answers
//! ([`crate::router::Router::overflow`]). Writes, its own queue and close requests go on
//! meanwhile, so two streams that feed each other never wait on each other for long.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use super::Caps;
use super::conn::{Conn, ConnError, Progress};
use crate::events::{Direction, VerificationOutcome, now_ms};
use crate::proto::machine::{Ending, Input, Machine, Observed, Output, ReadError, TlsRole};
use crate::table::ConnEntry;

/// One stream's machine and connection, and where they report.
pub struct Driver {
    pub caps: Arc<Caps>,
    pub entry: Arc<ConnEntry>,
    pub conn: Conn,
    pub machine: Machine,
    pub direction: Direction,
    /// Close requests for this stream.
    control: crate::table::StreamControl,
    /// When the connection's buffers are given back if nothing happens until then.
    trim_at: Option<Instant>,
    /// Given back already in this quiet spell.
    trimmed: bool,
    /// A stanza waiting for room in a link's queue, and those produced behind it. Boxed:
    /// rare, and every stream's task carries the driver inline (memory per idle stream).
    delivering: Option<Box<Delivering>>,
}

/// The stanza that met a full queue, until when it may wait (`timeouts.write`), and the
/// stanzas this stream produced after it (kept in order; few, since no frame is read
/// meanwhile).
struct Delivering {
    blocked: crate::router::Blocked,
    until: Instant,
    behind: VecDeque<crate::xml::Element>,
}

/// Stanzas from a link's queue batched into one write (few TLS records).
const BATCH: usize = 64;

/// Output waiting for the peer beyond which no more stanzas are taken from a link's queue
/// (they leave it only as fast as the peer reads: backpressure).
pub const STANZA_HIGH_WATER: usize = 64 * 1024;

/// How long a stream must be quiet before its buffers are given back.
const IDLE_TRIM: std::time::Duration = std::time::Duration::from_secs(2);

/// What the driver's loop waits for next.
pub enum Wake {
    Read(Result<usize, ConnError>),
    /// Everything queued was written.
    Written,
    Timer,
    Close(crate::table::CloseRequest),
    /// Quiet for a while: the connection gave its buffers back; the caller trims its own.
    Quiet,
    /// The link a delivery waits for made room (or closed), or the wait's deadline passed
    /// (`true`).
    Room {
        expired: bool,
    },
}

impl Driver {
    pub fn new(caps: Arc<Caps>, entry: Arc<ConnEntry>, conn: Conn, machine: Machine, direction: Direction) -> Driver {
        let control = entry.control();
        Driver { caps, entry, conn, machine, direction, control, trim_at: None, trimmed: false, delivering: None }
    }

    /// Hand a stanza this stream produced (delivered from the peer, or a bounce) to the
    /// router. One that meets a full queue waits for room; until then the stream reads
    /// nothing and what it produces queues behind (in order).
    pub fn route(&mut self, st: crate::xml::Element) {
        if let Some(d) = &mut self.delivering {
            d.behind.push_back(st);
            return;
        }
        if let Some(blocked) = self.caps.router.route(st) {
            self.hold(blocked, VecDeque::new());
        }
    }

    /// Hand the router a stanza the peer sent on an authorised pair, with its proof; as
    /// [`Driver::route`] when a queue is full.
    pub fn deliver(&mut self, delivery: crate::proto::auth::Delivery) {
        if let Some(d) = &mut self.delivering {
            d.behind.push_back(delivery.into_stanza());
            return;
        }
        // Its routing time counts from when its bytes arrived.
        if let Some(blocked) = self.caps.router.deliver(delivery, self.conn.last_read) {
            self.hold(blocked, VecDeque::new());
        }
    }

    /// Whether a delivery waits for room (no frames are read meanwhile).
    pub fn delivering(&self) -> bool {
        self.delivering.is_some()
    }

    fn hold(&mut self, blocked: crate::router::Blocked, behind: VecDeque<crate::xml::Element>) {
        let until = Instant::now() + self.caps.settings.timeouts.write;
        self.delivering = Some(Box::new(Delivering { blocked, until, behind }));
        self.conn.reading = false;
    }

    /// The link made room (route the waiting stanza again: it may meet a full queue again,
    /// within the same deadline) or the deadline passed (the overflow rule); then what
    /// queued behind it.
    fn resume(&mut self, expired: bool) {
        let Some(d) = self.delivering.take() else { return };
        let Delivering { blocked, until, mut behind } = *d;
        let router = self.caps.router.clone();
        if expired {
            router.overflow(blocked);
        } else if let Some(again) = router.route_since(blocked.stanza, blocked.since) {
            self.delivering = Some(Box::new(Delivering { blocked: again, until, behind }));
            return;
        }
        while let Some(st) = behind.pop_front() {
            if let Some(blocked) = router.route(st) {
                return self.hold(blocked, behind);
            }
        }
        self.conn.reading = true;
    }

    /// The stream ended: what still waits is routed without waiting (the overflow rule
    /// answers for a queue still full).
    pub fn abandon_delivery(&mut self) {
        if let Some(d) = self.delivering.take() {
            let Delivering { blocked, behind, .. } = *d;
            let router = &self.caps.router;
            router.route_now(blocked.stanza);
            for st in behind {
                router.route_now(st);
            }
        }
    }

    pub fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    pub fn feed(&mut self, input: Input) {
        // Something happened: the quiet spell (and its buffer trim) starts over.
        self.trim_at = None;
        self.trimmed = false;
        self.machine.handle(Self::now(), input);
    }

    /// A stanza from the link's queue (`None`: the router is gone) and what else is queued
    /// already, up to a batch, fed for one write.
    /// Each one's routing time ends here ([`crate::latency::ROUTING`]: one clock read per
    /// batch).
    pub fn feed_stanzas(&mut self, first: Option<crate::router::Routed>, queue: &mut crate::router::queue::QueueRx<crate::router::Routed>) {
        let Some(r) = first else {
            return self.feed(Input::Close { reason: "router gone".into(), error: None });
        };
        let now = Instant::now();
        let mut next = Some(r);
        for _ in 0..BATCH {
            let Some(r) = next.take().or_else(|| queue.try_recv()) else { break };
            crate::latency::ROUTING.observe(now.saturating_duration_since(r.since));
            self.entry.stanza_out();
            self.feed(Input::Stanza(r.stanza));
        }
    }

    /// Parse one buffered frame into the machine. `false` when none is complete.
    pub fn parse_one(&mut self) -> bool {
        if self.machine.is_closed() || self.delivering.is_some() {
            return false;
        }
        match self.conn.next_frame() {
            Ok(Some(frame)) => {
                let buffered = self.conn.framer.pending();
                self.feed(Input::Frame { frame, buffered });
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.feed(Input::ReadError(ReadError::Xml(e)));
                true
            }
        }
    }

    /// Write what is queued, within the write deadline the machine sets (the negotiation
    /// deadline while unauthenticated); a failure is fed back.
    pub async fn flush(&mut self) {
        if !self.conn.has_pending_output() || self.machine.is_closed() {
            return;
        }
        self.conn.set_deadline(self.machine.write_deadline().map(Instant::from_std));
        if let Err(e) = self.conn.flush().await {
            self.feed(Input::WriteFailed(e.to_string()));
        }
    }

    /// What [`Driver::wait`] saw, fed to the machine.
    pub fn on_wake(&mut self, w: Wake) {
        match w {
            Wake::Close(r) => self.feed(Input::Close { reason: r.reason, error: r.error }),
            Wake::Timer => self.feed(Input::Timer),
            Wake::Written | Wake::Quiet => {}
            Wake::Read(r) => self.on_read(r),
            Wake::Room { expired } => self.resume(expired),
        }
    }

    /// What happened while reading, fed to the machine.
    fn on_read(&mut self, r: Result<usize, ConnError>) {
        match r {
            Ok(_) => self.feed(Input::Read),
            Err(ConnError::Eof) => self.feed(Input::ReadError(ReadError::Eof)),
            Err(ConnError::Io(e)) => self.feed(Input::ReadError(ReadError::Io(e.to_string()))),
            Err(ConnError::Xml(e)) => self.feed(Input::ReadError(ReadError::Xml(e))),
        }
    }

    /// Carry out an output every role has; the others are handed back.
    pub fn common(&mut self, o: Output) -> Option<Output> {
        match o {
            Output::Raw(s) => self.conn.send_raw(&s),
            // A stanza is kept until written: if the stream ends first, its sender hears back.
            Output::Send(el) if is_stanza(&el) => self.conn.send_stanza(el),
            Output::Send(el) => self.conn.send(&el),
            Output::Restart => self.conn.restart(),
            Output::Observe(o) => {
                if o == Observed::State(crate::events::ConnState::Established) {
                    // Authenticated: the stanza size limit we advertise applies from now on.
                    self.conn.authenticated();
                }
                // Federation's streams, either way (not the internal link's).
                if let Observed::Pair { local, remote, status: crate::events::PairStatus::Valid, .. } = &o
                    && self.caps.internal.is_none()
                {
                    self.caps.router.pair_authorised(local, remote);
                }
                observe(&*self.caps.observer, &self.entry, self.direction, o)
            }
            o => return Some(o),
        }
        None
    }

    /// Wait for bytes, the machine's timer or a close request — writing what is queued
    /// meanwhile (reads and writes are not serialised behind each other; a write that the
    /// peer does not take within its deadline fails the stream). A stream quiet for
    /// [`IDLE_TRIM`] gives its buffers back meanwhile (idle streams cost little memory).
    pub async fn wait(&mut self) -> Wake {
        // The machine's outputs of this turn are out (a negotiation that ended in it is
        // recorded whole).
        self.entry.turn_done();
        // Writes end at the negotiation deadline only while the stream is unauthenticated.
        self.conn.set_deadline(self.machine.write_deadline().map(Instant::from_std));
        let deadline = self.machine.deadline().map(Instant::from_std);
        let trim = (!self.trimmed && !self.conn.has_pending_output() && self.delivering.is_none())
            .then(|| *self.trim_at.get_or_insert_with(|| Instant::now() + IDLE_TRIM));
        let (at, trimming) = match (deadline, trim) {
            (Some(d), Some(t)) if t < d => (Some(t), true),
            (None, Some(t)) => (Some(t), true),
            (d, _) => (d, false),
        };
        self.conn.start_write_clock();
        // Only the instant is kept across the wait (the reason is read again if it fires).
        let write_deadline = self.conn.write_deadline().map(|w| w.0);
        // One timer for both the write deadline and the machine's (or the trim's): each
        // timer is ~100 bytes inline in every stream's task (memory per idle stream). The
        // write deadline first when they coincide.
        let (wake_at, write_due) = match (write_deadline, at) {
            (Some(w), Some(a)) if w <= a => (Some(w), true),
            (Some(w), None) => (Some(w), true),
            (_, a) => (a, false),
        };
        // Boxed: the wait for room (a timer and a queue's wake) is rare, and this future is
        // part of every stream's task, idle ones included (memory per idle stream).
        let room = async {
            match &self.delivering {
                Some(d) => Box::pin(tokio::time::timeout_at(d.until, d.blocked.room())).await.is_err(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = self.control.closed() => Wake::Close(r),
            expired = room => Wake::Room { expired },
            _ = sleep_until(wake_at) => {
                if write_due {
                    let why = self.conn.write_deadline().map(|w| w.1).unwrap_or_default();
                    self.feed(Input::WriteFailed(why));
                    return Wake::Written;
                }
                if !trimming {
                    return Wake::Timer;
                }
                self.conn.trim();
                self.machine.trim();
                self.entry.quiet();
                self.trimmed = true;
                Wake::Quiet
            }
            p = self.conn.read_or_write() => match p {
                Progress::Read(r) => Wake::Read(r),
                Progress::Written(Ok(())) => Wake::Written,
                Progress::Written(Err(e)) => {
                    self.feed(Input::WriteFailed(e.to_string()));
                    Wake::Written
                }
            },
        }
    }

    /// The closing handshake (RFC 6120 §4.4) unless the connection is unusable.
    pub async fn close(&mut self, end: &Ending) {
        if self.entry.capturing() {
            // Why it ended, beside what crossed the wire (a peer's stream error included).
            self.entry.record("note", format!("closing: {}", end.reason), None);
        }
        if end.abandon {
            return;
        }
        self.entry.apply(crate::table::Observation::Closing);
        self.conn.close(end.error.as_ref(), self.caps.settings.timeouts.close, end.peer_closed).await;
    }
}

/// What one kind of stream adds to the loop every stream runs (`Driver::run`): the queues
/// it reads besides the socket, the outputs only it has, and whether policy changes concern
/// it. Everything else — frames, writes, timers, close requests, deliveries and bounces to
/// the router, observations — is the driver's, the same for every role.
pub(crate) trait Role {
    /// What arrived on the role's queues.
    type Event;
    /// Which of the role's (at most two) queues may be read now: backpressure and the
    /// machine's state, read before the wait.
    fn open(&self, d: &Driver) -> [bool; 2];
    /// The waits on the role's queues, in this order: the first yields every value (its
    /// end included, where that means something), the second only values; and a policy
    /// change (held pairs released or refused), pending for roles it does not concern.
    /// Plain futures, not an async body holding values: they sit in every stream's task.
    #[allow(clippy::type_complexity)]
    fn queues(
        &mut self,
    ) -> (
        impl Future<Output = Self::Event> + Send + '_,
        impl Future<Output = Option<Self::Event>> + Send + '_,
        impl Future<Output = ()> + Send + '_,
    );
    /// Feed an event to the machine.
    fn feed(&mut self, d: &mut Driver, e: Self::Event);
    /// Carry out an output only this role has (at once: nothing of it stays in the task).
    fn output(&mut self, d: &mut Driver, o: Output);
    /// The TLS handshake the machine asked for. Boxed: rare, and the loop's future is part
    /// of every stream's task (memory per idle stream).
    fn tls<'a>(&'a mut self, d: &'a mut Driver, role: TlsRole) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    /// A quiet stream gives back its queues' buffers.
    fn trim(&mut self);
}

impl Driver {
    /// The loop of every stream: the machine's outputs carried out, buffered frames parsed one
    /// at a time, then a wait for the role's queues, policy changes, bytes, writes, the
    /// machine's timer or a close request; until the machine's [`Output::Close`].
    pub(crate) async fn run<R: Role>(&mut self, role: &mut R) -> Ending {
        loop {
            while let Some(o) = self.machine.poll_output() {
                let Some(o) = self.common(o) else { continue };
                match o {
                    Output::Close(end) => return end,
                    Output::Deliver(st) => {
                        self.entry.stanza_in();
                        self.deliver(st);
                    }
                    Output::Route(st) => self.route(st),
                    Output::StartTls(tls) => role.tls(self, tls).await,
                    o => role.output(self, o),
                }
            }
            if self.parse_one() {
                continue;
            }
            let open = role.open(self);
            let (first, second, policy) = role.queues();
            let step = tokio::select! {
                biased;
                e = first, if open[0] => Step::Role(e),
                Some(e) = second, if open[1] => Step::Role(e),
                () = policy => Step::Policy,
                w = self.wait() => Step::Wake(w),
            };
            match step {
                Step::Role(e) => role.feed(self, e),
                Step::Policy => self.feed(Input::PolicyChanged),
                Step::Wake(wake) => {
                    if matches!(wake, Wake::Quiet) {
                        role.trim();
                    }
                    self.on_wake(wake);
                }
            }
        }
    }
}

/// A stanza: in the server's namespace, or XEP-0114's towards a component.
fn is_stanza(el: &crate::xml::Element) -> bool {
    crate::proto::stanza::is_stanza(el)
        || (el.ns.as_ref() == crate::proto::ns::COMPONENT_ACCEPT && matches!(el.name.as_ref(), "message" | "presence" | "iq"))
}

/// What woke [`Driver::run`].
enum Step<E> {
    Role(E),
    Policy,
    Wake(Wake),
}

/// Sleep until `at`, or forever.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a machine observed: handed to the stream's row, which folds it ([`ConnEntry::apply`],
/// as the driver's own observations); outcomes and pending domains go to the observer.
pub fn observe(observer: &dyn super::Observer, entry: &ConnEntry, direction: Direction, o: Observed) {
    match o {
        Observed::Outcome { local, remote, method, result, reason } => {
            // The session's certificate is on the row since the handshake (before any
            // outcome: the machine judges it after `tls_established`).
            let cert = if result == crate::events::VerificationResult::Valid { entry.peer_cert() } else { None };
            let outcome = VerificationOutcome {
                time_ms: now_ms(),
                stream: entry.id.clone(),
                direction,
                local: local.to_string(),
                remote: remote.to_string(),
                method,
                result,
                reason,
                peer_addr: entry.peer_addr(),
            };
            observer.outcome(outcome, cert)
        }
        Observed::Pending(d) => observer.pending(&d),
        o => entry.apply(&o),
    }
}

/// A TLS session is up: the row takes its facts (version, cipher, the peer's certificate;
/// the transcript notes them) and the machine gets its own (the chain, judged once the
/// claimed domain is known).
pub fn tls_established(entry: &ConnEntry, how: &'static str, tls: &crate::net::tls_io::TlsIo) -> crate::proto::machine::TlsFacts {
    let session = tls.session();
    let (version, cipher) = crate::net::tls::session_facts(session);
    let peer_cert = session.peer_certificates().and_then(|c| c.first()).map(|c| crate::net::tls::peer_cert_info(c));
    entry.apply(crate::table::Observation::Tls { how, info: crate::events::TlsInfo { version, cipher, peer_cert, cert_verdict: None } });
    crate::proto::machine::TlsFacts {
        chain: session.peer_certificates().map(|c| c.to_vec()).unwrap_or_default(),
        at: rustls::pki_types::UnixTime::now(),
    }
}
