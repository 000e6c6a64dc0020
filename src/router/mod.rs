//! The router: where a stanza goes. Hosted domains → [`local`] services; remote domains →
//! the outbound stream of the (local, remote) domain pair, created on demand, with a
//! bounded queue (senders wait when it is full: backpressure, not unbounded memory).
//!
//! The seam for later: components (XEP-0114) and a forwarded internal server are further
//! kinds of local destination, chosen in [`Router::route`].

pub mod local;
pub mod queue;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::domain::Domain;
use crate::engine::Shared;
use crate::engine::events::Direction;
use crate::engine::table::ConnEntry;
use crate::proto::dialback::Answer;
use crate::proto::stanza::{ErrorType, error_reply};
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

/// The sending side of one outbound stream.
#[derive(Clone)]
pub struct OutboundHandle {
    pub stanzas: queue::QueueTx,
    pub verifies: mpsc::Sender<VerifyRequest>,
    pub entry: Arc<ConnEntry>,
}

/// Why no outbound stream can be had for a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_outbound` reached.
    Limit,
    /// Policy refuses the remote domain (the rule, in words).
    Policy(String),
}

pub struct Router {
    /// One outbound stream per domain pair (local, remote). Read-locked to find a handle;
    /// write-locked only to add or remove one.
    outbound: RwLock<HashMap<(Domain, Domain), OutboundHandle>>,
    pub local: local::LocalServices,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    pub fn new() -> Router {
        Router { outbound: RwLock::new(HashMap::new()), local: local::LocalServices::default() }
    }

    /// Route a stanza (from a remote peer or generated here). Replies from local services are
    /// routed in turn; errors are never answered with errors, so this ends.
    pub async fn route(&self, shared: &Arc<Shared>, stanza: Element) {
        let mut next = Some(stanza);
        while let Some(st) = next.take() {
            let Some(to) = st.get_attr("to").and_then(crate::proto::jid::domain_of) else {
                tracing::debug!(stanza = %st.describe(), "dropping a stanza without a valid 'to'");
                continue;
            };
            if shared.is_hosted(&to) {
                next = self.local.handle(shared, &st);
                continue;
            }
            let Some(from) = st.get_attr("from").and_then(crate::proto::jid::domain_of) else {
                tracing::debug!(stanza = %st.describe(), "dropping an outbound stanza without a valid 'from'");
                continue;
            };
            if !shared.is_hosted(&from) {
                tracing::warn!(stanza = %st.describe(), "refusing to relay a stanza between two remote domains");
                continue;
            }
            next = self.send_remote(shared, from, to, st).await;
        }
    }

    /// Queue for the outbound stream of (from, to); returns a bounce to route if impossible.
    async fn send_remote(&self, shared: &Arc<Shared>, from: Domain, to: Domain, mut st: Element) -> Option<Element> {
        for _ in 0..3 {
            let h = match self.handle(shared, &from, &to) {
                Ok(h) => h,
                Err(Refusal::Limit) => {
                    return error_reply(
                        &st,
                        ErrorType::Wait,
                        "resource-constraint",
                        Some("too many outbound streams (limits.max_outbound)"),
                    );
                }
                Err(Refusal::Policy(why)) => return error_reply(&st, ErrorType::Cancel, "policy-violation", Some(&why)),
            };
            match h.stanzas.send(st).await {
                Ok(()) => return None,
                Err(back) => {
                    // That stream ended between lookup and send; forget it and try a new one.
                    self.remove(&from, &to, &h.entry.id);
                    st = back;
                }
            }
        }
        error_reply(&st, ErrorType::Wait, "remote-server-timeout", Some("outbound stream kept closing; try again"))
    }

    /// The outbound handle for (local, remote), creating the stream if there is none.
    /// Refused when policy refuses the remote domain (no connection is attempted), or when
    /// a new stream would exceed `limits.max_outbound` (a peer must not make us open
    /// connections without bound, e.g. with db:result for made-up domains).
    pub fn handle(&self, shared: &Arc<Shared>, local: &Domain, remote: &Domain) -> Result<OutboundHandle, Refusal> {
        let key = (local.clone(), remote.clone());
        if let Some(h) = self.outbound.read().unwrap().get(&key) {
            return Ok(h.clone());
        }
        if let crate::policy::Verdict::Refuse(why) = shared.policy.verdict(remote) {
            return Err(Refusal::Policy(why));
        }
        let mut map = self.outbound.write().unwrap();
        if let Some(h) = map.get(&key) {
            return Ok(h.clone());
        }
        let slot = match shared.gauges.outbound(&shared.settings.limits) {
            Ok(slot) => slot,
            Err(crate::engine::limits::Refused(key)) => {
                crate::engine::limits::refused_once(key, remote.as_str(), || format!("not opening a stream to {remote}: {key} reached"));
                return Err(Refusal::Limit);
            }
        };
        let (stx, srx) = queue::queue(shared.settings.limits.outbound_queue, shared.settings.limits.outbound_queue_bytes);
        let (vtx, vrx) = mpsc::channel(64);
        let entry = shared.table.open(Direction::Out, &shared.shutdown);
        entry.set_domains(Some(local.as_str()), Some(remote.as_str()));
        let h = OutboundHandle { stanzas: stx, verifies: vtx, entry: entry.clone() };
        map.insert(key, h.clone());
        drop(map);
        let shared2 = shared.clone();
        let (l, r) = (local.clone(), remote.clone());
        shared.tasks.spawn(async move {
            crate::stream::outbound::run(shared2, l, r, entry, srx, vrx).await;
            drop(slot);
        });
        Ok(h)
    }

    /// The current outbound handle for a pair, if any (for probes and status).
    pub fn existing(&self, local: &Domain, remote: &Domain) -> Option<OutboundHandle> {
        self.outbound.read().unwrap().get(&(local.clone(), remote.clone())).cloned()
    }

    /// Forget the handle of (local, remote) if it still belongs to stream `id`.
    pub fn remove(&self, local: &Domain, remote: &Domain, id: &str) {
        let key = (local.clone(), remote.clone());
        let mut map = self.outbound.write().unwrap();
        if map.get(&key).is_some_and(|h| h.entry.id == id) {
            map.remove(&key);
        }
    }

    /// Receiving-server role: ask `remote`'s authoritative server whether `key` is valid for
    /// (local, remote, stream_id), over our outbound stream to it.
    pub async fn verify(
        &self,
        shared: &Arc<Shared>,
        local: &Domain,
        remote: &Domain,
        stream_id: &str,
        key: &str,
    ) -> (Answer, Option<String>) {
        let (tx, rx) = oneshot::channel();
        let mut req = VerifyRequest { stream_id: stream_id.to_owned(), key: key.to_owned(), reply: tx };
        let mut sent = false;
        for _ in 0..3 {
            let h = match self.handle(shared, local, remote) {
                Ok(h) => h,
                Err(Refusal::Limit) => {
                    return (Answer::error("resource-constraint", "too many outbound streams on this server (limits.max_outbound)"), None);
                }
                Err(Refusal::Policy(why)) => return (Answer::error("policy-violation", why), None),
            };
            match h.verifies.send(req).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(mpsc::error::SendError(back)) => {
                    self.remove(local, remote, &h.entry.id);
                    req = back;
                }
            }
        }
        if !sent {
            return (Answer::error("remote-connection-failed", format!("no stream to {remote} could be kept open")), None);
        }
        let limit = shared.settings.timeouts.dialback;
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
