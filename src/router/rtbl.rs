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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::Domain;
use crate::policy::{Inbound, Policy};
use crate::proto::jid::Jid;
use crate::rtbl::familiar::Familiarity;
use crate::xml::Element;

/// The outbound streams authorised to each service's domain, counted, for the driver: a
/// second one is a reconnect, after which the feeds re-sync (events published while the
/// link was down are never re-sent). Apart from the stanza channel, so that a flood of
/// stanzas to the subscriber's JID cannot push this news out.
#[derive(Default)]
pub struct Reconnects {
    count: Mutex<HashMap<Domain, u64>>,
    notify: Notify,
}

impl Reconnects {
    fn authorised(&self, remote: &Domain) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()).entry(remote.clone()).or_default() += 1;
        self.notify.notify_one();
    }

    /// Wait until a stream was authorised since the last call (at once if one was).
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// How many outbound streams each service's domain has had authorised since start.
    pub fn counts(&self) -> Vec<(Domain, u64)> {
        self.count.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(d, n)| (d.clone(), *n)).collect()
    }
}

/// Where stanzas to the subscriber's JID go.
pub struct FeedInbox {
    /// The first hosted domain (the JID's domainpart).
    domain: Domain,
    /// The services' domains: the only senders heard, and whose outbound streams are followed.
    services: Vec<Domain>,
    /// To the driver, bounded in count and bytes.
    tx: super::queue::QueueTx,
    reconnects: Arc<Reconnects>,
    /// Stanzas dropped because the driver's channel was full.
    dropped: AtomicU64,
    /// Stanzas from a domain that is no service's, dropped before the driver.
    foreign: AtomicU64,
    /// When a drop was last logged (ms since the epoch), for one line a minute.
    logged_ms: AtomicU64,
}

impl FeedInbox {
    pub fn new(domain: Domain, services: Vec<Domain>, tx: super::queue::QueueTx, reconnects: Arc<Reconnects>) -> FeedInbox {
        FeedInbox { domain, services, tx, reconnects, dropped: AtomicU64::new(0), foreign: AtomicU64::new(0), logged_ms: AtomicU64::new(0) }
    }

    /// A federation stream authenticated the pair (`local`, `remote`), either way: counted
    /// for the driver when it is the subscriber's domain and a service's (a comparison
    /// otherwise). Events come on the service's stream to us, answers too; our requests go
    /// on ours.
    pub fn authorised(&self, local: &Domain, remote: &Domain) {
        if *local == self.domain && self.services.contains(remote) {
            self.reconnects.authorised(remote);
        }
    }

    /// Whether `to` is the subscriber's JID (resource compared exactly, domain normalised).
    pub fn is_for(&self, to: &str) -> bool {
        let Some(bare) = to.strip_suffix(crate::rtbl::RESOURCE).and_then(|b| b.strip_suffix('/')) else { return false };
        !bare.contains(['@', '/']) && Domain::parse(bare).is_ok_and(|d| d == self.domain)
    }

    /// A stanza to the subscriber's JID; the reply to route, if any. A request is answered
    /// `service-unavailable` (the JID is no client: RFC 6120 §10.5.2, a `domain/resource`
    /// the server does not handle). Only what a subscriber can be sent goes on — answers to
    /// its requests (ids `rtbl-…`) and pubsub event messages, from a service's domain; the
    /// rest is dropped and counted before it costs the driver anything. It goes to the
    /// driver without waiting, bounded in count and bytes: beyond, it is dropped (counted,
    /// one log line a minute) — the stanza path never waits for the driver, and the
    /// machines' timeouts and re-syncs recover what was lost.
    pub fn offer(&self, st: Element) -> Option<Element> {
        let kind = st.get_attr("type");
        if st.name == "iq" && matches!(kind, Some("get" | "set")) {
            return crate::proto::stanza::error_reply(&st, crate::proto::stanza::StanzaErrorCondition::ServiceUnavailable, None);
        }
        let expected = match st.name.as_ref() {
            "iq" => st.get_attr("id").is_some_and(|id| id.starts_with("rtbl-")),
            "message" => kind != Some("error") && st.elements().any(|e| e.is("event", crate::rtbl::machine::NS_PUBSUB_EVENT)),
            _ => false,
        };
        if !expected || !st.get_attr("from").and_then(crate::proto::jid::domain_of).is_some_and(|d| self.services.contains(&d)) {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self.tx.try_send(st) {
            Ok(()) => {}
            Err(super::queue::TrySendError::Full(st)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let now = crate::types::now_ms();
                let last = self.logged_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 60_000
                    && self.logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    tracing::warn!(
                        dropped = n,
                        "real-time blocklists: the driver is behind; dropped {} ({n} dropped since start)",
                        st.describe()
                    );
                }
            }
            Err(super::queue::TrySendError::Closed(_)) => tracing::debug!("real-time blocklists: the driver has stopped"),
        }
        None
    }

    /// Stanzas dropped since start (the driver's channel full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stanzas dropped since start because no service sent them, or they are nothing a
    /// subscriber is sent.
    pub fn foreign(&self) -> u64 {
        self.foreign.load(Ordering::Relaxed)
    }
}

/// The `strangers` action on the stanza path: the policy's listings and the familiarity set.
pub struct Strangers {
    pub policy: Arc<Policy>,
    pub familiar: Arc<Familiarity>,
}

impl Strangers {
    /// A stanza from a remote `from` to a local user: the refusal's text if the `strangers`
    /// rule refuses it. The pair is hashed only when a listing asks. An error message is
    /// judged too (a body rides on it as well as on a chat message); the caller drops it
    /// rather than answer it (RFC 6120 §8.3.1).
    pub fn judge(&self, st: &Element, from_jid: &str, to_jid: &str) -> Option<String> {
        let inbound = match (st.name.as_ref(), st.get_attr("type")) {
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
    /// what the user chose to say teaches: a message with a body (not an error; receipts,
    /// markers and chat states carry none), a subscription request or approval, and — from
    /// the internal server's users only — a groupchat message or a directed presence to a
    /// full JID (joining a room). What a client sends by itself — iqs such as the disco query
    /// a stranger's presence with caps triggers, answers, receipts — does not, or a stranger
    /// could make himself known. Nor does what a component sends by itself
    /// (`by_component`): a room's occupant presence and relayed groupchat go to whoever
    /// joined it.
    pub fn learn(&self, st: &Element, from_jid: &str, to_jid: &str, by_component: bool) {
        let teaches = match (st.name.as_ref(), st.get_attr("type")) {
            ("message", Some("error")) => false,
            ("message", Some("groupchat")) if by_component => false,
            ("message", _) => st.elements().any(|c| c.name == "body"),
            ("presence", Some("subscribe" | "subscribed")) => true,
            ("presence", None) => !by_component && to_jid.contains('/'),
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
        let (tx, _rx) = super::super::queue::queue(1, 1 << 20);
        let inbox = FeedInbox::new(Domain::parse("home.test").unwrap(), vec![], tx, Arc::default());
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

    fn inbox(cap: usize) -> (FeedInbox, super::super::queue::QueueRx, Arc<Reconnects>) {
        let (tx, rx) = super::super::queue::queue(cap, 1 << 20);
        let reconnects = Arc::new(Reconnects::default());
        let d = |s: &str| Domain::parse(s).unwrap();
        (FeedInbox::new(d("home.test"), vec![d("pubsub.test")], tx, reconnects.clone()), rx, reconnects)
    }

    fn to_me(from: &str) -> Element {
        Element::new("message", crate::xml::ns::SERVER)
            .attr("from", from)
            .attr("to", "home.test/drawbridge-rtbl")
            .child(Element::new("event", crate::rtbl::machine::NS_PUBSUB_EVENT))
    }

    #[test]
    fn a_full_channel_drops_and_counts() {
        let (inbox, mut rx, _) = inbox(1);
        assert!(inbox.offer(to_me("pubsub.test")).is_none());
        assert!(inbox.offer(to_me("pubsub.test")).is_none());
        assert_eq!(inbox.dropped(), 1);
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
    }

    /// Only the services' domains reach the driver: a stranger's flood of forged answers
    /// costs a counter, never a slot of the channel (where the service's answers wait).
    #[test]
    fn strangers_never_reach_the_driver_and_requests_are_refused() {
        let (inbox, mut rx, _) = inbox(2);
        for from in ["evil.test", "u@evil.test/r", "pubsub.test.evil.test", ""] {
            for _ in 0..1000 {
                assert!(inbox.offer(to_me(from)).is_none());
            }
        }
        assert_eq!(inbox.foreign(), 4000);
        assert_eq!((inbox.dropped(), rx.try_recv().is_none()), (0, true));
        assert!(
            inbox.offer(to_me("pubsub.test/x")).is_none(),
            "a resource of the service's domain reaches the machine, which judges the JID"
        );
        assert!(rx.try_recv().is_some());
        // Nothing a subscriber is sent, even from the service: a message without an event,
        // an answer to no request of ours, an error message.
        let plain =
            Element::new("message", crate::xml::ns::SERVER).attr("from", "pubsub.test").child(Element::new("body", crate::xml::ns::SERVER));
        let stray = Element::new("iq", crate::xml::ns::SERVER).attr("type", "result").attr("id", "x1").attr("from", "pubsub.test");
        let error = to_me("pubsub.test").attr("type", "error");
        for st in [plain, stray, error] {
            assert!(inbox.offer(st).is_none());
        }
        assert_eq!(inbox.foreign(), 4003);
        assert!(rx.try_recv().is_none());
        let get = Element::new("iq", crate::xml::ns::SERVER)
            .attr("type", "get")
            .attr("id", "q")
            .attr("from", "u@evil.test/r")
            .attr("to", "home.test/drawbridge-rtbl");
        let reply = inbox.offer(get).expect("an iq request is answered");
        assert_eq!((reply.get_attr("type"), reply.get_attr("to"), reply.get_attr("id")), (Some("error"), Some("u@evil.test/r"), Some("q")));
        assert!(reply.elements().any(|e| e.elements().any(|c| c.name == "service-unavailable")), "{reply:?}");
        assert!(rx.try_recv().is_none());
    }

    /// The news of a stream to a service is counted apart from the stanzas: a full channel
    /// does not lose it.
    #[test]
    fn streams_to_the_services_are_counted_apart() {
        let (inbox, _rx, reconnects) = inbox(1);
        assert!(inbox.offer(to_me("pubsub.test")).is_none());
        let d = |s: &str| Domain::parse(s).unwrap();
        inbox.authorised(&d("home.test"), &d("other.test"));
        inbox.authorised(&d("other.test"), &d("pubsub.test"));
        assert!(reconnects.counts().is_empty(), "not the subscriber's stream to a service");
        inbox.authorised(&d("home.test"), &d("pubsub.test"));
        inbox.authorised(&d("home.test"), &d("pubsub.test"));
        assert_eq!(reconnects.counts(), [(d("pubsub.test"), 2)]);
    }

    /// Only what a user chose to say makes a stranger familiar.
    #[test]
    fn what_a_client_sends_by_itself_teaches_nothing() {
        use crate::rtbl::familiar::FamiliarSettings;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let policy = Arc::new(Policy::load(store, crate::policy::Mode::Open).unwrap());
        let s = Strangers { policy, familiar: Arc::new(Familiarity::new([1; 32], FamiliarSettings::default())) };
        let (me, them) = ("alice@home.test/phone", "bob@spam.test/x");
        let msg = |kind: Option<&str>, child: &str| {
            let mut m = Element::new("message", crate::xml::ns::SERVER).child(Element::new(child, crate::xml::ns::SERVER));
            if let Some(k) = kind {
                m = m.attr("type", k);
            }
            m
        };
        let pres = |kind: Option<&str>| {
            let p = Element::new("presence", crate::xml::ns::SERVER);
            if let Some(k) = kind { p.attr("type", k) } else { p }
        };
        let iq = |kind: &str| Element::new("iq", crate::xml::ns::SERVER).attr("type", kind);
        for (st, to) in [
            (iq("get"), them),
            (iq("set"), them),
            (iq("result"), them),
            (msg(None, "received"), them),
            (msg(Some("chat"), "displayed"), them),
            (msg(Some("chat"), "active"), them),
            (msg(Some("error"), "body"), them),
            (pres(None), "bob@spam.test"),
            (pres(Some("probe")), them),
            (pres(Some("unsubscribed")), them),
        ] {
            s.learn(&st, me, to, false);
            assert!(s.familiar.is_empty(), "{st:?} to {to}");
        }
        for (st, to) in
            [(msg(Some("chat"), "body"), them), (pres(Some("subscribe")), "carol@spam.test"), (pres(None), "room@conf.spam.test/alice")]
        {
            let before = s.familiar.len();
            s.learn(&st, me, to, false);
            assert_eq!(s.familiar.len(), before + 1, "{st:?} to {to}");
        }
        // A room at a component: its occupant presence to whoever joined, and the groupchat
        // it relays, teach nothing.
        let room = "room@muc.home.test/alice";
        for st in [pres(None), msg(Some("groupchat"), "body")] {
            s.learn(&st, room, "mallory@spam.test/x", true);
        }
        assert_eq!(s.familiar.len(), 3, "nothing learnt from the component's own stanzas");
    }

    /// Links recorded by pair, their receivers kept (a test plays the streams).
    type PairQueue = ((Domain, Domain), super::super::queue::QueueRx<super::super::Routed>);
    struct Pairs(std::sync::Mutex<Vec<PairQueue>>);
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
            std::iter::from_fn(|| rx.try_recv()).map(|r| r.stanza.get_attr("id").unwrap_or("").to_owned()).collect()
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
        let (tx, mut rx) = super::super::queue::queue(4, 1 << 20);
        let familiar = Arc::new(Familiarity::new([1; 32], FamiliarSettings::default()));
        let reconnects = Arc::new(Reconnects::default());
        let router = super::super::Router::new(vec![d("home.test")], policy.clone(), std::time::Duration::from_secs(5))
            .with_gateway(true)
            .with_feeds(FeedInbox::new(d("home.test"), vec![d("pubsub.test")], tx, reconnects))
            .with_strangers(Strangers { policy, familiar: familiar.clone() });
        let pairs: &'static Pairs = Box::leak(Box::new(Pairs(std::sync::Mutex::new(Vec::new()))));
        router.set_opener(Box::new(pairs));

        assert!(
            router
                .route(
                    st("message", "ev", "pubsub.test", "home.test/drawbridge-rtbl", None)
                        .child(Element::new("event", crate::rtbl::machine::NS_PUBSUB_EVENT))
                )
                .is_none()
        );
        assert!(matches!(rx.try_recv(), Some(st) if st.get_attr("id") == Some("ev")));
        assert!(pairs.0.lock().unwrap().is_empty(), "nothing for the internal server");

        assert!(router.route(st("message", "m1", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert!(router.route(st("presence", "p1", "bob@spam.test", "alice@home.test", Some("subscribe"))).is_none());
        assert!(router.route(st("presence", "p2", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert_eq!(pairs.taken("home.test", "spam.test"), ["m1", "p1"], "bounced to the sender");
        assert_eq!(pairs.taken("spam.test", "home.test"), ["p2"], "only the presence reached the internal server");
        assert!(familiar.is_empty(), "a bounce teaches nothing");
        // An error message is judged too, and dropped: an error is never answered.
        assert!(router.route(st("message", "e1", "bob@spam.test/x", "alice@home.test", Some("error"))).is_none());
        assert!(pairs.taken("home.test", "spam.test").is_empty() && pairs.taken("spam.test", "home.test").is_empty());

        // Alice's iq result to a stranger teaches nothing; her message does.
        assert!(router.route(st("iq", "r1", "alice@home.test/phone", "bob@spam.test/x", Some("result"))).is_none());
        assert!(router.route(st("message", "m2", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert!(
            router
                .route(
                    st("message", "a1", "alice@home.test/phone", "bob@spam.test", None).child(Element::new("body", crate::xml::ns::SERVER))
                )
                .is_none()
        );
        assert!(router.route(st("message", "m3", "bob@spam.test/x", "alice@home.test", None)).is_none());
        assert_eq!(pairs.taken("home.test", "spam.test"), ["r1", "m2", "a1"]);
        assert_eq!(pairs.taken("spam.test", "home.test"), ["m3"]);
        assert_eq!(familiar.len(), 1);
    }
}
