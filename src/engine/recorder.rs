//! What streams report, recorded: verification outcomes (log, store, events; unauthenticated
//! claims only in a bounded ring), domains waiting for approval, and ended streams (closed
//! list, history, domain counters). Streams reach it only as a [`crate::stream::Observer`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::domain::Domain;
use crate::events::*;
use crate::policy::Policy;
use crate::store::Store;
use crate::table::{ConnEntry, ConnTable};

/// Failed verifications of unauthenticated claims kept in memory (at most; and at most
/// `limits.unauthenticated_outcomes_bytes` of them).
pub const UNAUTHENTICATED_RING: usize = 1000;
/// Bytes of an unauthenticated outcome's reason kept in the ring.
pub const RING_REASON: usize = 1024;

/// The ring of failed unauthenticated verifications: bounded in entries and in bytes, so
/// certificates with huge names cannot make it grow (each entry is charged its size).
#[derive(Debug, Default)]
pub struct OutcomeRing {
    entries: VecDeque<(VerificationOutcome, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl OutcomeRing {
    pub fn new(max_bytes: usize) -> Self {
        OutcomeRing { max_bytes, ..Default::default() }
    }

    fn push(&mut self, mut o: VerificationOutcome) {
        if let std::borrow::Cow::Owned(r) = crate::text::clip(&o.reason, RING_REASON) {
            o.reason = r;
        }
        let size = std::mem::size_of::<VerificationOutcome>() + crate::events::bus::json_size(&o);
        if size > self.max_bytes {
            return;
        }
        while !self.entries.is_empty() && (self.entries.len() >= UNAUTHENTICATED_RING || self.bytes + size > self.max_bytes) {
            if let Some((_, n)) = self.entries.pop_front() {
                self.bytes -= n;
            }
        }
        self.entries.push_back((o, size));
        self.bytes += size;
    }

    fn iter(&self) -> impl Iterator<Item = &VerificationOutcome> {
        self.entries.iter().map(|(o, _)| o)
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }
}

pub struct Recorder {
    pub(super) store: Arc<Store>,
    pub(super) policy: Arc<Policy>,
    pub(super) events: bus::Sender,
    pub(super) table: Arc<ConnTable>,
    /// Failed verifications of unauthenticated claims (memory only, bounded).
    pub(super) unauthenticated: Mutex<OutcomeRing>,
}

impl Recorder {
    /// A stream ended: into the closed list, the history and the domain counters.
    /// Only streams of authenticated or known domains reach the history on disk; the others
    /// stay in the table's bounded list of closed streams.
    pub fn stream_closed(&self, entry: &ConnEntry, reason: &str) {
        self.table.close(entry, reason);
        let snap = entry.snapshot();
        let mut remotes: Vec<&str> = snap.pairs.iter().filter(|p| p.status == PairStatus::Valid).map(|p| p.remote.as_str()).collect();
        remotes.sort_unstable();
        remotes.dedup();
        let known = snap.remote.as_deref().is_some_and(|r| self.policy.record(r).is_some());
        if (!remotes.is_empty() || known)
            && let Err(e) = self.store.add_history(&snap)
        {
            tracing::error!("store: {e}");
        }
        for r in remotes {
            self.policy.note(r, |rec| match snap.direction {
                Direction::In => {
                    rec.streams_in += 1;
                    rec.stanzas_in += snap.stanzas_in;
                }
                Direction::Out => {
                    rec.streams_out += 1;
                    rec.stanzas_out += snap.stanzas_out;
                }
            });
        }
    }

    /// List a verified, undecided domain as pending (approval mode) and tell the world.
    pub fn mark_pending(&self, domain: &Domain) {
        if let Some(record) = self.policy.mark_pending(domain) {
            tracing::warn!("{domain} is waiting for approval (`drawbridge ctl approve {domain}`)");
            let _ = self.events.send(Event::DomainChanged { record });
        }
    }

    /// Record a verification outcome: log, event, store (flushed by the periodic flush).
    /// What a peer failed to prove (an inbound claim), and our own failures towards domains
    /// nobody decided on and that never authenticated, are not persisted: they go to a
    /// bounded ring in memory, their log lines rate-limited per source, so no peer can grow
    /// the store or push real history out of it.
    pub fn record_outcome(&self, outcome: VerificationOutcome, cert: Option<Arc<PeerCertInfo>>) {
        let valid = outcome.result == VerificationResult::Valid;
        let persist = valid || (outcome.direction == Direction::Out && self.policy.record(&outcome.remote).is_some());
        if !persist {
            return self.unauthenticated(outcome);
        }
        if let Err(e) = self.store.add_outcome(&outcome) {
            tracing::error!("store: {e}");
        }
        // One write of the domain's record per outcome: what it says about certificates,
        // and the last verification.
        let (mut cert_seen, mut downgrade) = (false, None);
        // Only what the remote domain proved to us counts: its certificate judged valid for
        // it (either way), SASL EXTERNAL or dialback on its stream to us. On our stream to it,
        // EXTERNAL and dialback prove *our* domain — a peer with a self-signed certificate
        // that accepts ours was once taken for one that authenticated by certificate, and
        // every dialback from it then was flagged as a downgrade.
        if outcome.result == VerificationResult::Valid {
            let inbound = outcome.direction == Direction::In;
            match outcome.method {
                AuthMethod::Certificate => cert_seen = true,
                AuthMethod::SaslExternal | AuthMethod::DialbackWithValidCert if inbound => cert_seen = true,
                AuthMethod::Dialback if inbound && self.policy.record(&outcome.remote).is_some_and(|r| r.cert_auth_seen) => {
                    let text = format!(
                        "downgrade: {} authenticated by certificate before, now by dialback only ({})",
                        outcome.remote,
                        fmt_utc(outcome.time_ms)
                    );
                    tracing::warn!(stream = %outcome.stream, "{text}");
                    downgrade = Some(text);
                }
                _ => {}
            }
        }
        let last = format!("{} {}: {}", format!("{:?}", outcome.result).to_lowercase(), fmt_utc(outcome.time_ms), outcome.reason);
        // A domain the policy refuses may still prove itself (a certificate valid for a
        // second domain on an allowed stream): its certificate is no news for the operator's
        // forecast — not kept, not announced, not counted by the expiry metric.
        let refused =
            || Domain::parse(&outcome.remote).map_or(true, |d| matches!(self.policy.verdict(&d), crate::types::Verdict::Refuse(_)));
        let kept = cert.as_deref().and_then(|c| remote_cert(&outcome, c)).filter(|_| !refused());
        // A certificate not seen for the domain before (its first, a renewal) changes what the
        // views mark: announced. The same one again only updates when it was seen. Decided
        // under the record's write, so two streams presenting it at once announce it once.
        let mut new_cert = false;
        let downgraded = downgrade.is_some();
        self.policy.note(&outcome.remote, |rec| {
            if let Some(c) = kept {
                new_cert =
                    rec.cert.as_ref().is_none_or(|o| (&o.fingerprint_sha256, o.not_after_s) != (&c.fingerprint_sha256, c.not_after_s));
                rec.cert = Some(c);
            }
            if cert_seen {
                rec.cert_auth_seen = true;
                rec.downgrade = None;
            }
            if let Some(d) = downgrade {
                rec.downgrade = Some(d);
            }
            rec.last_verification = Some(last);
        });
        if (downgraded || new_cert)
            && let Some(record) = self.policy.record(&outcome.remote)
        {
            let _ = self.events.send(Event::DomainChanged { record });
        }
        let level_valid = outcome.result == VerificationResult::Valid;
        if level_valid {
            tracing::info!(stream = %outcome.stream, local = %outcome.local, remote = %outcome.remote, "verified {}: {}", outcome.remote, outcome.reason);
        } else {
            tracing::warn!(stream = %outcome.stream, local = %outcome.local, remote = %outcome.remote, result = ?outcome.result, "verification of {} failed: {}", outcome.remote, outcome.reason);
        }
        let _ = self.events.send(Event::Verification { outcome });
    }

    /// A failure to authenticate nobody vouches for: memory only (a bounded ring), its log
    /// line rate-limited per source address.
    pub fn unauthenticated(&self, outcome: VerificationOutcome) {
        // Per source address (not per connection: a port changes with each).
        let source = outcome
            .peer_addr
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map_or_else(|| outcome.remote.clone(), |a| a.ip().to_string());
        crate::limits::refused_once(crate::limits::LimitKey::UnauthenticatedClaims, &source, || {
            format!("verification of {} failed: {}", outcome.remote, outcome.reason)
        });
        self.unauthenticated.lock().unwrap().push(outcome.clone());
        let _ = self.events.send(Event::Verification { outcome });
    }

    /// Verification outcomes, newest first: the store's and the unauthenticated ring's.
    pub async fn outcomes_for(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, crate::store::StoreError> {
        let v = self.store.outcomes(domain, limit).await?;
        Ok(self.with_unauthenticated(v, domain, limit))
    }

    /// [`Recorder::outcomes_for`] without waiting: the newest the store has at hand (all of
    /// them on the embedded store; the ones this node recorded or loaded, on a shared one).
    pub fn recent_outcomes(&self, domain: Option<&str>, limit: usize) -> Vec<VerificationOutcome> {
        let v = self.store.recent_outcomes(domain, limit).unwrap_or_else(|e| {
            tracing::error!("store: {e}");
            Vec::new()
        });
        self.with_unauthenticated(v, domain, limit)
    }

    fn with_unauthenticated(&self, mut v: Vec<VerificationOutcome>, domain: Option<&str>, limit: usize) -> Vec<VerificationOutcome> {
        v.extend(self.unauthenticated.lock().unwrap().iter().filter(|o| domain.is_none_or(|d| o.remote == d)).cloned());
        v.sort_by_key(|o| std::cmp::Reverse(o.time_ms));
        v.truncate(limit);
        v
    }

    /// The unauthenticated ring's entries and bytes now.
    pub fn ring_usage(&self) -> (usize, usize) {
        self.unauthenticated.lock().unwrap().usage()
    }

    /// The most recent verification outcomes (newest first).
    pub fn outcomes(&self) -> Vec<VerificationOutcome> {
        self.recent_outcomes(None, 1000)
    }
}

/// What is kept of the certificate a remote domain just authenticated by (`None` when the
/// outcome is no authentication by certificate, or the certificate has no readable expiry).
/// Authenticated by certificate: judged valid for the domain on either direction's stream
/// (RFC 6125; on ours, its server certificate, RFC 6120 §13.7.2), or SASL EXTERNAL or
/// dialback accepted on it (XEP-0178, XEP-0344 §2.2) on its stream to us. On our stream to
/// it, SASL EXTERNAL and dialback authenticate us, not it. Only valid outcomes: nothing is
/// kept of a mere claim. The names were escaped and clipped at ingestion; clipped again here
/// so that nothing longer reaches the disk whatever the caller passed.
pub fn remote_cert(o: &VerificationOutcome, c: &PeerCertInfo) -> Option<RemoteCert> {
    let by_certificate = o.result == VerificationResult::Valid
        && match o.method {
            AuthMethod::Certificate => true,
            AuthMethod::SaslExternal | AuthMethod::DialbackWithValidCert => o.direction == Direction::In,
            _ => false,
        };
    if !by_certificate {
        return None;
    }
    use crate::net::certs::kept_name;
    Some(RemoteCert {
        not_after_s: c.not_after_s?,
        issuer: kept_name(&c.issuer),
        subject: kept_name(&c.subject),
        fingerprint_sha256: kept_name(&c.fingerprint_sha256),
        method: o.method,
        direction: o.direction,
        seen_ms: o.time_ms,
    })
}

impl crate::stream::Observer for Recorder {
    fn outcome(&self, outcome: VerificationOutcome, cert: Option<Arc<PeerCertInfo>>) {
        self.record_outcome(outcome, cert)
    }
    fn pending(&self, domain: &Domain) {
        self.mark_pending(domain)
    }
    fn closed(&self, entry: &ConnEntry, reason: &str) {
        self.stream_closed(entry, reason)
    }
}

/// Where the streams of gateway mode's internal link and of external components report:
/// their outcomes are recorded and shown like any other, marked (`label: …`), but they say
/// nothing about a remote domain's standing — the peer is the internal server or a component,
/// the domains ours or ones drawbridge stands in for — so no domain record is touched.
/// Failures stay in memory (the bounded ring), as for any unauthenticated claim: whoever can
/// reach those listeners cannot grow the store.
pub struct LinkObserver {
    pub recorder: Arc<Recorder>,
    /// "internal link" or "component".
    pub label: &'static str,
}

impl crate::stream::Observer for LinkObserver {
    fn outcome(&self, mut outcome: VerificationOutcome, _cert: Option<Arc<PeerCertInfo>>) {
        outcome.reason = format!("{}: {}", self.label, outcome.reason);
        let r = &self.recorder;
        if outcome.result != VerificationResult::Valid {
            return r.unauthenticated(outcome);
        }
        tracing::info!(stream = %outcome.stream, local = %outcome.local, remote = %outcome.remote, "{}", outcome.reason);
        if let Err(e) = r.store.add_outcome(&outcome) {
            tracing::error!("store: {e}");
        }
        let _ = r.events.send(Event::Verification { outcome });
    }

    fn pending(&self, domain: &Domain) {
        tracing::error!("{}: asked approval for {domain}; nothing on it needs any", self.label);
    }

    fn closed(&self, entry: &ConnEntry, reason: &str) {
        let r = &self.recorder;
        r.table.close(entry, reason);
        // Only streams that authenticated reach the history on disk.
        if entry.snapshot().pairs.iter().any(|p| p.status == PairStatus::Valid)
            && let Err(e) = r.store.add_history(&entry.snapshot())
        {
            tracing::error!("store: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(remote: &str, reason: &str) -> VerificationOutcome {
        VerificationOutcome {
            time_ms: 1,
            stream: "s".into(),
            direction: Direction::In,
            local: "a.example".into(),
            remote: remote.into(),
            method: AuthMethod::SaslExternal,
            result: VerificationResult::Invalid,
            reason: reason.into(),
            peer_addr: Some("127.0.0.1:1".into()),
        }
    }

    /// A certificate is kept only for an outcome that authenticated the remote domain by it,
    /// escaped and clipped whatever the caller passed.
    #[test]
    fn only_authentication_by_certificate_keeps_one() {
        let info = PeerCertInfo {
            subject: format!("CN=a\x1b[2J{}", "s".repeat(5000)),
            issuer: "CN=Peer\nCA".into(),
            names: vec![],
            not_after: "x".into(),
            not_after_s: Some(1_800_000_000),
            fingerprint_sha256: "AB".into(),
        };
        let o = |method, direction, result| VerificationOutcome { method, direction, result, time_ms: 9, ..failure("a.example", "r") };
        use AuthMethod as M;
        use Direction::{In, Out};
        use VerificationResult::{Invalid, Valid};
        for (method, direction) in [(M::Certificate, In), (M::Certificate, Out), (M::SaslExternal, In), (M::DialbackWithValidCert, In)] {
            let c = remote_cert(&o(method, direction, Valid), &info).unwrap_or_else(|| panic!("{method:?} {direction:?}"));
            assert_eq!((c.not_after_s, c.method, c.direction, c.seen_ms), (1_800_000_000, method, direction, 9));
            assert_eq!(c.issuer, "CN=Peer\\nCA");
            assert!(!c.subject.chars().any(crate::text::is_unsafe) && c.subject.len() < 300, "{}", c.subject);
        }
        // Outbound, EXTERNAL and dialback authenticate us; a failure, or dialback, proves nothing.
        for (method, direction, result) in
            [(M::SaslExternal, Out, Valid), (M::Dialback, In, Valid), (M::Dialback, Out, Valid), (M::Certificate, In, Invalid)]
        {
            assert_eq!(remote_cert(&o(method, direction, result), &info), None, "{method:?} {direction:?} {result:?}");
        }
        assert_eq!(remote_cert(&o(M::Certificate, In, Valid), &PeerCertInfo { not_after_s: None, ..info }), None);
    }

    /// A domain the policy refuses may still prove itself by certificate (a certificate
    /// valid for a second domain on an allowed stream): the outcome is recorded, but its
    /// certificate is not kept for the expiry forecast, nor announced.
    #[tokio::test]
    async fn a_refused_domain_keeps_no_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let policy = Arc::new(Policy::load(store.clone(), crate::policy::Mode::Open).unwrap());
        let events = crate::events::bus::channel(crate::events::bus::Backlog { entries: 64, bytes: 1 << 20 });
        let budget = crate::table::TranscriptBudget::new(10, 1 << 16, 1 << 20);
        let table = Arc::new(ConnTable::new(events.clone(), (10, 1 << 20), budget));
        let r = Recorder { store, policy: policy.clone(), events, table, unauthenticated: Mutex::new(OutcomeRing::new(1 << 20)) };
        let info = Arc::new(PeerCertInfo {
            subject: "CN=x".into(),
            issuer: "CN=CA".into(),
            names: vec![],
            not_after: "x".into(),
            not_after_s: Some(1_800_000_000),
            fingerprint_sha256: "AB".into(),
        });
        let valid = |remote: &str| VerificationOutcome {
            method: AuthMethod::DialbackWithValidCert,
            result: VerificationResult::Valid,
            ..failure(remote, "the certificate is valid")
        };
        let spam = Domain::parse("spam.example").unwrap();
        policy.apply(&spam, crate::policy::Change::Blacklist { source: "operator".into() }, "test", Some("spam")).await.unwrap();
        r.record_outcome(valid("spam.example"), Some(info.clone()));
        r.record_outcome(valid("friend.example"), Some(info));
        assert_eq!(policy.record("spam.example").unwrap().cert, None, "refused: no certificate kept");
        assert!(policy.record("spam.example").unwrap().last_verification.is_some(), "the outcome itself is recorded");
        assert_eq!(policy.record("friend.example").unwrap().cert.map(|c| c.not_after_s), Some(1_800_000_000));
    }

    #[test]
    fn the_unauthenticated_ring_is_bounded_in_bytes_as_well_as_in_entries() {
        let mut ring = OutcomeRing::new(256 * 1024);
        let name = "n".repeat(30_000);
        for i in 0..1200 {
            ring.push(failure(&format!("{i}.example"), &format!("certificate names {name}, {name}")));
        }
        let (n, bytes) = ring.usage();
        assert!(bytes <= 256 * 1024, "{bytes}");
        // Reasons are clipped, so a useful number still fits.
        assert!(n >= 100, "{n} kept");
        assert!(ring.iter().all(|o| o.reason.len() < RING_REASON + 32));
        assert_eq!(ring.iter().last().unwrap().remote, "1199.example", "the newest kept");
        // A huge remote name costs its size: fewer fit, the bytes stay bounded.
        for i in 0..100 {
            ring.push(failure(&format!("{i}.{name}"), "x"));
        }
        assert!(ring.usage().1 <= 256 * 1024 && ring.usage().0 < 10, "{:?}", ring.usage());
        // And small ones by the count (at the default budget).
        let mut ring = OutcomeRing::new(crate::config::Limits::default().unauthenticated_outcomes_bytes);
        for i in 0..5000 {
            ring.push(failure(&format!("{i}.example"), "x"));
        }
        assert_eq!(ring.usage().0, UNAUTHENTICATED_RING);
    }
}
