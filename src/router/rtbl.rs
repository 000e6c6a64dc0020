//! The router's two real-time blocklist hooks, both absent (and free) unless `[[rtbl]]`
//! feeds are configured:
//!
//! - [`FeedInbox`]: stanzas addressed to the subscriber's JID (`<first hosted
//!   domain>/drawbridge-rtbl`) go to the RTBL driver over a bounded channel — never to a
//!   local service nor, in gateway mode, to the internal server (the pubsub events and
//!   answers are drawbridge's own, XEP-0060 §7.1.2 / §6.5). The router only takes stanzas
//!   a stream delivered with the proof of its pair (or made here), so the sender's domain
//!   the driver's machines check against the service is the authenticated one.
//! - [`Strangers`]: only when a feed has the `strangers` action: messages and subscription
//!   requests from a listed domain to a local user who never wrote to the sender are
//!   refused; what local users send out teaches who they know.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::domain::Domain;
use crate::policy::{Inbound, Policy};
use crate::proto::jid::Jid;
use crate::rtbl::familiar::Familiarity;
use crate::xml::Element;

/// Where stanzas to the subscriber's JID go.
pub struct FeedInbox {
    /// The first hosted domain (the JID's domainpart).
    domain: Domain,
    tx: mpsc::Sender<Element>,
    /// Stanzas dropped because the driver's channel was full.
    dropped: AtomicU64,
    /// When a drop was last logged (ms since the epoch), for one line a minute.
    logged_ms: AtomicU64,
}

impl FeedInbox {
    pub fn new(domain: Domain, tx: mpsc::Sender<Element>) -> FeedInbox {
        FeedInbox { domain, tx, dropped: AtomicU64::new(0), logged_ms: AtomicU64::new(0) }
    }

    /// Whether `to` is the subscriber's JID (resource compared exactly, domain normalised).
    pub fn is_for(&self, to: &str) -> bool {
        let Some(bare) = to.strip_suffix(crate::rtbl::RESOURCE).and_then(|b| b.strip_suffix('/')) else { return false };
        !bare.contains(['@', '/']) && Domain::parse(bare).is_ok_and(|d| d == self.domain)
    }

    /// Hand a stanza to the driver without waiting: a full channel drops it (counted, one
    /// log line a minute) — the stanza path never waits for the driver, and the machines'
    /// timeouts and re-syncs recover what was lost.
    pub fn offer(&self, st: Element) {
        match self.tx.try_send(st) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(st)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let now = crate::types::now_ms();
                let last = self.logged_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 60_000
                    && self.logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    tracing::warn!(
                        dropped = n,
                        "real-time blocklists: the driver is behind; dropped {} for {} ({n} dropped since start)",
                        st.describe(),
                        st.get_attr("to").unwrap_or("")
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::debug!("real-time blocklists: the driver has stopped"),
        }
    }

    /// Stanzas dropped since start (the driver's channel full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The `strangers` action on the stanza path: the policy's listings and the familiarity set.
pub struct Strangers {
    pub policy: Arc<Policy>,
    pub familiar: Arc<Familiarity>,
}

impl Strangers {
    /// A stanza from a remote `from` to a local user: the refusal's text if the `strangers`
    /// rule refuses it. The pair is hashed only when a listing asks.
    pub fn judge(&self, st: &Element, from_jid: &str, to_jid: &str) -> Option<String> {
        let inbound = match (st.name.as_ref(), st.get_attr("type")) {
            // Errors are never answered (RFC 6120 §8.3.1): not judged.
            ("message", Some("error")) => return None,
            ("message", _) => Inbound::Message,
            ("presence", Some("subscribe")) => Inbound::SubscriptionRequest,
            _ => return None,
        };
        if Jid::parse(to_jid).is_none_or(|j| j.local.is_none()) {
            return None;
        }
        let from = crate::proto::jid::domain_of(from_jid)?;
        let now = crate::types::now_ms();
        self.policy.strangers(&from, inbound, || self.familiar.knows(to_jid, from_jid, now))
    }

    /// A stanza leaving from a local user to a remote JID: the pair becomes familiar. Only
    /// what a user chose to send teaches: errors, iq results (a client answers a stranger's
    /// query by itself) and refusals of a subscription do not.
    pub fn learn(&self, st: &Element, from_jid: &str, to_jid: &str) {
        let teaches = match (st.name.as_ref(), st.get_attr("type")) {
            (_, Some("error")) => false,
            ("message", _) => true,
            ("iq", t) => matches!(t, Some("get" | "set")),
            ("presence", t) => !matches!(t, Some("unsubscribe" | "unsubscribed")),
            _ => false,
        };
        if teaches && Jid::parse(from_jid).is_some_and(|j| j.local.is_some()) {
            self.familiar.note(from_jid, to_jid, crate::types::now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscriber_jid_is_matched_exactly() {
        let (tx, _rx) = mpsc::channel(1);
        let inbox = FeedInbox::new(Domain::parse("home.test").unwrap(), tx);
        assert!(inbox.is_for("home.test/drawbridge-rtbl"));
        assert!(inbox.is_for("HOME.test/drawbridge-rtbl"));
        for no in [
            "home.test",
            "home.test/drawbridge-rtbl2",
            "u@home.test/drawbridge-rtbl",
            "other.test/drawbridge-rtbl",
            "home.test/Drawbridge-rtbl",
        ] {
            assert!(!inbox.is_for(no), "{no}");
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts() {
        let (tx, mut rx) = mpsc::channel(1);
        let inbox = FeedInbox::new(Domain::parse("home.test").unwrap(), tx);
        let st = Element::new("message", crate::xml::ns::SERVER).attr("to", "home.test/drawbridge-rtbl");
        inbox.offer(st.clone());
        inbox.offer(st.clone());
        assert_eq!(inbox.dropped(), 1);
        assert!(rx.try_recv().is_ok());
    }
}
