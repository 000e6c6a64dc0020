//! External components (XEP-0114, `jabber:component:accept`): a component connects, names
//! its domain in the header, proves the shared secret by the handshake, and is then attached
//! to the router: its domain (and that domain's subdomains) is routed to it, and its stanzas —
//! from that domain or a subdomain only — go into routing like ours.
//!
//! Header → Handshake → Attaching → Established → closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sha1::{Digest, Sha1};

use super::{Admission, Cx, EndKind, Ending, Input, Observed, Output, ReadError};
use crate::domain::Domain;
use crate::proto::auth::{Delivery, ValidPair};
use crate::proto::ns;
use crate::proto::stream::{PeerStreamError, StreamErrorCondition as C};
use crate::types::{AuthMethod, ConnState, PairStatus, VerificationResult};
use crate::xml::element::clip;
use crate::xml::{Element, Frame, Node};

/// The configured components: domain → shared secret.
pub type Secrets = Arc<HashMap<Domain, String>>;

#[derive(Debug)]
enum State {
    Header,
    /// Our header sent with `id`; the handshake is due.
    Handshake {
        domain: Domain,
        id: String,
    },
    /// The secret was right; the router is asked to attach the domain.
    Attaching {
        domain: Domain,
    },
    /// Attached; the handshake is the proof its stanzas are delivered with.
    Established {
        proof: ValidPair,
    },
    Done,
}

pub(super) struct Component {
    secrets: Secrets,
    state: State,
    /// Until the handshake must be done (`timeouts.negotiation`).
    deadline: Instant,
    last_write: Instant,
    /// The stream's place under the connection limits: authenticated at the handshake, as
    /// receiving streams are at their first domain.
    admission: Box<dyn Admission>,
}

/// Our stream header for a component (XEP-0114 §3: `from` is the component's domain).
fn header(from: Option<&str>, id: &str) -> String {
    let mut h = format!("<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}'", ns::COMPONENT_ACCEPT, ns::STREAMS);
    if let Some(f) = from {
        h.push_str(" from='");
        crate::xml::writer::escape_attr(&mut h, f);
        h.push('\'');
    }
    h.push_str(&format!(" id='{id}'>"));
    h
}

/// XEP-0114 §3: the handshake is the lower-case hex SHA-1 of the stream id and the secret.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Equal in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Every element in `from_ns` (the stanza and its children) moved to `to_ns`: stanzas change
/// their default namespace between a component's stream and s2s streams.
pub fn retag(el: &mut Element, from_ns: &str, to_ns: &str) {
    if &*el.ns == from_ns {
        el.ns = to_ns.into();
    }
    for c in &mut el.children {
        if let Node::Element(e) = c {
            retag(e, from_ns, to_ns);
        }
    }
}

/// Whether `from` may be sent by the component of `domain`: its domain or a subdomain.
fn may_send_as(from: &Domain, domain: &Domain) -> bool {
    from.is_within(domain)
}

impl Component {
    pub(super) fn new(secrets: Secrets, now: Instant, negotiation: std::time::Duration, admission: Box<dyn Admission>) -> Component {
        Component { secrets, state: State::Header, deadline: now + negotiation, last_write: now, admission }
    }

    pub(super) fn established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    pub(super) fn deadline(&self, env: &super::Env) -> Option<Instant> {
        match self.state {
            State::Established { .. } => Some(self.last_write + env.timeouts.keepalive),
            State::Done => None,
            _ => Some(self.deadline),
        }
    }

    pub(super) fn write_deadline(&self) -> Option<Instant> {
        (!self.established()).then_some(self.deadline)
    }

    pub(super) fn handle(&mut self, cx: &mut Cx, now: Instant, input: Input) {
        match input {
            Input::Read => {}
            Input::Frame { frame, .. } => self.on_frame(cx, frame),
            Input::ReadError(e) => {
                if matches!(self.state, State::Header) && matches!(e, ReadError::Xml(_)) {
                    cx.out.push_back(Output::Raw(header(None, &(cx.env.stream_ids)())));
                }
                cx.close(super::read_error_ending(&e));
            }
            Input::WriteFailed(e) => {
                let mut end = Ending::quiet(format!("write failed: {e}"), false);
                end.abandon = true;
                cx.close(end);
            }
            Input::Attached(result) => self.on_attached(cx, now, result),
            Input::Stanza(mut st) => {
                if self.established() {
                    retag(&mut st, ns::SERVER, ns::COMPONENT_ACCEPT);
                    cx.send(st);
                    self.last_write = now;
                } else {
                    cx.out.push_back(Output::Route(st));
                }
            }
            Input::Close { reason, error } => {
                cx.close(Ending { error, reason, peer_closed: false, abandon: false, kind: EndKind::Inbound })
            }
            Input::Timer => {
                if self.established() {
                    if now >= self.last_write + cx.env.timeouts.keepalive {
                        cx.out.push_back(Output::Raw(" ".into()));
                        self.last_write = now;
                    }
                } else if now >= self.deadline {
                    let secs = cx.env.timeouts.negotiation.as_secs();
                    cx.close(Ending::error(C::ConnectionTimeout, format!("no handshake within {secs}s (timeouts.negotiation)")));
                }
            }
            Input::PolicyChanged => {}
            other => tracing::error!(stream = %cx.log, "a component stream was given {other:?}; ignored"),
        }
    }

    fn on_frame(&mut self, cx: &mut Cx, frame: Frame) {
        if let Frame::Element(el) = &frame
            && let Some(e) = PeerStreamError::parse(el)
        {
            self.state = State::Done;
            return cx.close(super::peer_error_ending("the component", &e));
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Header => self.on_header(cx, frame),
            State::Handshake { domain, id } => self.on_handshake(cx, frame, domain, id),
            State::Attaching { domain } => {
                self.state = State::Attaching { domain };
                cx.close(Ending::error(C::NotAuthorized, "data before the handshake was answered"));
            }
            State::Established { proof } => {
                self.state = State::Established { proof: proof.clone() };
                self.on_stanza(cx, frame, &proof);
            }
            State::Done => {}
        }
    }

    fn on_header(&mut self, cx: &mut Cx, frame: Frame) {
        let id = (cx.env.stream_ids)();
        let Frame::StreamOpen(h) = frame else {
            cx.out.push_back(Output::Raw(header(None, &id)));
            return cx.close(Ending::error(C::NotWellFormed, "expected a stream header"));
        };
        let domain = h.to.as_deref().and_then(|t| Domain::parse(t).ok()).filter(|d| self.secrets.contains_key(d));
        cx.out.push_back(Output::Raw(header(domain.as_ref().map(Domain::as_str), &id)));
        cx.observe(Observed::StreamId(id.clone()));
        if h.name != "stream" || h.ns != ns::STREAMS || h.default_ns.as_deref() != Some(ns::COMPONENT_ACCEPT) {
            return cx.close(Ending::error(
                C::InvalidNamespace,
                format!("a component stream is <stream:stream xmlns='{}'> (XEP-0114)", ns::COMPONENT_ACCEPT),
            ));
        }
        let Some(domain) = domain else {
            return cx.close(Ending::error(
                C::HostUnknown,
                format!("{} is not a configured component ([[component]] domain)", clip(h.to.as_deref().unwrap_or("(no 'to')"), 64)),
            ));
        };
        cx.observe(Observed::Domains { local: Some(domain.to_string()), remote: Some(domain.to_string()) });
        // XEP-0114 has no stream features: ours are enforced, not advertised.
        cx.observe(Observed::Limits(crate::types::StreamLimits { max_bytes: cx.env.limits.max_bytes as u64, ..Default::default() }));
        cx.state(ConnState::Authenticating);
        self.state = State::Handshake { domain, id };
    }

    fn on_handshake(&mut self, cx: &mut Cx, frame: Frame, domain: Domain, id: String) {
        let el = match frame {
            Frame::Element(el) if el.name.as_ref() == "handshake" && el.ns.as_ref() == ns::COMPONENT_ACCEPT => el,
            Frame::StreamClose => return cx.close(Ending::quiet("the component closed the stream before its handshake", true)),
            _ => return cx.close(Ending::error(C::NotAuthorized, "the handshake must come first (XEP-0114 §3)")),
        };
        let expected = handshake_digest(&id, &self.secrets[&domain]);
        let given = el.text_content().trim().to_ascii_lowercase();
        if !same(given.as_bytes(), expected.as_bytes()) {
            let why = format!("wrong handshake for {domain} (check [[component]] secret on both sides)");
            cx.outcome(&domain, &domain, AuthMethod::ComponentHandshake, VerificationResult::Invalid, why.clone());
            return cx.close(Ending::error(C::NotAuthorized, why));
        }
        // RFC 6120 §4.9.3.17: a server out of room says resource-constraint.
        if let Err(key) = self.admission.authenticated() {
            return cx.close(Ending::error(C::ResourceConstraint, format!("too many authenticated inbound streams ({key})")));
        }
        cx.out.push_back(Output::Attach(domain.clone()));
        self.state = State::Attaching { domain };
    }

    fn on_attached(&mut self, cx: &mut Cx, now: Instant, result: Result<(), (C, String)>) {
        let State::Attaching { domain } = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        match result {
            Ok(()) => {
                cx.outcome(
                    &domain,
                    &domain,
                    AuthMethod::ComponentHandshake,
                    VerificationResult::Valid,
                    format!("component {domain} connected"),
                );
                cx.observe(Observed::Pair {
                    local: domain.clone(),
                    remote: domain.clone(),
                    status: PairStatus::Valid,
                    method: AuthMethod::ComponentHandshake,
                });
                cx.send(Element::new("handshake", ns::COMPONENT_ACCEPT));
                cx.state(ConnState::Established);
                self.last_write = now;
                self.state = State::Established { proof: ValidPair::by_handshake(&domain) };
            }
            Err((condition, why)) => cx.close(Ending::error(condition, why)),
        }
    }

    /// A stanza from the component: from its domain (or a subdomain), addressed, checked,
    /// then into routing in `jabber:server`.
    fn on_stanza(&mut self, cx: &mut Cx, frame: Frame, proof: &ValidPair) {
        let domain = proof.remote();
        let mut el = match frame {
            Frame::Element(el) => el,
            Frame::StreamClose => {
                self.state = State::Done;
                return cx.close(Ending::quiet("closed by the component", true));
            }
            Frame::StreamOpen(_) => return cx.close(Ending::error(C::NotWellFormed, "a second stream header")),
        };
        if el.ns.as_ref() != ns::COMPONENT_ACCEPT || !matches!(el.name.as_ref(), "message" | "presence" | "iq") {
            return cx.close(Ending::error(C::UnsupportedStanzaType, format!("{} is not a stanza", el.describe())));
        }
        let from = match el.get_attr("from").and_then(crate::proto::jid::domain_of) {
            Some(f) if may_send_as(&f, domain) => f,
            _ => {
                let f = clip(el.get_attr("from").unwrap_or("(none)"), 64).into_owned();
                return cx.close(Ending::error(
                    C::InvalidFrom,
                    format!("{f}: the component {domain} may send only from {domain} or its subdomains"),
                ));
            }
        };
        let Some(to) = el.get_attr("to").and_then(crate::proto::jid::domain_of) else {
            return cx.close(Ending::error(C::ImproperAddressing, "a stanza without a valid 'to'"));
        };
        retag(&mut el, ns::COMPONENT_ACCEPT, ns::SERVER);
        // RFC 6120 §8: a malformed stanza is answered with a stanza error, back to the component.
        if let Err((cond, text)) = crate::proto::stanza::check(&el) {
            if let Some(reply) = crate::proto::stanza::error_reply(&el, cond, Some(text)) {
                cx.out.push_back(Output::Route(reply));
            }
            return;
        }
        match Delivery::new(proof, &to, &from, el) {
            Ok(d) => cx.out.push_back(Output::Deliver(d)),
            Err(el) => tracing::error!(stream = %cx.log, stanza = %el.describe(), "not delivered: {from} is not {domain}'s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_is_sha1_hex_of_id_and_secret() {
        // XEP-0114 §3's example: id 3BF96D32, secret "sesame".
        // Against Python's hashlib: sha1(b"3BF96D32sesame").
        assert_eq!(handshake_digest("3BF96D32", "sesame"), "7a98dc4c9e92493d7fd66a25364c862637789c45");
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn a_component_sends_from_its_domain_and_subdomains_only() {
        let d = |s: &str| Domain::parse(s).unwrap();
        assert!(may_send_as(&d("comp.a.test"), &d("comp.a.test")));
        assert!(may_send_as(&d("room.comp.a.test"), &d("comp.a.test")));
        assert!(!may_send_as(&d("xcomp.a.test"), &d("comp.a.test")));
        assert!(!may_send_as(&d("a.test"), &d("comp.a.test")));
    }

    #[test]
    fn retagging_moves_the_stanza_and_its_children() {
        let mut el = Element::new("message", ns::COMPONENT_ACCEPT)
            .child(Element::new("body", ns::COMPONENT_ACCEPT).text("hi"))
            .child(Element::new("x", "urn:other"));
        retag(&mut el, ns::COMPONENT_ACCEPT, ns::SERVER);
        assert_eq!(el.ns.as_ref(), ns::SERVER);
        let kids: Vec<&str> = el.elements().map(|e| e.ns.as_ref()).collect();
        assert_eq!(kids, vec![ns::SERVER, "urn:other"]);
    }
}
