//! Proof values: a domain pair is authorised on a stream only through a [`ValidPair`], built
//! only in `proto` from the evidence a verification produced — the `type='valid'` answer to a
//! key we sent ([`KeySent`], XEP-0220 §2.1.3), a certificate verdict of `valid` for the
//! domain (RFC 6125 / XEP-0178), the peer's SASL `<success/>` after its certificate was judged
//! for the domain (RFC 6120 §6.4.6), a component's handshake (XEP-0114). A stanza reaches the
//! router only as a [`Delivery`], made for the pair's proof and checked against it.

use crate::domain::Domain;
use crate::types::{AuthMethod, CertVerdict};
use crate::xml::Element;

use super::dialback::Answer;
use super::ns;

/// A domain the peer's certificate was judged valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified(Domain);

impl Certified {
    /// Only a `valid` verdict for `domain` certifies it.
    pub(in crate::proto) fn from_verdict(domain: &Domain, verdict: &CertVerdict) -> Option<Certified> {
        verdict.is_valid().then(|| Certified(domain.clone()))
    }

    pub fn domain(&self) -> &Domain {
        &self.0
    }
}

/// The peer's certificate was judged for `domain` (whatever the verdict): what an outbound
/// SASL EXTERNAL success is read against — the peer that says `<success/>` is the one
/// whose certificate was judged for the domain we asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    domain: Domain,
    verdict: CertVerdict,
}

impl Judged {
    pub(in crate::proto) fn new(domain: Domain, verdict: CertVerdict) -> Judged {
        Judged { domain, verdict }
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn verdict(&self) -> &CertVerdict {
        &self.verdict
    }
}

/// A dialback key sent for (local, remote) — by us as Originating Server, or to the
/// authoritative server on the peer's behalf as Receiving Server — awaiting its answer. Only
/// an answer to a key sent makes a [`ValidPair`] by dialback, and only for the key's pair.
#[derive(Debug, PartialEq, Eq)]
pub struct KeySent {
    local: Domain,
    remote: Domain,
}

impl KeySent {
    /// Made where the key leaves (XEP-0220 §2.1.1 `db:result`, §2.1.2 `db:verify`).
    pub(in crate::proto) fn new(local: Domain, remote: Domain) -> KeySent {
        KeySent { local, remote }
    }

    /// The answer to this key: the pair if it is `valid`.
    pub(in crate::proto) fn answered(&self, answer: &Answer) -> Option<ValidPair> {
        (*answer == Answer::Valid).then(|| ValidPair {
            local: self.local.clone(),
            remote: self.remote.clone(),
            method: AuthMethod::Dialback,
        })
    }
}

/// A (local, remote) domain pair that authenticated, and how. Built only in `proto`, by the
/// code that saw the evidence; a delivery carries it ([`Delivery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPair {
    local: Domain,
    remote: Domain,
    method: AuthMethod,
}

impl ValidPair {
    /// XEP-0344 §2.2: dialback without the callback, the certificate being valid for the
    /// domain claimed in `db:result`.
    pub(in crate::proto) fn by_certificate(local: &Domain, cert: &Certified, claimed: &Domain) -> Option<ValidPair> {
        (cert.domain() == claimed).then(|| ValidPair {
            local: local.clone(),
            remote: claimed.clone(),
            method: AuthMethod::DialbackWithValidCert,
        })
    }

    /// Inbound SASL EXTERNAL (XEP-0178 §2): the certificate is valid for the domain.
    pub(in crate::proto) fn by_sasl(local: &Domain, cert: &Certified) -> ValidPair {
        ValidPair { local: local.clone(), remote: cert.domain().clone(), method: AuthMethod::SaslExternal }
    }

    /// Outbound SASL EXTERNAL (XEP-0178 §3): the receiving server, whose certificate was
    /// judged for the domain, sent `<success/>`.
    pub(in crate::proto) fn by_sasl_success(local: &Domain, judged: &Judged, success: &Element) -> Option<ValidPair> {
        success.is("success", ns::SASL).then(|| ValidPair {
            local: local.clone(),
            remote: judged.domain().clone(),
            method: AuthMethod::SaslExternal,
        })
    }

    /// An external component proved the shared secret for its domain (XEP-0114 §3).
    pub(in crate::proto) fn by_handshake(domain: &Domain) -> ValidPair {
        ValidPair { local: domain.clone(), remote: domain.clone(), method: AuthMethod::ComponentHandshake }
    }

    pub fn local(&self) -> &Domain {
        &self.local
    }

    pub fn remote(&self) -> &Domain {
        &self.remote
    }

    pub fn method(&self) -> AuthMethod {
        self.method
    }
}

/// A stanza a stream delivers, checked against the proof of the pair it travels on: the router takes
/// nothing else from a peer. Made only in `proto`, after the stanza's addresses were checked
/// against the proof (`Delivery::new`).
#[derive(Debug)]
pub struct Delivery {
    stanza: Element,
    /// How the pair it was checked against was authenticated. (Not the pair itself: a
    /// clone of its two shared domain names per stanza would be two atomic counts the
    /// stream's cores fight over, on the stanza path.)
    method: AuthMethod,
}

impl Delivery {
    /// `stanza` travels from `from` to `to`: delivered only if that is the proof's pair —
    /// for a component, from its domain or a subdomain (XEP-0114) to anywhere. The stanza
    /// comes back when it is not.
    pub(in crate::proto) fn new(proof: &ValidPair, to: &Domain, from: &Domain, stanza: Element) -> Result<Delivery, Element> {
        let ok = match proof.method {
            AuthMethod::ComponentHandshake => {
                from == &proof.remote || from.as_str().strip_suffix(proof.remote.as_str()).is_some_and(|rest| rest.ends_with('.'))
            }
            _ => to == &proof.local && from == &proof.remote,
        };
        if ok { Ok(Delivery { stanza, method: proof.method }) } else { Err(stanza) }
    }

    pub fn stanza(&self) -> &Element {
        &self.stanza
    }

    pub fn method(&self) -> AuthMethod {
        self.method
    }

    pub fn into_stanza(self) -> Element {
        self.stanza
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[test]
    fn only_evidence_builds_a_pair() {
        let (l, r) = (d("a.test"), d("b.test"));
        let sent = KeySent::new(l.clone(), r.clone());
        assert!(sent.answered(&Answer::Invalid).is_none());
        assert!(sent.answered(&Answer::error(crate::proto::stanza::StanzaErrorCondition::ItemNotFound, "x")).is_none());
        let pair = sent.answered(&Answer::Valid).unwrap();
        assert_eq!((pair.local(), pair.remote(), pair.method()), (&l, &r, AuthMethod::Dialback));
        assert!(Certified::from_verdict(&r, &CertVerdict::SelfSigned).is_none());
        let cert = Certified::from_verdict(&r, &CertVerdict::Valid).unwrap();
        assert!(ValidPair::by_certificate(&l, &cert, &d("c.test")).is_none());
        assert_eq!(ValidPair::by_certificate(&l, &cert, &r).unwrap().method(), AuthMethod::DialbackWithValidCert);
        let judged = Judged::new(r.clone(), CertVerdict::SelfSigned);
        assert!(ValidPair::by_sasl_success(&l, &judged, &Element::new("failure", ns::SASL)).is_none());
        assert_eq!(ValidPair::by_sasl_success(&l, &judged, &Element::new("success", ns::SASL)).unwrap().remote(), &r);
    }

    /// A delivery is made only for the proof's own pair (a component: its domain and
    /// subdomains as senders).
    #[test]
    fn a_delivery_matches_its_proof() {
        let (l, r) = (d("a.test"), d("b.test"));
        let pair = KeySent::new(l.clone(), r.clone()).answered(&Answer::Valid).unwrap();
        let st = || Element::new("message", ns::SERVER);
        assert!(Delivery::new(&pair, &l, &r, st()).is_ok());
        assert!(Delivery::new(&pair, &l, &d("c.test"), st()).is_err());
        assert!(Delivery::new(&pair, &d("c.test"), &r, st()).is_err());
        let comp = ValidPair::by_handshake(&d("comp.a.test"));
        assert!(Delivery::new(&comp, &d("x.test"), &d("comp.a.test"), st()).is_ok());
        assert!(Delivery::new(&comp, &d("x.test"), &d("muc.comp.a.test"), st()).is_ok());
        assert!(Delivery::new(&comp, &d("x.test"), &d("evilcomp.a.test"), st()).is_err());
    }
}
