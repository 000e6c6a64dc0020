//! The driver of inbound streams: accepts the connection (plain, or TLS from the first
//! byte), owns socket, framer and timers, and feeds a receiving [`Machine`]. The protocol
//! lives in [`crate::proto::machine`]; here are only the I/O it asks for: TLS handshakes
//! as server, questions to authoritative servers, deliveries to the router.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::Caps;
use super::conn::{Conn, Transport};
use super::driver::{Driver, Role, tls_established};
use crate::domain::Domain;
use crate::events::*;
use crate::limits::InboundSlot;
use crate::net::tls_io::TlsIo;
use crate::proto::dialback::Answer;
use crate::proto::machine::{Ask, Input, Machine, Output, TlsFacts, TlsRole};
use crate::table::{ConnEntry, Observation};

/// An authoritative server's answer, back from the verification task.
struct Answered {
    local: Domain,
    remote: Domain,
    answer: Answer,
    detail: Option<String>,
}

pub async fn run(caps: Arc<Caps>, tcp: TcpStream, peer: SocketAddr, slot: InboundSlot) {
    let entry = caps.table.open(Direction::In, &caps.shutdown, caps.kind());
    entry.apply(Observation::PeerAddr(peer));
    serve(caps, entry, Transport::Plain(tcp), None, slot).await;
}

/// XEP-0368: TLS from the first byte (the certificate is picked by SNI), then the stream.
pub async fn run_direct(caps: Arc<Caps>, tcp: TcpStream, peer: SocketAddr, slot: InboundSlot) {
    let entry = caps.table.open(Direction::In, &caps.shutdown, caps.kind());
    entry.apply(Observation::PeerAddr(peer));
    entry.apply(Observation::DirectTls);
    // The certificate follows SNI (a hosted domain's own, else the first domain's).
    let config = match caps.tls.server_config(&caps.settings.domains[0]) {
        Ok(c) => c,
        Err(e) => return caps.observer.closed(&entry, &format!("direct TLS: {e}")),
    };
    let tls = match tokio::time::timeout(caps.settings.timeouts.negotiation, Box::pin(TlsIo::accept(tcp, config))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return caps.observer.closed(&entry, &format!("direct TLS handshake failed: {e}")),
        Err(_) => return caps.observer.closed(&entry, "direct TLS handshake timed out (timeouts.negotiation)"),
    };
    let facts = tls_established(&entry, "direct TLS (XEP-0368)", &tls);
    serve(caps, entry, Transport::Tls(Box::new(tls)), Some(facts), slot).await;
}

async fn serve(caps: Arc<Caps>, entry: Arc<ConnEntry>, io: Transport, direct: Option<TlsFacts>, slot: InboundSlot) {
    let conn = Conn::new(io, entry.clone(), &caps.settings.limits, caps.settings.timeouts.write);
    let machine = Machine::receiving(caps.env.clone(), entry.id.as_str().into(), Driver::now(), direct, Box::new(slot));
    let policy = caps.policy_changes.clone();
    // `caps` and `entry` move into the driver: the task keeps one copy of each (its size is
    // memory per idle stream).
    let mut d = Driver::new(caps, entry, conn, machine, Direction::In);
    // Answers of the authoritative servers asked (at most `limits.max_verifications_in_flight`
    // at once); a queue that holds nothing while no verification is under way.
    let (answers_tx, answers) = crate::router::queue::queue::<Answered>(64, 64);
    let end = d.run(&mut Inbound { answers_tx, answers, policy }).await;
    d.abandon_delivery();
    // Read here, not kept across the stream's life (per-stream task size).
    let peer = d.entry.peer_addr().unwrap_or_default();
    // The domains it named, a field of its own (JSON logs carry it apart); none before its
    // header was accepted.
    let remote = Some(d.entry.remotes().join(",")).filter(|r| !r.is_empty());
    let remote = remote.as_deref();
    match &end.error {
        Some(e) => tracing::warn!(stream = %d.entry.id, %peer, remote, condition = %e.condition, "closing inbound stream: {e}"),
        None => tracing::info!(stream = %d.entry.id, %peer, remote, "inbound stream ended: {}", end.reason),
    }
    Box::pin(d.close(&end)).await;
    d.caps.observer.closed(&d.entry, &end.reason);
}

/// A receiving stream's part of the loop: the authoritative servers' answers (at most
/// `limits.max_verifications_in_flight` at once; a queue that holds nothing while no
/// verification is under way), its TLS handshake as server, the questions it asks.
struct Inbound {
    answers_tx: crate::router::queue::QueueTx<Answered>,
    answers: crate::router::queue::QueueRx<Answered>,
    policy: tokio::sync::watch::Receiver<u64>,
}

impl Role for Inbound {
    /// An answer (the queue never ends: its sender is here too).
    type Event = Option<Answered>;

    fn open(&self, _: &Driver) -> [bool; 2] {
        [true, false]
    }

    fn queues(
        &mut self,
    ) -> (
        impl Future<Output = Option<Answered>> + Send + '_,
        impl Future<Output = Option<Option<Answered>>> + Send + '_,
        impl Future<Output = ()> + Send + '_,
    ) {
        use futures_util::FutureExt;
        (self.answers.recv(), std::future::pending(), self.policy.changed().map(|_| ()))
    }

    fn feed(&mut self, d: &mut Driver, a: Option<Answered>) {
        if let Some(a) = a {
            d.feed(Input::Answer { local: a.local, remote: a.remote, answer: a.answer, detail: a.detail });
        }
    }

    fn tls<'a>(&'a mut self, d: &'a mut Driver, role: TlsRole) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match role {
                TlsRole::Server { local } => starttls(d, &local).await,
                TlsRole::Client { .. } => d.feed(Input::TlsFailed("a receiving stream is the TLS server".into())),
            }
        })
    }

    fn output(&mut self, d: &mut Driver, o: Output) {
        match o {
            Output::Ask(ask) => ask_authoritative(&d.caps, ask, self.answers_tx.clone()),
            o => tracing::error!(stream = %d.entry.id, "inbound stream: unexpected {o:?}"),
        }
    }

    fn trim(&mut self) {
        self.answers.trim();
    }
}

/// Receiving Server: ask the authoritative server over our outbound stream to it.
fn ask_authoritative(caps: &Arc<Caps>, ask: Ask, tx: crate::router::queue::QueueTx<Answered>) {
    let router = caps.router.clone();
    caps.tasks.spawn(async move {
        let asked = tokio::time::Instant::now();
        let (answer, detail) = router.verify(&ask.local, &ask.remote, &ask.stream_id, &ask.key).await;
        use crate::proto::dialback::Answer as A;
        let outcome = match &answer {
            A::Valid => "valid",
            A::Invalid => "invalid",
            A::Error { condition, .. } if *condition == crate::proto::stanza::StanzaErrorCondition::RemoteServerTimeout => "timeout",
            A::Error { .. } => "error",
        };
        crate::latency::of(&crate::latency::DIALBACK, outcome).observe(asked.elapsed());
        if tx.try_send_weighted(Answered { local: ask.local, remote: ask.remote, answer, detail }, 1).is_err() {
            tracing::debug!("a dialback answer arrived after its stream ended");
        }
    });
}

/// STARTTLS (RFC 6120 §5.4.3): `<proceed/>` is queued; write it, then the handshake as
/// server with `local`'s certificate, within the negotiation deadline.
async fn starttls(d: &mut Driver, local: &Domain) {
    d.flush().await;
    if d.machine.is_closed() {
        return;
    }
    let Transport::Plain(tcp) = std::mem::replace(&mut d.conn.io, Transport::Gone) else {
        return d.feed(Input::TlsFailed("transport in an unexpected state".into()));
    };
    let config = match d.caps.tls.server_config(local) {
        Ok(c) => c,
        Err(e) => return d.feed(Input::TlsFailed(e.to_string())),
    };
    let deadline = d
        .machine
        .write_deadline()
        .map_or_else(|| tokio::time::Instant::now() + d.caps.settings.timeouts.negotiation, tokio::time::Instant::from_std);
    match tokio::time::timeout_at(deadline, Box::pin(TlsIo::accept(tcp, config))).await {
        Ok(Ok(tls)) => {
            let facts = tls_established(&d.entry, "TLS", &tls);
            d.conn.io = Transport::Tls(Box::new(tls));
            d.feed(Input::TlsEstablished(facts));
        }
        Ok(Err(e)) => d.feed(Input::TlsFailed(e.to_string())),
        Err(_) => d.feed(Input::TlsFailed("timed out (timeouts.negotiation)".into())),
    }
}
