//! The subscriber against a scripted service: every answer and event as a real service
//! sends it, the time moved by hand.

use super::*;
use crate::rtbl::report::NS_REPORTING;
use crate::rtbl::{Action, FeedSettings};

const SERVICE: &str = "xmppbl.test";
const NODE: &str = "spam_source_domains";
const ME: &str = "home.test/drawbridge-rtbl";

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

struct World {
    m: FeedMachine,
    start: Instant,
    now: Now,
}

impl World {
    fn new(max_entries: usize, stored: Vec<Entry>) -> World {
        let s = FeedSettings { service: SERVICE.into(), node: NODE.into(), action: Action::Flag, max_entries };
        let start = Instant::now();
        World {
            m: FeedMachine::new(s, &d("home.test"), 3, Timing::default(), vec![d("home.test"), d(SERVICE)].into(), stored),
            start,
            now: Now { at: start, unix_ms: 1_000_000 },
        }
    }

    fn at(&mut self, secs: u64) {
        self.now = Now { at: self.start + Duration::from_secs(secs), unix_ms: 1_000_000 + secs * 1000 };
    }

    fn input(&mut self, i: Input<'_>) -> Vec<Output> {
        self.m.handle(self.now, i)
    }

    fn stanza(&mut self, el: &Element) -> Vec<Output> {
        self.input(Input::Stanza(el))
    }

    /// Start and answer the items request with `items`, then the subscribe: subscribed.
    fn subscribed(&mut self, items: &[&str]) -> Vec<Output> {
        let out = self.input(Input::Start);
        let mut all = self.answer_items(&out, items);
        let sub = sent(&all).into_iter().find(|e| e.get_attr("type") == Some("set")).expect("a subscribe");
        all.extend(self.stanza(&result(&sub, None)));
        assert_eq!(self.m.status().state, FeedState::Subscribed);
        all
    }

    fn answer_items(&mut self, out: &[Output], items: &[&str]) -> Vec<Output> {
        let get = sent(out).into_iter().find(|e| e.get_attr("type") == Some("get")).expect("an items request");
        let mut list = Element::new("items", NS_PUBSUB).attr("node", NODE);
        for id in items {
            list = list.child(item(NS_PUBSUB, id, "spam"));
        }
        self.stanza(&result(&get, Some(Element::new("pubsub", NS_PUBSUB).child(list))))
    }
}

fn item(ns: &str, id: &str, text: &str) -> Element {
    Element::new("item", ns).attr("id", id).child(
        Element::new("report", NS_REPORTING).attr("reason", "urn:xmpp:reporting:spam").child(Element::new("text", NS_REPORTING).text(text)),
    )
}

fn result(req: &Element, payload: Option<Element>) -> Element {
    let mut r =
        Element::new("iq", ns::SERVER).attr("type", "result").attr("id", req.get_attr("id").unwrap()).attr("from", SERVICE).attr("to", ME);
    if let Some(p) = payload {
        r = r.child(p);
    }
    r
}

fn error(req: &Element, cond: &str) -> Element {
    Element::new("iq", ns::SERVER)
        .attr("type", "error")
        .attr("id", req.get_attr("id").unwrap())
        .attr("from", SERVICE)
        .child(Element::new("error", ns::SERVER).attr("type", "cancel").child(Element::new(cond, ns::STANZA_ERRORS)))
}

fn event(from: &str, children: Vec<Element>) -> Element {
    let mut ev = Element::new("event", NS_PUBSUB_EVENT);
    for c in children {
        ev = ev.child(c);
    }
    Element::new("message", ns::SERVER).attr("from", from).attr("to", ME).child(ev)
}

fn items_event(children: Vec<Element>) -> Element {
    let mut items = Element::new("items", NS_PUBSUB_EVENT).attr("node", NODE);
    for c in children {
        items = items.child(c);
    }
    items
}

fn retract(id: &str) -> Element {
    Element::new("retract", NS_PUBSUB_EVENT).attr("id", id)
}

fn sent(out: &[Output]) -> Vec<Element> {
    out.iter().filter_map(|o| if let Output::Send(e) = o { Some(e.clone()) } else { None }).collect()
}

fn changes(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Change(Change::Added(e)) => Some(format!("+{}", e.domain)),
            Output::Change(Change::Updated(e)) => Some(format!("~{}", e.domain)),
            Output::Change(Change::Retracted { domain, .. }) => Some(format!("-{domain}")),
            Output::Change(Change::Cleared { .. }) => Some("clear".into()),
            Output::Change(Change::Confirmed { .. }) => Some("confirmed".into()),
            _ => None,
        })
        .collect()
}

fn listed(w: &World) -> Vec<String> {
    w.m.entries().map(|e| e.domain.to_string()).collect()
}

#[test]
fn items_then_diff_then_subscribe_from_the_dedicated_jid() {
    let mut w = World::new(100, vec![]);
    assert_eq!(w.m.jid(), ME);
    let out = w.input(Input::Start);
    let get = &sent(&out)[0];
    assert_eq!(
        get.to_xml(),
        format!("<iq type='get' id='rtbl-3-1' from='{ME}' to='{SERVICE}'><pubsub xmlns='{NS_PUBSUB}'><items node='{NODE}'/></pubsub></iq>")
    );
    assert!(w.m.owns_id("rtbl-3-1") && !w.m.owns_id("rtbl-31-1") && !w.m.owns_id("other"));
    assert!(out.contains(&Output::Timer(w.start + Duration::from_secs(30))), "the request's deadline");
    let out = w.answer_items(&out, &["spam.example", "not a domain", "com", "127.0.0.1", "bad.example"]);
    assert_eq!(changes(&out), ["+bad.example", "+spam.example", "confirmed"]);
    assert_eq!(w.m.status().ignored_invalid, 3);
    let e = w.m.entry("spam.example").unwrap();
    assert_eq!((e.listing.text.as_deref(), e.first_seen_ms), (Some("spam"), 1_000_000));
    let sub = &sent(&out)[0];
    assert_eq!(
        sub.to_xml(),
        format!(
            "<iq type='set' id='rtbl-3-2' from='{ME}' to='{SERVICE}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='{NODE}' jid='{ME}'/></pubsub></iq>"
        )
    );
    assert_eq!(w.m.status().state, FeedState::Subscribing);
    let reply = result(
        sub,
        Some(Element::new("pubsub", NS_PUBSUB).child(Element::new("subscription", NS_PUBSUB).attr("subscription", "subscribed"))),
    );
    let out = w.stanza(&reply);
    assert_eq!(w.m.status().state, FeedState::Subscribed);
    assert!(out.iter().any(|o| matches!(o, Output::Status(s) if s.state == FeedState::Subscribed && s.entries == 2)));
    assert!(out.contains(&Output::Timer(w.start + Duration::from_secs(3600))), "the hourly re-sync");
    assert_eq!(w.m.status().last_sync_ms, Some(1_000_000));
}

#[test]
fn warm_start_is_diffed_against_the_service() {
    let old = |s: &str, text: &str| Entry {
        domain: d(s),
        listing: Listing { reason: Some("urn:xmpp:reporting:spam".into()), text: Some(text.into()), block_strangers: false },
        first_seen_ms: 5,
        last_seen_ms: 5,
    };
    let mut w = World::new(100, vec![old("kept.example", "spam"), old("gone.example", "spam"), old("changed.example", "old")]);
    assert_eq!(w.m.status().entries, 3, "the stored list is in force before the first sync");
    let mut before = w.m.status().clone();
    before.state = FeedState::Error("was down".into());
    (before.last_sync_ms, before.last_change_ms, before.ignored_invalid) = (Some(7), Some(6), 9);
    w.m.restore(&before);
    let s = w.m.status();
    assert_eq!((s.last_sync_ms, s.last_change_ms, s.ignored_invalid, &s.state), (Some(7), Some(6), 9, &FeedState::Subscribing));
    let out = w.subscribed(&["kept.example", "changed.example", "new.example"]);
    assert_eq!(changes(&out), ["-gone.example", "~changed.example", "+new.example", "confirmed"]);
    let kept = w.m.entry("kept.example").unwrap();
    assert_eq!((kept.first_seen_ms, kept.last_seen_ms), (5, 1_000_000));
}

#[test]
fn events_publish_retract_several_and_purge() {
    let mut w = World::new(100, vec![]);
    w.subscribed(&["a.example", "b.example", "c.example"]);
    w.at(10);
    let ev = event(
        SERVICE,
        vec![items_event(vec![
            item(NS_PUBSUB_EVENT, "d.example", "new"),
            retract("a.example"),
            retract("b.example"),
            retract("unknown.example"),
            retract("!!"),
        ])],
    );
    let out = w.stanza(&ev);
    assert_eq!(changes(&out), ["+d.example", "-a.example", "-b.example"]);
    assert_eq!(listed(&w), ["c.example", "d.example"]);
    assert_eq!(w.m.status().last_change_ms, Some(1_010_000));
    assert_eq!(w.m.status().ignored_invalid, 1);
    // Another node's events, and anything from another sender, change nothing.
    let other = Element::new("items", NS_PUBSUB_EVENT).attr("node", "other").child(retract("c.example"));
    assert!(changes(&w.stanza(&event(SERVICE, vec![other]))).is_empty());
    for from in ["evil.test", "xmppbl.test/res", "user@xmppbl.test"] {
        assert!(changes(&w.stanza(&event(from, vec![items_event(vec![retract("c.example")])]))).is_empty());
    }
    assert!(changes(&w.stanza(&Element::new("message", ns::SERVER).child(Element::new("body", ns::SERVER)))).is_empty());
    assert_eq!(w.m.status().ignored_foreign, 4, "three senders and one without 'from'");
    let out = w.stanza(&event(SERVICE, vec![Element::new("purge", NS_PUBSUB_EVENT).attr("node", NODE)]));
    assert_eq!(changes(&out), ["clear"]);
    assert!(listed(&w).is_empty());
    assert_eq!(w.m.status().state, FeedState::Subscribed, "a purge is no loss of the subscription");
}

#[test]
fn delete_and_unsubscription_clear_go_stale_and_resubscribe_with_back_off() {
    for ending in [
        Element::new("delete", NS_PUBSUB_EVENT).attr("node", NODE),
        Element::new("subscription", NS_PUBSUB_EVENT).attr("node", NODE).attr("jid", ME).attr("subscription", "none"),
    ] {
        let mut w = World::new(100, vec![]);
        w.subscribed(&["a.example"]);
        w.at(100);
        let out = w.stanza(&event(SERVICE, vec![ending.clone()]));
        assert_eq!(changes(&out), ["clear"]);
        assert!(matches!(&w.m.status().state, FeedState::Stale(r) if r.contains("the service")), "{:?}", w.m.status().state);
        assert!(out.contains(&Output::Timer(w.start + Duration::from_secs(110))), "{out:?}");
        w.at(109);
        assert!(sent(&w.input(Input::Tick)).is_empty(), "not before the back-off");
        w.at(110);
        let out = w.input(Input::Tick);
        let out = w.answer_items(&out, &["b.example"]);
        assert_eq!(changes(&out), ["+b.example", "confirmed"]);
        let sub = sent(&out).pop().expect("subscribes again");
        assert_eq!(sub.get_attr("type"), Some("set"));
        w.stanza(&result(&sub, None));
        assert_eq!(w.m.status().state, FeedState::Subscribed);
    }
}

#[test]
fn late_or_refused_items_request_is_an_error_retried_with_growing_back_off() {
    let mut w = World::new(100, vec![]);
    let first = w.input(Input::Start);
    w.at(30);
    let out = w.input(Input::Tick);
    assert!(matches!(&w.m.status().state, FeedState::Error(r) if r.contains("no answer to the items request within 30s")));
    assert!(out.contains(&Output::Timer(w.start + Duration::from_secs(40))));
    // The late answer is not taken: the list it carries may be stale.
    let late = w.answer_items(&first, &["a.example"]);
    assert!(changes(&late).is_empty() && w.m.entries().next().is_none());
    w.at(40);
    let retry = w.input(Input::Tick);
    let get = sent(&retry).pop().unwrap();
    assert_eq!(get.get_attr("id"), Some("rtbl-3-2"));
    let out = w.stanza(&error(&get, "item-not-found"));
    assert!(matches!(&w.m.status().state, FeedState::Error(r) if r == "items request refused: item-not-found"));
    assert!(out.contains(&Output::Timer(w.start + Duration::from_secs(60))), "20s: doubled");
    // An items result without the node's items is an error, not an empty list.
    w.at(60);
    let get = sent(&w.input(Input::Tick)).pop().unwrap();
    w.stanza(&result(&get, Some(Element::new("pubsub", NS_PUBSUB))));
    assert!(matches!(&w.m.status().state, FeedState::Error(r) if r.contains("no items")));
    // Success resets the back-off.
    w.at(100);
    let out = w.input(Input::Tick);
    let out = w.answer_items(&out, &[]);
    let sub = sent(&out).pop().unwrap();
    w.stanza(&error(&sub, "forbidden"));
    assert!(matches!(&w.m.status().state, FeedState::Error(r) if r == "subscribe refused: forbidden"));
}

#[test]
fn reconnect_resyncs_and_subscribes_again_the_hour_resync_only_fetches() {
    let mut w = World::new(100, vec![]);
    w.subscribed(&["a.example", "b.example"]);
    // Events missed while the link was down: the re-sync picks them up; the service may
    // have lost the subscription (a restart): subscribed again.
    w.at(500);
    let out = w.input(Input::Reconnected);
    let out = w.answer_items(&out, &["b.example", "c.example"]);
    assert_eq!(changes(&out), ["-a.example", "+c.example", "confirmed"]);
    let sub = sent(&out).pop().expect("subscribes again after a reconnect");
    assert_eq!(sub.get_attr("type"), Some("set"));
    w.stanza(&result(&sub, None));
    assert_eq!(w.m.status().state, FeedState::Subscribed);
    assert_eq!(w.m.deadline(), Some(w.start + Duration::from_secs(500 + 3600)));
    w.at(500 + 3599);
    assert!(w.input(Input::Tick).is_empty());
    w.at(500 + 3600);
    let out = w.input(Input::Tick);
    assert_eq!(sent(&out)[0].get_attr("type"), Some("get"));
    let out = w.answer_items(&out, &["b.example", "c.example"]);
    assert_eq!(changes(&out), ["confirmed"]);
    assert!(sent(&out).is_empty(), "the hourly re-sync does not subscribe again");
    assert_eq!(w.m.status().last_sync_ms, Some(1_000_000 + 4_100_000));
    // Backing off after a failure, a reconnect sends nothing: the wait ends first.
    let out = w.input(Input::Reconnected);
    w.stanza(&error(&sent(&out)[0], "internal-server-error"));
    let until = w.m.deadline().expect("a back-off");
    assert!(w.input(Input::Reconnected).is_empty(), "the back-off holds");
    assert_eq!(w.m.deadline(), Some(until));
}

#[test]
fn a_flooding_service_is_bounded() {
    let mut w = World::new(3, vec![]);
    let ids: Vec<String> = (0..10).map(|i| format!("d{i}.example")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    w.subscribed(&ids);
    assert_eq!(w.m.status().entries, 3);
    assert_eq!(w.m.status().ignored_over_limit, 7);
    let flood: Vec<Element> = (0..50).map(|i| item(NS_PUBSUB_EVENT, &format!("f{i}.example"), &"x".repeat(10_000))).collect();
    w.stanza(&event(SERVICE, vec![items_event(flood)]));
    assert_eq!(w.m.status().entries, 3);
    assert_eq!(w.m.status().ignored_over_limit, 57);
    // A retract makes room again.
    w.stanza(&event(SERVICE, vec![items_event(vec![retract("d0.example"), item(NS_PUBSUB_EVENT, "z.example", &"y".repeat(10_000))])]));
    let z = w.m.entry("z.example").expect("room after a retract");
    assert!(z.listing.text.as_ref().unwrap().len() < 600, "text clipped");
}

#[test]
fn a_paged_items_result_is_followed_to_the_end_before_the_diff() {
    let mut w = World::new(100, vec![Entry { domain: d("old.example"), listing: Listing::default(), first_seen_ms: 1, last_seen_ms: 1 }]);
    let out = w.input(Input::Start);
    let page = |req: &Element, ids: &[&str], last: &str| {
        let mut items = Element::new("items", NS_PUBSUB).attr("node", NODE);
        for id in ids {
            items = items.child(item(NS_PUBSUB, id, "spam"));
        }
        let set = Element::new("set", NS_RSM)
            .child(Element::new("first", NS_RSM).text(ids[0]))
            .child(Element::new("last", NS_RSM).text(last))
            .child(Element::new("count", NS_RSM).text("4"));
        result(req, Some(Element::new("pubsub", NS_PUBSUB).child(items).child(set)))
    };
    let get = sent(&out).pop().unwrap();
    let out = w.stanza(&page(&get, &["a.example", "b.example"], "b.example"));
    assert!(changes(&out).is_empty(), "no diff on a partial list: {out:?}");
    let next = sent(&out).pop().expect("the next page");
    assert_eq!(
        next.to_xml(),
        format!(
            "<iq type='get' id='rtbl-3-2' from='{ME}' to='{SERVICE}'><pubsub xmlns='{NS_PUBSUB}'><items node='{NODE}'/><set xmlns='{NS_RSM}'><after>b.example</after></set></pubsub></iq>"
        )
    );
    let out = w.stanza(&page(&next, &["c.example", "d.example"], "d.example"));
    assert_eq!(changes(&out), ["-old.example", "+a.example", "+b.example", "+c.example", "+d.example", "confirmed"]);
    assert_eq!(sent(&out)[0].get_attr("type"), Some("set"), "then the subscribe");
}

#[test]
fn a_forged_answer_and_a_pending_subscription_are_not_taken() {
    let mut w = World::new(100, vec![]);
    let out = w.input(Input::Start);
    let get = sent(&out).pop().unwrap();
    // The right id from another sender: ignored, counted; the request stays out.
    let mut forged = result(&get, Some(Element::new("pubsub", NS_PUBSUB).child(Element::new("items", NS_PUBSUB).attr("node", NODE))));
    forged.set_attr("from", "evil.test");
    assert!(changes(&w.stanza(&forged)).is_empty());
    assert_eq!(w.m.status().ignored_foreign, 1);
    let out = w.answer_items(&out, &["a.example"]);
    let sub = sent(&out).pop().unwrap();
    let pending = Element::new("pubsub", NS_PUBSUB).child(Element::new("subscription", NS_PUBSUB).attr("subscription", "pending"));
    w.stanza(&result(&sub, Some(pending)));
    assert!(matches!(&w.m.status().state, FeedState::Error(r) if r.contains("\"pending\"")), "{:?}", w.m.status().state);
    assert_eq!(w.m.status().entries, 1, "what the items request gave stays");
}

/// One event is one action (XEP-0060 §7): thousands of purges in one stanza clear once, a
/// purge of an empty feed changes nothing, and a delete among them is not acted on twice.
#[test]
fn a_stanza_of_repeated_purges_clears_once() {
    let mut w = World::new(100, vec![]);
    w.subscribed(&["a.example"]);
    let purge = || Element::new("purge", NS_PUBSUB_EVENT).attr("node", NODE);
    let mut children: Vec<Element> = (0..5000).map(|_| purge()).collect();
    children.push(Element::new("delete", NS_PUBSUB_EVENT).attr("node", NODE));
    let out = w.stanza(&event(SERVICE, children));
    assert_eq!(changes(&out), ["clear"]);
    assert_eq!(w.m.status().state, FeedState::Subscribed, "the delete after the first purge is not taken");
    let out = w.stanza(&event(SERVICE, vec![purge(), purge()]));
    assert!(changes(&out).is_empty(), "nothing listed, nothing to clear: {out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::Status(_))));
}

/// An item naming a domain served here or the service's own domain is ignored and counted:
/// a `block` feed cannot lock out the server, nor the feed out of its service.
#[test]
fn items_naming_ourselves_or_the_service_are_ignored() {
    let stored = vec![Entry {
        domain: d(SERVICE),
        listing: crate::rtbl::report::Listing { reason: None, text: None, block_strangers: false },
        first_seen_ms: 1,
        last_seen_ms: 1,
    }];
    let mut w = World::new(100, stored);
    assert!(listed(&w).is_empty(), "not even from the store");
    w.subscribed(&["home.test", "HOME.test", "a.example"]);
    assert_eq!(listed(&w), ["a.example"]);
    let out = w.stanza(&event(SERVICE, vec![items_event(vec![item(NS_PUBSUB_EVENT, SERVICE, "x"), retract("home.test")])]));
    assert!(changes(&out).is_empty());
    assert_eq!(w.m.status().ignored_protected, 4);
    assert_eq!(w.m.status().ignored_invalid, 0);
}

/// Events during a sync are newer than the pages: a retract is not undone by a page that
/// still held the domain, a publish not taken back by a page that did not; a sync that did
/// not see the whole node (the page limit, `max_entries`) retracts nothing it did not see.
#[test]
fn events_during_a_sync_win_and_a_truncated_sync_retracts_nothing() {
    let mut w = World::new(100, vec![]);
    w.subscribed(&["a.example", "b.example"]);
    w.at(3600);
    let out = w.input(Input::Tick);
    w.stanza(&event(SERVICE, vec![items_event(vec![retract("a.example"), item(NS_PUBSUB_EVENT, "n.example", "new")])]));
    let out = w.answer_items(&out, &["a.example", "b.example"]);
    assert_eq!(changes(&out), ["confirmed"], "{out:?}");
    assert_eq!(listed(&w), ["b.example", "n.example"]);

    // Full (max 3): the service's four items are more than the feed takes; none is taken as gone.
    let mut w = World::new(3, vec![]);
    w.subscribed(&["a.example", "b.example", "c.example"]);
    w.at(3600);
    let out = w.input(Input::Tick);
    let out = w.answer_items(&out, &["d.example", "e.example", "f.example", "g.example"]);
    assert!(!changes(&out).iter().any(|c| c.starts_with('-')), "{:?}", changes(&out));
    assert_eq!(listed(&w).len(), 3);
}
