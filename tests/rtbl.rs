//! Real-time blocklists end to end (issue 18), in process: drawbridge (`home.test`) follows
//! a pubsub service (`pubsub.test`) played here over real s2s on loopback — TLS, dialback
//! both ways, a real sled store in a temp dir. The service answers the items request, the
//! subscribe, publishes, retracts, purges, deletes, drops the link, answers late or with an
//! error; each action's effect is checked where it acts (streams, the approval inbox, the
//! strangers rule at a component's users), and a restart starts warm from the store.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use drawbridge::config::Settings;
use drawbridge::engine::events::Event;
use drawbridge::engine::{Engine, Request};
use drawbridge::proto::dialback::{Answer, DbElement, result_answer, result_request, verify_answer};
use drawbridge::proto::machine::component::handshake_digest;
use drawbridge::proto::ns;
use drawbridge::proto::stream::StreamErrorCondition;
use drawbridge::rtbl::machine::{NS_PUBSUB, NS_PUBSUB_EVENT};
use drawbridge::rtbl::{FeedState, FeedStatus, Timing};
use drawbridge::xml::{Element, Frame};
use tokio::net::TcpListener;

const HOME: &str = "home.test";
const SERVICE: &str = "pubsub.test";
const NODE: &str = "spam_source_domains";
const ME: &str = "home.test/drawbridge-rtbl";
const COMP: &str = "comp.home.test";
const COMP_SECRET: &str = "a component secret of some length";

/// Short enough that a test sees a timeout or a back-off happen, long enough that a loaded
/// machine answers in time when it should.
fn timing() -> Timing {
    Timing {
        request_timeout: scaled(Duration::from_secs(3)),
        resync_every: Duration::from_secs(3600),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
    }
}

fn feed(action: &str) -> String {
    format!("[[rtbl]]\nservice = \"{SERVICE}\"\naction = \"{action}\"\n")
}

/// drawbridge for `home.test` on `dir`, with the test's RTBL timing. Not in DNS: the
/// service reaches it by address, and drawbridge reaches the service through DNS.
async fn start(dns: &Dns, dir: tempfile::TempDir, extra: &str) -> TestServer {
    let text = config_text(HOME, dir.path(), dns.addr, extra);
    let mut settings = Settings::parse(&text, &dir.path().join("drawbridge.toml")).unwrap();
    settings.rtbl_timing = timing();
    let engine = Engine::start(settings).await.unwrap();
    let addr = engine.listening().federation[0];
    TestServer { engine, addr, domain: HOME.to_owned(), dir }
}

/// A remote server played here, federated with drawbridge for (`local`, `domain`): our
/// stream into drawbridge (`to_server`) and drawbridge's outbound stream to us
/// (`from_server`), both authenticated by dialback in whatever order drawbridge asks;
/// stanzas that arrive meanwhile are kept.
struct Remote {
    to_server: RawPeer,
    from_server: RawPeer,
    pending: VecDeque<Element>,
}

async fn federate(addr: SocketAddr, listener: &TcpListener, domain: &str, local: &str) -> Remote {
    let mut to_server = RawPeer::connect(addr).await;
    to_server.open(domain, local).await;
    let (h, _) = to_server.starttls(domain, local).await;
    let sid = h.id.unwrap();
    to_server.send_el(&result_request(domain, local, "k")).await;
    let (mut from_server, _) = accept_as_server(listener, domain).await;
    let mut pending = VecDeque::new();
    let (mut verified, mut answered) = (false, false);
    while !(verified && answered) {
        let el = from_server.next_el().await.expect("dialback from drawbridge");
        match DbElement::parse(&el) {
            Some(db) if db.verify => {
                assert_eq!(db.id.as_deref(), Some(sid.as_str()));
                from_server.send_el(&verify_answer(domain, local, &sid, &Answer::Valid)).await;
                verified = true;
            }
            Some(_) => {
                from_server.send_el(&result_answer(domain, local, &Answer::Valid)).await;
                answered = true;
            }
            None if drawbridge::proto::stanza::is_stanza(&el) => pending.push_back(el),
            None => {}
        }
    }
    let (answer, _) = until_db_answer(&mut to_server, "result").await;
    assert_eq!(DbElement::parse(&answer).and_then(|d| d.answer), Some(Answer::Valid), "{}", answer.to_xml());
    Remote { to_server, from_server, pending }
}

impl Remote {
    /// The next stanza drawbridge sends us.
    async fn next(&mut self) -> Element {
        if let Some(el) = self.pending.pop_front() {
            return el;
        }
        loop {
            let el = self.from_server.next_el().await.expect("a stanza from drawbridge");
            if drawbridge::proto::stanza::is_stanza(&el) {
                return el;
            }
        }
    }

    async fn send(&mut self, el: Element) {
        self.to_server.send_el(&el).await;
    }

    /// Drop both streams at once, as a link that fails does (no closing handshake).
    fn drop_link(self) {
        drop(self);
    }
}

/// The service's side: requests it expects and what it answers.
impl Remote {
    /// The next items request for the node (XEP-0060 §6.5.2).
    async fn items_request(&mut self) -> Element {
        let iq = self.next().await;
        let items = iq.get_child("pubsub", NS_PUBSUB).and_then(|p| p.get_child("items", NS_PUBSUB));
        assert!(
            iq.get_attr("type") == Some("get") && items.is_some_and(|i| i.get_attr("node") == Some(NODE)),
            "expected an items request, got {}",
            iq.to_xml()
        );
        assert_eq!((iq.get_attr("from"), iq.get_attr("to")), (Some(ME), Some(SERVICE)));
        iq
    }

    /// Answer an items request with these item ids (XEP-0060 §6.5.3).
    async fn answer_items(&mut self, req: &Element, ids: &[&str]) {
        let mut items = Element::new("items", NS_PUBSUB).attr("node", NODE);
        for id in ids {
            items = items.child(Element::new("item", NS_PUBSUB).attr("id", *id).child(report("spam")));
        }
        let answer = reply(req, "result").child(Element::new("pubsub", NS_PUBSUB).child(items));
        self.send(answer).await;
    }

    async fn answer_error(&mut self, req: &Element, condition: &str) {
        let err = Element::new("error", ns::SERVER)
            .attr("type", "cancel")
            .child(Element::new(condition, ns::STANZA_ERRORS))
            .child(Element::new("text", ns::STANZA_ERRORS).text("not today"));
        self.send(reply(req, "error").child(err)).await;
    }

    /// The subscribe request (XEP-0060 §6.1.1), answered subscribed.
    async fn subscribe(&mut self) {
        let iq = self.next().await;
        let sub = iq.get_child("pubsub", NS_PUBSUB).and_then(|p| p.get_child("subscribe", NS_PUBSUB));
        assert!(
            iq.get_attr("type") == Some("set") && sub.is_some_and(|s| s.get_attr("node") == Some(NODE) && s.get_attr("jid") == Some(ME)),
            "expected a subscribe, got {}",
            iq.to_xml()
        );
        let sub = Element::new("subscription", NS_PUBSUB).attr("node", NODE).attr("jid", ME).attr("subscription", "subscribed");
        self.send(reply(&iq, "result").child(Element::new("pubsub", NS_PUBSUB).child(sub))).await;
    }

    /// The first sync: the items (`ids`), then the subscribe.
    async fn first_sync(&mut self, ids: &[&str]) {
        let req = self.items_request().await;
        self.answer_items(&req, ids).await;
        self.subscribe().await;
    }

    /// A notification (XEP-0060 §7.1.2) with this content of `<event/>`.
    async fn event(&mut self, from: &str, content: Element) {
        let msg = Element::new("message", ns::SERVER)
            .attr("from", from)
            .attr("to", ME)
            .attr("id", format!("ev-{}", drawbridge::engine::table::random_id()))
            .child(Element::new("event", NS_PUBSUB_EVENT).child(content));
        self.send(msg).await;
    }

    async fn publish(&mut self, ids: &[&str]) {
        let mut items = Element::new("items", NS_PUBSUB_EVENT).attr("node", NODE);
        for id in ids {
            items = items.child(Element::new("item", NS_PUBSUB_EVENT).attr("id", *id).child(report("spam")));
        }
        self.event(SERVICE, items).await;
    }

    async fn retract(&mut self, ids: &[&str]) {
        let mut items = Element::new("items", NS_PUBSUB_EVENT).attr("node", NODE);
        for id in ids {
            items = items.child(Element::new("retract", NS_PUBSUB_EVENT).attr("id", *id));
        }
        self.event(SERVICE, items).await;
    }
}

fn report(reason: &str) -> Element {
    Element::new("report", "urn:xmpp:reporting:1").attr("reason", format!("urn:xmpp:reporting:{reason}"))
}

fn reply(req: &Element, kind: &str) -> Element {
    Element::new("iq", ns::SERVER)
        .attr("type", kind)
        .attr("id", req.get_attr("id").unwrap())
        .attr("from", SERVICE)
        .attr("to", req.get_attr("from").unwrap())
}

/// A world with DNS, the service's listener published, and drawbridge following the
/// service with `action` (and `extra` config); the service linked.
struct World {
    dns: Dns,
    server: TestServer,
    listener: TcpListener,
    events: drawbridge::engine::events::bus::Receiver,
}

async fn world(action: &str, extra: &str) -> World {
    let dns = Dns::start().await;
    let listener = publish_listener(&dns, SERVICE).await;
    let server = start(&dns, tempfile::tempdir().unwrap(), &format!("{}{extra}", feed(action))).await;
    let events = server.engine.subscribe().into_events();
    World { dns, server, listener, events }
}

impl World {
    async fn link(&self) -> Remote {
        federate(self.server.addr, &self.listener, SERVICE, HOME).await
    }

    /// The next status of the feed matching `pred`.
    async fn feed_status(&mut self, what: &str, mut pred: impl FnMut(&FeedStatus) -> bool) -> FeedStatus {
        match wait_event(&mut self.events, what, |e| matches!(e, Event::Feed { status } if pred(status))).await {
            Event::Feed { status } => status,
            _ => unreachable!(),
        }
    }

    fn listed(&self, domain: &str) -> bool {
        !self.server.engine.testing().rtbl_listings(domain).is_empty()
    }

    async fn verdict(&self, domain: &str) -> String {
        domain_report(&self.server.engine, domain).await.verdict
    }
}

/// Publish, retract several ids in one event, purge, delete: each followed, persisted with
/// provenance, and the feed's state told; item ids that are not domains are counted. The
/// `flag` action refuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_retracts_purge_and_delete_are_followed_and_persisted() {
    let mut w = world("flag", "").await;
    let mut s = w.link().await;
    s.first_sync(&["a.spam.test", "b.spam.test", "not a domain"]).await;
    let st = w.feed_status("subscribed", |s| s.state == FeedState::Subscribed).await;
    assert_eq!((st.entries, st.ignored_invalid), (2, 1), "{st:?}");
    assert!(w.listed("a.spam.test") && w.listed("b.spam.test"));
    assert_eq!(w.verdict("a.spam.test").await, "allowed to federate", "flag refuses nothing");

    s.publish(&["c.spam.test"]).await;
    w.feed_status("three entries", |s| s.entries == 3).await;
    assert!(w.listed("c.spam.test"));

    s.retract(&["a.spam.test", "b.spam.test"]).await;
    w.feed_status("one entry", |s| s.entries == 1).await;
    assert!(!w.listed("a.spam.test") && !w.listed("b.spam.test") && w.listed("c.spam.test"));
    let records = w.server.engine.testing().rtbl_records(SERVICE, NODE);
    let a = records.iter().find(|r| r.domain == "a.spam.test").expect("a retracted entry keeps its provenance");
    assert!(a.retracted_ms.is_some() && a.reason.as_deref() == Some("urn:xmpp:reporting:spam"), "{a:?}");
    assert!(records.iter().any(|r| r.domain == "c.spam.test" && r.retracted_ms.is_none()));

    s.event(SERVICE, Element::new("purge", NS_PUBSUB_EVENT).attr("node", NODE)).await;
    w.feed_status("purged", |s| s.entries == 0).await;
    assert!(!w.listed("c.spam.test"));
    assert!(w.server.engine.testing().rtbl_records(SERVICE, NODE).iter().all(|r| r.retracted_ms.is_some()));

    // Delete: stale, then the sequence again after the back-off.
    s.publish(&["d.spam.test"]).await;
    w.feed_status("one entry again", |s| s.entries == 1).await;
    s.event(SERVICE, Element::new("delete", NS_PUBSUB_EVENT).attr("node", NODE)).await;
    let st = w.feed_status("stale", |s| matches!(s.state, FeedState::Stale(_))).await;
    assert_eq!(st.entries, 0);
    assert!(!w.listed("d.spam.test"));
    let stored = w.server.engine.testing().rtbl_status(SERVICE, NODE).expect("the status is persisted");
    assert!(matches!(stored.state, FeedState::Stale(ref why) if why.contains("deleted")), "{stored:?}");
    s.first_sync(&["e.spam.test"]).await;
    w.feed_status("subscribed again", |s| s.state == FeedState::Subscribed && s.entries == 1).await;
    assert!(w.listed("e.spam.test"));
}

/// The link drops; meanwhile the service publishes one domain and retracts another. When
/// the link is back (the service's stream, drawbridge's new stream to it), drawbridge
/// re-syncs and picks up both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_missed_while_the_link_was_down_are_picked_up_by_the_resync() {
    let mut w = world("flag", "").await;
    let mut s = w.link().await;
    s.first_sync(&["old.spam.test", "kept.spam.test"]).await;
    w.feed_status("subscribed", |s| s.state == FeedState::Subscribed && s.entries == 2).await;
    let mut ev = w.server.engine.subscribe().into_events();
    s.drop_link();
    wait_event(&mut ev, "drawbridge's stream to the service closed", |e| {
        matches!(e, Event::StreamClosed { stream } if stream.remote.as_deref() == Some(SERVICE) && stream.direction == drawbridge::engine::events::Direction::Out)
    })
    .await;
    // Back: drawbridge's new stream to the service makes it ask for the items again.
    let mut s = w.link().await;
    let req = s.items_request().await;
    s.answer_items(&req, &["kept.spam.test", "new.spam.test"]).await;
    w.feed_status("re-synced", |s| s.entries == 2 && s.state == FeedState::Subscribed).await;
    assert!(w.listed("new.spam.test") && w.listed("kept.spam.test") && !w.listed("old.spam.test"));
}

/// An items request answered with an error, then one answered too late: each is the feed's
/// error with its reason, retried after the back-off; the late answer is not taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_request_refused_or_answered_late_is_retried() {
    let mut w = world("flag", "").await;
    let mut s = w.link().await;
    let req = s.items_request().await;
    s.answer_error(&req, "service-unavailable").await;
    let st = w.feed_status("the error", |s| matches!(s.state, FeedState::Error(_))).await;
    assert!(matches!(&st.state, FeedState::Error(why) if why.contains("service-unavailable")), "{st:?}");
    // The retry: left unanswered past the request timeout.
    let late = s.items_request().await;
    let st = w.feed_status("the timeout", |s| matches!(&s.state, FeedState::Error(w) if w.contains("no answer"))).await;
    assert_eq!(st.entries, 0);
    s.answer_items(&late, &["late.spam.test"]).await;
    // The next retry is answered in time.
    let req = s.items_request().await;
    assert_ne!(req.get_attr("id"), late.get_attr("id"));
    s.answer_items(&req, &["ok.spam.test"]).await;
    s.subscribe().await;
    w.feed_status("subscribed", |s| s.state == FeedState::Subscribed).await;
    assert!(w.listed("ok.spam.test") && !w.listed("late.spam.test"), "the late answer was not taken");
}

/// `block`: a listed domain's live streams are closed with policy-violation naming the
/// feed, and it is refused; the operator's approve overrides the listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_closes_live_streams_and_the_operators_approve_wins() {
    let mut w = world("block", "").await;
    let mut s = w.link().await;
    s.first_sync(&[]).await;
    w.feed_status("subscribed", |s| s.state == FeedState::Subscribed).await;
    let mut spam = hand_played(&w.server, &w.dns, "spam.test").await;
    s.publish(&["spam.test"]).await;
    let e = spam.to_server.expect_condition(StreamErrorCondition::PolicyViolation).await;
    assert!(e.text.contains(SERVICE), "the reason names the feed: {e:?}");
    assert!(w.verdict("spam.test").await.starts_with("refused"), "{}", w.verdict("spam.test").await);
    change(&w.server.engine, Request::Approve { domain: "spam.test".into(), reason: None }).await;
    assert_eq!(w.verdict("spam.test").await, "allowed to federate");
    assert!(w.listed("spam.test"), "still listed; the operator decided");
    // A new stream from it federates.
    let _again = hand_played(&w.server, &w.dns, "spam.test").await;
}

/// `hold`: a listed domain that authenticates waits in the approval inbox; the retract
/// lifts only that — a domain the operator blocked stays blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_sends_to_the_inbox_and_a_retract_lifts_only_what_the_listing_caused() {
    let mut w = world("hold", "").await;
    let mut s = w.link().await;
    s.first_sync(&["held.test", "blocked.test"]).await;
    w.feed_status("subscribed", |s| s.state == FeedState::Subscribed && s.entries == 2).await;
    change(&w.server.engine, Request::Block { domain: "blocked.test".into(), for_secs: None, reason: Some("mine".into()) }).await;
    let _held = hand_played(&w.server, &w.dns, "held.test").await;
    wait_event(&mut w.events, "held.test pending", |e| {
        matches!(e, Event::DomainChanged { record } if record.domain == "held.test" && record.state == drawbridge::policy::DomainState::Pending)
    })
    .await;
    s.retract(&["held.test", "blocked.test"]).await;
    wait_event(&mut w.events, "held.test lifted", |e| {
        matches!(e, Event::DomainChanged { record } if record.domain == "held.test" && record.state == drawbridge::policy::DomainState::Unknown)
    })
    .await;
    assert_eq!(record(&w.server.engine, "blocked.test").await.unwrap().state, drawbridge::policy::DomainState::Blocked);
    assert_eq!(w.verdict("held.test").await, "allowed to federate");
}

/// A restart on the same data dir: the stored entries are in force before the service
/// answers anything, and the feed's last sync is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_starts_with_the_stored_list() {
    let mut w = world("block", "").await;
    let mut s = w.link().await;
    s.first_sync(&["spam.test"]).await;
    let before = w.feed_status("subscribed", |s| s.state == FeedState::Subscribed).await;
    drop(s);
    // A record an older version stored for the server's own domain: not taken, and
    // retracted in the store at the start.
    let key = drawbridge::rtbl::FeedKey { service: SERVICE.into(), node: NODE.into() };
    let listing = drawbridge::rtbl::report::Listing { reason: None, text: None, block_strangers: false };
    let own =
        drawbridge::rtbl::Entry { domain: drawbridge::domain::Domain::parse(HOME).unwrap(), listing, first_seen_ms: 1, last_seen_ms: 1 };
    w.server.engine.testing().rtbl_change(&key, &drawbridge::rtbl::Change::Added(own));
    let World { dns, server, listener, .. } = w;
    let TestServer { engine, dir, .. } = server;
    engine.shutdown().await;
    let server = start(&dns, dir, &feed("block")).await;
    // Nobody answers for the service yet.
    assert!(!server.engine.testing().rtbl_listings("spam.test").is_empty());
    assert!(domain_report(&server.engine, "spam.test").await.verdict.starts_with("refused"));
    let st = server.engine.testing().rtbl_status(SERVICE, NODE).unwrap();
    assert_eq!(st.last_sync_ms, before.last_sync_ms);
    assert_eq!((st.state, st.entries), (FeedState::Subscribing, 1), "the stored status is this run's");
    assert!(server.engine.testing().rtbl_listings(HOME).is_empty());
    let records = server.engine.testing().rtbl_records(SERVICE, NODE);
    assert!(records.iter().any(|r| r.domain == HOME && r.retracted_ms.is_some()), "{records:?}");
    // Then it re-syncs from there.
    let mut s = federate(server.addr, &listener, SERVICE, HOME).await;
    let req = s.items_request().await;
    s.answer_items(&req, &[]).await;
    let mut ev = server.engine.subscribe().into_events();
    s.subscribe().await;
    wait_event(&mut ev, "re-synced empty", |e| matches!(e, Event::Feed { status } if status.state == FeedState::Subscribed)).await;
    assert!(server.engine.testing().rtbl_listings("spam.test").is_empty());
}

/// Events and answers to the subscriber's JID from another domain than the service are
/// not taken, and a flood of them costs a counter: nothing stored, no status announced, no
/// room taken from the service's stanzas. A request to the JID is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_another_jid_are_ignored() {
    const FORGED: usize = 3000;
    let mut w = world("flag", "").await;
    let mut s = w.link().await;
    s.first_sync(&[]).await;
    w.feed_status("subscribed", |s| s.state == FeedState::Subscribed).await;
    let other_listener = publish_listener(&w.dns, "other.test").await;
    let mut other = federate(w.server.addr, &other_listener, "other.test", HOME).await;
    let mut items = Element::new("items", NS_PUBSUB_EVENT).attr("node", NODE);
    items = items.child(Element::new("item", NS_PUBSUB_EVENT).attr("id", "forged.test"));
    other.event("other.test", items).await;
    // Forged answers with the ids the feed's requests carry, more than the driver's inbox holds.
    for i in 0..FORGED {
        let forged = Element::new("iq", ns::SERVER)
            .attr("type", "result")
            .attr("id", format!("rtbl-0-{}", i % 8))
            .attr("from", "other.test")
            .attr("to", format!("{HOME}/drawbridge-rtbl"));
        other.send(forged).await;
    }
    let get = Element::new("iq", ns::SERVER)
        .attr("type", "get")
        .attr("id", "q1")
        .attr("from", "u@other.test/r")
        .attr("to", format!("{HOME}/drawbridge-rtbl"))
        .child(Element::new("query", "http://jabber.org/protocol/disco#info"));
    other.send(get).await;
    let answer = loop {
        let el = other.next().await;
        if el.get_attr("id") == Some("q1") {
            break el;
        }
    };
    assert_eq!(answer.get_attr("type"), Some("error"), "{}", answer.to_xml());
    assert!(answer.to_xml().contains("service-unavailable"), "{}", answer.to_xml());
    s.publish(&["real.test"]).await;
    let st = w.feed_status("the service's event", |s| s.entries == 1).await;
    assert!(w.listed("real.test") && !w.listed("forged.test"));
    let t = w.server.engine.testing();
    assert_eq!((t.rtbl_inbox_foreign(), t.rtbl_inbox_drops()), (FORGED as u64 + 1, 0), "counted by the router, none dropped");
    assert_eq!(st.ignored_foreign, 0, "the feed never saw them");
    let later: Vec<Event> = std::iter::from_fn(|| w.events.try_recv()).collect();
    assert!(!later.iter().any(|e| matches!(e, Event::Feed { .. })), "no status announced but the event's: {later:?}");
}

/// `strangers`: a component's users (local users) get messages and subscription requests
/// from a listed domain only from senders they wrote to before; other stanzas pass. The
/// familiarity set is stored hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_unless_the_user_wrote_to_them_first() {
    let extra = format!("[components]\nlisten = [\"127.0.0.1:0\"]\n[[component]]\ndomain = \"{COMP}\"\nsecret = \"{COMP_SECRET}\"\n");
    let mut w = world("strangers", &extra).await;
    let mut s = w.link().await;
    s.first_sync(&["spam.test"]).await;
    w.feed_status("subscribed", |s| s.state == FeedState::Subscribed && s.entries == 1).await;
    let mut comp = component(w.server.engine.listening().components[0]).await;
    let listener = publish_listener(&w.dns, "spam.test").await;
    let mut spam = federate(w.server.addr, &listener, "spam.test", COMP).await;

    // A message and a subscription request from a stranger: refused, with the reason.
    spam.send(stanza("message", "m1", "bob@spam.test/x", "alice@comp.home.test", None)).await;
    let bounce = spam.next().await;
    assert_eq!((bounce.get_attr("type"), bounce.get_attr("id")), (Some("error"), Some("m1")), "{}", bounce.to_xml());
    let text = bounce.to_xml();
    assert!(text.contains("policy-violation") && text.contains("spam.test is listed as a spam source by pubsub.test"), "{text}");
    spam.send(stanza("presence", "p1", "bob@spam.test", "alice@comp.home.test", Some("subscribe"))).await;
    let bounce = spam.next().await;
    assert_eq!((bounce.get_attr("type"), bounce.get_attr("id")), (Some("error"), Some("p1")), "{}", bounce.to_xml());
    // Other stanzas pass: the component gets a presence, and nothing refused before it.
    spam.send(stanza("presence", "p2", "bob@spam.test/x", "alice@comp.home.test", None)).await;
    let got = within("the presence at the component", comp.next_el()).await.unwrap();
    assert_eq!(got.get_attr("id"), Some("p2"), "{}", got.to_xml());

    // A room at the component sends its occupant presence and a relayed groupchat to a
    // stranger who joined: that teaches nothing, his message to an occupant is refused.
    comp.send("<presence id='r1' from='room@comp.home.test/alice' to='mallory@spam.test/x'/>").await;
    assert_eq!(spam.next().await.get_attr("id"), Some("r1"));
    comp.send("<message id='r2' type='groupchat' from='room@comp.home.test/alice' to='mallory@spam.test/x'><body>hi all</body></message>")
        .await;
    assert_eq!(spam.next().await.get_attr("id"), Some("r2"));
    spam.send(stanza("message", "m0", "mallory@spam.test/x", "room@comp.home.test/alice", Some("chat"))).await;
    let bounce = spam.next().await;
    assert_eq!((bounce.get_attr("type"), bounce.get_attr("id")), (Some("error"), Some("m0")), "{}", bounce.to_xml());

    // Alice writes to bob: learnt as it leaves; bob's answer reaches her, carol's not.
    comp.send("<message id='a1' from='alice@comp.home.test/phone' to='bob@spam.test'><body>hi</body></message>").await;
    let out = spam.next().await;
    assert_eq!(out.get_attr("id"), Some("a1"));
    spam.send(stanza("message", "m2", "bob@spam.test/x", "alice@comp.home.test/phone", None)).await;
    let got = within("bob's answer at the component", comp.next_el()).await.unwrap();
    assert_eq!(got.get_attr("id"), Some("m2"), "{}", got.to_xml());
    spam.send(stanza("message", "m3", "carol@spam.test", "alice@comp.home.test", None)).await;
    assert_eq!(spam.next().await.get_attr("id"), Some("m3"), "carol is still a stranger to alice");
    spam.send(stanza("message", "m4", "bob@spam.test", "dave@comp.home.test", None)).await;
    assert_eq!(spam.next().await.get_attr("id"), Some("m4"), "and bob to dave");

    // The operator's approve passes the listed domain.
    change(&w.server.engine, Request::Approve { domain: "spam.test".into(), reason: None }).await;
    spam.send(stanza("message", "m5", "carol@spam.test", "alice@comp.home.test", None)).await;
    let got = within("carol's message at the component", comp.next_el()).await.unwrap();
    assert_eq!(got.get_attr("id"), Some("m5"), "{}", got.to_xml());

    // Persisted at shutdown, hashed: no JID in clear.
    let data = w.server.dir.path().join("data");
    let World { server, .. } = w;
    let TestServer { engine, dir, .. } = server;
    engine.shutdown().await;
    let store = drawbridge::store::Store::open(&data).unwrap();
    assert_eq!(store.familiar_pairs().unwrap().len(), 1);
    drop(store);
    drop(dir);
}

fn stanza(name: &str, id: &str, from: &str, to: &str, kind: Option<&str>) -> Element {
    let mut el = Element::new(name, ns::SERVER).attr("id", id).attr("from", from).attr("to", to);
    if let Some(k) = kind {
        el = el.attr("type", k);
    }
    if name == "message" {
        el = el.child(Element::new("body", ns::SERVER).text("buy now"));
    }
    el
}

/// A component for `COMP`, connected and authenticated (XEP-0114).
async fn component(addr: SocketAddr) -> RawPeer {
    let mut p = RawPeer::connect(addr).await;
    p.send(&format!("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{COMP}'>")).await;
    let id = match p.next().await {
        Some(Frame::StreamOpen(h)) => h.id.expect("a stream id"),
        other => panic!("expected a stream header, got {other:?}"),
    };
    p.send(&format!("<handshake>{}</handshake>", handshake_digest(&id, COMP_SECRET))).await;
    let answer = p.next_el().await.expect("the handshake's answer");
    assert_eq!(answer.name.as_ref(), "handshake", "{}", answer.to_xml());
    p
}
