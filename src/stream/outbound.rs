//! The driver of outbound streams: DNS and TCP (bounded, never to a denied address), then
//! an originating [`Machine`] fed from the socket, the stanza queue and the receiving
//! role's verification requests. What ends the stream decides what becomes of the stanzas
//! still queued: bounced (set-up failed), sent (closed on purpose) or re-routed (lost).

use std::sync::Arc;

use tokio::net::TcpStream;

use super::Caps;
use super::conn::{Conn, Transport};
use super::driver::{Driver, tls_established};
use crate::domain::Domain;
use crate::events::*;
use crate::net::tls_io::TlsIo;
use crate::proto::machine::{EndKind, Ending, Failure, Input, Machine, Output, TlsRole};
use crate::proto::stanza::error_reply;
use crate::router::VerifyRequest;
use crate::table::{ConnEntry, Observation};

pub async fn run(
    caps: Arc<Caps>,
    local: Domain,
    remote: Domain,
    entry: Arc<ConnEntry>,
    mut stanzas: crate::router::queue::QueueRx<crate::router::Routed>,
    mut verifies: crate::router::queue::QueueRx<VerifyRequest>,
) {
    entry.apply(Observation::Dialling);
    let mut control = entry.control();
    let connected = tokio::select! {
        // Boxed: the dialling state is freed once connected, not kept in the task.
        r = Box::pin(connect(&caps, &entry, &remote)) => r,
        r = control.closed() => Err(Failure::unreachable(r.reason)),
    };
    let (end, driver) = match connected {
        // No connection: the failure's ending, as the machine would have it.
        Err(f) => (f.ending(true), None),
        Ok((tcp, direct)) => {
            let conn = Conn::new(Transport::Plain(tcp), entry.clone(), &caps.settings.limits, caps.settings.timeouts.write);
            let machine =
                Machine::originating(caps.env.clone(), entry.id.as_str().into(), Driver::now(), local.clone(), remote.clone(), direct);
            let mut d = Driver::new(caps.clone(), entry.clone(), conn, machine, Direction::Out);
            let policy = caps.policy_changes.clone();
            let end = d.run(&mut Outbound { local: &local, remote: &remote, stanzas: &mut stanzas, verifies: &mut verifies, policy }).await;
            d.abandon_delivery();
            (end, Some(d))
        }
    };
    // No new work can reach us once the handle is gone and the queues are closed.
    caps.router.remove(&local, &remote, &entry.id);
    stanzas.close();
    verifies.close();
    match &end.kind {
        EndKind::Failed { condition } => {
            tracing::warn!(stream = %entry.id, %local, %remote, %condition, "outbound stream to {remote} failed: {}", end.reason)
        }
        EndKind::Closed => {}
        _ => tracing::info!(stream = %entry.id, %local, %remote, "outbound stream to {remote} ended: {}", end.reason),
    }
    // Verifications never fed to the machine (it answered those it had): the answer its
    // ending gives. (A block: nothing of it is kept across the awaits below.)
    {
        let (answer, detail) = end.unanswered(&remote);
        while let Some(v) = verifies.try_recv() {
            let _ = v.reply.send((answer.clone(), Some(detail.clone())));
        }
    }
    // What is still queued, as the ending says: bounced at once, or routed again (a new
    // stream) once this one is closed. (Closing on purpose, the machine had it sent first.)
    // (The bounce text is not kept across the close's await: per-stream task size.)
    let bounced = match end.bounce(&caps.env, &remote) {
        Some((condition, text)) => {
            // The table says why before anyone hears back: a sender that gets the bounce
            // finds the failed stream and its reason in the connection table.
            caps.observer.closed(&entry, &end.reason);
            while let Some(r) = stanzas.try_recv() {
                if let Some(b) = error_reply(&r.stanza, condition, Some(&text)) {
                    caps.router.route_now(b);
                }
            }
            true
        }
        None => false,
    };
    if bounced {
        if let Some(mut d) = driver {
            Box::pin(d.close(&end)).await;
            unsent(&caps, &end, &remote, d.conn.take_unsent());
        }
        return;
    }
    let mut rest = Vec::new();
    while let Some(r) = stanzas.try_recv() {
        rest.push(r.stanza);
    }
    if let Some(mut d) = driver {
        Box::pin(d.close(&end)).await;
        // Fed to the machine but never written (the connection failed, or the close could
        // not write them): before what was queued behind them.
        unsent(&caps, &end, &remote, d.conn.take_unsent());
    }
    for st in rest {
        caps.router.route_now(st);
    }
    caps.observer.closed(&entry, &end.reason);
}

/// Stanzas the stream took from its queue but never wrote: as the ending says for what is
/// still queued — bounced, or routed again (a new stream; its failure bounces).
fn unsent(caps: &Caps, end: &Ending, remote: &Domain, stanzas: Vec<crate::xml::Element>) {
    if stanzas.is_empty() {
        return;
    }
    let bounce = end.bounce(&caps.env, remote);
    for st in stanzas {
        match &bounce {
            Some((condition, text)) => {
                if let Some(b) = error_reply(&st, *condition, Some(text)) {
                    caps.router.route_now(b);
                }
            }
            None => caps.router.route_now(st),
        }
    }
}

use super::driver::{Role, STANZA_HIGH_WATER};

/// An outbound stream's part of the loop: its stanza and verification queues, its TLS
/// handshake as client, the answers it carries back, the drain before a deliberate close.
struct Outbound<'a> {
    local: &'a Domain,
    remote: &'a Domain,
    stanzas: &'a mut crate::router::queue::QueueRx<crate::router::Routed>,
    verifies: &'a mut crate::router::queue::QueueRx<VerifyRequest>,
    policy: tokio::sync::watch::Receiver<u64>,
}

enum Queued {
    /// From the stanza queue (`None`: the router is gone).
    Stanza(Option<crate::router::Routed>),
    Verify(VerifyRequest),
}

impl Role for Outbound<'_> {
    type Event = Queued;

    fn open(&self, d: &Driver) -> [bool; 2] {
        // Stanzas leave their bounded queue only as fast as the peer reads (backpressure).
        [d.machine.accepts_stanzas() && d.conn.pending_output() < STANZA_HIGH_WATER, d.machine.accepts_verifies()]
    }

    fn queues(
        &mut self,
    ) -> (impl Future<Output = Queued> + Send + '_, impl Future<Output = Option<Queued>> + Send + '_, impl Future<Output = ()> + Send + '_)
    {
        use futures_util::FutureExt;
        (self.stanzas.recv().map(Queued::Stanza), self.verifies.recv().map(|v| v.map(Queued::Verify)), self.policy.changed().map(|_| ()))
    }

    fn feed(&mut self, d: &mut Driver, e: Queued) {
        match e {
            Queued::Stanza(s) => d.feed_stanzas(s, self.stanzas),
            Queued::Verify(v) => d.feed(Input::Verify { stream_id: v.stream_id, key: v.key, reply: Box::new(v.reply) }),
        }
    }

    fn tls<'a>(&'a mut self, d: &'a mut Driver, role: TlsRole) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match role {
                TlsRole::Client { direct } => tls_client(d, self.local, self.remote, direct).await,
                TlsRole::Server { .. } => d.feed(Input::TlsFailed("an outbound stream is the TLS client".into())),
            }
        })
    }

    fn output(&mut self, d: &mut Driver, o: Output) {
        match o {
            Output::VerifyAnswer { reply, answer, detail } => reply.send(answer, detail),
            Output::Drain => {
                // Closing on purpose: no new work reaches this stream; what is queued is fed
                // to the machine (sent, or bounced if larger than the peer accepts), then the
                // close follows.
                d.caps.router.remove(self.local, self.remote, &d.entry.id);
                self.stanzas.close();
                while let Some(r) = self.stanzas.try_recv() {
                    d.entry.stanza_out();
                    d.feed(Input::Stanza(r.stanza));
                }
                d.feed(Input::Drained);
            }
            o => tracing::error!(stream = %d.entry.id, "outbound stream: unexpected {o:?}"),
        }
    }

    fn trim(&mut self) {
        self.stanzas.trim();
        self.verifies.trim();
    }
}

/// Gateway mode: the internal server, at its configured address (no DNS, no deny list: the
/// operator named it).
async fn connect_internal(caps: &Caps, entry: &ConnEntry, addr: std::net::SocketAddr) -> Result<(TcpStream, bool), Failure> {
    if let Some((key, own)) = caps.settings.outbound.own.reached_by(addr) {
        return Err(Failure::unreachable(format!(
            "internal server {addr} (gateway.internal): drawbridge itself listens there ({key} {own})"
        )));
    }
    let limit = caps.settings.timeouts.connect;
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            entry.apply(Observation::PeerAddr(addr));
            Ok((tcp, false))
        }
        Ok(Err(e)) => Err(Failure::unreachable(format!("internal server {addr} (gateway.internal): {e}"))),
        Err(_) => Err(Failure::timeout(format!(
            "internal server {addr} (gateway.internal): no answer within {}s (timeouts.connect)",
            limit.as_secs()
        ))),
    }
}

/// The TLS handshake as a client (after STARTTLS, or at once for direct TLS), within the
/// negotiation deadline.
async fn tls_client(d: &mut Driver, local: &Domain, remote: &Domain, direct: bool) {
    d.flush().await;
    if d.machine.is_closed() {
        return;
    }
    let Transport::Plain(tcp) = std::mem::replace(&mut d.conn.io, Transport::Gone) else {
        return d.feed(Input::TlsFailed("transport in an unexpected state".into()));
    };
    let mut config = match d.caps.tls.client_config(local) {
        Ok(c) => c,
        Err(e) => return d.feed(Input::TlsFailed(e.to_string())),
    };
    if direct {
        // XEP-0368 §3: ALPN "xmpp-server" on direct TLS.
        let mut c = (*config).clone();
        c.alpn_protocols = vec![b"xmpp-server".to_vec()];
        config = Arc::new(c);
    }
    let name = match rustls::pki_types::ServerName::try_from(remote.ascii().into_owned()) {
        Ok(n) => n,
        Err(e) => return d.feed(Input::TlsFailed(format!("{remote} is not a valid TLS server name: {e}"))),
    };
    let deadline = d
        .machine
        .write_deadline()
        .map_or_else(|| tokio::time::Instant::now() + d.caps.settings.timeouts.negotiation, tokio::time::Instant::from_std);
    match tokio::time::timeout_at(deadline, Box::pin(TlsIo::connect(tcp, config, name))).await {
        Ok(Ok(tls)) => {
            let facts = tls_established(&d.entry, if direct { "direct TLS (XEP-0368)" } else { "TLS" }, &tls);
            d.conn.io = Transport::Tls(Box::new(tls));
            d.feed(Input::TlsEstablished(facts));
        }
        Ok(Err(e)) => d.feed(Input::TlsFailed(e.to_string())),
        Err(_) => d.feed(Input::TlsFailed("timed out (timeouts.negotiation)".into())),
    }
}

/// DNS (overrides, SRV, fallback), then TCP to each address in order until one answers:
/// at most `[outbound] max_targets` targets and `max_addresses` addresses each, never
/// an address in `[outbound] deny`, and one of `max_dials` dial slots held meanwhile.
/// The full story goes to the log and the table; what peers learn is neutral.
async fn connect(caps: &Caps, entry: &ConnEntry, remote: &Domain) -> Result<(TcpStream, bool), Failure> {
    if let Some(addr) = caps.internal {
        return connect_internal(caps, entry, addr).await;
    }
    let out = &caps.settings.outbound;
    if crate::net::dial::is_ip_literal(remote.as_str()) {
        return Err(Failure::unreachable(format!("{} is an IP address, not a federation domain", remote)));
    }
    let _slot = match caps.dials.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            crate::limits::refused_once(crate::limits::LimitKey::OutboundMaxDials, "*", || {
                format!("{} outbound connection attempts in progress (outbound.max_dials); further dials wait", out.max_dials)
            });
            caps.dials.clone().acquire_owned().await.map_err(|_| Failure::unreachable("shutting down"))?
        }
    };
    let resolver = &caps.resolver;
    let budget = caps.settings.dns_timeout * 4;
    let targets = match tokio::time::timeout(budget, resolver.targets(remote)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(Failure::unreachable(e.to_string())),
        Err(_) => {
            return Err(Failure::timeout(format!("DNS: no answer for {} within {}s (dns.timeout)", remote, budget.as_secs())));
        }
    };
    let connect_timeout = caps.settings.timeouts.connect;
    let mut tried = Vec::new();
    if targets.len() > out.max_targets {
        tried.push(Tried::failed(format!(
            "{} SRV targets, only the first {} tried (outbound.max_targets)",
            targets.len(),
            out.max_targets
        )));
    }
    for target in targets.iter().take(out.max_targets) {
        let addrs = match tokio::time::timeout(budget, resolver.addresses(target)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tried.push(Tried::failed(format!("{target}: {e}")));
                continue;
            }
            Err(_) => {
                tried.push(Tried::failed(format!("{target}: DNS timeout")));
                continue;
            }
        };
        for addr in addrs.into_iter().take(out.max_addresses) {
            if let Some(range) = crate::net::dial::denied(&out.deny, addr.ip()) {
                tried.push(Tried::failed(format!("{addr} ({target}): in {range}, which outbound.deny forbids")));
                continue;
            }
            if let Some((key, own)) = out.own.reached_by(addr) {
                tried.push(Tried::failed(format!(
                    "{addr} ({target}): drawbridge itself listens there ({key} {own}); not dialling itself (a loop)"
                )));
                continue;
            }
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    entry.apply(Observation::PeerAddr(addr));
                    tracing::debug!(stream = %entry.id, %addr, %target, "connected to {}", remote);
                    return Ok((tcp, target.source == crate::net::resolve::TargetSource::SrvDirectTls));
                }
                Ok(Err(e)) => tried.push(Tried::failed(format!("{addr} ({target}): {e}"))),
                Err(_) => tried.push(Tried {
                    what: format!("{addr} ({target}): no answer within {}s (timeouts.connect)", connect_timeout.as_secs()),
                    timed_out: true,
                }),
            }
        }
    }
    // Only addresses that all kept silent make a timeout (a `wait` bounce: the sender may
    // retry); any other failure among them says the domain cannot be reached.
    let all_timeouts = !tried.is_empty() && tried.iter().all(|t| t.timed_out);
    let reason = format!("connect: {}", tried.iter().map(|t| t.what.as_str()).collect::<Vec<_>>().join("; "));
    Err(if all_timeouts { Failure::timeout(reason) } else { Failure::unreachable(reason) })
}

/// One target or address tried while dialling, and whether it failed by not answering
/// within `timeouts.connect`.
struct Tried {
    what: String,
    timed_out: bool,
}

impl Tried {
    fn failed(what: String) -> Tried {
        Tried { what, timed_out: false }
    }
}
