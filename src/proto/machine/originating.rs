//! Streams we open for one domain pair: we are the Originating Server (XEP-0220 §2.1.1),
//! and carry our receiving role's `db:verify` requests to the peer's Authoritative Server
//! (§2.1.2).
//!
//! [direct TLS →] Header → Features → [STARTTLS: Proceed → Tls → Header …] →
//! [SASL EXTERNAL: Sasl → Header → Features] → Dialback → Held? → Established → closed.
//! Failure before Established bounces the queued stanzas with the reason; every waiting
//! verification is answered whatever the end.

use std::collections::HashMap;
use std::time::Instant;

use super::{Cx, EndKind, Ending, Env, Input, Observed, Output, ReadError, Reply, TlsFacts, TlsRole};
use crate::domain::Domain;
use crate::proto::auth::{Judged, KeySent, ValidPair};
use crate::proto::dialback::{self, Answer, DbElement};
use crate::proto::ns;
use crate::proto::stanza::StanzaErrorCondition;
use crate::proto::stream::{PeerStreamError, StreamError, StreamErrorCondition, check_header, header};
use crate::types::{AuthMethod, AuthMode, ConnState, PairStatus, StreamLimits, Verdict, VerificationResult};
use crate::xml::{Element, Frame};

#[derive(Debug)]
enum State {
    /// TLS handshake under way (`direct`: from the first byte, XEP-0368).
    Tls {
        direct: bool,
    },
    /// Our header sent; `sasl`: the proof of a SASL success before this restart.
    Header {
        sasl: Option<ValidPair>,
    },
    Features {
        stream_id: Option<String>,
        sasl: Option<ValidPair>,
    },
    /// `<starttls/>` sent.
    Proceed,
    /// `<auth mechanism='EXTERNAL'/>` sent.
    Sasl {
        stream_id: Option<String>,
    },
    /// Closing on purpose after [`Output::Drain`]: the stanzas still queued are fed and
    /// sent, then `end` ([`Input::Drained`]).
    Draining {
        end: Box<Ending>,
    },
    /// Our `db:result` sent (`sent`); the peer's answer due by `until` (`timeouts.dialback`).
    Dialback {
        until: Instant,
        sent: KeySent,
    },
    /// Authenticated; the policy holds our traffic until the operator decides.
    Held {
        pair: ValidPair,
        until: Instant,
    },
    Established {
        pair: ValidPair,
    },
    Done,
}

pub(super) struct Originating {
    local: Domain,
    remote: Domain,
    state: State,
    tls: bool,
    /// Until negotiation must be done (`timeouts.negotiation`).
    deadline: Instant,
    last_write: Instant,
    last_stanza: Instant,
    /// `db:verify` requests sent, by stream id: where their answers go.
    verifying: HashMap<String, Vec<Box<dyn Reply>>>,
    /// The peer's `max-bytes` from its latest features (XEP-0478); `None`: it advertised none.
    peer_max: Option<usize>,
    /// The peer's `idle-seconds` (XEP-0478): it may close a stream quiet for that long.
    peer_idle: Option<std::time::Duration>,
    /// A stanza over `peer_max` was logged at info level already (one per stream).
    oversize_logged: std::cell::Cell<bool>,
    /// The peer's certificate, judged for `remote` once TLS is up (what a SASL success is
    /// read against).
    judged: Option<Judged>,
}

/// Why an outbound stream could not be set up (by the machine, or by its driver while
/// dialling), and the stanza error condition queued stanzas bounce with (RFC 6120 §8.3.3).
/// Each constructor names what happened; the condition follows from it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub condition: StanzaErrorCondition,
    pub reason: String,
}

impl Failure {
    /// The peer could not be reached or the stream could not be set up with it (DNS, TCP,
    /// TLS, its answers): remote-server-not-found (RFC 6120 §8.3.3.13).
    pub fn unreachable(reason: impl Into<String>) -> Failure {
        Failure { condition: StanzaErrorCondition::RemoteServerNotFound, reason: reason.into() }
    }

    /// Nothing answered in time: remote-server-timeout (§8.3.3.14), a `wait` error.
    pub fn timeout(reason: impl Into<String>) -> Failure {
        Failure { condition: StanzaErrorCondition::RemoteServerTimeout, reason: reason.into() }
    }

    /// A policy (ours, or a security rule the peer cannot meet) refuses the stream:
    /// policy-violation, and the stream error of the same name to the peer.
    pub(crate) fn policy(reason: impl Into<String>) -> Failure {
        Failure { condition: StanzaErrorCondition::PolicyViolation, reason: reason.into() }
    }

    /// How the stream ends for this failure: the queued stanzas bounce with its condition
    /// ([`Ending::bounce`]); a policy refusal is also said to the peer (stream error
    /// policy-violation). `abandon`: the connection is unusable, or there is none (dialling
    /// failed).
    pub fn ending(self, abandon: bool) -> Ending {
        let policy = self.condition == StanzaErrorCondition::PolicyViolation;
        let error = policy.then(|| StreamError::new(StreamErrorCondition::PolicyViolation, self.reason.clone()));
        Ending { error, reason: self.reason, peer_closed: false, abandon, kind: EndKind::Failed { condition: self.condition } }
    }
}

impl Originating {
    pub(super) fn start(cx: &mut Cx, now: Instant, local: Domain, remote: Domain, direct: bool) -> Originating {
        let mut o = Originating {
            local,
            remote,
            state: State::Done,
            tls: false,
            deadline: now + cx.env.timeouts.negotiation,
            last_write: now,
            last_stanza: now,
            verifying: HashMap::new(),
            peer_max: None,
            peer_idle: None,
            oversize_logged: std::cell::Cell::new(false),
            judged: None,
        };
        if direct {
            cx.state(ConnState::Tls);
            cx.out.push_back(Output::StartTls(TlsRole::Client { direct: true }));
            o.state = State::Tls { direct: true };
        } else {
            o.send_header(cx, None);
        }
        o
    }

    pub(super) fn established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    pub(super) fn authenticating_or_later(&self) -> bool {
        matches!(self.state, State::Dialback { .. } | State::Held { .. } | State::Established { .. })
    }

    fn negotiating(&self) -> bool {
        matches!(self.state, State::Tls { .. } | State::Header { .. } | State::Features { .. } | State::Proceed | State::Sasl { .. })
    }

    pub(super) fn deadline(&self, env: &Env) -> Option<Instant> {
        match &self.state {
            State::Dialback { until, .. } | State::Held { until, .. } => Some(*until),
            State::Established { .. } => Some((self.last_write + self.keepalive(env)).min(self.last_stanza + env.timeouts.idle_outbound)),
            State::Done | State::Draining { .. } => None,
            _ => Some(self.deadline),
        }
    }

    pub(super) fn write_deadline(&self) -> Option<Instant> {
        self.negotiating().then_some(self.deadline)
    }

    /// How long the stream may be quiet before a whitespace keepalive: `timeouts.keepalive`,
    /// or half the peer's advertised `idle-seconds` if that is sooner (XEP-0478: a stream
    /// we keep open is not one the peer finds idle).
    fn keepalive(&self, env: &Env) -> std::time::Duration {
        let k = env.timeouts.keepalive;
        self.peer_idle.map_or(k, |i| k.min((i / 2).max(std::time::Duration::from_secs(1))))
    }

    fn send_header(&mut self, cx: &mut Cx, sasl: Option<ValidPair>) {
        cx.out.push_back(Output::Raw(header(Some(self.local.as_str()), Some(self.remote.as_str()), None)));
        self.state = State::Header { sasl };
    }

    pub(super) fn handle(&mut self, cx: &mut Cx, now: Instant, input: Input) {
        if let State::Draining { .. } = self.state {
            return self.on_draining(cx, now, input);
        }
        match input {
            Input::Read => {}
            Input::Frame { frame, buffered } => self.on_frame(cx, now, frame, buffered),
            Input::ReadError(e) => {
                if self.established() {
                    let reason = match &e {
                        ReadError::Eof => "connection closed by the peer".to_owned(),
                        ReadError::Io(e) => format!("I/O error: {e}"),
                        ReadError::Xml(x) => x.to_string(),
                    };
                    self.lost(cx, reason, matches!(e, ReadError::Eof), true);
                } else {
                    let what = match &self.state {
                        State::Header { .. } => "reading the stream header",
                        State::Features { .. } => "reading stream features",
                        State::Proceed => "STARTTLS",
                        State::Sasl { .. } => "SASL",
                        State::Dialback { .. } => "during dialback",
                        _ => "reading",
                    };
                    let reason = match e {
                        ReadError::Eof => format!("{what}: connection closed by the peer"),
                        ReadError::Io(e) => format!("{what}: I/O: {e}"),
                        ReadError::Xml(x) => format!("{what}: {x}"),
                    };
                    self.fail(cx, Failure::unreachable(reason), true);
                }
            }
            Input::WriteFailed(e) => {
                if self.established() {
                    self.lost(cx, format!("write failed: {e}"), false, true);
                } else {
                    self.fail(cx, Failure::unreachable(format!("write failed: {e}")), true);
                }
            }
            Input::TlsEstablished(facts) => self.on_tls(cx, facts),
            Input::TlsFailed(e) => self.fail(cx, Failure::unreachable(format!("TLS handshake: {e}")), true),
            Input::Verify { stream_id, key, reply } => {
                cx.send(dialback::verify_request(self.local.as_str(), self.remote.as_str(), &stream_id, &key));
                self.verifying.entry(stream_id).or_default().push(reply);
                self.last_write = now;
            }
            Input::Stanza(st) => {
                if self.established() {
                    self.send_stanza(cx, now, st);
                } else {
                    // The driver feeds stanzas only once established; never lost, though.
                    cx.out.push_back(Output::Route(st));
                }
            }
            Input::PolicyChanged => {
                if let State::Held { .. } = self.state {
                    self.review_hold(cx);
                }
            }
            Input::Close { reason, error } => {
                if self.established() {
                    self.closing(cx, reason, error);
                } else {
                    self.fail(cx, Failure::unreachable(reason), false);
                }
            }
            Input::Timer => self.on_timer(cx, now),
            Input::Drained => tracing::error!(stream = %cx.log, "an outbound stream was told it drained before it was asked; ignored"),
            Input::Answer { .. } => tracing::error!(stream = %cx.log, "an outbound stream was given a dialback answer; ignored"),
            Input::Attached(_) => tracing::error!(stream = %cx.log, "an outbound stream was given a component attachment; ignored"),
        }
    }

    fn on_timer(&mut self, cx: &mut Cx, now: Instant) {
        let t = &cx.env.timeouts;
        match &self.state {
            State::Dialback { until, .. } if now >= *until => {
                let why = format!("no dialback answer from {} within {}s (timeouts.dialback)", self.remote, t.dialback.as_secs());
                self.fail(cx, Failure::timeout(why), false);
            }
            State::Held { until, .. } if now >= *until => {
                let why = format!("{} awaits approval by the operator (policy mode approval)", self.remote);
                self.fail(cx, Failure::policy(why), false);
            }
            State::Established { .. } => {
                if now >= self.last_stanza + t.idle_outbound {
                    let reason = format!("idle for {}s (timeouts.idle_outbound)", t.idle_outbound.as_secs());
                    self.closing(cx, reason, None);
                } else if now >= self.last_write + self.keepalive(cx.env) {
                    // RFC 6120 §4.6.1: whitespace keepalive.
                    cx.out.push_back(Output::Raw(" ".into()));
                    self.last_write = now;
                }
            }
            _ if self.negotiating() && now >= self.deadline => {
                let why = format!("stream negotiation took longer than {}s (timeouts.negotiation)", t.negotiation.as_secs());
                self.fail(cx, Failure::timeout(why), false);
            }
            _ => {}
        }
    }

    fn on_tls(&mut self, cx: &mut Cx, facts: TlsFacts) {
        let State::Tls { direct } = self.state else {
            return self.fail(cx, Failure::unreachable("TLS reported outside a handshake"), true);
        };
        self.tls = true;
        let verdict = cx.env.certs.judge(&facts.chain, &self.remote, facts.at);
        let result = if verdict.is_valid() { VerificationResult::Valid } else { VerificationResult::Invalid };
        cx.outcome(&self.local, &self.remote, AuthMethod::Certificate, result, format!("certificate for {}: {verdict}", self.remote));
        cx.observe(Observed::Certificate(verdict.clone()));
        self.judged = Some(Judged::new(self.remote.clone(), verdict.clone()));
        // Where policy wants certificates, whoever answers DNS for the domain must prove it
        // by one before a stanza leaves (RFC 6120 §13.7.2, XEP-0178).
        if !verdict.is_valid()
            && let (AuthMode::CertOnly, rule) = cx.env.security.auth_for(self.remote.as_str())
        {
            let why = format!(
                "{}'s certificate is not valid for it ({verdict}) and certificates are required ({rule}); nothing was sent",
                self.remote
            );
            return self.fail(cx, Failure::policy(why), false);
        }
        if !direct {
            cx.out.push_back(Output::Restart);
        }
        self.send_header(cx, None);
    }

    /// One frame from the peer: a stream error ends everything; otherwise the state decides
    /// what the frame means. The state is taken out and each step puts back what follows.
    fn on_frame(&mut self, cx: &mut Cx, now: Instant, frame: Frame, buffered: usize) {
        if let Frame::Element(el) = &frame
            && let Some(e) = PeerStreamError::parse(el)
        {
            return self.on_peer_error(cx, e);
        }
        let state = std::mem::replace(&mut self.state, State::Done);
        match state {
            State::Header { sasl } => self.on_answering_header(cx, frame, sasl),
            State::Features { stream_id, sasl } => self.on_features_frame(cx, now, frame, stream_id, sasl),
            State::Proceed => self.on_starttls_answer(cx, frame, buffered),
            State::Sasl { stream_id } => self.on_sasl_answer(cx, now, frame, stream_id),
            State::Dialback { until, sent } => {
                self.state = State::Dialback { until, sent };
                self.on_dialback_frame(cx, now, frame);
            }
            State::Held { pair, until } => {
                self.state = State::Held { pair, until };
                self.on_held_frame(cx, frame);
            }
            State::Established { pair } => {
                self.state = State::Established { pair };
                self.on_established_frame(cx, frame);
            }
            s @ (State::Tls { .. } | State::Done | State::Draining { .. }) => {
                self.state = s;
                self.fail(cx, Failure::unreachable("data during the TLS handshake"), true);
            }
        }
    }

    /// The peer's answering stream header: checked, and refused if it carries a stream id
    /// of our own (a loop back to this server).
    fn on_answering_header(&mut self, cx: &mut Cx, frame: Frame, sasl: Option<ValidPair>) {
        let Frame::StreamOpen(h) = frame else {
            return self.fail(cx, Failure::unreachable("the peer did not open a stream"), false);
        };
        if let Err(e) = check_header(&h) {
            cx.send(e.to_element());
            return self.fail(cx, Failure::unreachable(format!("bad stream header from the peer: {e}")), false);
        }
        let stream_id = h.id.filter(|i| !i.is_empty());
        if stream_id.as_deref().is_some_and(|id| (cx.env.issued_here)(id)) {
            // Issue 16: a stream of ours came back to us (DNS, a forwarder or NAT
            // leading to one of our listeners). Nothing more is said or minted.
            return self.fail(
                cx,
                Failure::unreachable(format!(
                    "{} leads back to this server: the answering stream header carries a stream id drawbridge issued itself; not talking to itself (a loop)",
                    self.remote
                )),
                false,
            );
        }
        if sasl.is_some() {
            cx.observe(Observed::StreamId(stream_id.clone().unwrap_or_default()));
        }
        self.state = State::Features { stream_id, sasl };
    }

    /// The peer's stream features: after a SASL restart they complete authentication,
    /// otherwise they choose the next step (STARTTLS, SASL or dialback).
    fn on_features_frame(&mut self, cx: &mut Cx, now: Instant, frame: Frame, stream_id: Option<String>, sasl: Option<ValidPair>) {
        let features = match frame {
            Frame::Element(el) if el.is("features", ns::STREAMS) => el,
            Frame::Element(el) => {
                return self.fail(cx, Failure::unreachable(format!("expected stream features, got {}", el.describe())), false);
            }
            Frame::StreamClose => return self.fail(cx, Failure::unreachable("the peer closed the stream"), false),
            Frame::StreamOpen(_) => return self.fail(cx, Failure::unreachable("unexpected second stream header"), false),
        };
        self.read_limits(cx, &features);
        if let Some(pair) = sasl {
            let why = format!("{} accepted our certificate (SASL EXTERNAL)", self.remote);
            return self.authorised(cx, now, pair, why);
        }
        self.on_features(cx, now, features, stream_id);
    }

    /// The answer to our `<starttls/>`; bytes already buffered after `<proceed/>` would be
    /// plaintext injected ahead of the handshake, so they end the stream.
    fn on_starttls_answer(&mut self, cx: &mut Cx, frame: Frame, buffered: usize) {
        match frame {
            Frame::Element(el) if el.is("proceed", ns::TLS) => {
                if buffered > 0 {
                    return self.fail(
                        cx,
                        Failure::unreachable("TLS: data after <proceed/> (plaintext injection); refusing to continue"),
                        false,
                    );
                }
                cx.out.push_back(Output::StartTls(TlsRole::Client { direct: false }));
                self.state = State::Tls { direct: false };
            }
            Frame::Element(el) if el.is("failure", ns::TLS) => {
                self.fail(cx, Failure::unreachable("TLS: the peer answered STARTTLS with <failure/>"), false)
            }
            _ => self.fail(cx, Failure::unreachable("TLS: unexpected answer to STARTTLS"), false),
        }
    }

    /// The answer to our `<auth mechanism='EXTERNAL'/>`: success restarts the stream with
    /// the proof; failure falls back to dialback.
    fn on_sasl_answer(&mut self, cx: &mut Cx, now: Instant, frame: Frame, stream_id: Option<String>) {
        match frame {
            Frame::Element(el) if el.is("success", ns::SASL) => {
                let Some(proof) = self.judged.as_ref().and_then(|j| ValidPair::by_sasl_success(&self.local, j, &el)) else {
                    return self.fail(cx, Failure::unreachable("SASL: <success/> before the certificate was judged"), false);
                };
                // RFC 6120 §6.4.6: restart the stream.
                cx.out.push_back(Output::Restart);
                self.send_header(cx, Some(proof));
            }
            Frame::Element(el) if el.is("failure", ns::SASL) => self.on_sasl_failure(cx, now, &el, stream_id),
            _ => self.fail(cx, Failure::unreachable("SASL: unexpected answer to <auth/>"), false),
        }
    }

    /// The peer refused our certificate: recorded as an outcome, then dialback is tried.
    fn on_sasl_failure(&mut self, cx: &mut Cx, now: Instant, el: &Element, stream_id: Option<String>) {
        let clip = crate::xml::element::clip;
        let cond = el.elements().find(|e| e.name != "text").map(|e| clip(&e.name, 64).into_owned()).unwrap_or_default();
        let text = el.get_child("text", ns::SASL).map(|t| clip(&t.text_content(), 256).into_owned()).unwrap_or_default();
        tracing::info!(stream = %cx.log, "{} refused SASL EXTERNAL: {cond} {text}; falling back to dialback", self.remote);
        let why = format!("{} refused our certificate (SASL EXTERNAL <{cond}/> {text}); falling back to dialback", self.remote);
        cx.outcome(&self.local, &self.remote, AuthMethod::SaslExternal, VerificationResult::Invalid, why);
        self.dialback(cx, now, stream_id);
    }

    /// A frame while our dialback key awaits its answer (the state is already put back):
    /// the answer to our key authorises or ends the stream; other dialback elements are
    /// the peer's verify requests and answers on this stream.
    fn on_dialback_frame(&mut self, cx: &mut Cx, now: Instant, frame: Frame) {
        let el = match frame {
            Frame::Element(el) => el,
            Frame::StreamClose => return self.fail(cx, Failure::unreachable("the peer closed the stream during dialback"), false),
            Frame::StreamOpen(_) => return,
        };
        let Some(db) = DbElement::parse(&el) else { return };
        let ours = !db.verify && db.from == self.remote.as_str() && db.to == self.local.as_str();
        let proof = match (&self.state, &db.answer) {
            (State::Dialback { sent, .. }, Some(a)) if ours => sent.answered(a),
            _ => None,
        };
        match (ours, &db.answer, proof) {
            (true, Some(_), Some(pair)) => {
                let why = format!("{} accepted our dialback key", self.remote);
                self.authorised(cx, now, pair, why);
            }
            (true, Some(a), None) => {
                cx.observe(Observed::PairRemoved { local: self.local.clone(), remote: self.remote.clone() });
                let why = format!("{} answered our dialback with {}", self.remote, a.describe());
                cx.outcome(&self.local, &self.remote, AuthMethod::Dialback, VerificationResult::Invalid, why);
                let f = Failure::unreachable(format!("dialback: {} answered {}", self.remote, a.describe()));
                self.fail(cx, f, false);
            }
            _ => self.on_dialback(cx, &db),
        }
    }

    /// A frame while the policy holds our traffic (the state is already put back): only
    /// dialback elements and the peer's close matter.
    fn on_held_frame(&mut self, cx: &mut Cx, frame: Frame) {
        match frame {
            Frame::Element(el) => {
                if let Some(db) = DbElement::parse(&el) {
                    self.on_dialback(cx, &db);
                }
            }
            Frame::StreamOpen(_) => {}
            Frame::StreamClose => self.fail(cx, Failure::unreachable("the peer closed the stream"), false),
        }
    }

    /// A frame on the established stream (the state is already put back): the peer sends
    /// only dialback elements and its close on an outbound stream; anything else is ignored.
    fn on_established_frame(&mut self, cx: &mut Cx, frame: Frame) {
        match frame {
            Frame::Element(el) => {
                if let Some(db) = DbElement::parse(&el) {
                    self.on_dialback(cx, &db);
                } else {
                    tracing::debug!(stream = %cx.log, element = %el.describe(), "ignoring an element on an outbound stream");
                }
            }
            Frame::StreamClose => self.lost(cx, "closed by the peer".into(), true, false),
            Frame::StreamOpen(_) => {}
        }
    }

    /// The limits in the peer's latest features (XEP-0478 §3: they may change whenever new
    /// features are announced, as after authentication).
    fn read_limits(&mut self, cx: &mut Cx, features: &Element) {
        let (max, idle) = super::peer_limits(features);
        self.peer_max = max.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        self.peer_idle = idle.map(std::time::Duration::from_secs);
        cx.observe(Observed::Limits(StreamLimits {
            max_bytes: cx.env.limits.max_bytes as u64,
            idle_seconds: None,
            peer_max_bytes: max,
            peer_idle_seconds: idle,
        }));
    }

    /// XEP-0478 §3: a stanza larger, serialised, than the peer's advertised `max-bytes` is
    /// not sent; its sender gets `<policy-violation/>` without 'by' (the policy is the
    /// peer's) and a text with the limit, and the stream carries on. `Err` holds that bounce
    /// (`None` for an error or a result, which are not answered). Only stanzas the cheap
    /// bound cannot clear are serialised to be measured.
    pub(super) fn check_peer_limit(&self, log: &str, st: &Element) -> Result<(), Option<Element>> {
        let Some(max) = self.peer_max else { return Ok(()) };
        if crate::xml::writer::len_bound(st) <= max {
            return Ok(());
        }
        let mut text = String::new();
        crate::xml::writer::write_top(&mut text, st);
        let size = text.len();
        if size <= max {
            return Ok(());
        }
        let remote = &self.remote;
        let from = crate::xml::element::clip(st.get_attr("from").unwrap_or("(none)"), 64);
        let note = format!(
            "not sending a {size}-byte <{}/> from {from} to {remote}, which accepts at most {max} bytes (its XEP-0478 max-bytes); bounced to the sender",
            st.name
        );
        // The first on a stream is worth the operator's attention; the rest are its echo.
        if self.oversize_logged.replace(true) {
            tracing::debug!(stream = %log, "{note}");
        } else {
            tracing::info!(stream = %log, "{note} (further ones on this stream at debug level)");
        }
        let why = format!("the stanza is {size} bytes; {remote} accepts at most {max} bytes (its XEP-0478 stream limit)");
        Err(crate::proto::stanza::error_reply(st, StanzaErrorCondition::PolicyViolation, Some(&why)).map(|mut b| {
            // The original is what was too large: it is not echoed back.
            b.children.retain(|c| matches!(c, crate::xml::Node::Element(e) if e.name.as_ref() == "error"));
            b
        }))
    }

    /// The peer ended the stream with a stream error (RFC 6120 §4.9): a set-up under way
    /// fails with its reason (and a verification under way records it as its outcome), an
    /// established stream is lost; either way quietly, our closing tag only.
    fn on_peer_error(&mut self, cx: &mut Cx, e: PeerStreamError) {
        let end = super::peer_error_ending(self.remote.as_str(), &e);
        let verifying = match self.state {
            State::Dialback { .. } => Some(AuthMethod::Dialback),
            State::Sasl { .. } => Some(AuthMethod::SaslExternal),
            _ => None,
        };
        if let Some(method) = verifying {
            if method == AuthMethod::Dialback {
                cx.observe(Observed::PairRemoved { local: self.local.clone(), remote: self.remote.clone() });
            }
            cx.outcome(&self.local, &self.remote, method, VerificationResult::Error, end.reason.clone());
        }
        if self.established() {
            self.lost(cx, end.reason, false, false);
        } else {
            self.fail(cx, Failure::unreachable(end.reason), false);
        }
    }

    /// The peer's features after its header: STARTTLS first, then SASL EXTERNAL when
    /// offered over TLS, else dialback.
    fn on_features(&mut self, cx: &mut Cx, now: Instant, features: Element, stream_id: Option<String>) {
        let security = &cx.env.security;
        if self.tls {
            cx.observe(Observed::StreamId(stream_id.clone().unwrap_or_default()));
            let external = features
                .get_child("mechanisms", ns::SASL)
                .is_some_and(|m| m.elements().any(|x| x.name == "mechanism" && x.text_content().trim() == "EXTERNAL"));
            if external {
                cx.send(Element::new("auth", ns::SASL).attr("mechanism", "EXTERNAL").text("="));
                self.state = State::Sasl { stream_id };
                return;
            }
            return self.dialback(cx, now, stream_id);
        }
        if !features.has_child("starttls", ns::TLS) {
            if let (AuthMode::CertOnly, rule) = security.auth_for(self.remote.as_str()) {
                let why = format!("{} does not offer STARTTLS, so it cannot prove itself by certificate as required ({rule})", self.remote);
                return self.fail(cx, Failure::policy(why), false);
            }
            let (require_tls, rule) = security.require_encryption_for(self.remote.as_str());
            if require_tls {
                return self.fail(
                    cx,
                    Failure::unreachable(format!("{} does not offer STARTTLS and encryption is required ({rule})", self.remote)),
                    false,
                );
            }
            cx.observe(Observed::StreamId(stream_id.clone().unwrap_or_default()));
            return self.dialback(cx, now, stream_id);
        }
        // STARTTLS (RFC 6120 §5.4.2).
        cx.state(ConnState::Tls);
        cx.send(Element::new("starttls", ns::TLS));
        self.state = State::Proceed;
    }

    /// Dialback, Originating Server role (XEP-0220 §2.1.1): our `db:result`.
    fn dialback(&mut self, cx: &mut Cx, now: Instant, stream_id: Option<String>) {
        if let (AuthMode::CertOnly, rule) = cx.env.security.auth_for(self.remote.as_str()) {
            let why = format!("{} did not accept our certificate (SASL EXTERNAL) and {rule} forbids dialback", self.remote);
            return self.fail(cx, Failure::unreachable(why), false);
        }
        let Some(stream_id) = stream_id else {
            return self.fail(cx, Failure::unreachable("the peer's stream header has no id, so dialback is impossible"), false);
        };
        cx.state(ConnState::Authenticating);
        let key = cx.env.keys.derive(self.remote.as_str(), self.local.as_str(), &stream_id);
        cx.send(dialback::result_request(self.local.as_str(), self.remote.as_str(), &key));
        cx.observe(Observed::Pair {
            local: self.local.clone(),
            remote: self.remote.clone(),
            status: PairStatus::Pending,
            method: AuthMethod::Dialback,
        });
        self.last_write = now;
        self.state = State::Dialback { until: now + cx.env.timeouts.dialback, sent: KeySent::new(self.local.clone(), self.remote.clone()) };
    }

    /// Authenticated (`why`, for the record): the pair is valid on this stream; the policy
    /// decides whether traffic flows now, waits for the operator, or never.
    fn authorised(&mut self, cx: &mut Cx, now: Instant, pair: ValidPair, why: String) {
        let method = pair.method();
        cx.observe(Observed::Pair { local: self.local.clone(), remote: self.remote.clone(), status: PairStatus::Valid, method });
        cx.state(ConnState::Established);
        cx.outcome(&self.local, &self.remote, method, VerificationResult::Valid, why);
        self.last_write = now;
        self.last_stanza = now;
        match cx.env.policy.verdict(&self.remote) {
            Verdict::Allow => self.state = State::Established { pair },
            Verdict::Refuse(why) => self.fail(cx, Failure::policy(why), false),
            Verdict::Hold => {
                cx.observe(Observed::Pending(self.remote.clone()));
                tracing::info!(stream = %cx.log, "holding traffic to {}: awaiting approval", self.remote);
                self.state = State::Held { pair, until: now + cx.env.timeouts.approval_wait };
            }
        }
    }

    fn review_hold(&mut self, cx: &mut Cx) {
        match cx.env.policy.verdict(&self.remote) {
            Verdict::Hold => {}
            Verdict::Refuse(why) => self.fail(cx, Failure::policy(why), false),
            Verdict::Allow => {
                if let State::Held { pair, .. } = std::mem::replace(&mut self.state, State::Done) {
                    self.state = State::Established { pair };
                }
            }
        }
    }

    /// A dialback element on this stream: answers to our `db:verify` requests.
    fn on_dialback(&mut self, cx: &mut Cx, db: &DbElement) {
        if db.verify
            && let (Some(answer), Some(id)) = (&db.answer, &db.id)
            && db.from == self.remote.as_str()
            && db.to == self.local.as_str()
            && let Some(replies) = self.verifying.remove(id)
        {
            for reply in replies {
                cx.out.push_back(Output::VerifyAnswer { reply, answer: answer.clone(), detail: None });
            }
            return;
        }
        let clip = crate::xml::element::clip;
        tracing::debug!(stream = %cx.log, "ignoring unexpected dialback element from {} to {}", clip(&db.from, 64), clip(&db.to, 64));
    }

    /// Could not be set up (or refused): waiting verifications fail, queued stanzas bounce.
    fn fail(&mut self, cx: &mut Cx, f: Failure, abandon: bool) {
        self.answer_waiting(cx, f.condition, &f.reason);
        let end = f.ending(abandon);
        self.end(cx, end);
    }

    /// Closing on purpose (idle, operator, shutdown): what is still queued goes out first —
    /// fed by the driver after [`Output::Drain`] — and then the stream closes.
    fn closing(&mut self, cx: &mut Cx, reason: String, error: Option<StreamError>) {
        let end = Ending { error, reason, peer_closed: false, abandon: false, kind: EndKind::Closed };
        self.state = State::Draining { end: Box::new(end) };
        cx.out.push_back(Output::Drain);
    }

    /// Input while draining: the queued stanzas, then the end. Nothing else happens between
    /// (the driver feeds them at once).
    fn on_draining(&mut self, cx: &mut Cx, now: Instant, input: Input) {
        match input {
            Input::Stanza(st) => self.send_stanza(cx, now, st),
            Input::Drained => {
                if let State::Draining { end } = std::mem::replace(&mut self.state, State::Done) {
                    self.end(cx, *end);
                }
            }
            other => tracing::debug!(stream = %cx.log, "closing: {other:?} ignored"),
        }
    }

    /// A stanza for the peer on an established stream, unless larger than it accepts.
    fn send_stanza(&mut self, cx: &mut Cx, now: Instant, st: Element) {
        if let Err(bounce) = self.check_peer_limit(cx.log, &st) {
            cx.out.extend(bounce.map(Output::Route));
            return;
        }
        cx.send(st);
        self.last_write = now;
        self.last_stanza = now;
    }

    /// Lost after it was established.
    fn lost(&mut self, cx: &mut Cx, reason: String, peer_closed: bool, abandon: bool) {
        self.answer_waiting(cx, StanzaErrorCondition::RemoteServerNotFound, &reason);
        self.end(cx, Ending { error: None, reason, peer_closed, abandon, kind: EndKind::Lost });
    }

    fn end(&mut self, cx: &mut Cx, e: Ending) {
        if e.kind == EndKind::Closed {
            self.answer_waiting(cx, StanzaErrorCondition::RemoteServerNotFound, "stream closed");
        }
        self.state = State::Done;
        cx.close(e);
    }

    /// What the peer that asked for a verification learns: the condition, in neutral words
    /// (no address, no kind of connect failure); the full reason reaches the operator.
    fn answer_waiting(&mut self, cx: &mut Cx, condition: StanzaErrorCondition, reason: &str) {
        for (_, replies) in self.verifying.drain() {
            for reply in replies {
                cx.out.push_back(Output::VerifyAnswer {
                    reply,
                    answer: verify_failure(&self.remote, condition),
                    detail: Some(reason.to_owned()),
                });
            }
        }
    }
}

/// The neutral answer for a verification that could not be carried out.
pub fn verify_failure(remote: &Domain, condition: StanzaErrorCondition) -> Answer {
    if condition == StanzaErrorCondition::RemoteServerTimeout {
        Answer::error(condition, format!("{remote}'s authoritative server did not answer in time"))
    } else {
        Answer::error(StanzaErrorCondition::RemoteConnectionFailed, format!("{remote}'s authoritative server could not be reached"))
    }
}
