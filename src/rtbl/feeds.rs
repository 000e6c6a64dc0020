//! All the feeds followed, behind the one JID they share (`<first hosted domain>/drawbridge-rtbl`):
//! stanzas to that JID dispatched to the feed they belong to, sans-I/O like each feed.
//!
//! An `<iq>` answer goes to the feed whose request id it carries; a `<message>` to every feed
//! of the sender's service (each keeps its own node's events). A stanza that belongs to no
//! feed is counted and dropped.

use super::machine::{FeedMachine, Input, Now, Output, Timing};
use super::{Entry, FeedKey, FeedSettings};
use crate::domain::Domain;
use crate::xml::Element;

pub struct Feeds {
    feeds: Vec<FeedMachine>,
    /// Stanzas to the subscriber's JID that belong to no feed.
    pub unclaimed: u64,
}

impl Feeds {
    /// The configured feeds, each warm with what `stored` gives for it. `served`: the
    /// domains served here; they and the services' domains are never listed.
    pub fn new(
        settings: &[FeedSettings],
        first_hosted: &Domain,
        served: &[Domain],
        timing: Timing,
        mut stored: impl FnMut(&FeedKey) -> Vec<Entry>,
    ) -> Feeds {
        let mut protected: Vec<Domain> = served.to_vec();
        protected.extend(settings.iter().filter_map(|s| Domain::parse(super::service_domain(&s.service)).ok()));
        protected.sort_unstable();
        protected.dedup();
        let protected: std::sync::Arc<[Domain]> = protected.into();
        let feeds = settings
            .iter()
            .enumerate()
            .map(|(i, s)| FeedMachine::new(s.clone(), first_hosted, i, timing, protected.clone(), stored(&s.key())))
            .collect();
        Feeds { feeds, unclaimed: 0 }
    }

    pub fn iter(&self) -> impl Iterator<Item = &FeedMachine> {
        self.feeds.iter()
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut FeedMachine> {
        self.feeds.get_mut(i)
    }

    /// The services to keep a stream to (each once).
    pub fn services(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.feeds.iter().map(|f| f.settings().service.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Every feed's first items request. Outputs are tagged with the feed's index.
    pub fn start(&mut self, now: Now) -> Vec<(usize, Output)> {
        self.each(now, |_| true, || Input::Start)
    }

    /// The stream to `service` was established again: its feeds re-sync.
    pub fn reconnected(&mut self, now: Now, service: &str) -> Vec<(usize, Output)> {
        self.each(now, |f| f.settings().service == service, || Input::Reconnected)
    }

    pub fn tick(&mut self, now: Now) -> Vec<(usize, Output)> {
        self.each(now, |f| f.deadline().is_some_and(|d| d <= now.at), || Input::Tick)
    }

    /// The earliest deadline of any feed.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.feeds.iter().filter_map(FeedMachine::deadline).min()
    }

    /// A stanza addressed to the subscriber's JID.
    pub fn stanza(&mut self, now: Now, el: &Element) -> Vec<(usize, Output)> {
        let from = el.get_attr("from").unwrap_or("");
        let owner: Vec<usize> = if el.name == "iq" {
            let id = el.get_attr("id").unwrap_or("");
            self.feeds.iter().position(|f| f.owns_id(id)).into_iter().collect()
        } else {
            (0..self.feeds.len()).filter(|&i| self.feeds[i].settings().service == from).collect()
        };
        if owner.is_empty() {
            self.unclaimed += 1;
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in owner {
            out.extend(self.feeds[i].handle(now, Input::Stanza(el)).into_iter().map(|o| (i, o)));
        }
        out
    }

    fn each(&mut self, now: Now, which: impl Fn(&FeedMachine) -> bool, input: impl Fn() -> Input<'static>) -> Vec<(usize, Output)> {
        let mut out = Vec::new();
        for (i, f) in self.feeds.iter_mut().enumerate() {
            if which(f) {
                out.extend(f.handle(now, input()).into_iter().map(|o| (i, o)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::rtbl::Action;
    use crate::rtbl::machine::{Change, NS_PUBSUB, NS_PUBSUB_EVENT};
    use crate::xml::ns;

    fn feed(service: &str, node: &str) -> FeedSettings {
        FeedSettings { service: service.into(), node: node.into(), action: Action::Flag, max_entries: 10 }
    }

    #[test]
    fn answers_and_events_reach_their_feed_only() {
        let settings = [feed("a.test", "n1"), feed("a.test", "n2"), feed("b.test", "n1")];
        let home = Domain::parse("home.test").unwrap();
        let mut feeds = Feeds::new(&settings, &home, std::slice::from_ref(&home), Timing::default(), |_| vec![]);
        assert_eq!(feeds.services(), ["a.test", "b.test"]);
        let at = Instant::now();
        let now = Now { at, unix_ms: 0 };
        let out = feeds.start(now);
        let gets: Vec<(usize, Element)> =
            out.into_iter().filter_map(|(i, o)| if let Output::Send(e) = o { Some((i, e)) } else { None }).collect();
        assert_eq!(gets.len(), 3);
        // The second feed's answer goes to it alone, even from the same service.
        let (i, get) = &gets[1];
        let items = Element::new("items", NS_PUBSUB).attr("node", "n2").child(Element::new("item", NS_PUBSUB).attr("id", "spam.example"));
        let answer = Element::new("iq", ns::SERVER)
            .attr("type", "result")
            .attr("from", "a.test")
            .attr("id", get.get_attr("id").unwrap())
            .child(Element::new("pubsub", NS_PUBSUB).child(items));
        let out = feeds.stanza(now, &answer);
        assert!(out.iter().all(|(j, _)| j == i));
        assert!(out.iter().any(|(_, o)| matches!(o, Output::Change(Change::Added(e)) if e.domain.as_str() == "spam.example")));
        // An event from a.test for n1 reaches both a.test feeds; only n1's takes it.
        let ev = Element::new("message", ns::SERVER).attr("from", "a.test").child(Element::new("event", NS_PUBSUB_EVENT).child(
            Element::new("items", NS_PUBSUB_EVENT).attr("node", "n1").child(Element::new("item", NS_PUBSUB_EVENT).attr("id", "x.example")),
        ));
        let out = feeds.stanza(now, &ev);
        let added: Vec<usize> = out.iter().filter(|(_, o)| matches!(o, Output::Change(Change::Added(_)))).map(|(i, _)| *i).collect();
        assert_eq!(added, [0]);
        // From nobody's service: unclaimed.
        let stray = Element::new("message", ns::SERVER).attr("from", "c.test").child(Element::new("event", NS_PUBSUB_EVENT));
        assert!(feeds.stanza(now, &stray).is_empty());
        assert_eq!(feeds.unclaimed, 1);
        // A reconnect reaches that service's feeds only (one still fetching sends nothing:
        // its request in flight covers it); only the feeds whose deadline passed are ticked.
        let out = feeds.reconnected(now, "b.test");
        assert!(out.iter().all(|(i, _)| *i == 2) && !out.iter().any(|(_, o)| matches!(o, Output::Send(_))));
        assert!(feeds.tick(now).is_empty());
        let later = Now { at: at + Duration::from_secs(30), unix_ms: 30_000 };
        assert_eq!(feeds.deadline(), Some(at + Duration::from_secs(30)));
        let errs = feeds.tick(later);
        assert!(errs.iter().any(|(_, o)| matches!(o, Output::Status(_))));
    }
}
