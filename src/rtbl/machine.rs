//! One feed's XEP-0060 subscriber, sans-I/O: [`FeedMachine::handle`] takes an [`Input`]
//! (a stanza from the link, the link's reconnect, a timer tick) with the time, and returns
//! [`Output`]s: stanzas to send, entry changes to persist and apply, the feed's status.
//!
//! The sequence: items request → diff against what is stored → subscribe. Re-sync (items
//! and diff) after every reconnect of the link to the service and every hour, because
//! events published while the link was down are never re-sent. `<delete>` and
//! `subscription='none'` clear the feed and resubscribe with back-off; a failed or late
//! items request is an error with its reason, retried with back-off. Only the configured
//! service is heard; everything a service sends is bounded (entries, text).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::FeedSettings;
use super::report::Listing;
use crate::domain::Domain;
use crate::xml::{Element, ns};

/// XEP-0060's namespaces.
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";

/// Result Set Management (XEP-0059): a service may answer the items request a page at a time.
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// At most this many pages per sync (with `max_entries`, what bounds a service that pages without end).
const MAX_PAGES: u32 = 100;

/// How much of a service's error text is kept in the feed's state.
const MAX_ERROR: usize = 200;

/// The time, both ways: `at` for timers, `unix_ms` for what is recorded.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

/// How long things may take and how often they repeat.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// An items request or a subscribe unanswered after this is an error (retried).
    pub request_timeout: Duration,
    /// A subscribed feed re-fetches its items this often.
    pub resync_every: Duration,
    /// The first retry's wait; doubled per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            request_timeout: Duration::from_secs(30),
            resync_every: Duration::from_secs(3600),
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
        }
    }
}

/// What happens to a feed.
#[derive(Debug)]
pub enum Input<'a> {
    /// Begin: the first items request (the stored entries are already loaded, warm).
    Start,
    /// The stream to the service was established again: events may have been missed.
    Reconnected,
    /// A stanza addressed to the subscriber's JID (an `<iq>` answer or a `<message>`).
    Stanza(&'a Element),
    /// Time passed: deadlines and timers are checked.
    Tick,
}

/// What the caller does.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this stanza to the service.
    Send(Element),
    /// Persist this change, then apply it to the policy.
    Change(Change),
    /// The feed's status changed (for the operator).
    Status(FeedStatus),
    /// Call again with [`Input::Tick`] at this time (the machine's next deadline).
    Timer(Instant),
}

/// A change to the feed's entries.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added(Entry),
    /// The listing's payload changed (a re-publish with another report).
    Updated(Entry),
    Retracted {
        domain: Domain,
        at_ms: u64,
    },
    /// Every entry is gone (purge, delete, subscription lost).
    Cleared {
        at_ms: u64,
    },
    /// A full sync saw every current entry: their `last_seen` is `at_ms`.
    Confirmed {
        at_ms: u64,
    },
}

/// One listed domain, as the feed knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub domain: Domain,
    pub listing: Listing,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

/// Where a feed stands, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum FeedState {
    /// Fetching and subscribing (the first time, or after a loss).
    Subscribing,
    Subscribed,
    /// The service deleted the node or ended the subscription; entries cleared, retrying.
    Stale(String),
    /// The last request failed (an error answer or no answer in time); retrying.
    Error(String),
}

/// A feed's status: its state and counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedStatus {
    pub service: String,
    pub node: String,
    pub action: super::Action,
    pub state: FeedState,
    pub entries: usize,
    pub last_sync_ms: Option<u64>,
    pub last_change_ms: Option<u64>,
    /// Stanzas from another JID than the service, ignored.
    pub ignored_foreign: u64,
    /// Item ids that are not domains, ignored.
    pub ignored_invalid: u64,
    /// Items beyond `max_entries`, ignored.
    pub ignored_over_limit: u64,
    /// Item ids naming a domain served here or a configured service's domain, ignored:
    /// a feed cannot list the server itself, nor lock a feed out of its own service.
    #[serde(default)]
    pub ignored_protected: u64,
}

impl FeedStatus {
    /// A feed before its service answered: subscribing, nothing counted.
    pub fn starting(settings: &FeedSettings) -> FeedStatus {
        FeedStatus {
            service: settings.service.clone(),
            node: settings.node.clone(),
            action: settings.action,
            state: FeedState::Subscribing,
            entries: 0,
            last_sync_ms: None,
            last_change_ms: None,
            ignored_foreign: 0,
            ignored_invalid: 0,
            ignored_over_limit: 0,
            ignored_protected: 0,
        }
    }
}

/// What the machine waits for.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Not started yet.
    Idle,
    /// An items request is out (`page` 0 the first; later ones ask for the next page);
    /// `received`: items the earlier pages held.
    Fetching { id: String, until: Instant, page: u32, received: u64 },
    /// A subscribe request is out.
    Subscribing { id: String, until: Instant },
    /// Subscribed; the next re-sync is due at `resync_at`.
    Following { resync_at: Instant },
    /// A failure; the sequence starts again at `until`.
    Backoff { until: Instant },
}

pub struct FeedMachine {
    settings: FeedSettings,
    /// `<first hosted domain>/drawbridge-rtbl`.
    me: String,
    /// Distinguishes this feed's request ids from other feeds' (several may share a service).
    index: usize,
    timing: Timing,
    entries: BTreeMap<Domain, Entry>,
    phase: Phase,
    /// The service holds our subscription (so a re-sync needs no new subscribe).
    subscribed: bool,
    /// The items of the sync in progress, page by page.
    partial: BTreeMap<Domain, Listing>,
    /// Events that arrived while the sync was in progress, by domain (published: the
    /// listing; retracted: `None`): they are newer than the pages, whatever page a domain
    /// was on. Bounded by `max_entries`.
    during_sync: BTreeMap<Domain, Option<Listing>>,
    /// The sync in progress did not see the whole node (`max_entries`, the page limit, or
    /// too many events meanwhile): what it did not see is not taken as retracted.
    truncated: bool,
    /// Consecutive failures (the back-off's exponent).
    failures: u32,
    /// Domains no item may list: those served here and the services' (see
    /// [`FeedStatus::ignored_protected`]).
    protected: std::sync::Arc<[Domain]>,
    next_id: u64,
    status: FeedStatus,
}

impl FeedMachine {
    /// A feed, warm with the entries stored before (not yet retracted). `index` is the
    /// feed's place in the configuration (request ids carry it).
    /// `protected`: the domains no item may list (served here, the services').
    pub fn new(
        settings: FeedSettings,
        first_hosted: &Domain,
        index: usize,
        timing: Timing,
        protected: std::sync::Arc<[Domain]>,
        stored: Vec<Entry>,
    ) -> FeedMachine {
        let mut entries: BTreeMap<Domain, Entry> = BTreeMap::new();
        for e in stored.into_iter().filter(|e| !protected.contains(&e.domain)).take(settings.max_entries) {
            entries.insert(e.domain.clone(), e);
        }
        let status = FeedStatus { entries: entries.len(), ..FeedStatus::starting(&settings) };
        FeedMachine {
            me: format!("{first_hosted}/{}", super::RESOURCE),
            settings,
            index,
            timing,
            entries,
            phase: Phase::Idle,
            subscribed: false,
            partial: BTreeMap::new(),
            during_sync: BTreeMap::new(),
            truncated: false,
            failures: 0,
            protected,
            next_id: 0,
            status,
        }
    }

    /// Carry over what the operator saw before a restart (last sync, last change, the
    /// counters); the state starts again at subscribing.
    pub fn restore(&mut self, prev: &FeedStatus) {
        self.status.last_sync_ms = prev.last_sync_ms;
        self.status.last_change_ms = prev.last_change_ms;
        self.status.ignored_foreign = prev.ignored_foreign;
        self.status.ignored_invalid = prev.ignored_invalid;
        self.status.ignored_over_limit = prev.ignored_over_limit;
        self.status.ignored_protected = prev.ignored_protected;
    }

    /// The full JID requests are sent from.
    pub fn jid(&self) -> &str {
        &self.me
    }

    pub fn settings(&self) -> &FeedSettings {
        &self.settings
    }

    pub fn status(&self) -> &FeedStatus {
        &self.status
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn entry(&self, domain: &str) -> Option<&Entry> {
        self.entries.get(domain)
    }

    /// When the machine next wants a [`Input::Tick`].
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Fetching { until, .. } | Phase::Subscribing { until, .. } | Phase::Backoff { until } => Some(*until),
            Phase::Following { resync_at } => Some(*resync_at),
        }
    }

    /// Whether `id` is one of this feed's request ids (to route an answer among feeds).
    pub fn owns_id(&self, id: &str) -> bool {
        id.strip_prefix("rtbl-").and_then(|r| r.split_once('-')).is_some_and(|(i, _)| i == self.index.to_string())
    }

    pub fn handle(&mut self, now: Now, input: Input<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        let before = (self.status.clone(), self.deadline());
        match input {
            Input::Start => self.fetch(now, &mut out),
            // A new stream to or from the service while following: events may have been
            // lost with the old one, and the service may have lost our subscription (a
            // restart): fetch, then subscribe again (XEP-0060 §6.1: subscribing again is
            // answered with the subscription). In any other phase the request in flight,
            // its timeout or the back-off's end leads to a sync anyway — a service whose
            // streams come and go does not undo the back-off, and the stream our own
            // request opened does not make it fetch twice.
            Input::Reconnected if matches!(self.phase, Phase::Following { .. }) => {
                self.subscribed = false;
                self.fetch(now, &mut out)
            }
            Input::Reconnected => {}
            Input::Tick => self.tick(now, &mut out),
            Input::Stanza(el) => self.stanza(now, el, &mut out),
        }
        self.status.entries = self.entries.len();
        if self.status != before.0 {
            out.push(Output::Status(self.status.clone()));
        }
        if let Some(d) = self.deadline().filter(|d| Some(*d) != before.1) {
            out.push(Output::Timer(d));
        }
        out
    }

    fn tick(&mut self, now: Now, out: &mut Vec<Output>) {
        match self.phase.clone() {
            Phase::Fetching { until, .. } if until <= now.at => {
                self.fail(now, format!("no answer to the items request within {}s", self.timing.request_timeout.as_secs()))
            }
            Phase::Subscribing { until, .. } if until <= now.at => {
                self.fail(now, format!("no answer to the subscribe request within {}s", self.timing.request_timeout.as_secs()))
            }
            Phase::Following { resync_at } if resync_at <= now.at => self.fetch(now, out),
            Phase::Backoff { until } if until <= now.at => self.fetch(now, out),
            _ => {}
        }
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("rtbl-{}-{}", self.index, self.next_id)
    }

    fn iq(&self, kind: &str, id: &str, payload: Element) -> Element {
        Element::new("iq", ns::SERVER)
            .attr("type", kind)
            .attr("id", id)
            .attr("from", self.me.clone())
            .attr("to", self.settings.service.clone())
            .child(Element::new("pubsub", NS_PUBSUB).child(payload))
    }

    /// Send the items request (the start of a sync).
    fn fetch(&mut self, now: Now, out: &mut Vec<Output>) {
        self.partial.clear();
        self.during_sync.clear();
        self.truncated = false;
        self.request_page(now, None, 0, 0, out);
    }

    /// One items request: the first page, or the one after `after` (XEP-0059).
    fn request_page(&mut self, now: Now, after: Option<String>, page: u32, received: u64, out: &mut Vec<Output>) {
        let id = self.new_id();
        let mut iq = self.iq("get", &id, Element::new("items", NS_PUBSUB).attr("node", self.settings.node.clone()));
        if let Some(after) = after
            && let Some(crate::xml::Node::Element(pubsub)) = iq.children.first_mut()
        {
            pubsub.children.push(crate::xml::Node::Element(Element::new("set", NS_RSM).child(Element::new("after", NS_RSM).text(after))));
        }
        out.push(Output::Send(iq));
        self.phase = Phase::Fetching { id, until: now.at + self.timing.request_timeout, page, received };
    }

    fn subscribe(&mut self, now: Now, out: &mut Vec<Output>) {
        let id = self.new_id();
        let sub = Element::new("subscribe", NS_PUBSUB).attr("node", self.settings.node.clone()).attr("jid", self.me.clone());
        out.push(Output::Send(self.iq("set", &id, sub)));
        self.phase = Phase::Subscribing { id, until: now.at + self.timing.request_timeout };
    }

    /// A request failed: the state says why; the whole sequence is tried again later.
    fn fail(&mut self, now: Now, reason: String) {
        self.status.state = FeedState::Error(reason);
        self.back_off(now);
    }

    fn back_off(&mut self, now: Now) {
        let wait = self.timing.backoff_min.saturating_mul(1u32 << self.failures.min(16)).min(self.timing.backoff_max);
        self.failures = self.failures.saturating_add(1);
        self.phase = Phase::Backoff { until: now.at + wait };
    }

    fn stanza(&mut self, now: Now, el: &Element, out: &mut Vec<Output>) {
        // Only the configured service is heard (a bare JID: its resources are not it).
        if el.get_attr("from") != Some(self.settings.service.as_str()) {
            self.status.ignored_foreign += 1;
            return;
        }
        if el.name == "iq" {
            self.answer(now, el, out)
        } else if el.name == "message"
            && let Some(event) = el.elements().find(|e| e.is("event", NS_PUBSUB_EVENT))
        {
            self.event(now, event, out)
        }
    }

    /// An `<iq>` answer: matched by id to the request out, else ignored (a late answer to a
    /// request already given up is not trusted to be current).
    fn answer(&mut self, now: Now, iq: &Element, out: &mut Vec<Output>) {
        let id = iq.get_attr("id").unwrap_or("");
        let kind = iq.get_attr("type").unwrap_or("");
        match self.phase.clone() {
            Phase::Fetching { id: want, page, received, .. } if want == id => match kind {
                "result" => {
                    let pubsub = iq.get_child("pubsub", NS_PUBSUB);
                    let items = pubsub
                        .and_then(|p| p.get_child("items", NS_PUBSUB))
                        .filter(|i| i.get_attr("node").is_none_or(|n| n == self.settings.node));
                    // A result without the node's items is no evidence that the list is empty.
                    let Some(items) = items else {
                        return self.fail(now, "the items result holds no items for the node".into());
                    };
                    let got = self.collect(items);
                    // More pages: the service says how many items there are and where this page ended.
                    let rsm = pubsub.and_then(|p| p.get_child("set", NS_RSM));
                    let last = rsm.and_then(|r| r.get_child("last", NS_RSM)).map(|l| l.text_content());
                    let count = rsm.and_then(|r| r.get_child("count", NS_RSM)).and_then(|c| c.text_content().trim().parse::<u64>().ok());
                    let received = received + got as u64;
                    if let (Some(last), Some(count)) = (last.clone(), count)
                        && got > 0
                        && received < count
                        && self.partial.len() < self.settings.max_entries
                        && page + 1 < MAX_PAGES
                    {
                        return self.request_page(now, Some(last), page + 1, received, out);
                    }
                    if count.is_some_and(|c| received < c) && got > 0 && last.is_some() {
                        self.truncated = true;
                    }
                    self.sync(now, out);
                    if self.subscribed {
                        self.following(now);
                    } else {
                        self.subscribe(now, out);
                    }
                }
                "error" => self.fail(now, format!("items request refused: {}", error_text(iq))),
                _ => {}
            },
            Phase::Subscribing { id: want, .. } if want == id => match kind {
                "result" => {
                    let sub = iq
                        .get_child("pubsub", NS_PUBSUB)
                        .and_then(|p| p.get_child("subscription", NS_PUBSUB))
                        .and_then(|s| s.get_attr("subscription"));
                    match sub {
                        // No payload is allowed by XEP-0060 §6.1.2 and means subscribed.
                        None | Some("subscribed") => {
                            self.subscribed = true;
                            self.following(now);
                        }
                        Some(other) => self.fail(now, format!("subscription is {:?}, not subscribed", crate::text::clip(other, 32))),
                    }
                }
                "error" => self.fail(now, format!("subscribe refused: {}", error_text(iq))),
                _ => {}
            },
            _ => {}
        }
    }

    fn following(&mut self, now: Now) {
        self.failures = 0;
        self.status.state = FeedState::Subscribed;
        self.phase = Phase::Following { resync_at: now.at + self.timing.resync_every };
    }

    /// Take one page's items into the sync in progress; how many items the page held.
    fn collect(&mut self, items: &Element) -> usize {
        let mut n = 0;
        for item in items.elements().filter(|e| e.is("item", NS_PUBSUB)) {
            n += 1;
            if let Some(d) = self.domain_of(item) {
                if self.partial.len() < self.settings.max_entries {
                    self.partial.insert(d, Listing::from_item(item));
                } else if !self.partial.contains_key(&d) {
                    self.status.ignored_over_limit += 1;
                    self.truncated = true;
                }
            }
        }
        n
    }

    /// The items request is complete: what the service lists now against what is stored.
    fn sync(&mut self, now: Now, out: &mut Vec<Output>) {
        let mut seen = std::mem::take(&mut self.partial);
        for (d, event) in std::mem::take(&mut self.during_sync) {
            match event {
                Some(listing) => seen.insert(d, listing),
                None => seen.remove(&d),
            };
        }
        let gone: Vec<Domain> = if std::mem::take(&mut self.truncated) {
            Vec::new()
        } else {
            self.entries.keys().filter(|d| !seen.contains_key(*d)).cloned().collect()
        };
        let mut changed = !gone.is_empty();
        for d in gone {
            self.entries.remove(&d);
            out.push(Output::Change(Change::Retracted { domain: d, at_ms: now.unix_ms }));
        }
        for (d, listing) in seen {
            changed |= self.put(now, d, listing, out);
        }
        out.push(Output::Change(Change::Confirmed { at_ms: now.unix_ms }));
        for e in self.entries.values_mut() {
            e.last_seen_ms = now.unix_ms;
        }
        self.status.last_sync_ms = Some(now.unix_ms);
        if changed {
            self.status.last_change_ms = Some(now.unix_ms);
        }
    }

    /// An item's id as a domain, or `None` (counted) when it is not one, or names a domain
    /// served here or a service's.
    fn domain_of(&mut self, item: &Element) -> Option<Domain> {
        // As for imported lists: a single label is a top-level domain, not a server.
        let d = item
            .get_attr("id")
            .and_then(|id| Domain::parse(id).ok())
            .filter(|d| !crate::domain::is_ip_literal(d.as_str()) && (d.as_str().contains('.') || d.as_str() == "localhost"));
        let Some(d) = d else {
            self.status.ignored_invalid += 1;
            return None;
        };
        if self.protected.contains(&d) {
            self.status.ignored_protected += 1;
            return None;
        }
        Some(d)
    }

    /// Add or update one entry; whether anything changed. Beyond `max_entries`, a new
    /// domain is ignored and counted.
    fn put(&mut self, now: Now, domain: Domain, listing: Listing, out: &mut Vec<Output>) -> bool {
        let full = self.entries.len() >= self.settings.max_entries;
        match self.entries.get_mut(&domain) {
            Some(e) if e.listing == listing => {
                e.last_seen_ms = now.unix_ms;
                false
            }
            Some(e) => {
                e.listing = listing;
                e.last_seen_ms = now.unix_ms;
                out.push(Output::Change(Change::Updated(e.clone())));
                true
            }
            None if full => {
                self.status.ignored_over_limit += 1;
                false
            }
            None => {
                let e = Entry { domain: domain.clone(), listing, first_seen_ms: now.unix_ms, last_seen_ms: now.unix_ms };
                self.entries.insert(domain, e.clone());
                out.push(Output::Change(Change::Added(e)));
                true
            }
        }
    }

    /// A pubsub `<event>`: items published or retracted, the node purged or deleted, the
    /// subscription ended. An event carries one of these (XEP-0060 §7 and its schema): the
    /// first for this feed's node is taken, the rest ignored — a purge repeated thousands of
    /// times in one stanza clears once. Events for another node are not this feed's.
    fn event(&mut self, now: Now, event: &Element, out: &mut Vec<Output>) {
        let node = self.settings.node.clone();
        let Some(e) = event.elements().find(|e| e.get_attr("node") == Some(node.as_str())) else { return };
        let mut changed = false;
        match e.name.as_str() {
            "items" => {
                let syncing = matches!(self.phase, Phase::Fetching { .. });
                for c in e.elements() {
                    if c.is("item", NS_PUBSUB_EVENT) {
                        if let Some(d) = self.domain_of(c) {
                            let listing = Listing::from_item(c);
                            if syncing {
                                self.during(d.clone(), Some(listing.clone()));
                            }
                            changed |= self.put(now, d, listing, out);
                        }
                    } else if c.is("retract", NS_PUBSUB_EVENT)
                        && let Some(d) = self.domain_of(c)
                    {
                        if syncing {
                            self.during(d.clone(), None);
                        }
                        if self.entries.remove(&d).is_some() {
                            out.push(Output::Change(Change::Retracted { domain: d, at_ms: now.unix_ms }));
                            changed = true;
                        }
                    }
                }
            }
            "purge" => changed = self.clear(now, out),
            "delete" => self.lost(now, "the service deleted the node".into(), out),
            "subscription" if e.get_attr("subscription") == Some("none") && e.get_attr("jid").is_none_or(|j| j == self.me.as_str()) => {
                self.lost(now, "the service ended the subscription".into(), out)
            }
            _ => {}
        }
        if changed {
            self.status.last_change_ms = Some(now.unix_ms);
        }
    }

    /// Note an event that came during a sync (see `during_sync`).
    fn during(&mut self, d: Domain, event: Option<Listing>) {
        if self.during_sync.len() < self.settings.max_entries || self.during_sync.contains_key(&d) {
            self.during_sync.insert(d, event);
        } else {
            self.truncated = true;
        }
    }

    /// Every entry gone; a change only when there was one (nothing to persist otherwise).
    fn clear(&mut self, now: Now, out: &mut Vec<Output>) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        self.entries.clear();
        out.push(Output::Change(Change::Cleared { at_ms: now.unix_ms }));
        true
    }

    /// The node or the subscription is gone: nothing listed stands, and the feed tries to
    /// subscribe again after a back-off.
    fn lost(&mut self, now: Now, why: String, out: &mut Vec<Output>) {
        self.clear(now, out);
        self.status.last_change_ms = Some(now.unix_ms);
        self.subscribed = false;
        self.status.state = FeedState::Stale(why);
        self.back_off(now);
    }
}

/// An `<iq type='error'>`'s condition and text, clipped.
fn error_text(iq: &Element) -> String {
    let Some(err) = iq.elements().find(|e| e.name == "error") else { return "an error without details".into() };
    let cond = err.elements().find(|e| e.ns == ns::STANZA_ERRORS && e.name != "text").map(|e| e.name.to_string());
    let text = err.get_child("text", ns::STANZA_ERRORS).map(|t| t.text_content());
    let s = match (cond, text) {
        (Some(c), Some(t)) => format!("{c} ({t})"),
        (Some(c), None) => c,
        (None, Some(t)) => t,
        (None, None) => "an error without a condition".into(),
    };
    crate::text::clip(&s, MAX_ERROR).into_owned()
}

#[cfg(test)]
mod tests;
