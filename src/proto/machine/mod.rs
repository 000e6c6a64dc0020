//! The s2s stream machine, sans-I/O (in the manner of rustls and quinn-proto): no sockets,
//! no tasks, no clock. A driver feeds it [`Input`]s with the time they happened —
//! frames from the framer, TLS facts, dialback answers, timers, operator commands,
//! stanzas to send — and carries out the [`Output`]s it queues: writes, TLS handshakes,
//! parser restarts, deliveries, questions to an authoritative server, observations for
//! the connection table, store and dashboard, and finally how to close.
//!
//! One type serves both directions: [`Machine::receiving`] for streams a peer opened
//! (we are the Receiving Server of its claims and the Authoritative Server for its
//! `db:verify`), [`Machine::originating`] for streams we opened for one domain pair (we are
//! the Originating Server, and carry `db:verify` to the peer's Authoritative Server).
//! The transitions of each role read in one place: [`receiving`] and [`originating`].
//!
//! What a machine may consult is narrow and explicit: its [`Env`] (hosted domains, its
//! timeouts and limits, the security rules, dialback keys, a policy view, a certificate
//! judge, stream ids) and, for inbound streams, an [`Admission`] slot.

pub mod component;
mod originating;
pub use originating::{Failure, verify_failure};
mod receiving;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::domain::Domain;
use crate::types::{AuthMethod, CertVerdict, ConnState, PairStatus, Security, StreamLimits, Verdict, VerificationResult};
use crate::xml::{Element, Frame, XmlError};

use super::dialback::{Answer, DialbackKeys};
use super::stanza::StanzaErrorCondition;
use super::stream::{PeerStreamError, StreamError, StreamErrorCondition};

/// The timeouts a stream machine keeps (all from `[timeouts]`, `approval_wait` from
/// `[policy]`).
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub negotiation: Duration,
    pub dialback: Duration,
    pub idle_inbound: Duration,
    pub idle_outbound: Duration,
    pub keepalive: Duration,
    pub approval_wait: Duration,
}

/// The limits a stream machine enforces itself (from `[limits]`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_pairs_per_stream: usize,
    pub max_verifications_in_flight: usize,
    pub verifications_per_minute: usize,
    /// Stanzas kept per inbound stream while a domain awaits approval (`outbound_queue`).
    pub held_stanzas: usize,
    /// Their bytes (`outbound_queue_bytes`).
    pub held_bytes: usize,
    /// Largest top-level element accepted (`max_stanza_size`: the framer enforces it; the
    /// machine advertises it, XEP-0478).
    pub max_bytes: usize,
}

/// The policy as a stream sees it: a verdict per remote domain.
pub trait PolicyView: Send + Sync {
    fn verdict(&self, remote: &Domain) -> Verdict;
}

/// Judges a peer's certificate chain for a domain at a time (RFC 6125, XEP-0178).
pub trait CertJudge: Send + Sync {
    fn judge(&self, chain: &[CertificateDer<'_>], domain: &Domain, at: UnixTime) -> CertVerdict;
}

/// An inbound stream's place under the connection limits: moving from the
/// unauthenticated limits to `limits.max_inbound` may be refused (the key is returned).
pub trait Admission: Send {
    fn authenticated(&mut self) -> Result<(), crate::types::LimitKey>;
}

/// Where the answer to a verification an originating stream carries goes (the receiving
/// stream that asked): given to the machine with the request ([`Input::Verify`]), kept with
/// it, and handed back with the answer ([`Output::VerifyAnswer`]) — by the peer's
/// authoritative server, or by the machine when the stream ends first; once either way.
pub trait Reply: Send + std::fmt::Debug {
    fn send(self: Box<Self>, answer: Answer, detail: Option<String>);
}

/// Everything stream machines of one server share, built once by the engine.
pub struct Env {
    /// `server.domains` and the components' domains; the first answers for streams that
    /// name none.
    pub hosted: Vec<Domain>,
    /// The gateway's side towards its internal server: the domains streams may be addressed
    /// to (and claim to be served here) are every domain *but* `hosted` — the world, as the
    /// internal server sees it through drawbridge.
    pub serves_world: bool,
    /// Domains whose subdomains are served too: the external components' (XEP-0114), which
    /// may use subdomains of their own domain.
    pub with_subdomains: Vec<Domain>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub security: Security,
    pub keys: DialbackKeys,
    pub policy: Arc<dyn PolicyView>,
    pub certs: Arc<dyn CertJudge>,
    /// A fresh, unguessable stream id (RFC 6120 §4.7.3).
    pub stream_ids: Box<dyn Fn() -> String + Send + Sync>,
    /// Whether a stream id is one this server issued ([`StreamIds::issued_here`]): the
    /// originating side finding it in the peer's header is talking to itself.
    pub issued_here: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

/// The stream ids one server issues: random, and tagged with a MAC under a key of this
/// process, so the server recognises an id it issued when it comes back in the header its
/// own outbound stream reads — a stream it opened to itself, whatever the addresses (a
/// forwarder, NAT, a hostile domain's DNS): issue 16's loops, refused by construction.
pub struct StreamIds {
    key: [u8; 32],
}

impl StreamIds {
    /// Random bytes, then their tag.
    const RANDOM: usize = 16;
    const TAG: usize = 8;

    pub fn new() -> StreamIds {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("OS randomness");
        StreamIds { key }
    }

    fn tag(&self, random: &[u8]) -> Vec<u8> {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(random);
        mac.finalize().into_bytes()[..Self::TAG].to_vec()
    }

    /// A fresh id: 128 random bits and a 64-bit tag, 48 hex digits.
    pub fn issue(&self) -> String {
        let mut random = [0u8; Self::RANDOM];
        getrandom::fill(&mut random).expect("OS randomness");
        let mut id = hex::encode(random);
        id.push_str(&hex::encode(self.tag(&random)));
        id
    }

    /// Whether `id` is one of ours (constant time in the tag).
    pub fn issued_here(&self, id: &str) -> bool {
        use subtle::ConstantTimeEq;
        if id.len() != 2 * (Self::RANDOM + Self::TAG) || !id.is_ascii() {
            return false;
        }
        let (Ok(random), Ok(tag)) = (hex::decode(&id[..2 * Self::RANDOM]), hex::decode(&id[2 * Self::RANDOM..])) else { return false };
        self.tag(&random).ct_eq(&tag).into()
    }
}

impl Default for StreamIds {
    fn default() -> Self {
        StreamIds::new()
    }
}

impl Env {
    /// Whether `d` is on our side of this server's streams: what a stream may be addressed
    /// to and what a peer may not claim to be. `hosted` and the components' subdomains; on
    /// the gateway's internal link ([`Env::serves_world`]), every other domain instead.
    pub fn is_local_side(&self, d: &Domain) -> bool {
        let sub = || self.with_subdomains.iter().any(|c| d.is_subdomain_of(c));
        (self.hosted.iter().any(|h| h == d) || sub()) != self.serves_world
    }

    fn default_domain(&self) -> &Domain {
        &self.hosted[0]
    }

    /// The rule that requires certificates of `domain` (so no dialback), if one does.
    fn cert_only_rule(&self, domain: &str) -> Option<String> {
        match self.security.auth_for(domain) {
            (crate::types::AuthMode::CertOnly, rule) => Some(rule),
            _ => None,
        }
    }
}

/// What happened, fed to [`Machine::handle`].
#[derive(Debug)]
pub enum Input {
    /// Bytes arrived (whitespace keepalives too): the stream is alive.
    Read,
    /// A frame from the framer; `buffered`: bytes already read behind it (after
    /// `<starttls/>` or `<proceed/>` that is plaintext injection).
    Frame { frame: Frame, buffered: usize },
    /// Reading failed.
    ReadError(ReadError),
    /// A write did not complete (deadline, reset, or abandoned by a close request).
    WriteFailed(String),
    /// The TLS handshake asked for by [`Output::StartTls`] completed.
    TlsEstablished(TlsFacts),
    /// It failed.
    TlsFailed(String),
    /// Receiving Server: the authoritative server's answer for a pair we asked about
    /// ([`Output::Ask`]); `detail` is the full reason for the operator.
    Answer { local: Domain, remote: Domain, answer: Answer, detail: Option<String> },
    /// Originating stream: a receiving server of ours asks the peer's authoritative server
    /// about a key; the answer comes back as [`Output::VerifyAnswer`] with `reply`.
    Verify { stream_id: String, key: String, reply: Box<dyn Reply> },
    /// Originating stream: a stanza to send.
    Stanza(Element),
    /// The policy changed (held pairs may be released or refused).
    PolicyChanged,
    /// The operator (or shutdown) closes the stream.
    Close { reason: String, error: Option<StreamError> },
    /// Originating streams, after [`Output::Drain`]: every stanza still queued was fed.
    Drained,
    /// The time given to [`Machine::handle`] reached [`Machine::deadline`].
    Timer,
    /// Component streams: the router's answer to [`Output::Attach`] (when refused, the
    /// stream error's condition and why: `conflict` when another stream has the domain,
    /// `resource-constraint` at `limits.max_inbound`).
    Attached(Result<(), (crate::proto::stream::StreamErrorCondition, String)>),
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    Eof,
    Io(String),
    Xml(XmlError),
}

/// What a TLS handshake established, as far as the machine needs it.
#[derive(Debug, Clone)]
pub struct TlsFacts {
    pub chain: Vec<CertificateDer<'static>>,
    /// When (wall clock), for judging the certificate's dates.
    pub at: UnixTime,
}

/// Which side of a TLS handshake we take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRole {
    /// After our `<proceed/>`, with the certificate for `local`.
    Server { local: Domain },
    /// After the peer's `<proceed/>`, or from the first byte (XEP-0368) when `direct`.
    Client { direct: bool },
}

/// A Receiving Server's question to an authoritative server (XEP-0220 §2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub local: Domain,
    pub remote: Domain,
    pub stream_id: String,
    pub key: String,
}

/// What a machine asks its driver to do, in order.
#[derive(Debug)]
pub enum Output {
    /// Bytes that are not an element: our stream header, a whitespace keepalive.
    Raw(String),
    Send(Element),
    StartTls(TlsRole),
    /// A stream restart (RFC 6120 §4.3.3): a fresh parser, nothing carried over.
    Restart,
    /// A stanza of an authorised pair, checked (RFC 6120 §8) and carrying the pair's proof:
    /// to the router.
    Deliver(crate::proto::auth::Delivery),
    /// A stanza we generated (an error reply): to the router.
    Route(Element),
    Ask(Ask),
    /// The answer for a [`Input::Verify`]; `detail` for the operator.
    VerifyAnswer {
        reply: Box<dyn Reply>,
        answer: Answer,
        detail: Option<String>,
    },
    Observe(Observed),
    /// Component streams: attach the domain to this stream in the router (answered by
    /// [`Input::Attached`]).
    Attach(Domain),
    /// Originating streams closing on purpose: stop taking new stanzas, feed every one still
    /// queued ([`Input::Stanza`]), then [`Input::Drained`]; the close follows.
    Drain,
    /// The end: carried out last; the machine takes no more input after it.
    Close(Ending),
}

/// What the machine observed, for the connection table, the store and the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    State(ConnState),
    Domains {
        local: Option<String>,
        remote: Option<String>,
    },
    StreamId(String),
    Pair {
        local: Domain,
        remote: Domain,
        status: PairStatus,
        method: AuthMethod,
    },
    PairRemoved {
        local: Domain,
        remote: Domain,
    },
    /// Everything learned before TLS is forgotten.
    PairsReset,
    Certificate(CertVerdict),
    Outcome {
        local: Domain,
        remote: Domain,
        method: AuthMethod,
        result: VerificationResult,
        reason: String,
    },
    /// A verified domain nobody decided on waits for the operator (approval mode).
    Pending(Domain),
    /// The stream's limits (XEP-0478), ours and the peer's, as last advertised.
    Limits(StreamLimits),
}

/// How a stream ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// Sent before our `</stream:stream>`.
    pub error: Option<StreamError>,
    pub reason: String,
    /// The peer closed already: do not wait for its `</stream:stream>`.
    pub peer_closed: bool,
    /// The connection is unusable (read or write failed): send nothing more.
    pub abandon: bool,
    pub kind: EndKind,
}

/// How a stream ended, and so what becomes of the stanzas still queued for it (and, for
/// originating streams, of the verifications not yet carried): decided here, carried out by
/// the driver ([`Ending::bounce`], [`Ending::unanswered`]). One byte: an ending is part of
/// every stream's task; the bounce text is derived, not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// Receiving streams: nothing is queued.
    Inbound,
    /// Could not be set up (or the policy refused): queued stanzas bounce with this stanza
    /// error condition (RFC 6120 §8.3.3).
    Failed { condition: StanzaErrorCondition },
    /// Closed on purpose (idle, operator, shutdown), after what was queued was fed to the
    /// machine and sent ([`Output::Drain`]): nothing is written after [`Output::Close`].
    Closed,
    /// Lost after it was established: what is queued gets a new stream.
    Lost,
    /// A component's stream ended: what was queued for it bounces.
    Gone,
    /// A component's stream ended before its handshake was accepted (a wrong secret, a
    /// handshake out of order): nothing was queued; its connection slot is kept a while, so
    /// that each guess of the secret costs time.
    Refused,
}

impl Ending {
    /// What the senders of the stanzas still queued get: a bounce with this condition and
    /// text, or (`None`) the stanzas are routed again (a new stream; its failure bounces).
    /// `remote`: the peer's domain of an originating stream, `env` its machine's.
    ///
    /// The text of a failure: a policy's reason is theirs to know; otherwise the remote and
    /// the reason — except on the internal link (the world is served on this side,
    /// `serves_world`), whose bounces go to the world: nothing about the internal server
    /// (its address, its errors) leaves; the operator has the full reason.
    pub fn bounce(&self, env: &Env, remote: &Domain) -> Option<(StanzaErrorCondition, String)> {
        match self.kind {
            EndKind::Failed { condition } => {
                let text = if env.serves_world {
                    format!("{remote} cannot be reached right now")
                } else if condition == StanzaErrorCondition::PolicyViolation {
                    self.reason.clone()
                } else {
                    format!("{remote}: {}", self.reason)
                };
                Some((condition, text))
            }
            EndKind::Gone | EndKind::Refused => Some((StanzaErrorCondition::ServiceUnavailable, "the component disconnected".to_owned())),
            EndKind::Inbound | EndKind::Closed | EndKind::Lost => None,
        }
    }
}

impl Ending {
    /// The answer for a verification still waiting when an originating stream to `remote`
    /// ended (never sent, or sent and not answered), and its detail for the operator.
    pub fn unanswered(&self, remote: &Domain) -> (Answer, String) {
        match self.kind {
            EndKind::Failed { condition } => (verify_failure(remote, condition), self.reason.clone()),
            EndKind::Closed => (verify_failure(remote, StanzaErrorCondition::RemoteServerNotFound), "stream closed".to_owned()),
            _ => (verify_failure(remote, StanzaErrorCondition::RemoteServerNotFound), self.reason.clone()),
        }
    }

    fn error(condition: StreamErrorCondition, text: impl Into<String>) -> Ending {
        let e = StreamError::new(condition, text);
        Ending { reason: format!("sent {e}"), error: Some(e), peer_closed: false, abandon: false, kind: EndKind::Inbound }
    }

    fn quiet(reason: impl Into<String>, peer_closed: bool) -> Ending {
        Ending { error: None, reason: reason.into(), peer_closed, abandon: false, kind: EndKind::Inbound }
    }
}

enum Role {
    Receiving(Box<receiving::Receiving>),
    Originating(Box<originating::Originating>),
    Component(Box<component::Component>),
}

/// One s2s stream's protocol state.
pub struct Machine {
    env: Arc<Env>,
    /// The connection table's id, for log lines.
    log: Arc<str>,
    out: VecDeque<Output>,
    closed: bool,
    role: Role,
}

impl Machine {
    /// A stream a peer opened. `direct`: the certificate chain of a direct TLS connection
    /// (XEP-0368), judged once the header names the claimed domain.
    pub fn receiving(env: Arc<Env>, log: Arc<str>, now: Instant, direct: Option<TlsFacts>, admission: Box<dyn Admission>) -> Machine {
        let r = receiving::Receiving::new(&env, now, direct, admission);
        Machine { env, log, out: VecDeque::new(), closed: false, role: Role::Receiving(Box::new(r)) }
    }

    /// A stream we opened for (local, remote), its TCP connection just made. `direct`: TLS
    /// from the first byte (XEP-0368).
    pub fn originating(env: Arc<Env>, log: Arc<str>, now: Instant, local: Domain, remote: Domain, direct: bool) -> Machine {
        let (mut out, mut closed) = (VecDeque::new(), false);
        let o = originating::Originating::start(
            &mut Cx { env: &env, log: &log, out: &mut out, closed: &mut closed, component: false },
            now,
            local,
            remote,
            direct,
        );
        Machine { env, log, out, closed, role: Role::Originating(Box::new(o)) }
    }

    /// An external component's stream (XEP-0114), accepted on `[components] listen`; its
    /// place under the connection limits moves to the authenticated ones at the handshake.
    pub fn component(env: Arc<Env>, log: Arc<str>, now: Instant, secrets: component::Secrets, admission: Box<dyn Admission>) -> Machine {
        let c = component::Component::new(secrets, now, env.timeouts.negotiation, admission);
        Machine { env, log, out: VecDeque::new(), closed: false, role: Role::Component(Box::new(c)) }
    }

    /// Feed one input at time `now`. After [`Output::Close`] inputs are ignored.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.closed {
            return;
        }
        let component = matches!(self.role, Role::Component(_));
        let mut cx = Cx { env: &self.env, log: &self.log, out: &mut self.out, closed: &mut self.closed, component };
        match &mut self.role {
            Role::Receiving(r) => r.handle(&mut cx, now, input),
            Role::Originating(o) => o.handle(&mut cx, now, input),
            Role::Component(c) => c.handle(&mut cx, now, input),
        }
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Give back the output queue's buffer while it is empty (an idle stream).
    pub fn trim(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
    }

    /// When [`Input::Timer`] is due next.
    pub fn deadline(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        match &self.role {
            Role::Receiving(r) => r.deadline(&self.env),
            Role::Originating(o) => o.deadline(&self.env),
            Role::Component(c) => c.deadline(&self.env),
        }
    }

    /// The latest a write (or a TLS handshake) may finish: the negotiation deadline while
    /// the stream is not authenticated.
    pub fn write_deadline(&self) -> Option<Instant> {
        match &self.role {
            Role::Receiving(r) => r.write_deadline(),
            Role::Originating(o) => o.write_deadline(),
            Role::Component(c) => c.write_deadline(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Originating streams: whether stanzas may be fed now (established and allowed).
    pub fn accepts_stanzas(&self) -> bool {
        match &self.role {
            Role::Originating(o) => !self.closed && o.established(),
            Role::Component(c) => !self.closed && c.established(),
            Role::Receiving(_) => false,
        }
    }

    /// Outbound streams: whether the peer accepts `st` by the limit it advertised
    /// (XEP-0478); `Err` carries the bounce for its sender (`None`: not answerable). Checked
    /// for every stanza fed; for what is written past the machine (a closing stream's queue).
    pub fn check_peer_limit(&self, st: &Element) -> Result<(), Option<Element>> {
        match &self.role {
            Role::Originating(o) => o.check_peer_limit(&self.log, st),
            _ => Ok(()),
        }
    }

    /// Originating streams: whether `db:verify` requests may be fed now (past negotiation).
    pub fn accepts_verifies(&self) -> bool {
        matches!(&self.role, Role::Originating(o) if !self.closed && o.authenticating_or_later())
    }
}

/// What a role's transition may touch: the environment and the output queue.
struct Cx<'a> {
    env: &'a Env,
    log: &'a str,
    out: &'a mut VecDeque<Output>,
    closed: &'a mut bool,
    /// A component's stream: however it ends, what was queued for it bounces.
    component: bool,
}

impl Cx<'_> {
    fn send(&mut self, el: Element) {
        self.out.push_back(Output::Send(el));
    }

    fn observe(&mut self, o: Observed) {
        self.out.push_back(Output::Observe(o.kept()));
    }

    fn state(&mut self, s: ConnState) {
        self.observe(Observed::State(s));
    }

    fn outcome(&mut self, local: &Domain, remote: &Domain, method: AuthMethod, result: VerificationResult, reason: String) {
        self.observe(Observed::Outcome { local: local.clone(), remote: remote.clone(), method, result, reason });
    }

    fn close(&mut self, mut e: Ending) {
        if !*self.closed {
            *self.closed = true;
            // The reason is logged, stored in the closed row and shown; the error's text too
            // (and the peer may as well get it escaped).
            e.reason = kept(e.reason);
            if let Some(err) = &mut e.error {
                err.text = kept(std::mem::take(&mut err.text));
            }
            if self.component && e.kind == EndKind::Inbound {
                let refused = e.error.as_ref().is_some_and(|err| err.condition == StreamErrorCondition::NotAuthorized);
                e.kind = if refused { EndKind::Refused } else { EndKind::Gone };
            }
            self.out.push_back(Output::Close(e));
        }
    }
}

/// Bytes kept of a text a stream reports (an outcome's reason, a close reason): ours, with
/// a peer's words in it — each already clipped where it was taken; the whole is bounded too.
pub const KEPT_TEXT: usize = 4096;

/// `s` as it may be reported: escaped and clipped ([`crate::text::clip`]). Every text a
/// machine hands to the table, the store, the log or an event passes here, so no call site
/// that forgot to clip a peer's words lets a control character through.
fn kept(s: String) -> String {
    match crate::text::clip(&s, KEPT_TEXT) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(o) => o,
    }
}

impl Observed {
    /// What the table, the store and events may receive (see [`kept`]): reasons and the
    /// peer's stream id escaped and clipped.
    fn kept(self) -> Observed {
        match self {
            Observed::StreamId(id) => Observed::StreamId(crate::text::clip(&id, 128).into_owned()),
            Observed::Domains { local, remote } => Observed::Domains { local: local.map(kept), remote: remote.map(kept) },
            Observed::Outcome { local, remote, method, result, reason } => {
                Observed::Outcome { local, remote, method, result, reason: kept(reason) }
            }
            o => o,
        }
    }
}

/// How a read error ends a stream (RFC 6120 §4.9.3): the peer's own failures close
/// quietly, parse errors get the matching stream error.
pub fn read_error_ending(e: &ReadError) -> Ending {
    match e {
        ReadError::Eof => Ending::quiet("connection closed by the peer", true),
        ReadError::Io(e) => Ending::quiet(format!("I/O error: {e}"), true),
        ReadError::Xml(x) => xml_error(x),
    }
}

/// The stream error for what the framer refused.
pub fn xml_error(x: &XmlError) -> Ending {
    use StreamErrorCondition as C;
    match x {
        XmlError::Restricted(m) => Ending::error(C::RestrictedXml, m.clone()),
        e @ (XmlError::TooLarge { .. } | XmlError::TooLargeUnauthenticated { .. } | XmlError::TooDeep { .. }) => {
            Ending::error(C::PolicyViolation, e.to_string())
        }
        XmlError::TextAtTopLevel => Ending::error(C::BadFormat, "character data between stanzas"),
        XmlError::NotWellFormed(m) => Ending::error(C::NotWellFormed, m.clone()),
    }
}

/// Our limits (XEP-0478 §2.1) for the stream features: `max-bytes` — the largest top-level
/// element we accept (`limits.max_stanza_size`, enforced by the framer) — and, where we
/// close quiet streams, `idle-seconds`.
fn limits_feature(env: &Env, idle: Option<Duration>) -> Element {
    let mut l = Element::new("limits", crate::xml::ns::STREAM_LIMITS)
        .child(Element::new("max-bytes", crate::xml::ns::STREAM_LIMITS).text(env.limits.max_bytes.to_string()));
    if let Some(i) = idle {
        l = l.child(Element::new("idle-seconds", crate::xml::ns::STREAM_LIMITS).text(i.as_secs().to_string()));
    }
    l
}

/// The limits a peer advertised in its stream features (XEP-0478): `max-bytes` and
/// `idle-seconds`, each `None` when absent or not a positive integer — features without
/// `<limits/>` (Prosody 0.12) mean no cap beyond our own.
fn peer_limits(features: &Element) -> (Option<u64>, Option<u64>) {
    let Some(l) = features.get_child("limits", crate::xml::ns::STREAM_LIMITS) else {
        return (None, None);
    };
    let num = |name: &str| {
        l.get_child(name, crate::xml::ns::STREAM_LIMITS).and_then(|c| c.text_content().trim().parse::<u64>().ok()).filter(|n| *n > 0)
    };
    (num("max-bytes"), num("idle-seconds"))
}

/// The peer ended the stream with `e` (RFC 6120 §4.9.1.1: it closes the stream after its
/// error): we answer with our closing tag only — never an error of ours about its error —
/// and keep its condition, text and application condition as the reason.
fn peer_error_ending(who: &str, e: &PeerStreamError) -> Ending {
    Ending::quiet(format!("{who} ended the stream with stream error {e}"), false)
}

/// Dialback requests on one stream: at most `limits.max_verifications_in_flight` at once
/// and `limits.verifications_per_minute` started per minute.
#[derive(Debug, Default)]
struct VerificationBudget {
    started: crate::types::FixedWindow<Instant>,
}

impl VerificationBudget {
    /// Whether one more may start now (`in_flight` are under way); the limit's key if not.
    fn start(&mut self, now: Instant, in_flight: usize, limits: &Limits) -> Result<(), crate::types::LimitKey> {
        if in_flight >= limits.max_verifications_in_flight {
            return Err(crate::types::LimitKey::MaxVerificationsInFlight);
        }
        match self.started.take(now, Duration::from_secs(60), limits.verifications_per_minute as u64) {
            Some(_) => Ok(()),
            None => Err(crate::types::LimitKey::VerificationsPerMinute),
        }
    }
}
