//! Types every layer speaks: how a stream goes, how a domain authenticated, what a
//! certificate proves, what the policy says and which security rule applies. They sit at
//! the bottom so that protocol, policy, store, engine and UI can share them without
//! importing each other.

use serde::{Deserialize, Serialize};

use crate::domain::Domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// Life cycle of a stream as the connection table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    Connecting,
    Tls,
    Authenticating,
    Established,
    Closing,
    Closed,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Tls => "tls",
            ConnState::Authenticating => "authenticating",
            ConnState::Established => "established",
            ConnState::Closing => "closing",
            ConnState::Closed => "closed",
        }
    }
}

/// How a domain pair was authenticated on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    Dialback,
    /// The peer's certificate judged for the domain (RFC 6125); SASL EXTERNAL builds on it.
    Certificate,
    /// SASL EXTERNAL with a certificate valid for the domain (RFC 6120 §6, XEP-0178).
    SaslExternal,
    /// Dialback accepted without the callback because the certificate is valid for the
    /// claimed domain (XEP-0344 §2.2 "dialback without dialback").
    DialbackWithValidCert,
    /// No method was tried: the policy refused the claimed domain first (its stream header).
    Policy,
}

impl AuthMethod {
    /// The name operators read (the same as on the control socket).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Dialback => "dialback",
            AuthMethod::Certificate => "certificate",
            AuthMethod::SaslExternal => "sasl-external",
            AuthMethod::DialbackWithValidCert => "dialback-with-valid-cert",
            AuthMethod::Policy => "policy",
        }
    }
}

impl VerificationResult {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationResult::Valid => "valid",
            VerificationResult::Invalid => "invalid",
            VerificationResult::Error => "error",
            VerificationResult::Timeout => "timeout",
            VerificationResult::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairStatus {
    /// Dialback under way (XEP-0220: `db:result` sent or received, no answer yet).
    Pending,
    /// Verified, waiting for the operator's approval (policy mode approval).
    Held,
    Valid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerificationResult {
    Valid,
    Invalid,
    Error,
    Timeout,
    /// Refused by policy before any verification (the claim was not checked).
    Refused,
}

/// What the certificate says about the peer's claim to a domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "kebab-case")]
pub enum CertVerdict {
    Valid,
    NoCertificate,
    SelfSigned,
    /// The issuer's name.
    UntrustedIssuer(String),
    /// The notAfter date.
    Expired(String),
    /// The notBefore date.
    NotYetValid(String),
    /// The names the certificate does carry.
    NameMismatch(Vec<String>),
    /// Anything else the chain check said.
    Invalid(String),
}

impl CertVerdict {
    pub fn is_valid(&self) -> bool {
        *self == CertVerdict::Valid
    }
}

impl std::fmt::Display for CertVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertVerdict::Valid => f.write_str("valid"),
            CertVerdict::NoCertificate => f.write_str("no certificate"),
            CertVerdict::SelfSigned => f.write_str("self-signed"),
            CertVerdict::UntrustedIssuer(i) => write!(f, "untrusted issuer ({i})"),
            CertVerdict::Expired(d) => write!(f, "expired on {d}"),
            CertVerdict::NotYetValid(d) => write!(f, "not yet valid (from {d})"),
            CertVerdict::NameMismatch(names) if names.is_empty() => f.write_str("name mismatch: the certificate names no domain"),
            CertVerdict::NameMismatch(names) => write!(f, "name mismatch: certificate names {}", names.join(", ")),
            CertVerdict::Invalid(e) => write!(f, "invalid: {e}"),
        }
    }
}

/// The policy's answer for one remote domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Held until the operator decides (approval mode).
    Hold,
    /// Refused, with the rule that refused it in words.
    Refuse(String),
}

/// How remote domains may authenticate (`[auth] mode`, `[[domain]] auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Certificates (SASL EXTERNAL) when valid, else Server Dialback.
    CertOrDialback,
    /// Certificates only: no dialback at all.
    CertOnly,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "cert-or-dialback" => Some(AuthMode::CertOrDialback),
            "cert-only" => Some(AuthMode::CertOnly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::CertOrDialback => "cert-or-dialback",
            AuthMode::CertOnly => "cert-only",
        }
    }
}

/// A `[[domain]]` exception for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    pub name: Domain,
    pub auth: Option<AuthMode>,
    pub require_encryption: Option<bool>,
}

/// The security rules: the defaults and the per-domain exceptions.
#[derive(Debug, Clone)]
pub struct Security {
    pub auth: AuthMode,
    pub require_encryption: bool,
    pub rules: Vec<DomainRule>,
}

impl Security {
    fn rule(&self, domain: &str) -> Option<&DomainRule> {
        self.rules.iter().find(|r| r.name.as_str() == domain)
    }

    /// The auth mode for a peer, and the rule that set it (for refusal texts).
    pub fn auth_for(&self, domain: &str) -> (AuthMode, String) {
        match self.rule(domain).and_then(|r| r.auth.map(|a| (a, r))) {
            Some((a, r)) => (a, format!("[[domain]] {}: auth = \"{}\"", r.name, a.as_str())),
            None => (self.auth, format!("[auth] mode = \"{}\"", self.auth.as_str())),
        }
    }

    /// Whether a peer must use TLS, and the rule that says so.
    pub fn require_encryption_for(&self, domain: &str) -> (bool, String) {
        match self.rule(domain).and_then(|r| r.require_encryption.map(|e| (e, r))) {
            Some((e, r)) => (e, format!("[[domain]] {}: require_encryption = {e}", r.name)),
            None => (self.require_encryption, format!("[tls] require_encryption = {}", self.require_encryption)),
        }
    }
}
