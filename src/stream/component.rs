//! The driver of external components' streams (XEP-0114, `[components] listen`): a
//! component [`Machine`] over a plain TCP connection (components connect over loopback or a
//! private network; XEP-0114 has no TLS), attached to the router once its handshake is right,
//! fed with the stanzas routed to its domain from a bounded queue (backpressure as for
//! outbound streams). When it ends, its domain is detached and what was queued for it bounces.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::Caps;
use super::conn::{Conn, Transport};
use super::driver::{Driver, Role};
use crate::domain::Domain;
use crate::events::{Direction, StreamKind};
use crate::limits::InboundSlot;
use crate::proto::machine::component::Secrets;
use crate::proto::machine::{EndKind, Input, Machine, Output};
use crate::proto::stanza::error_reply;
use crate::router::{Link, LinkKind};

use super::driver::STANZA_HIGH_WATER as HIGH_WATER;

pub async fn run(caps: Arc<Caps>, tcp: TcpStream, peer: SocketAddr, slot: InboundSlot, secrets: Secrets) {
    let (mut d, mut role) = {
        let entry = caps.table.open(Direction::In, &caps.shutdown, StreamKind::Component);
        entry.apply(crate::table::Observation::PeerAddr(peer));
        let limits = &caps.settings.limits;
        let conn = Conn::new(Transport::Plain(tcp), entry.clone(), limits, caps.settings.timeouts.write);
        // The slot moves into the machine (admitted at the handshake) and is given back when
        // the driver, which owns the machine, is dropped: after the hold below.
        let machine = Machine::component(caps.env.clone(), entry.id.as_str().into(), Driver::now(), secrets, Box::new(slot));
        let mut d = Driver::new(caps.clone(), entry, conn, machine, Direction::In);
        // Before the handshake only a header and a <handshake/> may come: a stranger's
        // connection holds at most PRE_HANDSHAKE_MAX_SIZE of unparsed input, not a stanza's worth.
        d.conn.framer.set_max_size(PRE_HANDSHAKE_MAX_SIZE.min(limits.max_stanza_size), true);
        let (tx, stanzas) = crate::router::queue::queue(limits.outbound_queue, limits.outbound_queue_bytes);
        (d, Component { tx: Some(tx), stanzas, attached: None })
    };
    // Nothing but the driver and the role is kept across the stream's life (per-stream task
    // size): the capabilities, the entry and the peer's address are the driver's from here.
    drop(caps);
    let end = d.run(&mut role).await;
    let Component { mut stanzas, attached, .. } = role;
    let (caps, entry) = (d.caps.clone(), d.entry.clone());
    let peer = entry.peer_addr().and_then(|p| p.parse::<SocketAddr>().ok()).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    d.abandon_delivery();
    if let Some(domain) = &attached {
        caps.router.detach(domain, &entry.id);
    }
    stanzas.close();
    // What was queued for it: as the machine's ending says (a component's bounces).
    let mut bounced = Vec::new();
    if let Some((condition, text)) = attached.as_ref().and_then(|domain| end.bounce(&caps.env, domain)) {
        while let Some(r) = stanzas.try_recv() {
            bounced.extend(error_reply(&r.stanza, condition, Some(&text)));
        }
    }
    while let Some(r) = stanzas.try_recv() {
        bounced.push(r.stanza);
    }
    match &attached {
        Some(domain) => tracing::info!(stream = %entry.id, %peer, "component {domain} disconnected: {}", end.reason),
        // Before the handshake anyone who reaches the listener can end streams at will (a
        // wrong secret, an unknown domain): once a minute per address, with the count.
        None => crate::limits::refused_once(crate::limits::LimitKey::ComponentHandshake, &peer.ip().to_string(), || {
            format!("component stream {} from {peer} ended before its handshake: {}", entry.id, end.reason)
        }),
    }
    Box::pin(d.close(&end)).await;
    // Fed to the component but never written (its connection failed, or the close could
    // not write them): bounced as what was still queued is.
    if let Some((condition, text)) = attached.as_ref().and_then(|domain| end.bounce(&caps.env, domain)) {
        for mut st in d.conn.take_unsent() {
            crate::proto::machine::component::retag(&mut st, crate::proto::ns::COMPONENT_ACCEPT, crate::proto::ns::SERVER);
            bounced.extend(error_reply(&st, condition, Some(&text)));
        }
    }
    caps.observer.closed(&entry, &end.reason);
    for st in bounced {
        caps.router.route_now(st);
    }
    // The secret is all that authenticates a component, and a guess costs one connection:
    // a failed handshake keeps its address's unauthenticated slot a while after the stream
    // ended, so one address guesses at most `limits.max_unauthenticated_per_address` times
    // per WRONG_SECRET_HOLD (measured before: ~1 700 guesses a second on one connection).
    if attached.is_none() && end.kind == EndKind::Refused {
        tokio::select! {
            _ = tokio::time::sleep(WRONG_SECRET_HOLD) => {}
            _ = caps.shutdown.cancelled() => {}
        }
    }
    drop(d);
}

/// A component stream's part of the loop: the queue of stanzas routed to its domain, and
/// the attachment of the domain to this stream in the router.
struct Component {
    /// The queue's sending end, until the router has it (the attachment).
    tx: Option<crate::router::queue::QueueTx<crate::router::Routed>>,
    stanzas: crate::router::queue::QueueRx<crate::router::Routed>,
    attached: Option<Domain>,
}

impl Role for Component {
    /// From the stanza queue (`None`: the router is gone).
    type Event = Option<crate::router::Routed>;

    fn open(&self, d: &Driver) -> [bool; 2] {
        [d.machine.accepts_stanzas() && d.conn.pending_output() < HIGH_WATER, false]
    }

    fn queues(
        &mut self,
    ) -> (
        impl Future<Output = Option<crate::router::Routed>> + Send + '_,
        impl Future<Output = Option<Option<crate::router::Routed>>> + Send + '_,
        impl Future<Output = ()> + Send + '_,
    ) {
        // No second queue; policy changes do not concern components.
        (self.stanzas.recv(), std::future::pending(), std::future::pending())
    }

    fn feed(&mut self, d: &mut Driver, s: Option<crate::router::Routed>) {
        d.feed_stanzas(s, &mut self.stanzas);
    }

    fn tls<'a>(
        &'a mut self,
        d: &'a mut Driver,
        _: crate::proto::machine::TlsRole,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        // XEP-0114 has no TLS; the machine never asks.
        Box::pin(async move { d.feed(Input::TlsFailed("a component stream has no TLS".into())) })
    }

    fn output(&mut self, d: &mut Driver, o: Output) {
        let Output::Attach(domain) = o else {
            return tracing::error!(stream = %d.entry.id, "component stream: unexpected {o:?}");
        };
        use crate::proto::stream::StreamErrorCondition as C;
        // Conflict is for a domain another stream has (XEP-0114).
        let result = match self.tx.take() {
            None => Err((C::Conflict, "attached twice".to_owned())),
            Some(tx) => {
                let link = Link { kind: LinkKind::Component, stream: d.entry.id.as_str().into(), stanzas: tx, verifies: None };
                d.caps.router.attach(&domain, link).map_err(|e| (C::Conflict, e.to_string()))
            }
        };
        if result.is_ok() {
            self.attached = Some(domain);
            d.conn.authenticated();
        }
        d.feed(Input::Attached(result));
    }

    fn trim(&mut self) {
        self.stanzas.trim();
    }
}

/// The largest header or `<handshake/>` a component stream may send before its handshake
/// is accepted (a header is a few hundred bytes, a handshake 60; a domain at most 1023).
pub const PRE_HANDSHAKE_MAX_SIZE: usize = 8 * 1024;

/// How long a failed component handshake keeps its connection slot (see [`run`]).
pub const WRONG_SECRET_HOLD: std::time::Duration = std::time::Duration::from_secs(1);
