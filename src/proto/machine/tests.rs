//! The machine without sockets, in virtual time: every transition of both roles.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::proto::ns;
use crate::proto::stanza::StanzaErrorCondition as SC;
use crate::proto::stream::StreamErrorCondition as C;
use crate::types::{AuthMode, DomainRule, StreamLimits};
use crate::xml::Framer;

const LOCAL: &str = "here.test";
const REMOTE: &str = "there.test";
const SECRET: &[u8] = b"s3cret";

#[derive(Default)]
pub(crate) struct FakePolicy(Mutex<HashMap<String, Verdict>>);

impl FakePolicy {
    fn set(&self, d: &str, v: Verdict) {
        self.0.lock().unwrap().insert(d.into(), v);
    }
}

impl PolicyView for FakePolicy {
    fn verdict(&self, remote: &Domain) -> Verdict {
        self.0.lock().unwrap().get(remote.as_str()).cloned().unwrap_or(Verdict::Allow)
    }
}

/// Certificates by the domain they are judged for: valid for the listed ones.
#[derive(Default)]
pub(crate) struct FakeJudge(Mutex<Vec<String>>);

impl CertJudge for FakeJudge {
    fn judge(&self, chain: &[CertificateDer<'_>], domain: &Domain, _at: UnixTime) -> CertVerdict {
        if chain.is_empty() {
            CertVerdict::NoCertificate
        } else if self.0.lock().unwrap().iter().any(|d| d == domain.as_str()) {
            CertVerdict::Valid
        } else {
            CertVerdict::NameMismatch(vec!["other.test".into()])
        }
    }
}

struct Slot(Arc<AtomicBool>);

impl Admission for Slot {
    fn authenticated(&mut self) -> Result<(), crate::types::LimitKey> {
        if self.0.load(Ordering::Relaxed) { Err(crate::types::LimitKey::MaxInbound) } else { Ok(()) }
    }
}

struct World {
    env: Arc<Env>,
    policy: Arc<FakePolicy>,
    judge: Arc<FakeJudge>,
    full: Arc<AtomicBool>,
    t0: Instant,
}

fn world_with(f: impl FnOnce(&mut Env)) -> World {
    let policy = Arc::new(FakePolicy::default());
    let judge = Arc::new(FakeJudge::default());
    let ids = Arc::new(AtomicU64::new(0));
    let mut env = Env {
        hosted: vec![d(LOCAL), d("other-here.test")],
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
            verifications_per_minute: 3,
            held_stanzas: 3,
            held_bytes: 10_000,
            max_bytes: 512 * 1024,
        },
        security: Security { auth: AuthMode::CertOrDialback, require_encryption: true, rules: vec![] },
        keys: DialbackKeys::new(SECRET),
        policy: policy.clone(),
        certs: judge.clone(),
        stream_ids: Box::new(move || format!("id{}", ids.fetch_add(1, Ordering::Relaxed))),
        issued_here: Box::new(|id| id.starts_with("ours-")),
    };
    f(&mut env);
    World { env: Arc::new(env), policy, judge, full: Arc::default(), t0: Instant::now() }
}

fn world() -> World {
    world_with(|_| {})
}

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// The peer's side of the wire: its header, then elements parsed as the framer would.
struct Wire(Framer);

impl Wire {
    fn open(from: Option<&str>, to: &str) -> (Wire, Frame) {
        let mut f = Framer::new(1 << 20, 32);
        let from = from.map(|f| format!(" from='{f}'")).unwrap_or_default();
        f.feed(
            format!("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0' to='{to}'{from} id='peer-id'>")
                .as_bytes(),
        );
        let h = f.next_frame().unwrap().unwrap();
        (Wire(f), h)
    }

    fn el(&mut self, xml: &str) -> Frame {
        self.0.feed(xml.as_bytes());
        self.0.next_frame().unwrap().expect("a complete element")
    }
}

fn frame(frame: Frame) -> Input {
    Input::Frame { frame, buffered: 0 }
}

fn drain(m: &mut Machine) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn xml(el: &Element) -> String {
    let mut s = String::new();
    crate::xml::writer::write_top(&mut s, el);
    s
}

/// Everything written, as text (elements serialised, raw bytes as they are).
fn written(outs: &[Output]) -> String {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(el) => Some(xml(el)),
            Output::Raw(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn ending(outs: &[Output]) -> Option<&Ending> {
    outs.iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None })
}

fn condition(outs: &[Output]) -> Option<C> {
    ending(outs).and_then(|e| e.error.as_ref()).map(|e| e.condition)
}

fn observed(outs: &[Output]) -> Vec<&Observed> {
    outs.iter().filter_map(|o| if let Output::Observe(x) = o { Some(x) } else { None }).collect()
}

fn delivered(outs: &[Output]) -> Vec<String> {
    outs.iter().filter_map(|o| if let Output::Deliver(d) = o { Some(xml(d.stanza())) } else { None }).collect()
}

fn asks(outs: &[Output]) -> Vec<&Ask> {
    outs.iter().filter_map(|o| if let Output::Ask(a) = o { Some(a) } else { None }).collect()
}

fn outcomes(outs: &[Output]) -> Vec<(AuthMethod, VerificationResult)> {
    observed(outs)
        .into_iter()
        .filter_map(|o| if let Observed::Outcome { method, result, .. } = o { Some((*method, *result)) } else { None })
        .collect()
}

fn facts(valid_chain: bool) -> TlsFacts {
    TlsFacts { chain: if valid_chain { vec![CertificateDer::from(vec![1u8])] } else { vec![] }, at: UnixTime::now() }
}

// ---------------------------------------------------------------------------------------
// Receiving role.

impl World {
    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn inbound(&self, direct: Option<TlsFacts>) -> Machine {
        Machine::receiving(self.env.clone(), "in-1".into(), self.t0, direct, Box::new(Slot(self.full.clone())))
    }

    /// An inbound stream past STARTTLS, features sent; the wire after the restart.
    fn inbound_secure(&self) -> (Machine, Wire, Vec<Output>) {
        let mut m = self.inbound(None);
        let (mut w, h) = Wire::open(Some(REMOTE), LOCAL);
        m.handle(self.t0, frame(h));
        drain(&mut m);
        m.handle(self.t0, frame(w.el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")));
        drain(&mut m);
        m.handle(self.t0, Input::TlsEstablished(facts(true)));
        drain(&mut m);
        let (w, h) = Wire::open(Some(REMOTE), LOCAL);
        m.handle(self.t0, frame(h));
        let outs = drain(&mut m);
        (m, w, outs)
    }

    /// … and with (LOCAL, REMOTE) valid by dialback.
    fn inbound_established(&self) -> (Machine, Wire) {
        let (mut m, mut w, _) = self.inbound_secure();
        m.handle(self.t0, frame(w.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
        drain(&mut m);
        m.handle(self.t0, Input::Answer { local: d(LOCAL), remote: d(REMOTE), answer: Answer::Valid, detail: None });
        let outs = drain(&mut m);
        assert!(written(&outs).contains("type='valid'"), "{outs:?}");
        (m, w)
    }
}

#[test]
fn receiving_header_then_starttls_then_restart_forgets_and_offers_dialback() {
    let w = world();
    let mut m = w.inbound(None);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    let outs = drain(&mut m);
    let text = written(&outs);
    assert!(text.starts_with("<?xml version='1.0'?><stream:stream"), "{text}");
    assert!(text.contains(&format!("from='{LOCAL}'")) && text.contains(&format!("to='{REMOTE}'")) && text.contains("id='id0'"));
    assert!(text.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"), "{text}");
    assert!(!text.contains("urn:xmpp:features:dialback"), "no dialback before TLS when encryption is required: {text}");
    assert!(observed(&outs).contains(&&Observed::State(ConnState::Tls)));

    m.handle(w.t0, frame(wire.el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")));
    let outs = drain(&mut m);
    assert_eq!(written(&outs), "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert!(matches!(outs.last(), Some(Output::StartTls(TlsRole::Server { local })) if local.as_str() == LOCAL));

    m.handle(w.t0, Input::TlsEstablished(facts(false)));
    let outs = drain(&mut m);
    assert!(outs.iter().any(|o| matches!(o, Output::Restart)));
    assert!(observed(&outs).contains(&&Observed::PairsReset));
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Certificate, VerificationResult::Invalid)]);

    let (_, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    let text = written(&drain(&mut m));
    assert!(text.contains("id='id1'"), "a new stream id after the restart: {text}");
    assert!(!text.contains("starttls") && !text.contains("mechanisms"), "{text}");
    assert!(text.contains("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"), "{text}");
}

#[test]
fn receiving_refuses_plaintext_injection_after_starttls() {
    let w = world();
    let mut m = w.inbound(None);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    drain(&mut m);
    let f = wire.el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    m.handle(w.t0, Input::Frame { frame: f, buffered: 12 });
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::PolicyViolation));
    assert!(!outs.iter().any(|o| matches!(o, Output::StartTls(_))));
    assert!(m.is_closed());
    // Nothing more after the close.
    m.handle(w.t0, Input::Timer);
    assert!(drain(&mut m).is_empty());
}

#[test]
fn receiving_header_checks() {
    let w = world();
    // Not ours.
    let mut m = w.inbound(None);
    m.handle(w.t0, frame(Wire::open(Some(REMOTE), "elsewhere.test").1));
    let outs = drain(&mut m);
    assert!(written(&outs).starts_with("<?xml"), "our header comes before the error");
    assert_eq!(condition(&outs), Some(C::HostUnknown));
    // An address is not a domain.
    let mut m = w.inbound(None);
    m.handle(w.t0, frame(Wire::open(Some("192.0.2.1"), LOCAL).1));
    assert_eq!(condition(&drain(&mut m)), Some(C::InvalidFrom));
    // Refused by the policy at the header: recorded as a policy refusal.
    w.policy.set(REMOTE, Verdict::Refuse("there.test is blacklisted".into()));
    let mut m = w.inbound(None);
    m.handle(w.t0, frame(Wire::open(Some(REMOTE), LOCAL).1));
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::PolicyViolation));
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Policy, VerificationResult::Refused)]);
    // Not a header at all.
    let mut m = w.inbound(None);
    let (mut wire, _) = Wire::open(None, LOCAL);
    m.handle(w.t0, frame(wire.el("<message/>")));
    let outs = drain(&mut m);
    assert!(written(&outs).starts_with("<?xml"));
    assert_eq!(condition(&outs), Some(C::NotWellFormed));
}

#[test]
fn receiving_parse_error_before_the_header_still_sends_ours() {
    let w = world();
    let mut m = w.inbound(None);
    m.handle(w.t0, Input::ReadError(ReadError::Xml(XmlError::Restricted("a DTD".into()))));
    let outs = drain(&mut m);
    assert!(written(&outs).starts_with("<?xml"));
    assert_eq!(condition(&outs), Some(C::RestrictedXml));
}

#[test]
fn receiving_dialback_ask_answer_and_deliver() {
    let w = world();
    let (mut m, mut wire, outs) = w.inbound_secure();
    assert!(observed(&outs).contains(&&Observed::State(ConnState::Authenticating)));
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>key1</db:result>"))));
    let outs = drain(&mut m);
    let ask = asks(&outs);
    assert_eq!(ask.len(), 1);
    assert_eq!(
        (ask[0].local.as_str(), ask[0].remote.as_str(), ask[0].stream_id.as_str(), ask[0].key.as_str()),
        (LOCAL, REMOTE, "id1", "key1")
    );
    assert!(observed(&outs).iter().any(|o| matches!(o, Observed::Pair { status: PairStatus::Pending, .. })));
    // Asked twice while verifying: nothing new.
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>key1</db:result>"))));
    assert!(asks(&drain(&mut m)).is_empty());
    // A stanza before the answer: the pair is not valid yet.
    m.handle(w.t0, Input::Answer { local: d(LOCAL), remote: d(REMOTE), answer: Answer::Valid, detail: None });
    let outs = drain(&mut m);
    assert_eq!(written(&outs), format!("<db:result from='{LOCAL}' to='{REMOTE}' type='valid'/>"));
    assert!(observed(&outs).contains(&&Observed::State(ConnState::Established)));
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Dialback, VerificationResult::Valid)]);
    let ping = format!("<iq type='get' id='p1' from='{REMOTE}' to='{LOCAL}'><ping xmlns='urn:xmpp:ping'/></iq>");
    m.handle(w.t0, frame(wire.el(&ping)));
    assert_eq!(delivered(&drain(&mut m)).len(), 1);
    // A stanza from a domain not authenticated on this stream ends it.
    m.handle(w.t0, frame(wire.el(&format!("<message from='x@third.test' to='a@{LOCAL}'/>"))));
    assert_eq!(condition(&drain(&mut m)), Some(C::InvalidFrom));
}

#[test]
fn receiving_piggybacked_pairs_and_refusals() {
    let w = world();
    let (mut m, mut wire) = w.inbound_established();
    // A second domain on the same stream (XEP-0220 §2.5 piggybacking), to another local domain.
    m.handle(w.t0, frame(wire.el("<db:result from='second.test' to='other-here.test'>k2</db:result>")));
    assert_eq!(asks(&drain(&mut m)).len(), 1);
    m.handle(w.t0, Input::Answer { local: d("other-here.test"), remote: d("second.test"), answer: Answer::Invalid, detail: None });
    let outs = drain(&mut m);
    assert!(written(&outs).contains("type='invalid'"));
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Dialback, VerificationResult::Invalid)]);
    assert!(observed(&outs).iter().any(|o| matches!(o, Observed::PairRemoved { .. })));
    // An error answer: the peer gets the condition; the outcome says timeout.
    m.handle(w.t0, frame(wire.el("<db:result from='third.test' to='here.test'>k3</db:result>")));
    drain(&mut m);
    let answer = Answer::error(SC::RemoteServerTimeout, "third.test's authoritative server did not answer in time");
    m.handle(w.t0, Input::Answer { local: d(LOCAL), remote: d("third.test"), answer, detail: Some("no answer within 20s".into()) });
    let outs = drain(&mut m);
    assert!(written(&outs).contains("type='error'") && written(&outs).contains("remote-server-timeout"), "{}", written(&outs));
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Dialback, VerificationResult::Timeout)]);
    // The first pair still works; the refused ones do not.
    let ok = format!("<message from='a@{REMOTE}' to='b@{LOCAL}'><body>hi</body></message>");
    m.handle(w.t0, frame(wire.el(&ok)));
    assert_eq!(delivered(&drain(&mut m)).len(), 1);
    m.handle(w.t0, frame(wire.el("<message from='a@second.test' to='b@other-here.test'/>")));
    assert_eq!(condition(&drain(&mut m)), Some(C::InvalidFrom));
}

#[test]
fn receiving_claims_for_unknown_or_hosted_domains_and_empty_keys() {
    let w = world();
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='nothere.test'>k</db:result>"))));
    let outs = drain(&mut m);
    assert!(written(&outs).contains("item-not-found"));
    assert!(asks(&outs).is_empty());
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='other-here.test' to='{LOCAL}'>k</db:result>"))));
    let outs = drain(&mut m);
    assert!(written(&outs).contains("type='invalid'"));
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'></db:result>"))));
    let outs = drain(&mut m);
    assert!(written(&outs).contains("type='invalid'"));
    assert!(asks(&outs).is_empty());
    assert!(!m.is_closed());
}

#[test]
fn receiving_verification_budget() {
    let w = world();
    let (mut m, mut wire, _) = w.inbound_secure();
    for r in ["a.test", "b.test"] {
        m.handle(w.t0, frame(wire.el(&format!("<db:result from='{r}' to='{LOCAL}'>k</db:result>"))));
        assert_eq!(asks(&drain(&mut m)).len(), 1);
    }
    // Two in flight (limits.max_verifications_in_flight = 2): the third waits its turn.
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='c.test' to='{LOCAL}'>k</db:result>"))));
    let outs = drain(&mut m);
    assert!(written(&outs).contains("resource-constraint"));
    assert!(asks(&outs).is_empty());
    m.handle(w.t0, Input::Answer { local: d(LOCAL), remote: d("a.test"), answer: Answer::Invalid, detail: None });
    drain(&mut m);
    m.handle(w.at(1), frame(wire.el(&format!("<db:result from='c.test' to='{LOCAL}'>k</db:result>"))));
    assert_eq!(asks(&drain(&mut m)).len(), 1);
    // Three per minute (limits.verifications_per_minute = 3): the fourth ends the stream …
    m.handle(w.at(2), Input::Answer { local: d(LOCAL), remote: d("b.test"), answer: Answer::Invalid, detail: None });
    m.handle(w.at(2), frame(wire.el(&format!("<db:result from='d.test' to='{LOCAL}'>k</db:result>"))));
    assert_eq!(condition(&drain(&mut m)), Some(C::PolicyViolation));
}

#[test]
fn receiving_answers_as_authoritative_server() {
    let w = world();
    let (mut m, mut wire, _) = w.inbound_secure();
    let key = w.env.keys.derive("rs.test", LOCAL, "sid");
    m.handle(w.t0, frame(wire.el(&format!("<db:verify from='rs.test' to='{LOCAL}' id='sid'>{key}</db:verify>"))));
    assert!(written(&drain(&mut m)).contains("type='valid'"));
    m.handle(w.t0, frame(wire.el(&format!("<db:verify from='rs.test' to='{LOCAL}' id='other'>{key}</db:verify>"))));
    assert!(written(&drain(&mut m)).contains("type='invalid'"));
    m.handle(w.t0, frame(wire.el(&format!("<db:verify from='rs.test' to='nothere.test' id='sid'>{key}</db:verify>"))));
    assert!(written(&drain(&mut m)).contains("item-not-found"));
    // Only an answer, nothing else: the stream stays unauthenticated and open.
    assert!(!m.is_closed());
}

#[test]
fn receiving_sasl_external_success_restarts_without_a_second_offer() {
    let w = world();
    w.judge.0.lock().unwrap().push(REMOTE.into());
    let (mut m, mut wire, outs) = w.inbound_secure();
    let text = written(&outs);
    assert!(text.contains("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>"), "{text}");
    assert!(text.contains("urn:xmpp:features:dialback"), "dialback stays offered alongside: {text}");
    m.handle(w.t0, frame(wire.el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")));
    let outs = drain(&mut m);
    assert_eq!(written(&outs), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert!(outs.iter().any(|o| matches!(o, Output::Restart)));
    assert!(
        observed(&outs).iter().any(|o| matches!(o, Observed::Pair { status: PairStatus::Valid, method: AuthMethod::SaslExternal, .. }))
    );
    assert_eq!(outcomes(&outs), vec![(AuthMethod::SaslExternal, VerificationResult::Valid)]);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    let text = written(&drain(&mut m));
    assert!(!text.contains("mechanisms"), "{text}");
    let ping = format!("<iq type='get' id='p1' from='{REMOTE}' to='{LOCAL}'><ping xmlns='urn:xmpp:ping'/></iq>");
    m.handle(w.t0, frame(wire.el(&ping)));
    assert_eq!(delivered(&drain(&mut m)).len(), 1);
}

#[test]
fn receiving_sasl_failures_leave_dialback_open() {
    let w = world();
    let (mut m, mut wire, outs) = w.inbound_secure();
    assert!(!written(&outs).contains("mechanisms"), "no SASL without a valid certificate");
    for (auth, cond) in [
        ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>", "invalid-mechanism"),
        ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>", "not-authorized"),
        ("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", "aborted"),
    ] {
        m.handle(w.t0, frame(wire.el(auth)));
        let text = written(&drain(&mut m));
        assert!(text.starts_with("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>") && text.contains(cond), "{text}");
    }
    // The certificate's verdict is named.
    m.handle(w.t0, frame(wire.el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")));
    assert!(written(&drain(&mut m)).contains("name mismatch"));
    // Valid certificate, wrong authzid.
    let w = world();
    w.judge.0.lock().unwrap().push(REMOTE.into());
    let (mut m, mut wire, _) = w.inbound_secure();
    let authzid = crate::proto::sasl::base64_encode(b"someone.test");
    m.handle(w.t0, frame(wire.el(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"))));
    assert!(written(&drain(&mut m)).contains("invalid-authzid"));
    m.handle(w.t0, frame(wire.el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>!!</auth>")));
    assert!(written(&drain(&mut m)).contains("incorrect-encoding"));
    assert!(!m.is_closed());
}

#[test]
fn receiving_dialback_with_a_valid_certificate_needs_no_callback() {
    let w = world();
    w.judge.0.lock().unwrap().push(REMOTE.into());
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
    let outs = drain(&mut m);
    assert!(asks(&outs).is_empty());
    assert!(written(&outs).contains("type='valid'"));
    assert_eq!(outcomes(&outs), vec![(AuthMethod::DialbackWithValidCert, VerificationResult::Valid)]);
}

#[test]
fn receiving_cert_only_peer_may_not_use_dialback() {
    let w = world_with(|e| e.security.rules.push(DomainRule { name: d(REMOTE), auth: Some(AuthMode::CertOnly), require_encryption: None }));
    let (mut m, mut wire, outs) = w.inbound_secure();
    assert!(!written(&outs).contains("urn:xmpp:features:dialback"));
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::NotAuthorized));
    assert!(ending(&outs).unwrap().error.as_ref().unwrap().text.contains("auth = \"cert-only\""));
}

#[test]
fn receiving_approval_hold_and_release_in_order() {
    let w = world();
    w.policy.set(REMOTE, Verdict::Hold);
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
    drain(&mut m);
    m.handle(w.t0, Input::Answer { local: d(LOCAL), remote: d(REMOTE), answer: Answer::Valid, detail: None });
    let outs = drain(&mut m);
    assert!(observed(&outs).contains(&&Observed::Pending(d(REMOTE))));
    assert!(observed(&outs).iter().any(|o| matches!(o, Observed::Pair { status: PairStatus::Held, .. })));
    assert_eq!(m.deadline(), Some(w.at(300)), "held for approval_wait");
    for i in 1..=2 {
        m.handle(w.t0, frame(wire.el(&format!("<message id='m{i}' from='a@{REMOTE}' to='b@{LOCAL}'/>"))));
        assert!(delivered(&drain(&mut m)).is_empty(), "held, not delivered");
    }
    // Still undecided: nothing moves.
    m.handle(w.at(10), Input::PolicyChanged);
    assert!(drain(&mut m).is_empty());
    w.policy.set(REMOTE, Verdict::Allow);
    m.handle(w.at(11), Input::PolicyChanged);
    let outs = drain(&mut m);
    let got = delivered(&outs);
    assert_eq!(got.len(), 2);
    assert!(got[0].contains("id='m1'") && got[1].contains("id='m2'"), "{got:?}");
    assert!(observed(&outs).iter().any(|o| matches!(o, Observed::Pair { status: PairStatus::Valid, .. })));
    assert_eq!(m.deadline(), Some(w.t0 + w.env.timeouts.idle_inbound), "no hold deadline any more");
}

#[test]
fn receiving_hold_times_out_and_overflow_and_refusal_close() {
    let w = world();
    w.policy.set(REMOTE, Verdict::Hold);
    let hold = |w: &World| {
        let (mut m, mut wire, _) = w.inbound_secure();
        m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
        m.handle(w.t0, Input::Answer { local: d(LOCAL), remote: d(REMOTE), answer: Answer::Valid, detail: None });
        drain(&mut m);
        (m, wire)
    };
    let (mut m, _) = hold(&w);
    m.handle(w.at(299), Input::Timer);
    assert!(drain(&mut m).is_empty());
    m.handle(w.at(300), Input::Timer);
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::PolicyViolation));
    assert!(ending(&outs).unwrap().reason.contains("awaits approval"));
    // More held stanzas than kept (limits: 3).
    let (mut m, mut wire) = hold(&w);
    for i in 0..4 {
        m.handle(w.t0, frame(wire.el(&format!("<message id='m{i}' from='a@{REMOTE}' to='b@{LOCAL}'/>"))));
    }
    assert_eq!(condition(&drain(&mut m)), Some(C::PolicyViolation));
    // The operator refuses.
    let (mut m, _) = hold(&w);
    w.policy.set(REMOTE, Verdict::Refuse("blocked by the operator".into()));
    m.handle(w.at(5), Input::PolicyChanged);
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::PolicyViolation));
    assert_eq!(ending(&outs).unwrap().error.as_ref().unwrap().text, "blocked by the operator");
}

#[test]
fn receiving_timeouts_in_virtual_time() {
    let w = world();
    let mut m = w.inbound(None);
    assert_eq!(m.deadline(), Some(w.at(30)));
    assert_eq!(m.write_deadline(), Some(w.at(30)));
    m.handle(w.at(29), Input::Timer);
    assert!(drain(&mut m).is_empty());
    m.handle(w.at(30), Input::Timer);
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::ConnectionTimeout));
    assert!(ending(&outs).unwrap().reason.contains("timeouts.negotiation"));
    // Established: idle, unless bytes keep arriving (whitespace keepalives).
    let (mut m, _) = w.inbound_established();
    assert_eq!(m.write_deadline(), None);
    m.handle(w.at(1000), Input::Read);
    assert_eq!(m.deadline(), Some(w.at(2200)));
    m.handle(w.at(1300), Input::Timer);
    assert!(drain(&mut m).is_empty());
    m.handle(w.at(2200), Input::Timer);
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::ConnectionTimeout));
    assert!(ending(&outs).unwrap().reason.contains("timeouts.idle_inbound"));
}

#[test]
fn receiving_admission_refused_when_full() {
    let w = world();
    w.full.store(true, Ordering::Relaxed);
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
    m.handle(w.t0, Input::Answer { local: d(LOCAL), remote: d(REMOTE), answer: Answer::Valid, detail: None });
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::ResourceConstraint));
    assert!(!written(&outs).contains("type='valid'"), "no valid answer for a stream that is refused");
}

#[test]
fn receiving_malformed_stanza_is_answered_not_delivered() {
    let w = world();
    let (mut m, mut wire) = w.inbound_established();
    m.handle(w.t0, frame(wire.el(&format!("<iq type='get' from='a@{REMOTE}' to='{LOCAL}'><ping xmlns='urn:xmpp:ping'/></iq>"))));
    let outs = drain(&mut m);
    assert!(delivered(&outs).is_empty());
    let reply = outs.iter().find_map(|o| if let Output::Route(el) = o { Some(xml(el)) } else { None }).expect("an error reply");
    assert!(reply.contains("bad-request"), "{reply}");
}

#[test]
fn receiving_stanzas_before_tls_or_auth_end_the_stream() {
    let w = world();
    let mut m = w.inbound(None);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    drain(&mut m);
    m.handle(w.t0, frame(wire.el(&format!("<message from='a@{REMOTE}' to='b@{LOCAL}'/>"))));
    assert_eq!(condition(&drain(&mut m)), Some(C::PolicyViolation));
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(&format!("<message from='a@{REMOTE}' to='b@{LOCAL}'/>"))));
    assert_eq!(condition(&drain(&mut m)), Some(C::NotAuthorized));
}

#[test]
fn receiving_closing_handshake_and_operator_close() {
    let w = world();
    let (mut m, mut wire) = w.inbound_established();
    wire.0.feed(b"</stream:stream>");
    let f = wire.0.next_frame().unwrap().unwrap();
    m.handle(w.t0, frame(f));
    let outs = drain(&mut m);
    let e = ending(&outs).unwrap();
    assert!(e.peer_closed && e.error.is_none() && !e.abandon);
    let (mut m, _) = w.inbound_established();
    let error = Some(StreamError::new(C::PolicyViolation, "blocked"));
    m.handle(w.t0, Input::Close { reason: "policy: blocked".into(), error: error.clone() });
    let e = drain(&mut m).into_iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None }).unwrap();
    assert_eq!((e.error, e.reason.as_str(), e.peer_closed), (error, "policy: blocked", false));
    let (mut m, _) = w.inbound_established();
    m.handle(w.t0, Input::WriteFailed("reset".into()));
    assert!(ending(&drain(&mut m)).unwrap().abandon);
}

#[test]
fn receiving_direct_tls_judges_at_the_header() {
    let w = world();
    w.judge.0.lock().unwrap().push(REMOTE.into());
    let mut m = w.inbound(Some(facts(true)));
    m.handle(w.t0, frame(Wire::open(Some(REMOTE), LOCAL).1));
    let outs = drain(&mut m);
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Certificate, VerificationResult::Valid)]);
    let text = written(&outs);
    assert!(!text.contains("starttls") && text.contains("EXTERNAL"), "{text}");
    // A domain the policy refuses is refused before its certificate is judged: no valid
    // authentication is recorded for it (nor its certificate kept for the expiry forecast).
    w.policy.set(REMOTE, Verdict::Refuse("there.test is blacklisted".into()));
    let mut m = w.inbound(Some(facts(true)));
    m.handle(w.t0, frame(Wire::open(Some(REMOTE), LOCAL).1));
    let outs = drain(&mut m);
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Policy, VerificationResult::Refused)]);
    assert_eq!(condition(&outs), Some(C::PolicyViolation));
}

// ---------------------------------------------------------------------------------------
// Originating role.

impl World {
    fn outbound(&self, direct: bool) -> Machine {
        Machine::originating(self.env.clone(), "out-1".into(), self.t0, d(LOCAL), d(REMOTE), direct)
    }

    /// Through STARTTLS to the features after TLS (the peer's `features` given).
    fn outbound_after_tls(&self, valid_cert: bool, features: &str) -> (Machine, Vec<Output>) {
        if valid_cert {
            self.judge.0.lock().unwrap().push(REMOTE.into());
        }
        let mut m = self.outbound(false);
        let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
        m.handle(self.t0, frame(h));
        m.handle(self.t0, frame(wire.el("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")));
        m.handle(self.t0, frame(wire.el("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")));
        m.handle(self.t0, Input::TlsEstablished(facts(true)));
        let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
        m.handle(self.t0, frame(h));
        drain(&mut m);
        m.handle(self.t0, frame(wire.el(features)));
        let outs = drain(&mut m);
        (m, outs)
    }

    /// Established by dialback.
    fn outbound_established(&self) -> Machine {
        let (mut m, outs) =
            self.outbound_after_tls(false, "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
        assert!(written(&outs).contains("<db:result"));
        let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
        m.handle(self.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>"))));
        drain(&mut m);
        assert!(m.accepts_stanzas());
        m
    }
}

#[test]
fn originating_starttls_then_sasl_external() {
    let w = world();
    let mut m = w.outbound(false);
    let outs = drain(&mut m);
    let text = written(&outs);
    assert!(text.contains(&format!("from='{LOCAL}'")) && text.contains(&format!("to='{REMOTE}'")) && !text.contains(" id="), "{text}");
    assert_eq!(m.write_deadline(), Some(w.at(30)));
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    m.handle(
        w.t0,
        frame(wire.el("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>")),
    );
    assert_eq!(written(&drain(&mut m)), "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    m.handle(w.t0, frame(wire.el("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")));
    assert!(matches!(drain(&mut m).as_slice(), [Output::StartTls(TlsRole::Client { direct: false })]));
    w.judge.0.lock().unwrap().push(REMOTE.into());
    m.handle(w.t0, Input::TlsEstablished(facts(true)));
    let outs = drain(&mut m);
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Certificate, VerificationResult::Valid)]);
    assert!(
        matches!(outs.iter().find(|o| matches!(o, Output::Restart | Output::Raw(_))), Some(Output::Restart)),
        "restart before the new header"
    );
    assert!(written(&outs).starts_with("<?xml"));
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    m.handle(
        w.t0,
        frame(wire.el("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms></stream:features>")),
    );
    assert_eq!(written(&drain(&mut m)), "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>");
    m.handle(w.t0, frame(wire.el("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")));
    let outs = drain(&mut m);
    assert!(matches!(outs.first(), Some(Output::Restart)));
    assert!(written(&outs).starts_with("<?xml"));
    assert!(!m.accepts_stanzas());
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    m.handle(w.t0, frame(wire.el("<stream:features/>")));
    let outs = drain(&mut m);
    assert_eq!(outcomes(&outs), vec![(AuthMethod::SaslExternal, VerificationResult::Valid)]);
    assert!(observed(&outs).contains(&&Observed::State(ConnState::Established)));
    assert!(m.accepts_stanzas() && m.accepts_verifies());
    assert_eq!(m.write_deadline(), None);
    m.handle(w.t0, Input::Stanza(Element::new("message", ns::SERVER).attr("to", REMOTE).attr("from", LOCAL)));
    assert!(written(&drain(&mut m)).starts_with("<message"));
}

#[test]
fn originating_sasl_refused_falls_back_to_dialback() {
    let w = world();
    let (mut m, outs) = w.outbound_after_tls(
        true,
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms></stream:features>",
    );
    assert!(written(&outs).contains("<auth"));
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>")));
    let outs = drain(&mut m);
    assert_eq!(outcomes(&outs), vec![(AuthMethod::SaslExternal, VerificationResult::Invalid)]);
    let key = w.env.keys.derive(REMOTE, LOCAL, "peer-id");
    assert_eq!(written(&outs), format!("<db:result from='{LOCAL}' to='{REMOTE}'>{key}</db:result>"));
    assert!(m.accepts_verifies() && !m.accepts_stanzas());
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>"))));
    let outs = drain(&mut m);
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Dialback, VerificationResult::Valid)]);
    assert!(m.accepts_stanzas());
}

#[test]
fn originating_dialback_refused_or_silent_fails_and_bounces() {
    let w = world();
    let features = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>";
    let (mut m, _) = w.outbound_after_tls(false, features);
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}' type='invalid'/>"))));
    let outs = drain(&mut m);
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Dialback, VerificationResult::Invalid)]);
    let e = ending(&outs).unwrap();
    assert_eq!(e.kind, EndKind::Failed { condition: SC::RemoteServerNotFound });
    assert!(e.reason.contains("answered invalid"));
    // No answer within timeouts.dialback (20 s).
    let (mut m, _) = w.outbound_after_tls(false, features);
    assert_eq!(m.deadline(), Some(w.at(20)));
    m.handle(w.at(20), Input::Timer);
    let e = drain(&mut m).into_iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None }).unwrap();
    assert_eq!(e.kind, EndKind::Failed { condition: SC::RemoteServerTimeout });
    assert!(e.reason.contains("timeouts.dialback"));
}

#[test]
fn originating_negotiation_timeout_and_injection_and_required_tls() {
    let w = world();
    let mut m = w.outbound(false);
    m.handle(w.at(30), Input::Timer);
    let e = drain(&mut m).into_iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None }).unwrap();
    assert_eq!(e.kind, EndKind::Failed { condition: SC::RemoteServerTimeout });
    // Bytes behind <proceed/>: plaintext injection.
    let mut m = w.outbound(false);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    m.handle(w.t0, frame(wire.el("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")));
    let f = wire.el("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    m.handle(w.t0, Input::Frame { frame: f, buffered: 5 });
    let outs = drain(&mut m);
    assert!(!outs.iter().any(|o| matches!(o, Output::StartTls(_))));
    assert!(ending(&outs).unwrap().reason.contains("plaintext injection"));
    // No STARTTLS offered, encryption required.
    let mut m = w.outbound(false);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    m.handle(w.t0, frame(wire.el("<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")));
    let outs = drain(&mut m);
    assert!(ending(&outs).unwrap().reason.contains("encryption is required"));
    assert!(!written(&outs).contains("db:result"), "nothing sent in the clear");
}

#[test]
fn originating_cert_only_refuses_an_invalid_certificate_before_anything_is_sent() {
    let w = world_with(|e| e.security.auth = AuthMode::CertOnly);
    let mut m = w.outbound(true);
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Output::Observe(Observed::State(ConnState::Tls)), Output::StartTls(TlsRole::Client { direct: true })]
    ));
    m.handle(w.t0, Input::TlsEstablished(facts(true)));
    let outs = drain(&mut m);
    let e = ending(&outs).unwrap();
    assert_eq!(e.kind, EndKind::Failed { condition: SC::PolicyViolation });
    assert_eq!(e.error.as_ref().unwrap().condition, C::PolicyViolation);
    assert!(written(&outs).is_empty(), "nothing was sent");
}

/// A receiving stream waiting for a verification, as the machine sees it.
struct Asker(u64);

impl std::fmt::Debug for Asker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Asker({})", self.0)
    }
}

impl Reply for Asker {
    fn send(self: Box<Self>, _: Answer, _: Option<String>) {}
}

#[test]
fn originating_carries_verifications_and_answers_them_whatever_the_end() {
    let w = world();
    let mut m = w.outbound_established();
    m.handle(w.t0, Input::Verify { stream_id: "s1".into(), key: "k1".into(), reply: Box::new(Asker(7)) });
    m.handle(w.t0, Input::Verify { stream_id: "s2".into(), key: "k2".into(), reply: Box::new(Asker(8)) });
    let text = written(&drain(&mut m));
    assert!(text.contains("<db:verify") && text.contains("id='s1'") && text.contains("id='s2'"), "{text}");
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el(&format!("<db:verify from='{REMOTE}' to='{LOCAL}' id='s1' type='valid'/>"))));
    let outs = drain(&mut m);
    assert!(
        matches!(outs.as_slice(), [Output::VerifyAnswer { reply, answer: Answer::Valid, detail: None }] if format!("{reply:?}") == "Asker(7)")
    );
    // An answer about something nobody asked: ignored.
    m.handle(w.t0, frame(wire.el(&format!("<db:verify from='{REMOTE}' to='{LOCAL}' id='zzz' type='valid'/>"))));
    assert!(drain(&mut m).is_empty());
    // Lost: the waiting one is answered, neutrally, the reason kept for the operator.
    m.handle(w.t0, Input::ReadError(ReadError::Eof));
    let outs = drain(&mut m);
    match outs.as_slice() {
        [Output::VerifyAnswer { reply, answer: Answer::Error { condition, .. }, detail: Some(_) }, Output::Close(e)] => {
            assert_eq!(format!("{reply:?}"), "Asker(8)");
            assert_eq!(condition, "remote-connection-failed");
            assert_eq!(e.kind, EndKind::Lost);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn originating_policy_hold_release_and_timeout() {
    let w = world();
    w.policy.set(REMOTE, Verdict::Hold);
    let (mut m, _) = w.outbound_after_tls(false, "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>"))));
    let outs = drain(&mut m);
    assert!(observed(&outs).contains(&&Observed::Pending(d(REMOTE))));
    assert!(!m.accepts_stanzas() && m.accepts_verifies());
    assert_eq!(m.deadline(), Some(w.at(300)));
    m.handle(w.at(1), Input::PolicyChanged);
    assert!(!m.accepts_stanzas());
    w.policy.set(REMOTE, Verdict::Allow);
    m.handle(w.at(2), Input::PolicyChanged);
    assert!(m.accepts_stanzas());
    // Another one that nobody approves in time.
    w.policy.set(REMOTE, Verdict::Hold);
    let (mut m, _) = w.outbound_after_tls(false, "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>"))));
    drain(&mut m);
    m.handle(w.at(300), Input::Timer);
    let outs = drain(&mut m);
    let e = ending(&outs).unwrap();
    assert_eq!(e.kind, EndKind::Failed { condition: SC::PolicyViolation });
    assert!(e.reason.contains("awaits approval"));
}

#[test]
fn originating_keepalive_idle_and_closing() {
    let w = world();
    let mut m = w.outbound_established();
    assert_eq!(m.deadline(), Some(w.at(60)));
    m.handle(w.at(60), Input::Timer);
    assert!(matches!(drain(&mut m).as_slice(), [Output::Raw(s)] if s == " "));
    assert_eq!(m.deadline(), Some(w.at(120)));
    m.handle(w.at(100), Input::Stanza(Element::new("message", ns::SERVER)));
    drain(&mut m);
    assert_eq!(m.deadline(), Some(w.at(160)));
    m.handle(w.at(700), Input::Timer);
    assert!(matches!(drain(&mut m).as_slice(), [Output::Drain]), "the queue is asked for before the close");
    m.handle(w.at(700), Input::Drained);
    let e = drain(&mut m).into_iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None }).unwrap();
    assert_eq!(e.kind, EndKind::Closed);
    assert!(e.reason.contains("timeouts.idle_outbound"));
    // The peer closes: lost, our close still goes out.
    let mut m = w.outbound_established();
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    wire.0.feed(b"</stream:stream>");
    let f = wire.0.next_frame().unwrap().unwrap();
    m.handle(w.t0, frame(f));
    let e = drain(&mut m).into_iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None }).unwrap();
    assert_eq!((e.kind, e.peer_closed, e.abandon), (EndKind::Lost, true, false));
    // A stream error from the peer.
    let mut m = w.outbound_established();
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el("<stream:error><host-gone xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")));
    let e = drain(&mut m).into_iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None }).unwrap();
    assert!(e.reason.contains("host-gone") && !e.abandon && !e.peer_closed);
    // The operator.
    let mut m = w.outbound_established();
    m.handle(w.t0, Input::Close { reason: "operator".into(), error: None });
    assert!(matches!(drain(&mut m).as_slice(), [Output::Drain]));
    m.handle(w.t0, Input::Drained);
    let e = drain(&mut m).into_iter().find_map(|o| if let Output::Close(e) = o { Some(e) } else { None }).unwrap();
    assert_eq!((e.kind, e.reason.as_str()), (EndKind::Closed, "operator"));
}

/// Closing on purpose, the stanzas still queued go out before the close, never after it:
/// the machine asks for them (Drain), sends what the peer accepts, bounces what it does not
/// (XEP-0478), then closes; stanzas after the close are not written.
#[test]
fn originating_closing_on_purpose_sends_the_queue_before_the_close() {
    let w = world();
    let mut m = w.outbound_established();
    m.handle(w.t0, Input::Close { reason: "operator".into(), error: None });
    assert!(matches!(drain(&mut m).as_slice(), [Output::Drain]));
    assert!(!m.accepts_stanzas(), "no new stanzas are taken while closing");
    let msg = |id: &str| Element::new("message", ns::SERVER).attr("id", id).attr("from", "a@here.test").attr("to", "b@there.test");
    m.handle(w.t0, Input::Stanza(msg("q1")));
    m.handle(w.t0, Input::Stanza(msg("q2")));
    m.handle(w.t0, Input::Drained);
    let outs = drain(&mut m);
    let close = outs.iter().position(|o| matches!(o, Output::Close(_))).expect("closed");
    let sent: Vec<usize> = outs.iter().enumerate().filter(|(_, o)| matches!(o, Output::Send(_))).map(|(i, _)| i).collect();
    assert_eq!(sent.len(), 2, "{outs:?}");
    assert!(sent.iter().all(|i| *i < close), "written before the close: {outs:?}");
    m.handle(w.t0, Input::Stanza(msg("late")));
    assert!(drain(&mut m).is_empty(), "nothing after the close");
}

/// What the senders of queued stanzas read when a set-up fails: the remote and the reason;
/// a policy's reason as it is; on the internal link (the world served here) nothing about
/// the internal server. The condition's type is the RFC's (a timeout is `wait`).
#[test]
fn a_failure_says_how_queued_stanzas_bounce() {
    let w = world();
    let r = d(REMOTE);
    let e = Failure::timeout("connect: 10.0.0.9:5269: no answer").ending(true);
    assert_eq!(e.bounce(&w.env, &r), Some((SC::RemoteServerTimeout, format!("{REMOTE}: connect: 10.0.0.9:5269: no answer"))));
    assert!(e.error.is_none() && e.abandon);
    let e = Failure::policy("blocked by the operator").ending(false);
    assert_eq!(e.bounce(&w.env, &r), Some((SC::PolicyViolation, "blocked by the operator".to_owned())));
    assert_eq!(e.error.as_ref().unwrap().condition, C::PolicyViolation);
    let gw = world_with(|e| e.serves_world = true);
    let e = Failure::unreachable("internal server 10.0.0.4:5269: refused").ending(true);
    assert_eq!(e.bounce(&gw.env, &r), Some((SC::RemoteServerNotFound, format!("{REMOTE} cannot be reached right now"))));
    assert!(e.reason.contains("10.0.0.4"), "the operator keeps the full reason");
    // Verifications not carried get the neutral answer of the same kind.
    let e = Failure::timeout("x").ending(true);
    assert!(matches!(e.unanswered(&r).0, Answer::Error { condition: SC::RemoteServerTimeout, .. }));
    let lost = Ending { error: None, reason: "reset".into(), peer_closed: true, abandon: true, kind: EndKind::Lost };
    assert_eq!(lost.bounce(&w.env, &r), None, "lost: routed again");
    assert!(matches!(lost.unanswered(&d(REMOTE)).0, Answer::Error { condition: SC::RemoteConnectionFailed, .. }));
}

#[test]
fn verification_budget_per_stream() {
    let l = world().env.limits.clone();
    let mut v = VerificationBudget::default();
    let t = Instant::now();
    assert_eq!(v.start(t, 2, &l).unwrap_err(), crate::types::LimitKey::MaxVerificationsInFlight);
    for _ in 0..3 {
        v.start(t, 0, &l).unwrap();
    }
    assert_eq!(v.start(t + Duration::from_secs(30), 0, &l).unwrap_err(), crate::types::LimitKey::VerificationsPerMinute);
    v.start(t + Duration::from_secs(61), 0, &l).unwrap();
}

// ---- the component role (XEP-0114) ---------------------------------------------------------

const COMP_SECRET: &str = "component secret for tests";

fn component(w: &World) -> (Machine, Framer) {
    let secrets = Arc::new(std::collections::HashMap::from([(d("comp.here.test"), COMP_SECRET.to_owned())]));
    let m = Machine::component(w.env.clone(), "t".into(), w.t0, secrets, Box::new(Slot(Arc::new(AtomicBool::new(false)))));
    let mut f = Framer::new(1 << 20, 32);
    f.feed(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='comp.here.test'>");
    (m, f)
}

fn next(f: &mut Framer, xml: &str) -> Input {
    f.feed(xml.as_bytes());
    frame(f.next_frame().unwrap().expect("a complete element"))
}

/// Header, handshake, the router's yes: established. Returns the outputs of each step.
fn component_established(w: &World) -> (Machine, Framer, Vec<Output>) {
    let (mut m, mut f) = component(w);
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    let outs = drain(&mut m);
    let header = written(&outs);
    assert!(header.contains("from='comp.here.test' id='"), "{header}");
    let id = header.split("id='").nth(1).and_then(|r| r.split('\'').next()).unwrap().to_owned();
    let digest = super::component::handshake_digest(&id, COMP_SECRET);
    m.handle(w.t0, next(&mut f, &format!("<handshake xmlns='jabber:component:accept'>{digest}</handshake>")));
    let outs = drain(&mut m);
    assert!(outs.iter().any(|o| matches!(o, Output::Attach(dom) if dom.as_str() == "comp.here.test")), "{outs:?}");
    assert!(!written(&outs).contains("handshake"), "not answered before the router attached the domain");
    m.handle(w.t0, Input::Attached(Ok(())));
    let outs = drain(&mut m);
    (m, f, outs)
}

#[test]
fn component_handshake_attach_and_stanzas_both_ways() {
    let w = world();
    let (mut m, mut f, outs) = component_established(&w);
    assert!(written(&outs).contains("<handshake"), "{}", written(&outs));
    assert!(observed(&outs).contains(&&Observed::State(ConnState::Established)));
    // From the component: retagged for federation, delivered.
    m.handle(w.t0, next(&mut f, "<message from='comp.here.test' to='x@a.test'><body>hi</body></message>"));
    let outs = drain(&mut m);
    assert_eq!(delivered(&outs), vec!["<message from='comp.here.test' to='x@a.test'><body>hi</body></message>".to_owned()]);
    // To the component: in its namespace.
    m.handle(w.t0, Input::Stanza(Element::new("iq", ns::SERVER).attr("type", "get").attr("id", "1").attr("to", "comp.here.test")));
    assert!(written(&drain(&mut m)).contains("<iq xmlns='jabber:component:accept'"));
    // Quiet for the keepalive interval: a whitespace keepalive (virtual time).
    let later = w.t0 + w.env.timeouts.keepalive;
    assert_eq!(m.deadline(), Some(later));
    m.handle(later, Input::Timer);
    assert_eq!(written(&drain(&mut m)), " ");
}

#[test]
fn component_failures_end_with_the_right_stream_error() {
    let w = world();
    // No handshake within the negotiation time.
    let (mut m, mut f) = component(&w);
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    drain(&mut m);
    let deadline = m.deadline().unwrap();
    assert_eq!(deadline, w.t0 + w.env.timeouts.negotiation);
    m.handle(deadline, Input::Timer);
    assert_eq!(condition(&drain(&mut m)), Some(C::ConnectionTimeout));
    // A wrong handshake.
    let (mut m, mut f) = component(&w);
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    drain(&mut m);
    m.handle(w.t0, next(&mut f, "<handshake xmlns='jabber:component:accept'>0000</handshake>"));
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::NotAuthorized));
    assert!(outcomes(&outs).contains(&(AuthMethod::ComponentHandshake, VerificationResult::Invalid)));
    // The router says another stream has the domain.
    let (mut m, mut f) = component(&w);
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    drain(&mut m);
    let digest = super::component::handshake_digest("id2", COMP_SECRET); // the third id this world handed out
    m.handle(w.t0, next(&mut f, &format!("<handshake xmlns='jabber:component:accept'>{digest}</handshake>")));
    drain(&mut m);
    m.handle(w.t0, Input::Attached(Err((C::Conflict, "taken".into()))));
    assert_eq!(condition(&drain(&mut m)), Some(C::Conflict));
    // A stanza from outside its domain, and one that is not a stanza.
    let (mut m, mut f, _) = component_established(&w);
    m.handle(w.t0, next(&mut f, "<message from='here.test' to='a.test'/>"));
    assert_eq!(condition(&drain(&mut m)), Some(C::InvalidFrom));
    let (mut m, mut f, _) = component_established(&w);
    m.handle(w.t0, next(&mut f, "<handshake xmlns='jabber:component:accept'/>"));
    assert_eq!(condition(&drain(&mut m)), Some(C::UnsupportedStanzaType));
    // A stream for a domain that is not configured.
    let mut f = Framer::new(1 << 20, 32);
    f.feed(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='other.test'>");
    let (mut m, _) = component(&w);
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    assert_eq!(condition(&drain(&mut m)), Some(C::HostUnknown));
}

/// Components are admitted by their machine, as receiving streams are: at a right handshake
/// the stream moves to the authenticated limits, refused (resource-constraint, no Attach)
/// when they are full. A wrong secret ends as Refused (its slot is held a while by the
/// driver); an attached component's end bounces what was queued for it.
#[test]
fn component_admission_and_what_its_end_means() {
    let w = world();
    let secrets = Arc::new(std::collections::HashMap::from([(d("comp.here.test"), COMP_SECRET.to_owned())]));
    let full = Arc::new(AtomicBool::new(true));
    let mut m = Machine::component(w.env.clone(), "t".into(), w.t0, secrets, Box::new(Slot(full)));
    let mut f = Framer::new(1 << 20, 32);
    f.feed(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='comp.here.test'>");
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    let header = written(&drain(&mut m));
    let id = header.split("id='").nth(1).and_then(|r| r.split('\'').next()).unwrap().to_owned();
    let digest = super::component::handshake_digest(&id, COMP_SECRET);
    m.handle(w.t0, next(&mut f, &format!("<handshake xmlns='jabber:component:accept'>{digest}</handshake>")));
    let outs = drain(&mut m);
    assert!(!outs.iter().any(|o| matches!(o, Output::Attach(_))), "{outs:?}");
    assert_eq!(condition(&outs), Some(C::ResourceConstraint));
    assert_eq!(ending(&outs).unwrap().kind, EndKind::Gone);
    // A wrong secret: Refused.
    let (mut m, mut f) = component(&w);
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    drain(&mut m);
    m.handle(w.t0, next(&mut f, "<handshake xmlns='jabber:component:accept'>0000</handshake>"));
    assert_eq!(ending(&drain(&mut m)).unwrap().kind, EndKind::Refused);
    // Attached, then gone: its queue bounces with service-unavailable.
    let (mut m, _, _) = component_established(&w);
    m.handle(w.t0, Input::ReadError(ReadError::Eof));
    let outs = drain(&mut m);
    let e = ending(&outs).unwrap();
    assert_eq!(e.bounce(&w.env, &d("comp.here.test")), Some((SC::ServiceUnavailable, "the component disconnected".to_owned())));
}

/// Issue 16: the answering header carries a stream id this server issued — the stream came
/// back to us (a loop through DNS, a forwarder or NAT): refused before STARTTLS, nothing sent.
#[test]
fn originating_refuses_a_peer_whose_header_carries_our_own_stream_id() {
    let w = world();
    let mut m = w.outbound(false);
    drain(&mut m);
    let mut f = Framer::new(1 << 20, 32);
    f.feed(
        format!("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='{REMOTE}' to='{LOCAL}' id='ours-7'>")
            .as_bytes(),
    );
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    let outs = drain(&mut m);
    let end = ending(&outs).expect("the stream ends at the header");
    assert!(end.reason.contains("leads back to this server") && end.reason.contains("a loop"), "{}", end.reason);
    assert!(matches!(end.kind, EndKind::Failed { .. }), "{:?}", end.kind);
    assert!(!written(&outs).contains("starttls"), "{}", written(&outs));
    // Someone else's id is not ours.
    let mut m = w.outbound(false);
    drain(&mut m);
    let (_, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    assert!(ending(&drain(&mut m)).is_none());
}

#[test]
fn stream_ids_are_recognised_by_their_issuer_only() {
    let (a, b) = (StreamIds::new(), StreamIds::new());
    let id = a.issue();
    assert_eq!(id.len(), 48);
    assert!(a.issued_here(&id) && !b.issued_here(&id));
    let mut forged = id.clone();
    forged.replace_range(47.., if id.ends_with('0') { "1" } else { "0" });
    assert!(!a.issued_here(&forged));
    for junk in ["", "peer-id", &"é".repeat(24), &format!("x{}ab", "€".repeat(15)), &"z".repeat(48)] {
        assert!(!a.issued_here(junk), "{junk}");
    }
    assert_ne!(a.issue(), a.issue());
}

/// Issue 16, the gateway listener (`serves_world`): TLS there presents a certificate minted
/// for the header's `to`, so a header without `from`, or with an IP address as `to`, ends
/// at the header — before STARTTLS is offered, so before anything could be minted.
#[test]
fn gateway_listener_wants_a_from_and_a_domain_to_before_tls() {
    let w = world_with(|e| e.serves_world = true);
    let mut m = w.inbound(None);
    m.handle(w.t0, frame(Wire::open(None, "world.example").1));
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), Some(C::PolicyViolation));
    assert!(!written(&outs).contains("starttls"), "{}", written(&outs));
    for ip in ["10.0.0.1", "[::1]"] {
        let mut m = w.inbound(None);
        m.handle(w.t0, frame(Wire::open(Some(LOCAL), ip).1));
        let outs = drain(&mut m);
        assert_eq!(condition(&outs), Some(C::HostUnknown), "{ip}");
        assert!(!written(&outs).contains("starttls"), "{}", written(&outs));
    }
    // The internal server's domain to a world domain: STARTTLS offered.
    let mut m = w.inbound(None);
    m.handle(w.t0, frame(Wire::open(Some(LOCAL), "world.example").1));
    let outs = drain(&mut m);
    assert_eq!(condition(&outs), None);
    assert!(written(&outs).contains("starttls"), "{}", written(&outs));
}

/// Whatever text reaches a machine's reports — an authoritative server's detail, a peer's
/// stream id, a close reason — leaves it escaped and bounded: the table, the store, the
/// log and the operator's screen get no control character from it, whichever call site
/// forgot to clip.
#[test]
fn reported_texts_are_escaped_and_bounded() {
    let w = world();
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
    drain(&mut m);
    let detail = format!("refused\n2026-12-04 00:00:00 UTC  in valid \x1b[2J\x07{}", "x".repeat(100_000));
    let answer = Answer::error(SC::RemoteConnectionFailed, "no");
    m.handle(w.t0, Input::Answer { local: d(LOCAL), remote: d(REMOTE), answer, detail: Some(detail) });
    let outs = drain(&mut m);
    let reason = outs
        .iter()
        .find_map(|o| match o {
            Output::Observe(Observed::Outcome { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .expect("an outcome");
    assert!(!reason.chars().any(crate::text::is_unsafe) && reason.contains("refused\\n2026"), "{reason}");
    assert!(reason.len() < KEPT_TEXT + 64, "{} bytes", reason.len());
    // A close reason (an operator's, a driver's) and its stream error's text alike.
    m.handle(w.t0, Input::Close { reason: "bye\r\nforged".into(), error: Some(StreamError::new(C::Reset, "a\nb")) });
    let Some(Output::Close(end)) = drain(&mut m).pop() else { panic!("a close") };
    assert_eq!(end.reason, "bye\\r\\nforged");
    assert_eq!(end.error.unwrap().text, "a\\nb");
    // An outbound stream: the peer's stream id is observed escaped and clipped (the dialback
    // key still binds the id as sent).
    let w = world_with(|e| e.security.require_encryption = false);
    let mut out = Machine::originating(w.env.clone(), "out-1".into(), w.t0, d(LOCAL), d(REMOTE), false);
    drain(&mut out);
    let mut f = Framer::new(1 << 20, 32);
    f.feed(
        format!("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0' from='{REMOTE}' to='{LOCAL}' id='a&#10;b{}'><stream:features/>", "i".repeat(1000))
            .as_bytes(),
    );
    for _ in 0..2 {
        out.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    }
    let ids: Vec<String> = drain(&mut out)
        .into_iter()
        .filter_map(|o| match o {
            Output::Observe(Observed::StreamId(id)) => Some(id),
            _ => None,
        })
        .collect();
    assert!(!ids.is_empty() && ids.iter().all(|i| i.starts_with("a\\nb") && i.len() < 200), "{ids:?}");
}

// ---- a peer's stream error, on every kind of stream (RFC 6120 §4.9) -------------------------

/// A `<stream:error/>` with a condition, a text and an application-specific condition.
const PEER_ERROR: &str = "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>going down\nfor maintenance</text><maintenance xmlns='urn:example:ops'/></stream:error>";
/// The same element in the default-namespace form.
const PEER_ERROR_DEFAULT_NS: &str = "<error xmlns='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>too big</text></error>";

/// Ends quietly: no stream error of ours, the closing tag only, and the peer's reason kept.
fn assert_quiet_end_with(outs: &[Output], needles: &[&str]) -> Ending {
    let e = ending(outs).unwrap_or_else(|| panic!("the stream ends: {outs:?}")).clone();
    assert!(e.error.is_none(), "no stream error in reply: {e:?}");
    assert!(!e.abandon, "our </stream:stream> still goes out: {e:?}");
    assert!(!written(outs).contains("error"), "nothing of ours in reply: {}", written(outs));
    for n in needles {
        assert!(e.reason.contains(n), "{n:?} in the reason: {}", e.reason);
    }
    e
}

#[test]
fn receiving_a_peers_stream_error_ends_the_stream_quietly_with_its_reason() {
    let w = world();
    // Established: the peer's condition, text (escaped) and application condition are the reason.
    let (mut m, mut wire) = w.inbound_established();
    m.handle(w.t0, frame(wire.el(PEER_ERROR)));
    let e = assert_quiet_end_with(&drain(&mut m), &["system-shutdown", "going down\\nfor maintenance", "maintenance", "urn:example:ops"]);
    assert!(!e.reason.contains("not supported"), "{}", e.reason);
    // The default-namespace form, before anything was authenticated.
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(PEER_ERROR_DEFAULT_NS)));
    assert_quiet_end_with(&drain(&mut m), &["policy-violation", "too big"]);
    // While a claim is being verified: its outcome says the peer gave up, and why.
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}'>k</db:result>"))));
    drain(&mut m);
    m.handle(w.t0, frame(wire.el(PEER_ERROR)));
    let outs = drain(&mut m);
    assert_quiet_end_with(&outs, &["system-shutdown"]);
    let reasons: Vec<&str> = observed(&outs)
        .into_iter()
        .filter_map(
            |o| if let Observed::Outcome { result: VerificationResult::Error, reason, .. } = o { Some(reason.as_str()) } else { None },
        )
        .collect();
    assert!(reasons.len() == 1 && reasons[0].contains("system-shutdown") && reasons[0].contains("going down"), "{reasons:?}");
}

#[test]
fn originating_a_peers_stream_error_ends_the_stream_quietly_with_its_reason() {
    let w = world();
    // Established: lost (what is queued gets a new stream), our close still sent.
    let mut m = w.outbound_established();
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el(PEER_ERROR)));
    let e = assert_quiet_end_with(&drain(&mut m), &["system-shutdown", "going down", "urn:example:ops"]);
    assert_eq!(e.kind, EndKind::Lost);
    // During dialback: a failed set-up, the outcome records the peer's reason.
    let (mut m, _) = w.outbound_after_tls(false, "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el(PEER_ERROR_DEFAULT_NS)));
    let outs = drain(&mut m);
    let e = assert_quiet_end_with(&outs, &["policy-violation", "too big"]);
    assert!(matches!(e.kind, EndKind::Failed { .. }));
    assert_eq!(outcomes(&outs), vec![(AuthMethod::Dialback, VerificationResult::Error)]);
    // In answer to STARTTLS.
    let mut m = w.outbound(false);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    m.handle(w.t0, frame(wire.el("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")));
    drain(&mut m);
    m.handle(w.t0, frame(wire.el(PEER_ERROR)));
    assert_quiet_end_with(&drain(&mut m), &["system-shutdown"]);
}

#[test]
fn component_a_stream_error_ends_the_stream_quietly_with_its_reason() {
    let w = world();
    let (mut m, mut f, _) = component_established(&w);
    m.handle(w.t0, next(&mut f, PEER_ERROR));
    assert_quiet_end_with(&drain(&mut m), &["system-shutdown", "going down", "urn:example:ops"]);
    // Instead of its handshake.
    let (mut m, mut f) = component(&w);
    m.handle(w.t0, frame(f.next_frame().unwrap().unwrap()));
    drain(&mut m);
    m.handle(w.t0, next(&mut f, PEER_ERROR_DEFAULT_NS));
    assert_quiet_end_with(&drain(&mut m), &["policy-violation", "too big"]);
}

// ---- stream limits (XEP-0478) -----------------------------------------------------------------

const OUR_LIMITS: &str = "<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>524288</max-bytes><idle-seconds>1200</idle-seconds></limits>";

fn limits_observed(outs: &[Output]) -> Option<StreamLimits> {
    observed(outs).into_iter().find_map(|o| if let Observed::Limits(l) = o { Some(*l) } else { None })
}

#[test]
fn receiving_advertises_its_limits_before_and_after_authentication() {
    let w = world();
    // Before TLS.
    let mut m = w.inbound(None);
    m.handle(w.t0, frame(Wire::open(Some(REMOTE), LOCAL).1));
    let outs = drain(&mut m);
    assert!(written(&outs).contains(OUR_LIMITS), "{}", written(&outs));
    let l = limits_observed(&outs).expect("the row learns them");
    assert_eq!((l.max_bytes, l.idle_seconds, l.peer_max_bytes), (512 * 1024, Some(1200), None));
    // After TLS (where dialback authenticates on this stream).
    let (_, _, outs) = w.inbound_secure();
    assert!(written(&outs).contains(OUR_LIMITS), "{}", written(&outs));
    // After SASL EXTERNAL, on the restarted stream: authenticated.
    w.judge.0.lock().unwrap().push(REMOTE.into());
    let (mut m, mut wire, _) = w.inbound_secure();
    m.handle(w.t0, frame(wire.el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")));
    assert!(written(&drain(&mut m)).contains("<success"));
    m.handle(w.t0, frame(Wire::open(Some(REMOTE), LOCAL).1));
    let outs = drain(&mut m);
    let text = written(&outs);
    assert!(text.contains(OUR_LIMITS) && !text.contains("EXTERNAL"), "{text}");
}

/// An outbound stream whose peer advertised `features` after TLS, established by dialback.
fn outbound_established_with(w: &World, features: &str) -> (Machine, Vec<Output>) {
    let (mut m, outs) = w.outbound_after_tls(false, features);
    assert!(written(&outs).contains("<db:result"), "{}", written(&outs));
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el(&format!("<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>"))));
    drain(&mut m);
    assert!(m.accepts_stanzas());
    (m, outs)
}

fn message(id: &str, body_len: usize) -> Element {
    Element::new("message", ns::SERVER)
        .attr("from", format!("u@{LOCAL}"))
        .attr("to", format!("v@{REMOTE}"))
        .attr("id", id)
        .child(Element::new("body", ns::SERVER).text("x".repeat(body_len)))
}

fn routed(outs: &[Output]) -> Vec<&Element> {
    outs.iter().filter_map(|o| if let Output::Route(el) = o { Some(el) } else { None }).collect()
}

#[test]
fn originating_honours_the_peers_max_bytes_bouncing_larger_stanzas_and_keeping_the_stream() {
    let w = world();
    let features = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>1000</max-bytes><idle-seconds>300</idle-seconds></limits></stream:features>";
    let (mut m, outs) = outbound_established_with(&w, features);
    let l = limits_observed(&outs).expect("the row learns the peer's limits");
    assert_eq!((l.max_bytes, l.peer_max_bytes, l.peer_idle_seconds), (512 * 1024, Some(1000), Some(300)));
    // Over the limit once serialised: not written; the sender gets policy-violation, no 'by'.
    m.handle(w.t0, Input::Stanza(message("big", 1200)));
    let outs = drain(&mut m);
    assert!(written(&outs).is_empty(), "{}", written(&outs));
    assert!(ending(&outs).is_none(), "the stream stays up");
    let bounce = routed(&outs);
    assert_eq!(bounce.len(), 1, "{outs:?}");
    let b = xml(bounce[0]);
    assert!(b.contains("type='error'") && b.contains(&format!("to='u@{LOCAL}'")) && b.contains("id='big'"), "{b}");
    assert!(b.contains("<policy-violation") && b.contains("1000 bytes") && !b.contains(" by=") && !b.contains("xxxx"), "{b}");
    // Just under it (a body that the cheap bound cannot clear, measured exactly): sent.
    let fits = (0..1000).rev().map(|n| message("fits", n)).find(|el| xml(el).len() <= 1000).unwrap();
    assert_eq!(xml(&fits).len(), 1000);
    m.handle(w.t0, Input::Stanza(fits));
    assert_eq!(written(&drain(&mut m)).len(), 1000);
    // An error over the limit is dropped, never answered.
    let err = message("e", 2000).attr("type", "error");
    m.handle(w.t0, Input::Stanza(err));
    let outs = drain(&mut m);
    assert!(written(&outs).is_empty() && routed(&outs).is_empty() && ending(&outs).is_none(), "{outs:?}");
    // A small one: sent.
    m.handle(w.t0, Input::Stanza(message("small", 10)));
    assert!(written(&drain(&mut m)).contains("id='small'"));
    // The same for what a closing stream still writes past the machine.
    assert!(m.check_peer_limit(&message("late", 10)).is_ok());
    assert!(matches!(m.check_peer_limit(&message("late", 5000)), Err(Some(_))));
}

/// Prosody 0.12 advertises no limits: no cap beyond our own, whatever the size.
#[test]
fn originating_without_advertised_limits_sends_any_size() {
    let w = world();
    let (mut m, outs) = outbound_established_with(&w, "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
    assert_eq!(limits_observed(&outs).map(|l| l.peer_max_bytes), Some(None));
    m.handle(w.t0, Input::Stanza(message("big", 400 * 1024)));
    assert!(written(&drain(&mut m)).contains("id='big'"));
    assert!(m.check_peer_limit(&message("big", 400 * 1024)).is_ok());
    // Nonsense in the advertisement counts as none.
    let bad = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>lots</max-bytes></limits></stream:features>";
    let (mut m, _) = outbound_established_with(&w, bad);
    m.handle(w.t0, Input::Stanza(message("big", 4000)));
    assert!(written(&drain(&mut m)).contains("id='big'"));
}

/// XEP-0478 §3: limits may change with new features, as after SASL's restart.
#[test]
fn originating_takes_the_limits_of_the_features_after_authentication() {
    let w = world();
    let pre = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>100000</max-bytes></limits></stream:features>";
    let (mut m, _) = w.outbound_after_tls(true, pre);
    let (mut wire, _) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(wire.el("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")));
    drain(&mut m);
    let (mut wire, h) = Wire::open(Some(REMOTE), LOCAL);
    m.handle(w.t0, frame(h));
    m.handle(
        w.t0,
        frame(wire.el("<stream:features><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>2000</max-bytes></limits></stream:features>")),
    );
    let outs = drain(&mut m);
    assert_eq!(limits_observed(&outs).and_then(|l| l.peer_max_bytes), Some(2000));
    assert!(m.accepts_stanzas());
    m.handle(w.t0, Input::Stanza(message("mid", 5000)));
    let outs = drain(&mut m);
    assert!(written(&outs).is_empty() && routed(&outs).len() == 1, "{outs:?}");
}

/// A peer that advertises `idle-seconds` shorter than our keepalive interval gets whitespace
/// keepalives at half its idle time (virtual time); one that advertises none, ours.
#[test]
fn originating_keeps_alive_within_the_peers_idle_seconds() {
    let w = world();
    let features = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/><limits xmlns='urn:xmpp:stream-limits:0'><idle-seconds>40</idle-seconds></limits></stream:features>";
    let (mut m, _) = outbound_established_with(&w, features);
    assert_eq!(m.deadline(), Some(w.at(20)));
    m.handle(w.at(20), Input::Timer);
    assert_eq!(written(&drain(&mut m)), " ");
    assert_eq!(m.deadline(), Some(w.at(40)));
    let (m, _) = outbound_established_with(&w, "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
    assert_eq!(m.deadline(), Some(w.at(60)));
}

#[test]
fn zz_sizes() {
    eprintln!(
        "ZZ Output {} Ending {} Input {} EndKind {} Answer {} Delivery {} Element {}",
        std::mem::size_of::<Output>(),
        std::mem::size_of::<Ending>(),
        std::mem::size_of::<Input>(),
        std::mem::size_of::<EndKind>(),
        std::mem::size_of::<Answer>(),
        std::mem::size_of::<crate::proto::auth::Delivery>(),
        std::mem::size_of::<Element>()
    );
}
