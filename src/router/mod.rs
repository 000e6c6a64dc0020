//! The router: where a stanza goes. Hosted domains → [`local`] services; everything else →
//! the **link** registered for its domain pair (local, remote) in the route table
//! ([`LinkKind`]): our outbound s2s stream of the pair, opened on demand; in gateway mode
//! our stream to the internal server; an external component's stream (XEP-0114) for its
//! domain and subdomains.
//!
//! **Routing decides; drivers wait.** Each link has a queue bounded in bytes
//! (`limits.outbound_queue_bytes`; a count, `limits.outbound_queue`, far above any burst).
//! [`Router::route`] never waits: a stanza that meets a full queue comes back as
//! [`Blocked`], and the stream that read it waits for room — without reading further frames,
//! so TCP pushes back on a peer that sends faster than the link drains (head-of-line
//! blocking on that one stream; no lock is held meanwhile) — bounded by `timeouts.write`.
//! Only when the link made no room within that deadline does the **overflow rule** answer
//! ([`Router::overflow`]): a bounceable stanza gets a `<resource-constraint/>` error of type
//! `wait` (RFC 6120 §8.3.3.18) back to its sender; an error or result stanza (never
//! answered, RFC 6120 §8.3.1) is dropped. Both are counted ([`Router::overflows`], `ctl
//! status`) and logged once a minute per domain. Where nobody can wait (a stream's
//! leftovers after it ended) [`Router::route_now`] applies the rule at once.
//!
//! With real-time blocklists configured ([`rtbl`]), stanzas to the subscriber's JID go to
//! the RTBL driver before anything else, and a `strangers` feed's rule is applied where
//! stanzas reach local users (and learnt from what they send out); without them the
//! stanza path pays one `Option` check.

pub mod local;
pub mod queue;
pub mod rtbl;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::domain::Domain;
use crate::proto::auth::Delivery;
use crate::proto::dialback::Answer;
use crate::proto::machine::PolicyView;
use crate::proto::stanza::{StanzaErrorCondition as C, error_reply};
use crate::types::Verdict;
use crate::xml::Element;

/// Where the answer to a `db:verify` goes: the answer for the peer, and the full reason
/// for the operator when it is an error.
pub type VerifyReply = oneshot::Sender<(Answer, Option<String>)>;

/// The receiving stream's end of a verification: where the originating stream's machine
/// sends the answer.
impl crate::proto::machine::Reply for VerifyReply {
    fn send(self: Box<Self>, answer: Answer, detail: Option<String>) {
        // The asking stream may be gone already: nobody waits for the answer then.
        let _ = (*self).send((answer, detail));
    }
}

/// A request from the receiving-server role to the authoritative server, sent on our
/// outbound stream to that domain (XEP-0220 §2.1.2).
#[derive(Debug)]
pub struct VerifyRequest {
    pub stream_id: String,
    pub key: String,
    /// The answer for the peer, and for the operator the full reason when it is an error.
    pub reply: VerifyReply,
}

/// Why a component's domain could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// XEP-0114: one connection per component; another live stream has the domain.
    #[error("component {domain} is already connected (stream {stream})")]
    Taken { domain: Domain, stream: String },
}

/// What is behind a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Our outbound s2s stream for the pair (RFC 6120; dialback or SASL EXTERNAL).
    S2sOutbound,
    /// Gateway mode: our stream to the internal server for (remote domain, hosted domain),
    /// as the remote domain.
    Internal,
    /// An external component's stream (XEP-0114), for its domain and subdomains.
    Component,
}

/// The sending side of one link.
#[derive(Clone)]
pub struct Link {
    pub kind: LinkKind,
    /// The connection table id of the stream behind it.
    pub stream: Arc<str>,
    pub stanzas: queue::QueueTx<Routed>,
    /// Dialback verifications this link carries to the remote's authoritative server.
    pub verifies: Option<queue::QueueTx<VerifyRequest>>,
}

/// A stanza that met a full queue: its producer waits for [`Blocked::room`] (bounded by
/// `timeouts.write`), then routes it again ([`Router::route`]) — or, past the deadline,
/// hands it to [`Router::overflow`].
pub struct Blocked {
    pub stanza: Element,
    /// When it was read (or made): its routing time runs on while it waits.
    pub since: Instant,
    queue: queue::QueueTx<Routed>,
    weight: usize,
    /// The full queue's domain (for the overflow rule's words).
    to: Domain,
}

impl Blocked {
    /// Room for the stanza in the queue it met full, or that queue closed (its stream
    /// ended: routing again finds or opens another). Cancel-safe.
    pub async fn room(&self) {
        self.queue.room(self.weight).await;
    }
}

/// A stanza on a link's queue, with the moment it was read off a peer's stream (or made
/// here): the stream that writes it observes its routing time ([`crate::latency::ROUTING`]).
#[derive(Debug)]
pub struct Routed {
    pub stanza: Element,
    pub since: Instant,
}

/// What the overflow rule did, since start (`ctl status`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overflows {
    /// Requests and messages answered `<resource-constraint/>`.
    pub bounced: u64,
    /// Results and errors dropped (they cannot be answered).
    pub dropped: u64,
}

/// Why no link can be had for a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A limit (its key) is reached, e.g. `limits.max_outbound`.
    Limit(crate::limits::LimitKey),
    /// No stream can be opened now, whatever the limits (not wired yet, shutting down).
    Unavailable(&'static str),
    /// Policy refuses the remote domain (the rule, in words).
    Policy(String),
}

/// Opens links the route table does not have yet (the engine wires the outbound streams).
pub trait Opener: Send + Sync {
    fn open(&self, local: &Domain, remote: &Domain) -> Result<Link, Refusal>;
}

pub struct Router {
    hosted: Vec<Domain>,
    policy: Arc<dyn PolicyView>,
    /// The route table. Read-locked to find a link; write-locked only to add or remove one.
    links: RwLock<HashMap<(Domain, Domain), Link>>,
    opener: OnceLock<Box<dyn Opener>>,
    /// `timeouts.dialback`: longest a verification waits for the authoritative server.
    dialback_timeout: Duration,
    pub local: local::LocalServices,
    /// Gateway mode: stanzas from the world to the hosted domains go to the internal server
    /// (over the link of their pair), not to the local services.
    gateway: bool,
    /// The configured components' domains (`[[component]]`); theirs and their subdomains'
    /// stanzas go to the component's stream while it is attached.
    components: Vec<Domain>,
    attached: RwLock<HashMap<Domain, Link>>,
    bounced: AtomicU64,
    dropped: AtomicU64,
    /// `[[rtbl]]` configured: stanzas to the subscriber's JID go to the RTBL driver.
    feeds: Option<rtbl::FeedInbox>,
    /// A feed with the `strangers` action: judged and learnt on the stanza path.
    strangers: Option<rtbl::Strangers>,
}

/// Where a stanza went: queued, a stanza to route next (a reply or a bounce), or a full
/// queue.
enum Step {
    Done,
    Next(Element),
    Full(Blocked),
}

impl From<Option<Element>> for Step {
    fn from(next: Option<Element>) -> Step {
        next.map_or(Step::Done, Step::Next)
    }
}

impl Router {
    pub fn new(hosted: Vec<Domain>, policy: Arc<dyn PolicyView>, dialback_timeout: Duration) -> Router {
        Router {
            hosted,
            policy,
            links: RwLock::new(HashMap::new()),
            opener: OnceLock::new(),
            dialback_timeout,
            local: local::LocalServices::default(),
            gateway: false,
            components: Vec::new(),
            attached: RwLock::new(HashMap::new()),
            bounced: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            feeds: None,
            strangers: None,
        }
    }

    /// Real-time blocklists followed: stanzas to their subscriber's JID go to `inbox`.
    pub fn with_feeds(mut self, inbox: rtbl::FeedInbox) -> Router {
        self.feeds = Some(inbox);
        self
    }

    /// A `strangers` feed is followed: the rule applies where stanzas reach local users.
    pub fn with_strangers(mut self, strangers: rtbl::Strangers) -> Router {
        self.strangers = Some(strangers);
        self
    }

    /// A federation stream authenticated the pair (`local`, `remote`), either way: the RTBL
    /// driver hears of it when it is a stream to or from a service it follows.
    pub fn pair_authorised(&self, local: &Domain, remote: &Domain) {
        if let Some(f) = &self.feeds {
            f.authorised(local, remote);
        }
    }

    /// Stanzas queued on the links to remote domains now: in all, and on the longest (a
    /// scrape's reading; never on the stanza path).
    pub fn queued(&self) -> (u64, u64) {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .values()
            .filter(|l| l.kind == LinkKind::S2sOutbound)
            .map(|l| l.stanzas.len() as u64)
            .fold((0, 0), |(sum, max), n| (sum + n, max.max(n)))
    }

    /// Stanzas for the RTBL driver dropped since start (its channel full).
    pub fn feed_drops(&self) -> u64 {
        self.feeds.as_ref().map_or(0, rtbl::FeedInbox::dropped)
    }

    /// Stanzas to the RTBL subscriber's JID from no service's domain, dropped since start.
    pub fn feed_foreign(&self) -> u64 {
        self.feeds.as_ref().map_or(0, rtbl::FeedInbox::foreign)
    }

    /// The `strangers` rule for a stanza reaching a local user (a component's, or in
    /// gateway mode the internal server's): if it is refused, the step that ends it (the
    /// bounce, or nothing for an error, which is never answered: RFC 6120 §8.3.1).
    fn strangers_refuse(&self, st: &Element, to: &Domain) -> Option<Step> {
        let s = self.strangers.as_ref()?;
        if !(self.component_for(to).is_some() || (self.gateway && self.is_server_domain(to))) {
            return None;
        }
        let (from, to_jid) = (st.get_attr("from")?, st.get_attr("to")?);
        if crate::proto::jid::domain_of(from).is_none_or(|f| self.is_served_here(&f)) {
            return None;
        }
        let why = s.judge(st, from, to_jid)?;
        tracing::debug!(stanza = %st.describe(), "refused by a strangers feed: {why}");
        Some(error_reply(st, C::PolicyViolation, Some(&why)).map_or(Step::Done, Step::Next))
    }

    /// The configured components: their domains count as ours (stanzas from them leave
    /// through federation; federation delivers to them).
    pub fn with_components(mut self, domains: Vec<Domain>) -> Router {
        self.hosted.extend(domains.iter().cloned());
        self.components = domains;
        self
    }

    /// A component authenticated: its domain is routed to `link` from now on; refused while
    /// another stream has it (XEP-0114: one connection per component).
    pub fn attach(&self, domain: &Domain, link: Link) -> Result<(), AttachError> {
        let mut map = self.attached.write().unwrap_or_else(|e| e.into_inner());
        match map.get(domain) {
            Some(l) if !l.stanzas.is_closed() => Err(AttachError::Taken { domain: domain.clone(), stream: l.stream.to_string() }),
            _ => {
                map.insert(domain.clone(), link);
                Ok(())
            }
        }
    }

    /// The component's stream `id` ended.
    pub fn detach(&self, domain: &Domain, id: &str) {
        let mut map = self.attached.write().unwrap_or_else(|e| e.into_inner());
        if map.get(domain).is_some_and(|l| &*l.stream == id) {
            map.remove(domain);
        }
    }

    /// The configured component owning `d` (its domain or a subdomain of it).
    fn component_for(&self, d: &Domain) -> Option<&Domain> {
        self.components.iter().find(|c| d.is_within(c))
    }

    /// Queue on the component's stream; a bounce to route if it is not connected.
    fn send_component(&self, comp: &Domain, st: Element, since: Instant) -> Step {
        let link = self.attached.read().unwrap_or_else(|e| e.into_inner()).get(comp).cloned();
        let Some(link) = link else {
            return error_reply(&st, C::ServiceUnavailable, Some(&format!("{comp} is not connected"))).into();
        };
        let weight = st.weight();
        match link.stanzas.try_send_weighted(Routed { stanza: st, since }, weight) {
            Ok(()) => Step::Done,
            Err(queue::TrySendError::Full(back)) => {
                Step::Full(Blocked { stanza: back.stanza, since, queue: link.stanzas, weight, to: comp.clone() })
            }
            Err(queue::TrySendError::Closed(back)) => {
                self.detach(comp, &link.stream);
                error_reply(&back.stanza, C::ServiceUnavailable, Some(&format!("{comp} is not connected"))).into()
            }
        }
    }

    /// Only `server.domains` (not the components): what the internal server hosts in
    /// gateway mode.
    fn is_server_domain(&self, d: &Domain) -> bool {
        self.hosted.contains(d) && !self.components.contains(d)
    }

    /// Gateway mode: the hosted domains live on the internal server.
    pub fn with_gateway(mut self, on: bool) -> Router {
        self.gateway = on;
        self
    }

    /// Set once by the engine, after the router exists (the streams it opens route back).
    pub fn set_opener(&self, opener: Box<dyn Opener>) {
        if self.opener.set(opener).is_err() {
            tracing::error!("router: opener set twice; the first one stays");
        }
    }

    /// Served here: `server.domains`, the components' domains and their subdomains.
    fn is_served_here(&self, d: &Domain) -> bool {
        self.hosted.iter().any(|h| h == d) || self.component_for(d).is_some()
    }

    /// Route a stanza (from a remote peer or generated here) without waiting. Replies from
    /// local services and bounces are routed in turn; errors are never answered with
    /// errors, so this ends. A stanza of that chain that meets a full queue comes back: its
    /// producer waits for room and routes it again, or gives it to [`Router::overflow`].
    #[must_use = "a blocked stanza must be waited for or given to Router::overflow"]
    pub fn route(&self, stanza: Element) -> Option<Blocked> {
        self.route_since(stanza, Instant::now())
    }

    /// [`Router::route`] for a stanza read (or made) at `since`: a stanza's routing time
    /// counts from there, through any wait for room.
    #[must_use = "a blocked stanza must be waited for or given to Router::overflow"]
    pub fn route_since(&self, stanza: Element, since: Instant) -> Option<Blocked> {
        let mut next = Some(stanza);
        while let Some(st) = next.take() {
            match self.step(st, since) {
                Step::Done => {}
                Step::Next(st) => next = Some(st),
                Step::Full(b) => return Some(b),
            }
        }
        None
    }

    /// Route what a stream delivers from its peer: only with the proof of the pair it
    /// travels on, which the stream machine checked the stanza against (`Delivery::new`).
    #[must_use = "a blocked stanza must be waited for or given to Router::overflow"]
    pub fn deliver(&self, delivery: Delivery, since: Instant) -> Option<Blocked> {
        self.route_since(delivery.into_stanza(), since)
    }

    /// Route where nobody can wait (what a stream leaves behind when it ends): a full queue
    /// is answered by the overflow rule at once.
    pub fn route_now(&self, stanza: Element) {
        let since = Instant::now();
        let mut next = Some(stanza);
        while let Some(st) = next.take() {
            next = match self.step(st, since) {
                Step::Done => None,
                Step::Next(st) => Some(st),
                Step::Full(b) => self.overflow_reply(b),
            };
        }
    }

    /// The overflow rule, for a stanza whose link made no room within `timeouts.write`: a
    /// request or message is bounced with `<resource-constraint/>` (type `wait`, RFC 6120
    /// §8.3.3.18); a result or error, which cannot be answered (§8.3.1), is dropped. Counted
    /// either way; the bounce is routed without waiting.
    pub fn overflow(&self, blocked: Blocked) {
        if let Some(bounce) = self.overflow_reply(blocked) {
            self.route_now(bounce);
        }
    }

    fn overflow_reply(&self, b: Blocked) -> Option<Element> {
        let to = &b.to;
        let bounce = error_reply(&b.stanza, C::ResourceConstraint, Some(&format!("the stream to {to} is not keeping up; try again")));
        let (bounced, dropped) = match bounce {
            Some(_) => (self.bounced.fetch_add(1, Ordering::Relaxed) + 1, self.dropped.load(Ordering::Relaxed)),
            None => (self.bounced.load(Ordering::Relaxed), self.dropped.fetch_add(1, Ordering::Relaxed) + 1),
        };
        crate::limits::refused_once(crate::limits::LimitKey::OutboundQueueBytes, to.as_str(), || {
            format!(
                "the stream to {to} made no room within timeouts.write; requests bounce with resource-constraint, results and errors are dropped \
                 ({bounced} bounced, {dropped} dropped since start; limits.outbound_queue_bytes, timeouts.write)"
            )
        });
        bounce
    }

    /// Route, waiting (bounded by `limit`, usually `timeouts.write`) where a queue is full;
    /// for tasks that have no stream to hold back (a probe).
    pub async fn route_waiting(&self, stanza: Element, limit: Duration) {
        let since = Instant::now();
        let until = since + limit;
        let mut next = self.route_since(stanza, since);
        while let Some(b) = next {
            if tokio::time::timeout_at(until, b.room()).await.is_err() {
                return self.overflow(b);
            }
            next = self.route_since(b.stanza, since);
        }
    }

    /// What the overflow rule did since start.
    pub fn overflows(&self) -> Overflows {
        Overflows { bounced: self.bounced.load(Ordering::Relaxed), dropped: self.dropped.load(Ordering::Relaxed) }
    }

    /// One stanza's step: queued, or what to route next, or the full queue it met.
    fn step(&self, st: Element, since: Instant) -> Step {
        let Some(to) = st.get_attr("to").and_then(crate::proto::jid::domain_of) else {
            tracing::debug!(stanza = %st.describe(), "dropping a stanza without a valid 'to'");
            return Step::Done;
        };
        let from = || st.get_attr("from").and_then(crate::proto::jid::domain_of);
        if self.feeds.is_some() || self.strangers.is_some() {
            if let Some(inbox) = &self.feeds
                && st.get_attr("to").is_some_and(|t| inbox.is_for(t))
            {
                return inbox.offer(st).map_or(Step::Done, Step::Next);
            }
            if let Some(refused) = self.strangers_refuse(&st, &to) {
                return refused;
            }
        }
        if let Some(comp) = self.component_for(&to) {
            return self.send_component(&comp.clone(), st, since);
        }
        if self.is_served_here(&to) {
            // Gateway mode: what the world sends the hosted domains goes on to the
            // internal server, as the world domain that sent it; drawbridge keeps only the
            // answers to what it sent itself (probes).
            // (The sender is parsed only in gateway mode: this is the stanza path.)
            if self.gateway
                && let Some(from) = from().filter(|f| !self.is_server_domain(f))
                && !self.local.awaits(&st)
            {
                return self.send_remote(from, to, st, since);
            }
            return self.local.handle(&st).into();
        }
        let Some(from) = from() else {
            tracing::debug!(stanza = %st.describe(), "dropping an outbound stanza without a valid 'from'");
            return Step::Done;
        };
        if !self.is_served_here(&from) {
            tracing::warn!(stanza = %st.describe(), "refusing to relay a stanza between two remote domains");
            return Step::Done;
        }
        if let Some(s) = &self.strangers
            && let (Some(f), Some(t)) = (st.get_attr("from"), st.get_attr("to"))
        {
            s.learn(&st, f, t, self.component_for(&from).is_some());
        }
        self.send_remote(from, to, st, since)
    }

    /// Queue on the link of (from, to); a bounce to route if no link can be had now.
    fn send_remote(&self, from: Domain, to: Domain, mut st: Element, since: Instant) -> Step {
        let weight = st.weight();
        for _ in 0..3 {
            let link = match self.link(&from, &to) {
                Ok(l) => l,
                Err(Refusal::Limit(key)) => {
                    return error_reply(&st, C::ResourceConstraint, Some(&format!("too many outbound streams ({key})"))).into();
                }
                Err(Refusal::Unavailable(why)) => {
                    return error_reply(&st, C::ResourceConstraint, Some(&format!("no outbound stream can be opened now ({why})"))).into();
                }
                Err(Refusal::Policy(why)) => return error_reply(&st, C::PolicyViolation, Some(&why)).into(),
            };
            match link.stanzas.try_send_weighted(Routed { stanza: st, since }, weight) {
                Ok(()) => return Step::Done,
                Err(queue::TrySendError::Full(back)) => {
                    return Step::Full(Blocked { stanza: back.stanza, since, queue: link.stanzas, weight, to });
                }
                Err(queue::TrySendError::Closed(back)) => {
                    // That stream ended between lookup and send; forget it and try a new one.
                    self.remove(&from, &to, &link.stream);
                    st = back.stanza;
                }
            }
        }
        error_reply(&st, C::RemoteServerTimeout, Some("outbound stream kept closing; try again")).into()
    }

    /// The link of (local, remote), opening one if there is none. Refused when the policy
    /// refuses the remote domain (nothing is dialled) or a limit is reached.
    pub fn link(&self, local: &Domain, remote: &Domain) -> Result<Link, Refusal> {
        let key = (local.clone(), remote.clone());
        if let Some(l) = self.links.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(l.clone());
        }
        // The internal link (gateway mode) carries what federation already let in.
        if !self.is_served_here(remote)
            && let Verdict::Refuse(why) = self.policy.verdict(remote)
        {
            return Err(Refusal::Policy(why));
        }
        let mut map = self.links.write().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(&key) {
            return Ok(l.clone());
        }
        let Some(opener) = self.opener.get() else {
            return Err(Refusal::Unavailable("router not wired"));
        };
        let link = opener.open(local, remote)?;
        map.insert(key, link.clone());
        Ok(link)
    }

    /// The current link of a pair, if any (for probes and status).
    pub fn existing(&self, local: &Domain, remote: &Domain) -> Option<Link> {
        self.links.read().unwrap_or_else(|e| e.into_inner()).get(&(local.clone(), remote.clone())).cloned()
    }

    /// Forget the link of (local, remote) if it still belongs to stream `id`.
    pub fn remove(&self, local: &Domain, remote: &Domain, id: &str) {
        let key = (local.clone(), remote.clone());
        let mut map = self.links.write().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|l| &*l.stream == id) {
            map.remove(&key);
        }
    }

    /// Receiving-server role: ask `remote`'s authoritative server whether `key` is valid for
    /// (local, remote, stream_id), over our link to it (waits for the answer, bounded by
    /// `timeouts.dialback`; never for room in a queue).
    pub async fn verify(&self, local: &Domain, remote: &Domain, stream_id: &str, key: &str) -> (Answer, Option<String>) {
        let (tx, rx) = oneshot::channel();
        let mut req = VerifyRequest { stream_id: stream_id.to_owned(), key: key.to_owned(), reply: tx };
        let mut sent = false;
        for _ in 0..3 {
            let link = match self.link(local, remote) {
                Ok(l) => l,
                Err(Refusal::Limit(k)) => {
                    return (Answer::error(C::ResourceConstraint, format!("too many outbound streams on this server ({k})")), None);
                }
                Err(Refusal::Unavailable(why)) => {
                    return (Answer::error(C::ResourceConstraint, format!("no outbound stream can be opened now ({why})")), None);
                }
                Err(Refusal::Policy(why)) => return (Answer::error(C::PolicyViolation, why), None),
            };
            let Some(verifies) = &link.verifies else {
                return (Answer::error(C::RemoteConnectionFailed, format!("no dialback route to {remote}")), None);
            };
            match verifies.try_send_weighted(req, 1) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(queue::TrySendError::Full(_)) => {
                    return (Answer::error(C::ResourceConstraint, format!("too many verifications waiting for {remote}; try again")), None);
                }
                Err(queue::TrySendError::Closed(back)) => {
                    self.remove(local, remote, &link.stream);
                    req = back;
                }
            }
        }
        if !sent {
            return (Answer::error(C::RemoteConnectionFailed, format!("no stream to {remote} could be kept open")), None);
        }
        let limit = self.dialback_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => (Answer::error(C::RemoteConnectionFailed, format!("the stream to {remote}'s authoritative server ended")), None),
            Err(_) => (
                Answer::error(C::RemoteServerTimeout, format!("{remote}'s authoritative server did not answer in time")),
                Some(format!("{remote}'s authoritative server did not answer within {}s (timeouts.dialback)", limit.as_secs())),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ns;
    use std::sync::Mutex;

    struct Allow;
    impl PolicyView for Allow {
        fn verdict(&self, _: &Domain) -> Verdict {
            Verdict::Allow
        }
    }

    /// Links whose stream never takes anything from its queue (a peer that never reads);
    /// the receivers are kept, so the queues stay open.
    struct Stalled(Mutex<Vec<queue::QueueRx<Routed>>>);
    impl Opener for Stalled {
        fn open(&self, _: &Domain, _: &Domain) -> Result<Link, Refusal> {
            let (tx, rx) = queue::queue(1_000_000, 16 * 1024);
            self.0.lock().unwrap().push(rx);
            Ok(Link { kind: LinkKind::S2sOutbound, stream: "s1".into(), stanzas: tx, verifies: None })
        }
    }

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    fn iq(typ: &str, i: usize) -> Element {
        Element::new("iq", ns::SERVER)
            .attr("type", typ)
            .attr("id", format!("i{i}"))
            .attr("from", "a.test")
            .attr("to", "r.test")
            .child(Element::new("ping", ns::PING))
    }

    /// A queue full in bytes makes the producer wait, never drop; a link that makes no room
    /// within the deadline gets the overflow rule (requests bounced, results dropped, both
    /// counted), exactly at the deadline; memory stays within the queue's bytes.
    #[tokio::test(start_paused = true)]
    async fn a_full_link_makes_producers_wait_and_bounces_only_after_the_deadline() {
        let router = Router::new(vec![d("a.test")], Arc::new(Allow), Duration::from_secs(5));
        router.set_opener(Box::new(Stalled(Mutex::new(Vec::new()))));
        let mut queued = 0;
        let blocked = loop {
            match router.route(iq("get", queued)) {
                None => queued += 1,
                Some(b) => break b,
            }
        };
        assert!(queued > 10, "{queued} queued before the bytes were spent");
        assert_eq!(router.overflows(), Overflows::default(), "nothing bounced or dropped: the producer waits");
        // No room within the deadline: still waiting just before it.
        let limit = Duration::from_secs(30);
        assert!(tokio::time::timeout(limit - Duration::from_millis(1), blocked.room()).await.is_err());
        router.overflow(blocked);
        assert_eq!(router.overflows(), Overflows { bounced: 1, dropped: 0 });
        // A result cannot be answered: dropped and counted.
        let t0 = tokio::time::Instant::now();
        router.route_waiting(iq("result", 0), limit).await;
        assert_eq!(t0.elapsed(), limit, "waited exactly timeouts.write");
        assert_eq!(router.overflows(), Overflows { bounced: 1, dropped: 1 });
    }

    /// Links numbered in the order opened, each with a small queue (a few stanzas), their
    /// receivers kept: a test plays the streams behind them.
    struct Numbered(Mutex<Vec<queue::QueueRx<Routed>>>);
    impl Opener for Numbered {
        fn open(&self, _: &Domain, _: &Domain) -> Result<Link, Refusal> {
            let (tx, rx) = queue::queue(1_000, 1_000);
            let mut rxs = self.0.lock().unwrap();
            rxs.push(rx);
            Ok(Link { kind: LinkKind::S2sOutbound, stream: format!("s{}", rxs.len()).into(), stanzas: tx, verifies: None })
        }
    }

    fn numbered() -> (Arc<Router>, &'static Numbered) {
        let router = Arc::new(Router::new(vec![d("a.test")], Arc::new(Allow), Duration::from_secs(5)));
        let opener: &'static Numbered = Box::leak(Box::new(Numbered(Mutex::new(Vec::new()))));
        struct Shared(&'static Numbered);
        impl Opener for Shared {
            fn open(&self, l: &Domain, r: &Domain) -> Result<Link, Refusal> {
                self.0.open(l, r)
            }
        }
        router.set_opener(Box::new(Shared(opener)));
        (router, opener)
    }

    /// The ids of what link `n` (from 1) holds, taken from its queue.
    fn taken(opener: &Numbered, n: usize) -> Vec<String> {
        let mut rxs = opener.0.lock().unwrap();
        std::iter::from_fn(|| rxs[n - 1].try_recv()).map(|r| r.stanza.get_attr("id").unwrap().to_owned()).collect()
    }

    /// A stream ending: its queue closed (nothing more accepted) and, separately, its link
    /// forgotten. In the window between (closed, still in the route table) a stanza routed
    /// to it goes to a new link: routed, not dropped.
    #[tokio::test(start_paused = true)]
    async fn a_stanza_routed_to_a_link_closed_but_not_yet_removed_goes_to_a_new_link() {
        let (router, opener) = numbered();
        assert!(router.route(iq("get", 0)).is_none());
        opener.0.lock().unwrap()[0].close();
        assert!(router.existing(&d("a.test"), &d("r.test")).is_some_and(|l| &*l.stream == "s1"), "still in the table");
        assert!(router.route(iq("get", 1)).is_none());
        assert_eq!(taken(opener, 1), ["i0"], "what was queued before the close stays for the ending stream to dispose of");
        assert_eq!(taken(opener, 2), ["i1"]);
        assert_eq!(router.overflows(), Overflows::default());
    }

    /// A producer waiting for room in a link that then ends (its stream forgets the link and
    /// closes its queue) is woken at once — no deadline waited out — and its stanza goes to a
    /// new link; whichever order the stream does the two in.
    #[tokio::test(start_paused = true)]
    async fn a_producer_waiting_for_room_in_a_link_that_ends_goes_to_a_new_link_at_once() {
        for remove_first in [true, false] {
            let (router, opener) = numbered();
            let mut i = 0;
            while router.route(iq("get", i)).is_none() {
                i += 1;
            }
            let blocked_id = format!("i{i}");
            let t0 = tokio::time::Instant::now();
            let waiting = {
                let router = router.clone();
                tokio::spawn(async move { router.route_waiting(iq("set", 999), Duration::from_secs(30)).await })
            };
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished(), "waits for room");
            if remove_first {
                router.remove(&d("a.test"), &d("r.test"), "s1");
            }
            opener.0.lock().unwrap()[0].close();
            if !remove_first {
                tokio::task::yield_now().await;
                router.remove(&d("a.test"), &d("r.test"), "s1");
            }
            waiting.await.unwrap();
            assert_eq!(t0.elapsed(), Duration::ZERO, "woken by the close, not the deadline");
            assert_eq!(taken(opener, 2), ["i999"], "remove first: {remove_first}");
            assert_eq!(taken(opener, 1).len(), i, "the queued ones stay for the ending stream ({blocked_id} was never queued)");
            assert_eq!(router.overflows(), Overflows::default());
        }
    }

    /// Where nobody can wait (a stream's leftovers), a stanza routed to a link that is full
    /// is answered by the overflow rule at once (a request bounced, a result dropped), and
    /// one routed to a link that closed goes to a new one: nothing is left unaccounted for.
    #[tokio::test(start_paused = true)]
    async fn leftovers_routed_without_waiting_are_queued_or_counted() {
        let (router, opener) = numbered();
        let mut i = 0;
        while router.route(iq("get", i)).is_none() {
            i += 1;
        }
        router.route_now(iq("get", 1000));
        router.route_now(iq("result", 1001));
        assert_eq!(router.overflows(), Overflows { bounced: 1, dropped: 1 });
        opener.0.lock().unwrap()[0].close();
        router.route_now(iq("get", 1002));
        assert_eq!(taken(opener, 2), ["i1002"]);
        assert_eq!(router.overflows(), Overflows { bounced: 1, dropped: 1 });
    }

    /// A waiting producer is let in as soon as the link drains (to half its bytes).
    #[tokio::test(start_paused = true)]
    async fn a_producer_waiting_for_room_goes_on_when_the_link_drains() {
        let (tx, mut rx) = queue::queue::<u32>(1_000_000, 100);
        for i in 0..10 {
            tx.try_send_weighted(i, 10).unwrap();
        }
        assert!(matches!(tx.try_send_weighted(10, 10), Err(queue::TrySendError::Full(_))));
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move {
                tx.room(10).await;
                tx.try_send_weighted(10, 10).is_ok()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // One out: room for one, but the waiter wakes only at half (a burst moves in steps).
        rx.try_recv().unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        for _ in 0..4 {
            rx.try_recv().unwrap();
        }
        assert!(waiter.await.unwrap(), "sent once the queue drained to half");
        // Closing wakes waiters at once.
        while tx.try_send_weighted(0, 10).is_ok() {}
        let waiter = tokio::spawn(async move { tx.room(10).await });
        tokio::task::yield_now().await;
        rx.close();
        waiter.await.unwrap();
    }
}
