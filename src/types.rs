//! Types every layer speaks: how a stream goes, how a domain authenticated, what a
//! certificate proves, what the policy says and which security rule applies, and the one
//! fixed-window rate limit ([`FixedWindow`]). They sit at the bottom so that protocol,
//! policy, store, engine and UI can share them without importing each other.

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
    /// An external component proved the shared secret (XEP-0114 §3 handshake).
    ComponentHandshake,
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
            AuthMethod::ComponentHandshake => "component-handshake",
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

/// Facts about a peer certificate, for the connection table and operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerCertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names from the subjectAltName extension.
    pub names: Vec<String>,
    pub not_after: String,
    /// The notAfter as seconds since the Unix epoch (what expiry is reckoned from);
    /// `None` for an unparseable certificate, or in a record from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_s: Option<i64>,
    /// SHA-256 of the DER certificate, hex, colon-separated.
    pub fingerprint_sha256: String,
}

/// The last certificate a remote domain authenticated by (kept with its domain record):
/// when it expires and who issued it, so an operator sees a peer's lapse coming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCert {
    /// notAfter, seconds since the Unix epoch.
    pub not_after_s: i64,
    /// The issuer's name: the peer's text, escaped and clipped before it was kept.
    pub issuer: String,
    /// The subject's name, likewise.
    #[serde(default)]
    pub subject: String,
    /// SHA-256 of the DER certificate (a renewal shows as a new one).
    #[serde(default)]
    pub fingerprint_sha256: String,
    /// How the domain was authenticated by it: `certificate` (its server certificate on our
    /// stream to it, or on its stream to us), `sasl-external`, `dialback-with-valid-cert`.
    pub method: AuthMethod,
    /// The stream it was seen on: its stream to us (`in`) or ours to it (`out`).
    pub direction: Direction,
    /// When the domain last authenticated by it (unix ms).
    pub seen_ms: u64,
}

/// Where a certificate stands against `[certs] warn_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertExpiry {
    /// More than `warn_before` left.
    Ok,
    /// Expires within `warn_before`.
    Expiring,
    /// Its notAfter has passed.
    Expired,
}

impl CertExpiry {
    /// A certificate valid until `not_after_s` (inclusive, RFC 5280 §4.1.2.5), at `now_s`.
    pub fn classify(not_after_s: i64, now_s: i64, warn_before: std::time::Duration) -> CertExpiry {
        if now_s > not_after_s {
            CertExpiry::Expired
        } else if not_after_s - now_s < i64::try_from(warn_before.as_secs()).unwrap_or(i64::MAX) {
            CertExpiry::Expiring
        } else {
            CertExpiry::Ok
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CertExpiry::Ok => "ok",
            CertExpiry::Expiring => "expiring",
            CertExpiry::Expired => "expired",
        }
    }
}

/// How long is left until `not_after_s`, for people: "in 12 days", "in 5 hours", "expired
/// 3 days ago" (whole days, rounded down; hours and minutes under a day).
pub fn expiry_in_words(not_after_s: i64, now_s: i64) -> String {
    let span = |secs: i64| {
        let (d, h, m) = (secs / 86_400, secs / 3600, secs / 60);
        let unit = |n: i64, u: &str| format!("{n} {u}{}", if n == 1 { "" } else { "s" });
        if d > 0 {
            unit(d, "day")
        } else if h > 0 {
            unit(h, "hour")
        } else {
            unit(m.max(0), "minute")
        }
    };
    if now_s > not_after_s { format!("expired {} ago", span(now_s - not_after_s)) } else { format!("in {}", span(not_after_s - now_s)) }
}

/// A span as an operator wrote it: "14 days", "36 hours", "1 day"; otherwise humantime's
/// form ("1h 30m").
pub fn span_in_words(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let plural = |n: u64, u: &str| format!("{n} {u}{}", if n == 1 { "" } else { "s" });
    match s {
        _ if d.subsec_nanos() != 0 || s == 0 => humantime::format_duration(d).to_string(),
        _ if s.is_multiple_of(86_400) => plural(s / 86_400, "day"),
        _ if s.is_multiple_of(3600) => plural(s / 3600, "hour"),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// Unix seconds as [`fmt_utc`] does (clamped at the ends of what it can show).
pub fn fmt_utc_s(s: i64) -> String {
    fmt_utc(u64::try_from(s).unwrap_or(0).saturating_mul(1000))
}

/// Now in Unix seconds.
pub fn now_s() -> i64 {
    (now_ms() / 1000) as i64
}

/// One (local, remote) domain pair on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    pub local: String,
    pub remote: String,
    pub status: PairStatus,
    pub method: AuthMethod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// Shared between the streams that presented the same certificate.
    pub peer_cert: Option<std::sync::Arc<PeerCertInfo>>,
    /// The peer certificate judged for the domain the peer claims (or we dialled).
    #[serde(default)]
    pub cert_verdict: Option<CertVerdict>,
}

/// A stream as seen in the connection table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnSnapshot {
    pub id: String,
    pub direction: Direction,
    /// What is at the other end: a federation peer (the default, not written), the internal
    /// server (gateway mode) or an external component.
    #[serde(default, skip_serializing_if = "StreamKind::is_federation")]
    pub kind: StreamKind,
    pub local: Option<String>,
    pub remote: Option<String>,
    pub peer_addr: Option<String>,
    pub state: ConnState,
    /// The XMPP stream id (ours for inbound streams, the peer's for outbound).
    pub stream_id: Option<String>,
    pub tls: Option<TlsInfo>,
    pub pairs: Vec<PairInfo>,
    /// Unix milliseconds.
    pub opened_ms: u64,
    pub last_activity_ms: u64,
    pub stanzas_in: u64,
    pub stanzas_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub close_reason: Option<String>,
    /// The stream's limits (XEP-0478), once its features were sent or read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<StreamLimits>,
}

/// A stream's limits (XEP-0478): ours — what we accept on it, advertised in the features we
/// send — and the peer's, read from the features it sends (outbound streams). A peer that
/// advertised none (Prosody 0.12, drawbridge before) has `None`: no cap beyond our own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamLimits {
    /// Largest top-level element we accept (`limits.max_stanza_size`).
    pub max_bytes: u64,
    /// Seconds without traffic after which we close the stream, where we advertise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<u64>,
    /// The peer's advertised `max-bytes`: we never send it a larger stanza.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_idle_seconds: Option<u64>,
}

impl std::fmt::Display for StreamLimits {
    /// `ours 524288 B, idle 1200 s; peer 10000 B` — "peer none" when it advertised nothing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ours {} B", self.max_bytes)?;
        if let Some(i) = self.idle_seconds {
            write!(f, ", idle {i} s")?;
        }
        match (self.peer_max_bytes, self.peer_idle_seconds) {
            (None, None) => write!(f, "; peer none"),
            (b, i) => {
                write!(f, "; peer {}", b.map_or("-".to_owned(), |b| format!("{b} B")))?;
                if let Some(i) = i {
                    write!(f, ", idle {i} s")?;
                }
                Ok(())
            }
        }
    }
}

/// What a stream connects drawbridge with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// A federation peer (RFC 6120 s2s).
    #[default]
    Federation,
    /// Gateway mode's internal server.
    Internal,
    /// An external component (XEP-0114).
    Component,
}

impl StreamKind {
    pub fn is_federation(&self) -> bool {
        *self == StreamKind::Federation
    }
}

impl ConnSnapshot {
    /// A stream of gateway mode's internal link.
    pub fn internal(&self) -> bool {
        self.kind == StreamKind::Internal
    }
}

/// The result of authenticating one remote domain on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationOutcome {
    pub time_ms: u64,
    pub stream: String,
    pub direction: Direction,
    pub local: String,
    pub remote: String,
    pub method: AuthMethod,
    pub result: VerificationResult,
    /// In words an operator can act on.
    pub reason: String,
    pub peer_addr: Option<String>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS UTC` (no time-zone database needed).
pub fn fmt_utc(ms: u64) -> String {
    // Past year 9999 `time` has no date (without its large-dates feature): the last second.
    let t = i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
    let (d, c) = (t.date(), t.time());
    format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC", d.year(), u8::from(d.month()), d.day(), c.hour(), c.minute(), c.second())
}

/// A moment a [`FixedWindow`] is measured from: `Instant` for the machine's verification
/// budget and the log limiter, `SystemTime` for the gateway CA (whose callers pass the time).
pub trait Moment: Copy {
    /// How long after `earlier` this is (zero if before it).
    fn since(self, earlier: Self) -> std::time::Duration;
}

impl Moment for std::time::Instant {
    fn since(self, earlier: Self) -> std::time::Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Moment for std::time::SystemTime {
    fn since(self, earlier: Self) -> std::time::Duration {
        self.duration_since(earlier).unwrap_or_default()
    }
}

/// The one fixed-window rate limit, behind `limits.verifications_per_minute`,
/// `gateway.mints_per_minute` and the once-a-minute refusal log: at most `limit` takes per
/// window of `length`, a window opening at the first take after the last one ended. What
/// was refused is counted, and told by the first take of the next window (the log's "N more
/// since the last report").
#[derive(Debug, Clone)]
pub struct FixedWindow<T> {
    began: Option<T>,
    used: u64,
    refused: u64,
}

impl<T> Default for FixedWindow<T> {
    fn default() -> Self {
        FixedWindow { began: None, used: 0, refused: 0 }
    }
}

impl<T: Moment> FixedWindow<T> {
    /// One more at `now`, if the window has room: `Some(refused in the windows since the
    /// last take)`; `None`, counted, if not.
    pub fn take(&mut self, now: T, length: std::time::Duration, limit: u64) -> Option<u64> {
        let mut carried = 0;
        if self.began.is_none_or(|b| now.since(b) >= length) {
            carried = std::mem::take(&mut self.refused);
            *self = FixedWindow { began: Some(now), used: 0, refused: 0 };
        }
        if self.used >= limit {
            self.refused += 1;
            return None;
        }
        self.used += 1;
        Some(carried)
    }

    /// When the current window opened (`None` before the first take).
    pub fn began(&self) -> Option<T> {
        self.began
    }
}

/// A limit that can refuse something, by its configuration key (or, for the once-a-minute
/// log of refusals that have no key, what refused): typed, so a refusal names a limit that
/// exists and the log and `ctl status` spell it one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    MaxInboundUnauthenticated,
    MaxUnauthenticatedPerAddress,
    MaxUnauthenticatedGateway,
    MaxUnauthenticatedComponents,
    MaxInbound,
    MaxOutbound,
    MaxVerificationsInFlight,
    VerificationsPerMinute,
    OutboundQueueBytes,
    OutboundMaxDials,
    GatewayAllow,
    GatewayMintsPerMinute,
    /// Claims of unauthenticated peers, recorded at most so often per source.
    UnauthenticatedClaims,
    /// Component streams that end before their handshake (a wrong secret, a stranger).
    ComponentHandshake,
    /// Tests' own limits (the once-a-minute logger's unit tests).
    #[cfg(test)]
    Test(&'static str),
}

impl LimitKey {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKey::MaxInboundUnauthenticated => "limits.max_inbound_unauthenticated",
            LimitKey::MaxUnauthenticatedPerAddress => "limits.max_unauthenticated_per_address",
            LimitKey::MaxUnauthenticatedGateway => "limits.max_unauthenticated_gateway",
            LimitKey::MaxUnauthenticatedComponents => "limits.max_unauthenticated_components",
            LimitKey::MaxInbound => "limits.max_inbound",
            LimitKey::MaxOutbound => "limits.max_outbound",
            LimitKey::MaxVerificationsInFlight => "limits.max_verifications_in_flight",
            LimitKey::VerificationsPerMinute => "limits.verifications_per_minute",
            LimitKey::OutboundQueueBytes => "limits.outbound_queue_bytes",
            LimitKey::OutboundMaxDials => "outbound.max_dials",
            LimitKey::GatewayAllow => "gateway.allow",
            LimitKey::GatewayMintsPerMinute => "gateway.mints_per_minute",
            LimitKey::UnauthenticatedClaims => "unauthenticated claims",
            LimitKey::ComponentHandshake => "component handshake",
            #[cfg(test)]
            LimitKey::Test(s) => s,
        }
    }
}

impl std::fmt::Display for LimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::FixedWindow;

    #[test]
    fn a_fixed_window_admits_its_limit_and_counts_the_rest() {
        let (t, minute) = (Instant::now(), Duration::from_secs(60));
        let mut w = FixedWindow::default();
        assert_eq!(w.take(t, minute, 2), Some(0));
        assert_eq!(w.take(t + Duration::from_secs(10), minute, 2), Some(0));
        assert_eq!(w.take(t + Duration::from_secs(20), minute, 2), None);
        assert_eq!(w.take(t + Duration::from_secs(59), minute, 2), None, "the window runs from its first take");
        assert_eq!(w.began(), Some(t));
        // The next window opens at its first take, and tells what the last one refused.
        assert_eq!(w.take(t + Duration::from_secs(90), minute, 2), Some(2));
        assert_eq!(w.began(), Some(t + Duration::from_secs(90)));
        assert_eq!(w.take(t + Duration::from_secs(91), minute, 2), Some(0));
        assert_eq!(w.take(t + Duration::from_secs(92), minute, 2), None);
        // A clock that steps back stays in the window.
        let s = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut w = FixedWindow::default();
        assert_eq!(w.take(s, minute, 1), Some(0));
        assert_eq!(w.take(s - Duration::from_secs(3600), minute, 1), None);
        assert_eq!(w.take(s + minute, minute, 1), Some(1));
    }

    #[test]
    fn certificates_are_ok_expiring_or_expired() {
        use super::CertExpiry::*;
        let day = 86_400;
        let warn = Duration::from_secs(14 * day as u64);
        let now = 1_800_000_000;
        assert_eq!(super::CertExpiry::classify(now + 30 * day, now, warn), Ok);
        assert_eq!(super::CertExpiry::classify(now + 14 * day, now, warn), Ok, "exactly warn_before left: not yet");
        assert_eq!(super::CertExpiry::classify(now + 14 * day - 1, now, warn), Expiring);
        assert_eq!(super::CertExpiry::classify(now, now, warn), Expiring, "valid through its notAfter second");
        assert_eq!(super::CertExpiry::classify(now - 1, now, warn), Expired);
        assert_eq!(super::CertExpiry::classify(i64::MIN, now, warn), Expired);
        assert_eq!(super::CertExpiry::classify(now + 1, now, Duration::MAX), Expiring, "no overflow");
        assert!(Ok < Expiring && Expiring < Expired, "worse sorts later");
        assert_eq!(super::expiry_in_words(now + 10 * day + 5, now), "in 10 days");
        assert_eq!(super::expiry_in_words(now + day, now), "in 1 day");
        assert_eq!(super::expiry_in_words(now + 5 * 3600 + 59, now), "in 5 hours");
        assert_eq!(super::expiry_in_words(now + 90, now), "in 1 minute");
        assert_eq!(super::expiry_in_words(now, now), "in 0 minutes");
        assert_eq!(super::expiry_in_words(now - 3 * day - 100, now), "expired 3 days ago");
        assert_eq!(super::span_in_words(Duration::from_secs(14 * 86_400)), "14 days");
        assert_eq!(super::span_in_words(Duration::from_secs(86_400)), "1 day");
        assert_eq!(super::span_in_words(Duration::from_secs(36 * 3600)), "36 hours");
        assert_eq!(super::span_in_words(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(super::fmt_utc_s(-5), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::fmt_utc_s(1_795_309_028), "2026-11-22 00:57:08 UTC");
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(super::fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::fmt_utc(1_795_309_028_000), "2026-11-22 00:57:08 UTC");
        assert_eq!(super::fmt_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::fmt_utc(u64::MAX), "9999-12-31 23:59:59 UTC", "out of range: clamped, no panic");
    }
}
