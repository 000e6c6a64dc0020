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

/// What the router hands the RTBL driver.
#[derive(Debug)]
pub enum ToDriver {
    /// A stanza to the subscriber's JID.
    Stanza(Element),
    /// Our outbound stream `stream` to a service's domain authenticated the pair (first
    /// hosted domain, `remote`): a new one is a reconnect, after which the feeds re-sync
    /// (events published while the link was down are never re-sent).
    Authorised { remote: Domain, stream: Arc<str> },
}

/// Where stanzas to the subscriber's JID go.
pub struct FeedInbox {
    /// The first hosted domain (the JID's domainpart).
    domain: Domain,
    /// The services' domains (whose outbound streams are followed).
    services: Vec<Domain>,
    tx: mpsc::Sender<ToDriver>,
    /// Stanzas dropped because the driver's channel was full.
    dropped: AtomicU64,
    /// When a drop was last logged (ms since the epoch), for one line a minute.
    logged_ms: AtomicU64,
}

impl FeedInbox {
    pub fn new(domain: Domain, services: Vec<Domain>, tx: mpsc::Sender<ToDriver>) -> FeedInbox {
        FeedInbox { domain, services, tx, dropped: AtomicU64::new(0), logged_ms: AtomicU64::new(0) }
    }

    /// An outbound stream authenticated (`local`, `remote`): told to the driver when it is
    /// the subscriber's domain to a service's (a comparison otherwise; no event is built).
    pub fn authorised(&self, local: &Domain, remote: &Domain, stream: &str) {
        if *local == self.domain && self.services.contains(remote) {
            self.send(ToDriver::Authorised { remote: remote.clone(), stream: stream.into() });
        }
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
        self.send(ToDriver::Stanza(st))
    }

    fn send(&self, m: ToDriver) {
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let now = crate::types::now_ms();
                let last = self.logged_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 60_000
                    && self.logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    let what = match &m {
                        ToDriver::Stanza(st) => st.describe().to_string(),
                        ToDriver::Authorised { remote, .. } => format!("the news of a new stream to {remote}"),
                    };
                    tracing::warn!(dropped = n, "real-time blocklists: the driver is behind; dropped {what} ({n} dropped since start)");
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
        let inbox = FeedInbox::new(Domain::parse("home.test").unwrap(), vec![], tx);
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
        let inbox = FeedInbox::new(Domain::parse("home.test").unwrap(), vec![Domain::parse("pubsub.test").unwrap()], tx);
        let st = Element::new("message", crate::xml::ns::SERVER).attr("to", "home.test/drawbridge-rtbl");
        inbox.offer(st.clone());
        inbox.offer(st.clone());
        assert_eq!(inbox.dropped(), 1);
        assert!(matches!(rx.try_recv(), Ok(ToDriver::Stanza(_))));
        let d = |s: &str| Domain::parse(s).unwrap();
        inbox.authorised(&d("home.test"), &d("other.test"), "s1");
        inbox.authorised(&d("other.test"), &d("pubsub.test"), "s1");
        assert!(rx.try_recv().is_err(), "not the subscriber's stream to a service");
        inbox.authorised(&d("home.test"), &d("pubsub.test"), "s2");
        assert!(matches!(rx.try_recv(), Ok(ToDriver::Authorised { remote, stream }) if remote == d("pubsub.test") && &*stream == "s2"));
    }

    /// Links recorded by pair, their receivers kept (a test plays the streams).
    struct Pairs(std::sync::Mutex<Vec<((Domain, Domain), super::super::queue::QueueRx)>>);
    impl super::super::Opener for &'static Pairs {
        fn open(&self, l: &Domain, r: &Domain) -> Result<super::super::Link, super::super::Refusal> {
            let (tx, rx) = super::super::queue::queue(1_000, 100_000);
            let mut v = self.0.lock().unwrap();
            v.push(((l.clone(), r.clone()), rx));
            let kind = if l.as_str() == "home.test" { super::super::LinkKind::S2sOutbound } else { super::super::LinkKind::Internal };
            Ok(super::super::Link { kind, stream: format!("s{}", v.len()).into(), stanzas: tx, verifies: None })
        }
    }

    impl Pairs {
        /// The ids queued on the link of (local, remote), taken.
        fn taken(&self, l: &str, r: &str) -> Vec<String> {
            let mut v = self.0.lock().unwrap();
            let Some((_, rx)) = v.iter_mut().find(|((a, b), _)| a.as_str() == l && b.as_str() == r) else { return Vec::new() };
            std::iter::from_fn(|| rx.try_recv()).map(|st| st.get_attr("id").unwrap_or("").to_owned()).collect()
        }
    }

    fn st(name: &str, id: &str, from: &str, to: &str, kind: Option<&str>) -> Element {
        let mut el = Element::new(name, crate::xml::ns::SERVER).attr("id", id).attr("from", from).attr("to", to);
        if let Some(k) = kind {
            el = el.attr("type", k);
        }
        el
    }

    /// Gateway mode: what reaches the subscriber's JID goes to the driver, never to the
    /// internal server; a listed domain's message to a user of the internal server is
    /// bounced before the internal link unless the user wrote to the sender, and only
    /// messages and subscription requests are judged.
    #[tokio::test]
    async fn in_gateway_mode_the_hooks_act_before_the_internal_server() {
        use crate::rtbl::familiar::FamiliarSettings;
        use crate::rtbl::report::Listing;
        use crate::rtbl::{Action, Change, Entry, FeedSettings};
        let d = |s: &str| Domain::parse(s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let policy = Arc::new(Policy::load(store, crate::policy::Mode::Open).unwrap());
        let feed = FeedSettings { service: "pubsub.test".into(), node: "n".into(), action: Action::Strangers, max_entries: 10 };
        let listing = Listing { reason: None, text: None, block_strangers: false };
        policy.apply_rtbl(&feed, &Change::Added(Entry { domain: d("spam.test"), listing, first_seen_ms: 1, last_seen_ms: 1 }));
        let (tx, mut rx) = mpsc::channel(4);
        let familiar = Arc::new(Familiarity::new([1; 32], FamiliarSettings::default()));
        let router = super::super::Router::new(vec![d("home.test")], policy.clone(), std::time::Duration::from_secs(5))
            .with_gateway(true)
            .with_feeds(FeedInbox::new(d("home.test"), vec![d("pubsub.test")], tx))
            .with_strangers(Strangers { policy, familiar: familiar.clone() });
        let pairs: &'static Pairs = Box::leak(Box::new(Pairs(std::sync::Mutex::new(Vec::new()))));
        router.set_opener(Box::new(pairs));

        assert!(router.route(st("message", "ev", "pubsub.test", "home.test/drawbridge-rtbl", None)).is_none());
        assert!(matches!(rx.try_recv(), Ok(ToDriver::Stanza(st)) if st.get_attr("id") == Some("ev")));
        assert!(pairs.0.lock().unwrap().is_empty(), "nothing for the internal server");

        assert!(router.route(st("message", "m1", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert!(router.route(st("presence", "p1", "bob@spam.test", "alice@home.test", Some("subscribe"))).is_none());
        assert!(router.route(st("presence", "p2", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert_eq!(pairs.taken("home.test", "spam.test"), ["m1", "p1"], "bounced to the sender");
        assert_eq!(pairs.taken("spam.test", "home.test"), ["p2"], "only the presence reached the internal server");
        assert!(familiar.is_empty(), "a bounce teaches nothing");

        // Alice's iq result to a stranger teaches nothing; her message does.
        assert!(router.route(st("iq", "r1", "alice@home.test/phone", "bob@spam.test/x", Some("result"))).is_none());
        assert!(router.route(st("message", "m2", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert!(router.route(st("message", "a1", "alice@home.test/phone", "bob@spam.test", None)).is_none());
        assert!(router.route(st("message", "m3", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert_eq!(pairs.taken("home.test", "spam.test"), ["r1", "m2", "a1"]);
        assert_eq!(pairs.taken("spam.test", "home.test"), ["m3"]);
        assert_eq!(familiar.len(), 1);
    }
}
