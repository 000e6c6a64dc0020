//! The router: where a stanza goes. Hosted domains → [`local`] services; everything else →
//! the **link** registered for its domain pair (local, remote) in the route table. Today a
//! link is the outbound s2s stream of the pair, opened on demand; the table is keyed and
//! typed so that a bidirectional stream (XEP-0288), a component (XEP-0114), an internal
//! server behind a gateway and a peer node register the same way ([`LinkKind`]).
//!
//! **Routing never waits.** Each link has a queue bounded in count and bytes
//! (`limits.outbound_queue`, `limits.outbound_queue_bytes`). When it is full the stanza is
//! answered at once by the **overflow rule**: a bounceable stanza gets a
//! `<resource-constraint/>` error of type `wait` (RFC 6120 §8.3.3.18) back to its sender;
//! an error or result stanza (never answered, RFC 6120 §8.3.1) is dropped and counted in
//! the log. The stream that read it goes on reading: one slow remote never stalls the
//! streams that send to it.

pub mod local;
pub mod queue;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::domain::Domain;
use crate::proto::dialback::Answer;
use crate::proto::machine::PolicyView;
use crate::proto::stanza::{ErrorType, error_reply};
use crate::types::Verdict;
use crate::xml::Element;

/// Where the answer to a `db:verify` goes: the answer for the peer, and the full reason
/// for the operator when it is an error.
pub type VerifyReply = oneshot::Sender<(Answer, Option<String>)>;

/// A request from the receiving-server role to the authoritative server, sent on our
/// outbound stream to that domain (XEP-0220 §2.1.2).
#[derive(Debug)]
pub struct VerifyRequest {
    pub stream_id: String,
    pub key: String,
    /// The answer for the peer, and for the operator the full reason when it is an error.
    pub reply: VerifyReply,
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
    pub stanzas: queue::QueueTx,
    /// Dialback verifications this link carries to the remote's authoritative server.
    pub verifies: Option<queue::QueueTx<VerifyRequest>>,
}

/// Why no link can be had for a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A limit (its key) is reached, e.g. `limits.max_outbound`.
    Limit(&'static str),
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
        }
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
    pub fn attach(&self, domain: &Domain, link: Link) -> Result<(), String> {
        let mut map = self.attached.write().unwrap_or_else(|e| e.into_inner());
        match map.get(domain) {
            Some(l) if !l.stanzas.is_closed() => Err(format!("component {domain} is already connected (stream {})", l.stream)),
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
        self.components.iter().find(|c| *c == d || d.as_str().strip_suffix(c.as_str()).is_some_and(|r| r.ends_with('.')))
    }

    /// Queue on the component's stream; a bounce to route if it is not connected or full.
    fn send_component(&self, comp: &Domain, st: Element) -> Option<Element> {
        let link = self.attached.read().unwrap_or_else(|e| e.into_inner()).get(comp).cloned();
        let Some(link) = link else {
            return error_reply(&st, ErrorType::Cancel, "service-unavailable", Some(&format!("{comp} is not connected")));
        };
        match link.stanzas.try_send(st) {
            Ok(()) => None,
            Err(queue::TrySendError::Full(back)) => {
                error_reply(&back, ErrorType::Wait, "resource-constraint", Some(&format!("{comp} is not keeping up; try again")))
            }
            Err(queue::TrySendError::Closed(back)) => {
                self.detach(comp, &link.stream);
                error_reply(&back, ErrorType::Cancel, "service-unavailable", Some(&format!("{comp} is not connected")))
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

    /// Ours: `server.domains`, the components' domains and their subdomains.
    fn is_hosted(&self, d: &Domain) -> bool {
        self.hosted.iter().any(|h| h == d) || self.component_for(d).is_some()
    }

    /// Route a stanza (from a remote peer or generated here) without waiting. Replies from
    /// local services and bounces are routed in turn; errors are never answered with
    /// errors, so this ends.
    pub fn route(&self, stanza: Element) {
        let mut next = Some(stanza);
        while let Some(st) = next.take() {
            let Some(to) = st.get_attr("to").and_then(crate::proto::jid::domain_of) else {
                tracing::debug!(stanza = %st.describe(), "dropping a stanza without a valid 'to'");
                continue;
            };
            let from = || st.get_attr("from").and_then(crate::proto::jid::domain_of);
            if let Some(comp) = self.component_for(&to) {
                next = self.send_component(&comp.clone(), st);
                continue;
            }
            if self.is_hosted(&to) {
                // Gateway mode: what the world sends the hosted domains goes on to the
                // internal server, as the world domain that sent it; drawbridge keeps only the
                // answers to what it sent itself (probes).
                // (The sender is parsed only in gateway mode: this is the stanza path.)
                if self.gateway
                    && let Some(from) = from().filter(|f| !self.is_server_domain(f))
                    && !self.local.awaits(&st)
                {
                    next = self.send_remote(from, to, st);
                } else {
                    next = self.local.handle(&st);
                }
                continue;
            }
            let Some(from) = from() else {
                tracing::debug!(stanza = %st.describe(), "dropping an outbound stanza without a valid 'from'");
                continue;
            };
            if !self.is_hosted(&from) {
                tracing::warn!(stanza = %st.describe(), "refusing to relay a stanza between two remote domains");
                continue;
            }
            next = self.send_remote(from, to, st);
        }
    }

    /// Queue on the link of (from, to); a bounce to route if that cannot be done now.
    fn send_remote(&self, from: Domain, to: Domain, mut st: Element) -> Option<Element> {
        for _ in 0..3 {
            let link = match self.link(&from, &to) {
                Ok(l) => l,
                Err(Refusal::Limit(key)) => {
                    return error_reply(&st, ErrorType::Wait, "resource-constraint", Some(&format!("too many outbound streams ({key})")));
                }
                Err(Refusal::Policy(why)) => return error_reply(&st, ErrorType::Cancel, "policy-violation", Some(&why)),
            };
            match link.stanzas.try_send(st) {
                Ok(()) => return None,
                Err(queue::TrySendError::Full(back)) => {
                    // The overflow rule: answered at once, never waited for.
                    crate::limits::refused_once("limits.outbound_queue", to.as_str(), || {
                        format!(
                            "the stream to {to} is not keeping up; stanzas bounce with resource-constraint (limits.outbound_queue, limits.outbound_queue_bytes)"
                        )
                    });
                    return error_reply(
                        &back,
                        ErrorType::Wait,
                        "resource-constraint",
                        Some(&format!("the stream to {to} is not keeping up; try again")),
                    );
                }
                Err(queue::TrySendError::Closed(back)) => {
                    // That stream ended between lookup and send; forget it and try a new one.
                    self.remove(&from, &to, &link.stream);
                    st = back;
                }
            }
        }
        error_reply(&st, ErrorType::Wait, "remote-server-timeout", Some("outbound stream kept closing; try again"))
    }

    /// The link of (local, remote), opening one if there is none. Refused when the policy
    /// refuses the remote domain (nothing is dialled) or a limit is reached.
    pub fn link(&self, local: &Domain, remote: &Domain) -> Result<Link, Refusal> {
        let key = (local.clone(), remote.clone());
        if let Some(l) = self.links.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(l.clone());
        }
        // The internal link (gateway mode) carries what federation already let in.
        if !self.is_hosted(remote)
            && let Verdict::Refuse(why) = self.policy.verdict(remote)
        {
            return Err(Refusal::Policy(why));
        }
        let mut map = self.links.write().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(&key) {
            return Ok(l.clone());
        }
        let Some(opener) = self.opener.get() else {
            return Err(Refusal::Limit("router not wired"));
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
                    return (Answer::error("resource-constraint", format!("too many outbound streams on this server ({k})")), None);
                }
                Err(Refusal::Policy(why)) => return (Answer::error("policy-violation", why), None),
            };
            let Some(verifies) = &link.verifies else {
                return (Answer::error("remote-connection-failed", format!("no dialback route to {remote}")), None);
            };
            match verifies.try_send_weighted(req, 1) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(queue::TrySendError::Full(_)) => {
                    return (Answer::error("resource-constraint", format!("too many verifications waiting for {remote}; try again")), None);
                }
                Err(queue::TrySendError::Closed(back)) => {
                    self.remove(local, remote, &link.stream);
                    req = back;
                }
            }
        }
        if !sent {
            return (Answer::error("remote-connection-failed", format!("no stream to {remote} could be kept open")), None);
        }
        let limit = self.dialback_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => (Answer::error("remote-connection-failed", format!("the stream to {remote}'s authoritative server ended")), None),
            Err(_) => (
                Answer::error("remote-server-timeout", format!("{remote}'s authoritative server did not answer in time")),
                Some(format!("{remote}'s authoritative server did not answer within {}s (timeouts.dialback)", limit.as_secs())),
            ),
        }
    }
}
