//! Looks behind the API for tests: what the store persisted, the secret keys are derived
//! from, and ways to stage a situation (a driver's observation, a used-up limit, what a
//! real-time blocklist's subscriber persists and applies).
//! Not for operators: everything they may do is a [`super::Request`].

use super::Engine;
use crate::events::VerificationOutcome;
use crate::policy::DomainRecord;

/// [`Engine::testing`].
pub struct Testing<'a>(&'a Engine);

impl Engine {
    /// See [`Testing`].
    #[doc(hidden)]
    pub fn testing(&self) -> Testing<'_> {
        Testing(self)
    }
}

impl Testing<'_> {
    /// Verification outcomes as persisted (without the unauthenticated ring).
    pub fn stored_outcomes(&self, domain: Option<&str>, limit: usize) -> Vec<VerificationOutcome> {
        self.0.shared.store.recent_outcomes(domain, limit).expect("the store reads")
    }

    /// A dry run in progress, as far as the next one is concerned, until the permit is dropped.
    pub fn hold_preview(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.0.shared.previews.clone().try_acquire_owned().expect("no dry run in progress")
    }

    /// Domain records as persisted.
    pub fn stored_domains(&self) -> Vec<DomainRecord> {
        self.0.shared.store.domains().expect("the store reads")
    }

    /// The dialback secret (keys derive from it).
    pub fn dialback_secret(&self) -> &[u8] {
        &self.0.shared.secret
    }

    /// SHA-256 fingerprint of the certificate presented now.
    pub fn certificate_sha256(&self) -> String {
        self.0.shared.tls.get().our_cert.fingerprint_sha256.clone()
    }

    /// This node goes silent to the others (as a hung process would): its publisher stops,
    /// its heartbeat ages, its published streams stay in the shared store.
    pub fn stop_heartbeat(&self) {
        self.0.shared.heartbeat.cancel();
    }

    /// An outcome as a stream driver reports it.
    pub fn record_outcome(&self, outcome: VerificationOutcome) {
        self.0.shared.recorder.record_outcome(outcome, None)
    }

    /// A real-time blocklist feed's change as its subscriber makes it: persisted, applied to
    /// the policy (feeds are the configured ones: `feed` names one of `[[rtbl]]`), and the
    /// domains whose hold it lifted announced.
    pub fn rtbl_change(&self, feed: &crate::rtbl::FeedKey, change: &crate::rtbl::Change) {
        let shared = &self.0.shared;
        let settings = shared.settings.rtbl.iter().find(|f| &f.key() == feed).expect("a configured feed");
        shared.store.rtbl_apply(feed, change).expect("the store writes");
        for record in shared.policy.apply_rtbl(settings, change) {
            let _ = shared.events.send(crate::events::Event::DomainChanged { record });
        }
    }

    /// A feed's status as its subscriber stores and announces it.
    pub fn rtbl_put_status(&self, status: &crate::rtbl::FeedStatus) {
        self.0.shared.store.rtbl_put_status(status).expect("the store writes");
        let _ = self.0.shared.events.send(crate::events::Event::Feed { status: status.clone() });
    }

    /// Hold one `limits.max_outbound` slot until the guard is dropped.
    pub fn hold_outbound_slot(&self) -> crate::limits::OutboundSlot {
        self.0.shared.gauges.outbound(&self.0.shared.settings.limits).expect("an outbound slot is free")
    }

    /// The real-time blocklist listings in force for a domain.
    pub fn rtbl_listings(&self, domain: &str) -> Vec<crate::policy::Listed> {
        self.0.shared.policy.listings(domain)
    }

    /// A feed's records as persisted (retracted ones included).
    pub fn rtbl_records(&self, service: &str, node: &str) -> Vec<crate::store::rtbl::RtblRecord> {
        let key = crate::rtbl::FeedKey { service: service.into(), node: node.into() };
        self.0.shared.store.rtbl_records(&key).expect("the store reads")
    }

    /// A feed's status as persisted.
    pub fn rtbl_status(&self, service: &str, node: &str) -> Option<crate::rtbl::FeedStatus> {
        let key = crate::rtbl::FeedKey { service: service.into(), node: node.into() };
        self.0.shared.store.rtbl_status(&key).expect("the store reads")
    }

    /// Stanzas for the RTBL driver the router dropped (its channel full).
    pub fn rtbl_inbox_drops(&self) -> u64 {
        self.0.shared.router.feed_drops()
    }

    /// Stanzas to the RTBL subscriber's JID from no service's domain, dropped by the router.
    pub fn rtbl_inbox_foreign(&self) -> u64 {
        self.0.shared.router.feed_foreign()
    }
}
