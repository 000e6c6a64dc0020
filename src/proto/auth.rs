//! Proof values: a domain pair is authorised on a stream only through a [`ValidPair`], and
//! the only ways to build one take the evidence a verification produced — a dialback answer
//! of `type='valid'` (XEP-0220 §2.1.3), a certificate verdict of `valid` for the domain
//! (RFC 6125 / XEP-0178) or the peer's SASL `<success/>` (RFC 6120 §6.4.6). The stream
//! machine delivers a stanza only with the pair's proof in hand.

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
    pub fn from_verdict(domain: &Domain, verdict: &CertVerdict) -> Option<Certified> {
        verdict.is_valid().then(|| Certified(domain.clone()))
    }

    pub fn domain(&self) -> &Domain {
        &self.0
    }
}

/// A (local, remote) domain pair that authenticated, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPair {
    local: Domain,
    remote: Domain,
    method: AuthMethod,
}

impl ValidPair {
    /// The authoritative server (or, for our own stream, the receiving server) answered
    /// `valid` for this pair.
    pub fn by_dialback(local: &Domain, remote: &Domain, answer: &Answer) -> Option<ValidPair> {
        (*answer == Answer::Valid).then(|| ValidPair { local: local.clone(), remote: remote.clone(), method: AuthMethod::Dialback })
    }

    /// XEP-0344 §2.2: dialback without the callback, the certificate being valid for the
    /// domain claimed in `db:result`.
    pub fn by_certificate(local: &Domain, cert: &Certified, claimed: &Domain) -> Option<ValidPair> {
        (cert.domain() == claimed).then(|| ValidPair {
            local: local.clone(),
            remote: claimed.clone(),
            method: AuthMethod::DialbackWithValidCert,
        })
    }

    /// Inbound SASL EXTERNAL (XEP-0178 §2): the certificate is valid for the domain.
    pub fn by_sasl(local: &Domain, cert: &Certified) -> ValidPair {
        ValidPair { local: local.clone(), remote: cert.domain().clone(), method: AuthMethod::SaslExternal }
    }

    /// Outbound SASL EXTERNAL (XEP-0178 §3): the receiving server sent `<success/>`.
    pub fn by_sasl_success(local: &Domain, remote: &Domain, success: &Element) -> Option<ValidPair> {
        success.is("success", ns::SASL).then(|| ValidPair {
            local: local.clone(),
            remote: remote.clone(),
            method: AuthMethod::SaslExternal,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[test]
    fn only_evidence_builds_a_pair() {
        let (l, r) = (d("a.test"), d("b.test"));
        assert!(ValidPair::by_dialback(&l, &r, &Answer::Invalid).is_none());
        assert!(ValidPair::by_dialback(&l, &r, &Answer::error(crate::proto::stanza::StanzaErrorCondition::ItemNotFound, "x")).is_none());
        assert_eq!(ValidPair::by_dialback(&l, &r, &Answer::Valid).unwrap().method(), AuthMethod::Dialback);
        assert!(Certified::from_verdict(&r, &CertVerdict::SelfSigned).is_none());
        let cert = Certified::from_verdict(&r, &CertVerdict::Valid).unwrap();
        assert!(ValidPair::by_certificate(&l, &cert, &d("c.test")).is_none());
        assert_eq!(ValidPair::by_certificate(&l, &cert, &r).unwrap().method(), AuthMethod::DialbackWithValidCert);
        assert!(ValidPair::by_sasl_success(&l, &r, &Element::new("failure", ns::SASL)).is_none());
        assert!(ValidPair::by_sasl_success(&l, &r, &Element::new("success", ns::SASL)).is_some());
    }
}
