//! Streams a peer opened: we are the Receiving Server (XEP-0220 §2.1.1–2.1.3) for every
//! domain pair it claims and the Authoritative Server (§2.1.2) for `db:verify` about keys
//! we issued; SASL EXTERNAL for a peer whose certificate is valid (XEP-0178 §2).
//!
//! ExpectHeader → Open (features sent; dialback, SASL) → [`<starttls/>` → StartingTls →
//! ExpectHeader, everything learned before TLS forgotten] → … → Closed. Stanzas are
//! delivered only for a pair whose [`ValidPair`] the stream holds.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::{Admission, Cx, Ending, Env, Input, Observed, Output, ReadError, TlsFacts, TlsRole, VerificationBudget};
use crate::domain::{Domain, is_ip_literal};
use crate::proto::auth::{Certified, Delivery, KeySent, ValidPair};
use crate::proto::dialback::{self, Answer, DbElement};
use crate::proto::ns;
use crate::proto::stanza::{StanzaErrorCondition as SC, is_stanza};
use crate::proto::stream::{PeerStreamError, StreamErrorCondition as C, check_header, header};
use crate::types::{AuthMethod, CertVerdict, ConnState, PairStatus, Verdict, VerificationResult};
use crate::xml::element::clip;
use crate::xml::{Element, Frame, StreamHeader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ExpectHeader,
    /// Features sent: dialback, SASL, STARTTLS and stanzas.
    Open,
    /// `<proceed/>` sent; the TLS handshake is under way.
    StartingTls,
}

enum Pair {
    /// `db:result` received, its key sent to the authoritative server.
    Verifying(KeySent),
    /// Verified; the policy holds it until the operator decides (stanzas kept, not routed).
    Held(ValidPair),
    Valid(ValidPair),
}

pub(super) struct Receiving {
    state: State,
    secure: bool,
    /// Until a domain authenticates (`timeouts.negotiation`).
    deadline: Instant,
    last_read: Instant,
    /// The header's 'to' (hosted), once received.
    local: Option<Domain>,
    /// The header's 'from': the peer's per-domain security rules apply from the start.
    peer: Option<Domain>,
    stream_id: String,
    pairs: HashMap<(Domain, Domain), Pair>,
    /// Stanzas of held pairs, in arrival order, and their weight in bytes.
    held: VecDeque<Element>,
    held_bytes: usize,
    hold_until: Option<Instant>,
    /// The header's 'from' when the certificate is valid for it (after TLS).
    certified: Option<Certified>,
    /// The verdict on the peer's certificate, for SASL failure texts.
    cert_verdict: Option<CertVerdict>,
    /// SASL EXTERNAL succeeded (no second SASL after the restart).
    sasl_done: bool,
    /// Direct TLS: the peer's chain, judged when the header names the claimed domain.
    direct: Option<TlsFacts>,
    admission: Box<dyn Admission>,
    admitted: bool,
    verifications: VerificationBudget,
    /// `db:verify` frames answered (only the first is logged at the default level).
    verify_answers: u64,
}

impl Receiving {
    pub(super) fn new(env: &Env, now: Instant, direct: Option<TlsFacts>, admission: Box<dyn Admission>) -> Receiving {
        Receiving {
            state: State::ExpectHeader,
            secure: direct.is_some(),
            deadline: now + env.timeouts.negotiation,
            last_read: now,
            local: None,
            peer: None,
            stream_id: String::new(),
            pairs: HashMap::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            hold_until: None,
            certified: None,
            cert_verdict: None,
            sasl_done: false,
            direct,
            admission,
            admitted: false,
            verifications: VerificationBudget::default(),
            verify_answers: 0,
        }
    }

    fn authenticated(&self) -> bool {
        self.pairs.values().any(|p| !matches!(p, Pair::Verifying(_)))
    }

    pub(super) fn deadline(&self, env: &Env) -> Option<Instant> {
        let mut d = if self.authenticated() { self.last_read + env.timeouts.idle_inbound } else { self.deadline };
        if let Some(h) = self.hold_until {
            d = d.min(h);
        }
        Some(d)
    }

    pub(super) fn write_deadline(&self) -> Option<Instant> {
        (!self.authenticated()).then_some(self.deadline)
    }

    pub(super) fn handle(&mut self, cx: &mut Cx, now: Instant, input: Input) {
        match input {
            Input::Read => self.last_read = now,
            Input::Frame { frame, buffered } => match self.state {
                State::ExpectHeader => self.on_header(cx, frame),
                State::Open => self.on_frame(cx, now, frame, buffered),
                State::StartingTls => cx.close(Ending::error(C::NotWellFormed, "data during the TLS handshake")),
            },
            Input::ReadError(e) => {
                if self.state == State::ExpectHeader && matches!(e, ReadError::Xml(_)) {
                    // We owe the peer a stream header before any stream error (RFC 6120 §4.9.1.2).
                    let id = (cx.env.stream_ids)();
                    cx.out.push_back(Output::Raw(header(Some(cx.env.default_domain().as_str()), None, Some(&id))));
                }
                cx.close(super::read_error_ending(&e));
            }
            Input::WriteFailed(e) => {
                let mut end = Ending::quiet(format!("write failed: {e}"), false);
                end.abandon = true;
                cx.close(end);
            }
            Input::TlsEstablished(facts) => self.on_tls(cx, facts),
            Input::TlsFailed(e) => cx.close(Ending::quiet(format!("TLS handshake failed: {e}"), true)),
            Input::Answer { local, remote, answer, detail } => self.on_answer(cx, now, local, remote, answer, detail),
            Input::PolicyChanged => self.review_held(cx),
            Input::Close { reason, error } => {
                cx.close(Ending { error, reason, peer_closed: false, abandon: false, kind: super::EndKind::Inbound })
            }
            Input::Timer => self.on_timer(cx, now),
            Input::Verify { .. } | Input::Stanza(_) | Input::Attached(_) | Input::Drained => {
                tracing::error!(stream = %cx.log, "an inbound stream was given outbound work; ignored");
            }
        }
    }

    fn on_timer(&mut self, cx: &mut Cx, now: Instant) {
        if self.hold_until.is_some_and(|h| now >= h) {
            let waiting: Vec<&str> =
                self.pairs.values().filter_map(|p| if let Pair::Held(v) = p { Some(v.remote().as_str()) } else { None }).collect();
            return cx.close(Ending::error(
                C::PolicyViolation,
                format!("{} awaits approval by the operator (policy mode approval)", waiting.join(", ")),
            ));
        }
        if !self.authenticated() {
            if now >= self.deadline {
                let secs = cx.env.timeouts.negotiation.as_secs();
                cx.close(Ending::error(C::ConnectionTimeout, format!("stream not authenticated within {secs}s (timeouts.negotiation)")));
            }
        } else if now >= self.last_read + cx.env.timeouts.idle_inbound {
            let secs = cx.env.timeouts.idle_inbound.as_secs();
            cx.close(Ending::error(C::ConnectionTimeout, format!("no traffic for {secs}s (timeouts.idle_inbound)")));
        }
    }

    /// The peer's stream header: our header, the checks, the policy on its 'from', features.
    /// The peer's stream header: our own header goes back first (RFC 6120 §4.9.1.2: a
    /// stream error is sent after it), then the header is checked, the pair it names is
    /// put to the policy and our features are offered.
    fn on_header(&mut self, cx: &mut Cx, frame: Frame) {
        let h = match frame {
            Frame::StreamOpen(h) => h,
            _ => {
                let id = (cx.env.stream_ids)();
                cx.out.push_back(Output::Raw(header(Some(cx.env.default_domain().as_str()), None, Some(&id))));
                return cx.close(Ending::error(C::NotWellFormed, "expected a stream header"));
            }
        };
        let to = self.send_our_header(cx, &h);
        let local = match admit_header(cx.env, &h, to) {
            Ok(local) => local,
            Err(ending) => return cx.close(ending),
        };
        cx.observe(Observed::Domains { local: Some(local.to_string()), remote: h.from.clone() });
        self.peer = h.from.as_deref().and_then(|f| Domain::parse(f).ok());
        self.local = Some(local.clone());
        // Policy, as early as possible: the header's 'from', before TLS — and, on direct
        // TLS, before the certificate is judged: a refused domain's certificate is not
        // recorded as a valid authentication (nor kept for the expiry forecast).
        if let Some(from) = self.peer.clone()
            && let Verdict::Refuse(why) = cx.env.policy.verdict(&from)
        {
            cx.outcome(&local, &from, AuthMethod::Policy, VerificationResult::Refused, format!("refused at the stream header: {why}"));
            return cx.close(Ending::error(C::PolicyViolation, why));
        }
        if let (Some(facts), Some(claimed)) = (self.direct.take(), self.peer.clone()) {
            self.judge(cx, &facts, &claimed);
        }
        self.send_features(cx);
    }

    /// Mints this stream's id and sends our header, from the domain the peer named if it
    /// is ours (the default domain otherwise); returns that named domain, parsed.
    fn send_our_header(&mut self, cx: &mut Cx, h: &StreamHeader) -> Option<Domain> {
        let env = cx.env;
        self.stream_id = (env.stream_ids)();
        cx.observe(Observed::StreamId(self.stream_id.clone()));
        let local = h.to.as_deref().and_then(|t| Domain::parse(t).ok());
        let reply_from = local.as_ref().filter(|d| env.is_local_side(d)).unwrap_or(env.default_domain());
        cx.out.push_back(Output::Raw(header(
            Some(reply_from.as_str()),
            h.from.as_deref().filter(|f| Domain::parse(f).is_ok()),
            Some(&self.stream_id),
        )));
        local
    }

    /// Our features (RFC 6120 §4.3.2): STARTTLS until TLS; SASL EXTERNAL and dialback once
    /// encryption allows them; our limits always. The stream is then open.
    fn send_features(&mut self, cx: &mut Cx) {
        let env = cx.env;
        let (require_tls, _) = env.security.require_encryption_for(self.peer.as_ref().map_or("", |d| d.as_str()));
        let mut features = Element::new("features", ns::STREAMS);
        if !self.secure {
            let mut tls = Element::new("starttls", ns::TLS);
            if require_tls {
                tls = tls.child(Element::new("required", ns::TLS));
            }
            features = features.child(tls);
        }
        // SASL EXTERNAL only when the certificate is valid for the header's 'from'
        // (XEP-0178 §2); dialback stays offered alongside.
        if self.sasl_offered() {
            features = features.child(Element::new("mechanisms", ns::SASL).child(Element::new("mechanism", ns::SASL).text("EXTERNAL")));
        }
        let dialback_ok = self.peer.as_ref().is_none_or(|p| env.cert_only_rule(p.as_str()).is_none());
        if (self.secure || !require_tls) && dialback_ok {
            features = features.child(Element::new("dialback", ns::DIALBACK_FEATURE).child(Element::new("errors", ns::DIALBACK_FEATURE)));
        }
        // XEP-0478: our limits, before and after authentication alike.
        features = features.child(super::limits_feature(env, Some(env.timeouts.idle_inbound)));
        cx.send(features);
        cx.observe(Observed::Limits(crate::types::StreamLimits {
            max_bytes: env.limits.max_bytes as u64,
            idle_seconds: Some(env.timeouts.idle_inbound.as_secs()),
            peer_max_bytes: None,
            peer_idle_seconds: None,
        }));
        cx.state(match (self.authenticated(), self.secure) {
            (true, _) => ConnState::Established,
            (false, true) => ConnState::Authenticating,
            (false, false) => ConnState::Tls,
        });
        self.state = State::Open;
    }

    fn sasl_offered(&self) -> bool {
        self.secure && !self.sasl_done && self.certified.is_some()
    }

    /// Judge the peer's certificate for the domain it claims; recorded as an outcome.
    fn judge(&mut self, cx: &mut Cx, facts: &TlsFacts, claimed: &Domain) {
        let verdict = cx.env.certs.judge(&facts.chain, claimed, facts.at);
        let local = self.local.clone().unwrap_or_else(|| cx.env.default_domain().clone());
        let result = if verdict.is_valid() { VerificationResult::Valid } else { VerificationResult::Invalid };
        cx.outcome(&local, claimed, AuthMethod::Certificate, result, format!("certificate for {claimed}: {verdict}"));
        cx.observe(Observed::Certificate(verdict.clone()));
        self.certified = Certified::from_verdict(claimed, &verdict);
        self.cert_verdict = Some(verdict);
    }

    fn on_tls(&mut self, cx: &mut Cx, facts: TlsFacts) {
        if self.state != State::StartingTls {
            return cx.close(Ending::error(C::InternalServerError, "TLS reported outside a handshake"));
        }
        if let Some(claimed) = self.peer.clone() {
            self.judge(cx, &facts, &claimed);
        }
        cx.out.push_back(Output::Restart);
        // Everything learned before TLS is forgotten (RFC 6120 §5.4.3.3).
        self.secure = true;
        self.pairs.clear();
        self.held.clear();
        self.held_bytes = 0;
        self.hold_until = None;
        cx.observe(Observed::PairsReset);
        self.state = State::ExpectHeader;
    }

    fn on_frame(&mut self, cx: &mut Cx, now: Instant, frame: Frame, buffered: usize) {
        let el = match frame {
            Frame::Element(el) => el,
            Frame::StreamClose => return cx.close(Ending::quiet("closed by the peer", true)),
            Frame::StreamOpen(_) => return cx.close(Ending::error(C::NotWellFormed, "unexpected stream header")),
        };
        if let Some(e) = PeerStreamError::parse(&el) {
            return self.on_peer_error(cx, e);
        }
        if el.ns == ns::SASL {
            return self.on_sasl(cx, now, el);
        }
        if el.is("starttls", ns::TLS) {
            return self.on_starttls(cx, buffered);
        }
        // A `[[domain]] require_encryption = false` exemption holds for that domain's own
        // dialback and stanzas only, never for whatever else the header's claimant sends.
        if el.ns == ns::DIALBACK {
            let Some(db) = DbElement::parse(&el) else {
                return cx.close(Ending::error(C::ImproperAddressing, "dialback element without 'from' and 'to'"));
            };
            let (require_tls, rule) = cx.env.security.require_encryption_for(Domain::parse(&db.from).as_ref().map_or("", |d| d.as_str()));
            if !self.secure && require_tls {
                return cx.close(Ending::error(
                    C::PolicyViolation,
                    format!("dialback before TLS: encryption is required ({rule}); STARTTLS first"),
                ));
            }
            return match (db.verify, &db.answer) {
                (false, None) => self.on_db_result(cx, now, db),
                (true, None) => self.on_db_verify(cx, db),
                _ => tracing::debug!(stream = %cx.log, "ignoring a dialback answer on an inbound stream"),
            };
        }
        if is_stanza(&el) {
            if !self.secure {
                let from = el.get_attr("from").and_then(crate::proto::jid::domain_of);
                let (require_tls, rule) = cx.env.security.require_encryption_for(from.as_ref().map_or("", |d| d.as_str()));
                if require_tls {
                    return cx.close(Ending::error(C::PolicyViolation, format!("stanza before TLS: encryption is required ({rule})")));
                }
            }
            return self.on_stanza(cx, el);
        }
        cx.close(Ending::error(C::UnsupportedStanzaType, format!("{} is not supported here", el.describe())))
    }

    /// The peer ended the stream with a stream error (RFC 6120 §4.9): claims still being
    /// verified end with its reason as their outcome; the stream closes quietly.
    fn on_peer_error(&mut self, cx: &mut Cx, e: PeerStreamError) {
        let who = self.peer.as_ref().map_or_else(|| "the peer".to_owned(), |p| p.to_string());
        for ((local, remote), p) in &self.pairs {
            if matches!(p, Pair::Verifying(_)) {
                let why = format!("{who} ended the stream with stream error {e} while its claim was being verified");
                cx.outcome(local, remote, AuthMethod::Dialback, VerificationResult::Error, why);
            }
        }
        cx.close(super::peer_error_ending(&who, &e));
    }

    /// STARTTLS (RFC 6120 §5.4.3): `<proceed/>`, then the handshake.
    fn on_starttls(&mut self, cx: &mut Cx, buffered: usize) {
        if self.secure {
            return cx.close(Ending::error(C::PolicyViolation, "TLS is already established on this stream"));
        }
        if buffered > 0 {
            return cx.close(Ending::error(
                C::PolicyViolation,
                "data sent after <starttls/> before the TLS handshake (possible plaintext injection)",
            ));
        }
        cx.send(Element::new("proceed", ns::TLS));
        let local = self.local.clone().unwrap_or_else(|| cx.env.default_domain().clone());
        cx.out.push_back(Output::StartTls(TlsRole::Server { local }));
        self.state = State::StartingTls;
    }

    /// SASL EXTERNAL (RFC 6120 §6.4, XEP-0178 §2): success restarts the stream; a
    /// `<failure/>` leaves dialback possible.
    fn on_sasl(&mut self, cx: &mut Cx, now: Instant, el: Element) {
        let failure = |cond: &str, text: String| {
            Element::new("failure", ns::SASL).child(Element::new(cond, ns::SASL)).child(Element::new("text", ns::SASL).text(text))
        };
        if el.name == "abort" {
            // RFC 6120 §6.4.4: the initiator gave up; dialback remains possible.
            return cx.send(Element::new("failure", ns::SASL).child(Element::new("aborted", ns::SASL)));
        }
        if el.name != "auth" {
            return cx.close(Ending::error(C::UnsupportedStanzaType, format!("{} is not supported here", el.describe())));
        }
        if el.get_attr("mechanism") != Some("EXTERNAL") {
            return cx.send(failure("invalid-mechanism", "only EXTERNAL is offered".into()));
        }
        let (Some(cert), true) = (self.certified.clone(), self.sasl_offered()) else {
            // XEP-0178 §2: a certificate that does not authenticate the peer → not-authorized.
            let why = match (&self.cert_verdict, &self.peer) {
                (Some(v), Some(p)) => format!("the certificate is not valid for {p}: {v}; use dialback"),
                _ => "no certificate valid for the stream's 'from' was presented; use dialback".to_owned(),
            };
            return cx.send(failure("not-authorized", why));
        };
        let domain = cert.domain().clone();
        match crate::proto::sasl::authzid(&el.text_content()) {
            Err(e) => return cx.send(failure("incorrect-encoding", e.to_string())),
            Ok(Some(id)) if !id.eq_ignore_ascii_case(domain.as_str()) => {
                return cx.send(failure("invalid-authzid", format!("the certificate is for {domain}, not {id}")));
            }
            Ok(_) => {}
        }
        let local = self.local.clone().unwrap_or_else(|| cx.env.default_domain().clone());
        let proof = ValidPair::by_sasl(&local, &cert);
        let Some(pair) = self.authorise(cx, now, proof) else { return };
        cx.send(Element::new("success", ns::SASL));
        cx.out.push_back(Output::Restart);
        self.sasl_done = true;
        self.pairs.insert((local.clone(), domain.clone()), pair);
        if !self.admit(cx) {
            return;
        }
        cx.outcome(
            &local,
            &domain,
            AuthMethod::SaslExternal,
            VerificationResult::Valid,
            format!("SASL EXTERNAL: the certificate is valid for {domain}"),
        );
        self.state = State::ExpectHeader;
    }

    /// The policy's verdict for a pair that proved itself: valid, held for the operator,
    /// or refused (the stream closes). Observed in the table either way.
    fn authorise(&mut self, cx: &mut Cx, now: Instant, proof: ValidPair) -> Option<Pair> {
        let pair = match cx.env.policy.verdict(proof.remote()) {
            Verdict::Refuse(why) => {
                cx.close(Ending::error(C::PolicyViolation, why));
                return None;
            }
            Verdict::Allow => Pair::Valid(proof),
            Verdict::Hold => {
                cx.observe(Observed::Pending(proof.remote().clone()));
                tracing::info!(stream = %cx.log, "{} verified; held until the operator approves it", proof.remote());
                self.hold_until.get_or_insert(now + cx.env.timeouts.approval_wait);
                Pair::Held(proof)
            }
        };
        let (status, p) = match &pair {
            Pair::Held(p) => (PairStatus::Held, p),
            Pair::Valid(p) => (PairStatus::Valid, p),
            Pair::Verifying(_) => unreachable!("built above"),
        };
        cx.observe(Observed::Pair { local: p.local().clone(), remote: p.remote().clone(), status, method: p.method() });
        Some(pair)
    }

    /// A domain authenticated: the stream counts as established from now on (against
    /// `limits.max_inbound`, no longer against the unauthenticated limits).
    fn admit(&mut self, cx: &mut Cx) -> bool {
        if self.admitted {
            return true;
        }
        if let Err(key) = self.admission.authenticated() {
            cx.close(Ending::error(C::ResourceConstraint, format!("too many authenticated inbound streams ({key})")));
            return false;
        }
        self.admitted = true;
        cx.state(ConnState::Established);
        true
    }

    /// Receiving Server: `<db:result from=O to=R>key</db:result>`.
    fn on_db_result(&mut self, cx: &mut Cx, now: Instant, db: DbElement) {
        let env = cx.env;
        let Ok(remote) = Domain::parse(&db.from) else {
            return cx.close(Ending::error(C::InvalidFrom, format!("{:?} is not a valid domain", clip(&db.from, 64))));
        };
        if is_ip_literal(remote.as_str()) {
            // Nothing to call back: an address is not a domain with an authoritative server.
            return cx.close(Ending::error(C::ImproperAddressing, "dialback is for domains, not IP addresses"));
        }
        let local = match Domain::parse(&db.to) {
            Ok(d) if env.is_local_side(&d) => d,
            _ => {
                let answer = Answer::error(SC::ItemNotFound, format!("{} is not served here", clip(&db.to, 64)));
                return cx.send(dialback::result_answer(&db.to, &db.from, &answer));
            }
        };
        if env.is_local_side(&remote) {
            let why = format!("claims to be {remote}, a domain hosted here");
            return self.refuse(cx, &local, &remote, Answer::Invalid, VerificationResult::Invalid, why);
        }
        // Certificates only for this peer: no dialback (the rule is named in the error).
        if let Some(rule) = env.cert_only_rule(remote.as_str()) {
            return cx.close(Ending::error(
                C::NotAuthorized,
                format!("dialback is not accepted for {remote} ({rule}); authenticate with a valid certificate (SASL EXTERNAL)"),
            ));
        }
        // Refused domains are cut off before any callback is spent on them.
        if let Verdict::Refuse(why) = env.policy.verdict(&remote) {
            return cx.close(Ending::error(C::PolicyViolation, why));
        }
        match self.pairs.get(&(local.clone(), remote.clone())) {
            Some(Pair::Valid(_) | Pair::Held(_)) => {
                return cx.send(dialback::result_answer(local.as_str(), remote.as_str(), &Answer::Valid));
            }
            Some(Pair::Verifying(_)) => {
                // XEP-0220 §2.1: a second db:result for a pair being verified starts nothing new.
                // Debug only: the peer can repeat it at will.
                return tracing::debug!(stream = %cx.log, "{remote} → {local}: db:result ignored, already being verified");
            }
            None => {}
        }
        if self.pairs.len() >= env.limits.max_pairs_per_stream {
            let answer = Answer::error(SC::ResourceConstraint, "too many domain pairs on this stream (limits.max_pairs_per_stream)");
            return cx.send(dialback::result_answer(local.as_str(), remote.as_str(), &answer));
        }
        let in_flight = self.pairs.values().filter(|p| matches!(p, Pair::Verifying(_))).count();
        match self.verifications.start(now, in_flight, &env.limits) {
            Ok(()) => {}
            Err(key @ crate::types::LimitKey::MaxVerificationsInFlight) => {
                let answer =
                    Answer::error(SC::ResourceConstraint, format!("too many verifications under way on this stream ({key}); try again"));
                return cx.send(dialback::result_answer(local.as_str(), remote.as_str(), &answer));
            }
            Err(key) => return cx.close(Ending::error(C::PolicyViolation, format!("too many dialback requests on this stream ({key})"))),
        }
        if db.key.is_empty() {
            return self.refuse(cx, &local, &remote, Answer::Invalid, VerificationResult::Invalid, "sent an empty dialback key".into());
        }
        self.pairs.insert((local.clone(), remote.clone()), Pair::Verifying(KeySent::new(local.clone(), remote.clone())));
        if let Some(proof) = self.certified.as_ref().and_then(|c| ValidPair::by_certificate(&local, c, &remote)) {
            // XEP-0344 §2.2: the TLS certificate already proves the claim; no callback.
            tracing::info!(stream = %cx.log, "{remote} → {local}: certificate valid for {remote}, dialback accepted without the callback");
            return self.accept(cx, now, proof, format!("dialback without the callback: the certificate is valid for {remote}"));
        }
        cx.observe(Observed::Pair {
            local: local.clone(),
            remote: remote.clone(),
            status: PairStatus::Pending,
            method: AuthMethod::Dialback,
        });
        tracing::info!(stream = %cx.log, "{remote} → {local}: asking {remote}'s authoritative server (db:verify)");
        cx.out.push_back(Output::Ask(super::Ask { local, remote, stream_id: self.stream_id.clone(), key: db.key }));
    }

    /// The authoritative server answered (or the certificate answered for it).
    fn on_answer(&mut self, cx: &mut Cx, now: Instant, local: Domain, remote: Domain, answer: Answer, detail: Option<String>) {
        let Some(Pair::Verifying(sent)) = self.pairs.get(&(local.clone(), remote.clone())) else {
            return; // forgotten by a stream restart
        };
        let proof = sent.answered(&answer);
        match answer {
            Answer::Valid => {
                let proof = proof.expect("a valid answer to the key sent");
                self.accept(cx, now, proof, format!("{remote}'s authoritative server confirmed the dialback key"));
            }
            Answer::Invalid => {
                let reason = format!(
                    "{remote}'s authoritative server said the dialback key is invalid: the peer is not {remote} (spoofing, or a key from another stream)"
                );
                self.refuse(cx, &local, &remote, Answer::Invalid, VerificationResult::Invalid, reason);
            }
            Answer::Error { condition, text } => {
                let result = if condition == SC::RemoteServerTimeout { VerificationResult::Timeout } else { VerificationResult::Error };
                // The peer gets the neutral text; the operator the full reason.
                let reason = format!(
                    "could not verify with {remote}'s authoritative server: <{condition}/> {}",
                    detail.or_else(|| text.clone()).unwrap_or_default()
                );
                self.refuse(cx, &local, &remote, Answer::Error { condition, text }, result, reason);
            }
        }
    }

    /// A pair proved itself by dialback (with or without the callback): recorded, judged by
    /// the policy, answered.
    fn accept(&mut self, cx: &mut Cx, now: Instant, proof: ValidPair, reason: String) {
        let (local, remote) = (proof.local().clone(), proof.remote().clone());
        cx.outcome(&local, &remote, proof.method(), VerificationResult::Valid, reason);
        // Policy again, for every domain that authenticates on the stream.
        let Some(pair) = self.authorise(cx, now, proof) else { return };
        self.pairs.insert((local.clone(), remote.clone()), pair);
        if !self.admit(cx) {
            return;
        }
        cx.send(dialback::result_answer(local.as_str(), remote.as_str(), &Answer::Valid));
    }

    fn refuse(&mut self, cx: &mut Cx, local: &Domain, remote: &Domain, answer: Answer, result: VerificationResult, reason: String) {
        if self.pairs.remove(&(local.clone(), remote.clone())).is_some() {
            cx.observe(Observed::PairRemoved { local: local.clone(), remote: remote.clone() });
        }
        cx.send(dialback::result_answer(local.as_str(), remote.as_str(), &answer));
        cx.outcome(local, remote, AuthMethod::Dialback, result, reason);
    }

    /// The policy changed: release held pairs now allowed (their stanzas delivered in
    /// order), close on a refusal.
    fn review_held(&mut self, cx: &mut Cx) {
        let held: Vec<(Domain, Domain)> = self.pairs.iter().filter(|(_, p)| matches!(p, Pair::Held(_))).map(|(k, _)| k.clone()).collect();
        if held.is_empty() {
            return;
        }
        for key in held {
            match cx.env.policy.verdict(&key.1) {
                Verdict::Hold => {}
                Verdict::Refuse(why) => return cx.close(Ending::error(C::PolicyViolation, why)),
                Verdict::Allow => {
                    tracing::info!(stream = %cx.log, "{} approved; releasing its held stanzas", key.1);
                    if let Some(Pair::Held(p)) = self.pairs.remove(&key) {
                        cx.observe(Observed::Pair {
                            local: key.0.clone(),
                            remote: key.1.clone(),
                            status: PairStatus::Valid,
                            method: p.method(),
                        });
                        self.pairs.insert(key, Pair::Valid(p));
                    }
                }
            }
        }
        // Deliver, in arrival order, what is no longer held.
        let mut still = VecDeque::new();
        while let Some(st) = self.held.pop_front() {
            let key = pair_of(&st);
            match key.as_ref().and_then(|k| self.pairs.get(k)).zip(key.as_ref()) {
                Some((Pair::Valid(p), (to, from))) => deliver(cx, p, to, from, st),
                _ => still.push_back(st),
            }
        }
        self.held_bytes = still.iter().map(Element::weight).sum();
        self.held = still;
        if !self.pairs.values().any(|p| matches!(p, Pair::Held(_))) {
            self.hold_until = None;
        }
    }

    /// Authoritative Server: `<db:verify from=R to=O id=…>key</db:verify>`.
    fn on_db_verify(&mut self, cx: &mut Cx, db: DbElement) {
        let id = db.id.clone().unwrap_or_default();
        let answer = match Domain::parse(&db.to).ok().filter(|d| cx.env.is_local_side(d)) {
            None => Answer::error(SC::ItemNotFound, format!("{} is not served here", clip(&db.to, 64))),
            Some(_) if id.is_empty() => Answer::Invalid,
            Some(d) if cx.env.keys.verify(&db.from, d.as_str(), &id, &db.key) => Answer::Valid,
            Some(_) => Answer::Invalid,
        };
        // One line at the default level per stream, the rest at debug: the frames come from a
        // peer nobody authenticated (the Receiving Server asking us), as many as it likes, and
        // a valid key can be replayed — per-frame lines would be its to write.
        self.verify_answers += 1;
        let (from, to, id) = (clip(&db.from, 64), clip(&db.to, 64), clip(&id, 64));
        if self.verify_answers == 1 {
            tracing::info!(
                stream = %cx.log,
                "authoritative answer to {from} about {to} (stream {id}): {} (further answers on this stream at debug level)",
                answer.describe()
            );
        } else {
            tracing::debug!(stream = %cx.log, "authoritative answer to {from} about {to} (stream {id}): {}", answer.describe());
        }
        cx.send(dialback::verify_answer(&db.to, &db.from, &id, &answer));
    }

    /// RFC 6120 §8.1.1.2 / §4.9.3: addressing checks, then delivery.
    fn on_stanza(&mut self, cx: &mut Cx, el: Element) {
        if !self.authenticated() {
            return cx.close(Ending::error(C::NotAuthorized, "no domain is authenticated on this stream yet"));
        }
        let (Some(from), Some(to)) = (el.get_attr("from"), el.get_attr("to")) else {
            return cx.close(Ending::error(C::ImproperAddressing, "stanzas between servers need 'from' and 'to'"));
        };
        let Some(from_dom) = crate::proto::jid::domain_of(from) else {
            return cx.close(Ending::error(C::InvalidFrom, format!("{:?} is not a valid address", clip(from, 64))));
        };
        let Some(to_dom) = crate::proto::jid::domain_of(to) else {
            return cx.close(Ending::error(C::ImproperAddressing, format!("{:?} is not a valid address", clip(to, 64))));
        };
        if !cx.env.is_local_side(&to_dom) {
            return cx.close(Ending::error(C::HostUnknown, format!("{to_dom} is not served here")));
        }
        match self.pairs.get(&(to_dom.clone(), from_dom.clone())) {
            Some(Pair::Valid(p)) => deliver(cx, p, &to_dom, &from_dom, el),
            Some(Pair::Held(_)) => {
                let w = el.weight();
                if self.held.len() >= cx.env.limits.held_stanzas || self.held_bytes + w > cx.env.limits.held_bytes {
                    return cx.close(Ending::error(
                        C::PolicyViolation,
                        format!(
                            "{from_dom} awaits approval and sent more stanzas than are kept meanwhile (limits.outbound_queue, limits.outbound_queue_bytes)"
                        ),
                    ));
                }
                self.held_bytes += w;
                self.held.push_back(el);
            }
            Some(Pair::Verifying(_)) => cx.close(Ending::error(C::InvalidFrom, format!("{from_dom} is still being verified for {to_dom}"))),
            None => cx.close(Ending::error(C::InvalidFrom, format!("{from_dom} is not authenticated for {to_dom} on this stream"))),
        }
    }
}

/// Whether a peer's stream header may go on: well-formed, naming one of our domains in
/// `to` (`to`: that attribute, parsed) and, in `from`, a domain rather than an IP address.
/// The error is the ending the stream gets.
fn admit_header(env: &Env, h: &StreamHeader, to: Option<Domain>) -> Result<Domain, Ending> {
    if let Err(e) = check_header(h) {
        return Err(Ending::error(e.condition, e.text));
    }
    let Some(local) = to.filter(|d| env.is_local_side(d)) else {
        return Err(Ending::error(
            C::HostUnknown,
            format!("{} is not served here", clip(h.to.as_deref().unwrap_or("(no 'to' attribute)"), 64)),
        ));
    };
    // The gateway listener (issue 16): TLS here presents a certificate minted for `to`,
    // so before anything is minted the stream must name a world domain (not an IP
    // address) in `to` and say who it is in `from` (the policy then wants one of the
    // internal server's domains).
    if env.serves_world {
        if is_ip_literal(local.as_str()) {
            return Err(Ending::error(C::HostUnknown, "an IP address is not a domain drawbridge can stand in for"));
        }
        if h.from.is_none() {
            return Err(Ending::error(
                C::PolicyViolation,
                "streams to the gateway listener must name the internal server's domain in 'from'",
            ));
        }
    }
    // RFC 6120 §4.7.1: a 'from' that is not a domain (too long, bad characters, an IP
    // address) ends the stream before anything is stored or logged in full.
    if let Some(from) = h.from.as_deref() {
        match Domain::parse(from) {
            Ok(d) if !is_ip_literal(d.as_str()) => {}
            Ok(_) => return Err(Ending::error(C::InvalidFrom, "the 'from' of an s2s stream must be a domain, not an IP address")),
            Err(e) => {
                return Err(Ending::error(C::InvalidFrom, format!("{:?} is not a domain: {}", clip(from, 64), clip(&e.to_string(), 96))));
            }
        }
    }
    Ok(local)
}

/// The pair a stanza travels on: (its 'to' domain, its 'from' domain).
fn pair_of(st: &Element) -> Option<(Domain, Domain)> {
    let from = crate::proto::jid::domain_of(st.get_attr("from")?)?;
    let to = crate::proto::jid::domain_of(st.get_attr("to")?)?;
    Some((to, from))
}

/// A stanza of an authorised pair — the proof is required, and the stanza must travel on
/// its pair — checked (RFC 6120 §8: a malformed one is answered, never an error or a result,
/// and not delivered).
fn deliver(cx: &mut Cx, pair: &ValidPair, to: &Domain, from: &Domain, el: Element) {
    if let Err((condition, text)) = crate::proto::stanza::check(&el) {
        tracing::debug!(stream = %cx.log, stanza = %el.describe(), "{condition}: {text}");
        if let Some(reply) = crate::proto::stanza::error_reply(&el, condition, Some(text)) {
            cx.out.push_back(Output::Route(reply));
        }
        return;
    }
    match Delivery::new(pair, to, from, el) {
        Ok(d) => cx.out.push_back(Output::Deliver(d)),
        Err(el) => tracing::error!(stream = %cx.log, stanza = %el.describe(), "not delivered: {from} → {to} is not the proof's pair"),
    }
}
