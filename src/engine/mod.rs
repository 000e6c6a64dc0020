//! The engine: the running server behind one API. [`EngineHandle::execute`] takes typed
//! [`Request`]s (every operator action) and [`EngineHandle::subscribe`] gives typed events;
//! the control socket, the dashboard, `ctl`, the demo and the tests are built only on these.

pub use crate::{events, limits, table};

mod api;
mod commands;
mod handle;
mod recorder;
mod testing;
pub use api::*;
pub use handle::{EngineHandle, Subscription};
use recorder::Recorder;
pub use recorder::UNAUTHENTICATED_RING;
pub use testing::Testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::Domain;
use crate::net::resolve::Resolver;
use crate::net::tls::TlsContext;
use crate::policy::Policy;
use crate::router::Router;
use crate::store::Store;
use events::*;
use table::ConnTable;

/// Why the engine could not start: what was wrong, and which setting to check.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Policy(#[from] crate::policy::StorageError),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error(transparent)]
    Dns(#[from] crate::net::resolve::ResolveError),
    #[error(transparent)]
    Gateway(#[from] crate::gateway::ca::CaError),
    #[error("cannot listen on {addr}: {err} (check server.listen)")]
    Listen { addr: SocketAddr, err: std::io::Error },
    #[error("control socket {path}: {err} (check server.control_socket)")]
    Control { path: String, err: std::io::Error },
}

/// State shared by every task of the engine; private to it (the rest of the crate sees
/// the [`EngineHandle`] and the capabilities handed to stream drivers).
struct Shared {
    settings: Settings,
    /// Replaced as a whole on reload; a stream takes the current one at its handshake.
    tls: Arc<crate::net::tls::CurrentTls>,
    secret: Vec<u8>,
    table: Arc<ConnTable>,
    events: bus::Sender,
    router: Arc<Router>,
    shutdown: CancellationToken,
    started: Instant,
    listening: Listening,
    /// Gateway mode: the CA minting the certificates drawbridge presents as remote domains.
    gateway_ca: Option<Arc<crate::gateway::GatewayCa>>,
    /// Gateway mode: what the internal link's stream drivers get.
    internal_streams: Option<Arc<crate::stream::Caps>>,
    store: Arc<Store>,
    policy: Arc<Policy>,
    /// Every per-stream and per-client task, so shutdown can wait for them (they hold the
    /// store, whose lock must be free when `shutdown` returns).
    tasks: tokio_util::task::TaskTracker,
    /// Outbound connection attempts in progress (`[outbound] max_dials`).
    dials: Arc<tokio::sync::Semaphore>,
    /// Streams in use against `[limits]`.
    gauges: Arc<limits::Gauges>,
    /// Outcomes, pending domains, ended streams: recorded.
    recorder: Arc<Recorder>,
    /// What stream drivers get.
    streams: Arc<crate::stream::Caps>,
}

impl Shared {
    /// Re-read certificates and keys (SIGHUP, `ctl reload`). Established streams keep their
    /// sessions; new handshakes use the new files. A broken new certificate keeps the old one.
    fn reload_tls(&self) -> Result<String, crate::net::tls::TlsError> {
        match TlsContext::load(&self.settings.tls, &self.settings.domains, &self.settings.data_dir) {
            Ok(ctx) => {
                let msg = format!(
                    "TLS reloaded: certificate {} (expires {}, sha-256 {})",
                    ctx.our_cert.subject, ctx.our_cert.not_after, ctx.our_cert.fingerprint_sha256
                );
                self.tls.set(ctx);
                tracing::info!("{msg}");
                Ok(msg)
            }
            Err(e) => {
                tracing::error!("TLS reload failed, keeping the current certificate: {e}");
                Err(e)
            }
        }
    }

    fn is_hosted(&self, d: &Domain) -> bool {
        self.settings.domains.iter().any(|h| h == d)
    }

    /// Verification outcomes, newest first: the store's and the unauthenticated ring's.
    fn outcomes_for(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, crate::store::StoreError> {
        self.recorder.outcomes_for(domain, limit)
    }
}

/// Opens the outbound s2s stream of a domain pair when the router has no link for it yet:
/// under `limits.max_outbound`, with a queue bounded in count and bytes.
struct OutboundOpener {
    /// Weak: the router holds the opener and the streams' capabilities hold the router.
    streams: std::sync::Weak<crate::stream::Caps>,
    /// Gateway mode: the internal link's, for pairs whose remote is a hosted domain (the
    /// internal server really hosts it).
    internal: Option<(std::sync::Weak<crate::stream::Caps>, Vec<Domain>)>,
    gauges: Arc<limits::Gauges>,
    limits: crate::config::Limits,
}

impl crate::router::Opener for OutboundOpener {
    fn open(&self, local: &Domain, remote: &Domain) -> Result<crate::router::Link, crate::router::Refusal> {
        use crate::router::{Link, LinkKind, Refusal, queue};
        let (caps, kind) = match &self.internal {
            Some((internal, hosted)) if hosted.contains(remote) => (internal.upgrade(), LinkKind::Internal),
            _ => (self.streams.upgrade(), LinkKind::S2sOutbound),
        };
        let Some(caps) = caps else { return Err(Refusal::Limit("shutting down")) };
        let slot = match self.gauges.outbound(&self.limits) {
            Ok(slot) => slot,
            Err(limits::Refused(key)) => {
                limits::refused_once(key, remote.as_str(), || format!("not opening a stream to {remote}: {key} reached"));
                return Err(Refusal::Limit(key));
            }
        };
        let (stx, srx) = queue::queue(self.limits.outbound_queue, self.limits.outbound_queue_bytes);
        // Verifications waiting for this link: at most 64 (each weighs 1).
        let (vtx, vrx) = queue::queue(64, 64);
        let entry = caps.table.open(Direction::Out, &caps.shutdown, caps.kind());
        entry.set_domains(Some(local.as_str()), Some(remote.as_str()));
        let link = Link { kind, stream: entry.id.as_str().into(), stanzas: stx, verifies: Some(vtx) };
        let (l, r, tasks) = (local.clone(), remote.clone(), caps.tasks.clone());
        tasks.spawn(async move {
            crate::stream::outbound::run(caps, l, r, entry, srx, vrx).await;
            drop(slot);
        });
        Ok(link)
    }
}

/// The stream machines' capabilities, from the settings.
fn stream_env(
    settings: &Settings,
    secret: &[u8],
    policy: Arc<Policy>,
    tls: Arc<crate::net::tls::CurrentTls>,
    ids: Arc<crate::proto::machine::StreamIds>,
) -> crate::proto::machine::Env {
    use crate::proto::machine as m;
    let (t, l) = (&settings.timeouts, &settings.limits);
    m::Env {
        // Federation delivers to the components' domains too.
        hosted: settings.domains.iter().chain(settings.components.domains()).cloned().collect(),
        serves_world: false,
        with_subdomains: settings.components.domains().cloned().collect(),
        timeouts: m::Timeouts {
            negotiation: t.negotiation,
            dialback: t.dialback,
            idle_inbound: t.idle_inbound,
            idle_outbound: t.idle_outbound,
            keepalive: t.keepalive,
            approval_wait: settings.policy.approval_wait,
        },
        limits: m::Limits {
            max_pairs_per_stream: l.max_pairs_per_stream,
            max_verifications_in_flight: l.max_verifications_in_flight,
            verifications_per_minute: l.verifications_per_minute,
            held_stanzas: l.outbound_queue,
            held_bytes: l.outbound_queue_bytes,
            max_bytes: l.max_stanza_size,
        },
        security: settings.security.clone(),
        keys: crate::proto::dialback::DialbackKeys::new(secret),
        policy,
        certs: tls,
        stream_ids: {
            let ids = ids.clone();
            Box::new(move || ids.issue())
        },
        issued_here: Box::new(move |id| ids.issued_here(id)),
    }
}

/// The running server: its [`EngineHandle`] (which it derefs to) and the ownership of its
/// tasks, ended by [`Engine::shutdown`].
pub struct Engine {
    handle: EngineHandle,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl std::ops::Deref for Engine {
    type Target = EngineHandle;
    fn deref(&self) -> &EngineHandle {
        &self.handle
    }
}

impl Engine {
    /// Open the store, load TLS, bind the listeners and start accepting.
    pub async fn start(settings: Settings) -> Result<Engine, StartError> {
        let store = Arc::new(Store::open(&settings.data_dir)?);
        let secret = store.dialback_secret()?;
        let recovered = store.recover_open()?;
        if recovered > 0 {
            tracing::warn!(streams = recovered, "the last run stopped without closing its streams; they are in the history");
        }
        let policy = Arc::new(Policy::load(store.clone(), settings.policy.mode)?);
        let tls = Arc::new(crate::net::tls::CurrentTls::new(TlsContext::load(&settings.tls, &settings.domains, &settings.data_dir)?));
        // One issuer for every listener: a stream of ours that comes back on any of them is
        // recognised by the outbound side that opened it.
        let stream_ids = Arc::new(crate::proto::machine::StreamIds::new());
        let stream_env = Arc::new(stream_env(&settings, &secret, policy.clone(), tls.clone(), stream_ids.clone()));
        let resolver = Resolver::new(&settings.dns)?;
        let (listening, listeners) = bind(&settings).await?;
        let gateway_ca = match &settings.gateway {
            Some(g) => Some(Arc::new(
                crate::gateway::GatewayCa::open(g.ca_cert.as_deref(), g.ca_key.as_deref(), &settings.data_dir)?
                    .with_mint_limit(g.mints_per_minute)
                    .with_max_minted(g.max_minted, std::time::SystemTime::now()),
            )),
            None => None,
        };
        let events = bus::channel(bus::Backlog { entries: settings.limits.event_backlog, bytes: settings.limits.event_backlog_bytes });
        let shutdown = CancellationToken::new();
        let table = Arc::new(ConnTable::new(
            events.clone(),
            (settings.limits.closed_streams, settings.limits.closed_streams_bytes),
            table::TranscriptBudget::new(
                settings.limits.transcript_lines,
                settings.limits.transcript_bytes,
                settings.limits.transcript_total_bytes,
            ),
        ));
        let recorder = Arc::new(Recorder {
            store: store.clone(),
            policy: policy.clone(),
            events: events.clone(),
            table: table.clone(),
            unauthenticated: std::sync::Mutex::new(recorder::OutcomeRing::new(settings.limits.unauthenticated_outcomes_bytes)),
        });
        let router = Arc::new(
            Router::new(settings.domains.clone(), policy.clone(), settings.timeouts.dialback)
                .with_gateway(settings.gateway.is_some())
                .with_components(settings.components.domains().cloned().collect()),
        );
        let resolver = Arc::new(resolver);
        let dials = Arc::new(tokio::sync::Semaphore::new(settings.outbound.max_dials));
        let tasks = tokio_util::task::TaskTracker::new();
        let streams = Arc::new(crate::stream::Caps {
            env: stream_env,
            tls: tls.clone(),
            router: router.clone(),
            table: table.clone(),
            observer: recorder.clone(),
            policy_changes: policy.subscribe(),
            resolver: resolver.clone(),
            dials: dials.clone(),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            settings: crate::stream::StreamSettings {
                domains: settings.domains.clone(),
                timeouts: settings.timeouts.clone(),
                limits: settings.limits.clone(),
                // Every listener as bound: never dialled (a loop otherwise).
                outbound: crate::net::dial::OutboundSettings {
                    own: Arc::new(crate::net::dial::OwnListeners::new(
                        (listening.federation.iter().map(|a| ("server.listen", *a)))
                            .chain(listening.direct_tls.iter().map(|a| ("server.direct_tls", *a)))
                            .chain(listening.gateway.iter().map(|a| ("gateway.listen", *a)))
                            .chain(listening.components.iter().map(|a| ("components.listen", *a))),
                    )),
                    ..settings.outbound.clone()
                },
                dns_timeout: settings.dns.timeout,
            },
            internal: None,
        });
        // Gateway mode: the same drivers, with the internal link's environment, certificates
        // and address, recorded as the internal link.
        let internal_streams = match (&settings.gateway, &gateway_ca) {
            (Some(g), Some(ca)) => Some(Arc::new(crate::stream::Caps {
                env: Arc::new(crate::gateway::internal_env(
                    &streams.env,
                    &settings,
                    g.auth,
                    stream_ids.clone(),
                    Arc::new(crate::gateway::InternalTrust::load(g.internal_ca.as_deref())?),
                )),
                tls: Arc::new(crate::gateway::GatewayTls { ca: ca.clone() }),
                internal: Some(g.internal),
                ..streams.reporting_to(Arc::new(recorder::LinkObserver { recorder: recorder.clone(), label: "internal link" }))
            })),
            _ => None,
        };
        let gauges: Arc<limits::Gauges> = Arc::default();
        // Components: federation's capabilities, their outcomes marked and kept off the
        // domain records.
        let component_streams =
            Arc::new(streams.reporting_to(Arc::new(recorder::LinkObserver { recorder: recorder.clone(), label: "component" })));
        router.set_opener(Box::new(OutboundOpener {
            streams: Arc::downgrade(&streams),
            internal: internal_streams.as_ref().map(|c| (Arc::downgrade(c), settings.domains.clone())),
            gauges: gauges.clone(),
            limits: settings.limits.clone(),
        }));
        let shared = Arc::new(Shared {
            table,
            tls: tls.clone(),
            secret,
            events,
            router,
            shutdown,
            started: Instant::now(),
            listening,
            gateway_ca,
            internal_streams,
            store,
            policy,
            tasks,
            dials,
            gauges,
            recorder,
            streams,
            settings,
        });
        let mut tasks = JoinSet::new();
        for l in listeners.federation {
            tasks.spawn(accept_loop(shared.clone(), l, Accept::S2s, limits::Door::Federation, shared.streams.clone()));
        }
        for l in listeners.direct_tls {
            tasks.spawn(accept_loop(shared.clone(), l, Accept::DirectTls, limits::Door::Federation, shared.streams.clone()));
        }
        if let Some(internal) = &shared.internal_streams {
            for l in listeners.gateway {
                tasks.spawn(accept_loop(shared.clone(), l, Accept::S2s, limits::Door::Gateway, internal.clone()));
            }
        }
        let secrets: crate::proto::machine::component::Secrets =
            Arc::new(shared.settings.components.list.iter().map(|c| (c.domain.clone(), c.secret.clone())).collect());
        for l in listeners.components {
            tasks.spawn(accept_loop(
                shared.clone(),
                l,
                Accept::Component(secrets.clone()),
                limits::Door::Components,
                component_streams.clone(),
            ));
        }
        tasks.spawn(counters_loop(shared.clone()));
        tasks.spawn(maintenance_loop(shared.clone()));
        tracing::info!(
            domains = %shared.settings.domains.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(","),
            listen = ?shared.listening.federation,
            "drawbridge started"
        );
        Ok(Engine { handle: EngineHandle::new(shared.clone()), shared, tasks })
    }

    /// Run a task for as long as the engine runs (ended at shutdown).
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Another handle on this engine (for a task that outlives this borrow).
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Close every stream (`<system-shutdown/>`) and stop, bounded by the close timeout.
    pub async fn shutdown(mut self) {
        let mut events = self.shared.events.subscribe();
        self.shared.shutdown.cancel();
        let limit = self.shared.settings.timeouts.close + Duration::from_secs(1);
        let all_closed = async {
            while self.shared.table.live_count() > 0 {
                match events.recv().await {
                    Ok(_) | Err(bus::RecvError::Lagged(_)) => {}
                    Err(bus::RecvError::Closed) => break,
                }
            }
        };
        if tokio::time::timeout(limit, all_closed).await.is_err() {
            tracing::warn!(streams = self.shared.table.live_count(), "streams still open after the close timeout; dropping them");
        }
        self.tasks.shutdown().await;
        self.shared.tasks.close();
        if tokio::time::timeout(limit, self.shared.tasks.wait()).await.is_err() {
            tracing::warn!(tasks = self.shared.tasks.len(), "tasks still running after the close timeout");
        }
        if let Err(e) = self.shared.store.snapshot_open(&[]) {
            tracing::error!("store: {e}");
        }
        if let Err(e) = self.shared.store.flush().await {
            tracing::error!("store: {e}");
        }
        let _ = std::fs::remove_file(&self.shared.settings.control_socket);
    }
}

/// Every listener of the settings, bound, by door.
struct Listeners {
    federation: Vec<TcpListener>,
    direct_tls: Vec<TcpListener>,
    gateway: Vec<TcpListener>,
    components: Vec<TcpListener>,
}

/// Bind every listening address of the settings (one loop for each door's list).
async fn bind(settings: &Settings) -> Result<(Listening, Listeners), StartError> {
    async fn each<'a>(addrs: impl Iterator<Item = &'a SocketAddr>) -> Result<(Vec<SocketAddr>, Vec<TcpListener>), StartError> {
        let (mut bound, mut listeners) = (Vec::new(), Vec::new());
        for addr in addrs {
            let l = TcpListener::bind(addr).await.map_err(|err| StartError::Listen { addr: *addr, err })?;
            bound.push(l.local_addr().map_err(|err| StartError::Listen { addr: *addr, err })?);
            listeners.push(l);
        }
        Ok((bound, listeners))
    }
    let (federation, fed) = each(settings.listen.iter()).await?;
    let (direct_tls, direct) = each(settings.direct_tls.iter()).await?;
    let (gateway, gw) = each(settings.gateway.iter().flat_map(|g| g.listen.iter())).await?;
    let (components, comp) = each(settings.components.listen.iter()).await?;
    Ok((
        Listening { federation, direct_tls, gateway, components },
        Listeners { federation: fed, direct_tls: direct, gateway: gw, components: comp },
    ))
}

/// What a listener accepts.
enum Accept {
    S2s,
    /// XEP-0368: TLS from the first byte.
    DirectTls,
    /// External components (XEP-0114) with these secrets.
    Component(crate::proto::machine::component::Secrets),
}

/// Accept streams on one listener, each driven with `caps` (federation's, or the internal
/// link's on `gateway.listen`).
/// `door`: whose unauthenticated budget the connections it accepts are held to.
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, how: Accept, door: limits::Door, caps: Arc<crate::stream::Caps>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // gateway.listen: the internal server's address(es) only, before anything else.
                if caps.internal.is_some()
                    && let Some(g) = &shared.settings.gateway
                    && !crate::gateway::allowed(g, peer.ip())
                {
                    limits::refused_once("gateway.allow", &peer.ip().to_string(), || {
                        format!("refusing a connection to gateway.listen from {}: not the internal server (gateway.allow)", peer.ip())
                    });
                    drop(tcp);
                    continue;
                }
                let slot = match shared.gauges.admit(door, peer.ip(), &shared.settings.limits) {
                    Ok(slot) => slot,
                    Err(limits::Refused(key)) => {
                        limits::refused_once(key, &peer.ip().to_string(), || {
                            format!("refusing connections from {}: {key} reached", peer.ip())
                        });
                        drop(tcp);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                match &how {
                    Accept::S2s => shared.tasks.spawn(crate::stream::inbound::run(caps.clone(), tcp, peer, slot)),
                    Accept::DirectTls => shared.tasks.spawn(crate::stream::inbound::run_direct(caps.clone(), tcp, peer, slot)),
                    Accept::Component(secrets) => {
                        shared.tasks.spawn(crate::stream::component::run(caps.clone(), tcp, peer, slot, secrets.clone()))
                    }
                };
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every second, publish the counters of streams that changed (the lossy event channel
/// keeps stanza paths free of per-stanza events).
async fn counters_loop(shared: Arc<Shared>) {
    let mut last: std::collections::HashMap<String, (u64, u64)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if shared.events.receiver_count() == 0 {
            continue;
        }
        let mut changed = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for e in shared.table.live() {
            let c = &e.counters;
            let s = StreamCounters {
                id: e.id.clone(),
                stanzas_in: c.stanzas_in.load(std::sync::atomic::Ordering::Relaxed),
                stanzas_out: c.stanzas_out.load(std::sync::atomic::Ordering::Relaxed),
                bytes_in: c.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                bytes_out: c.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
            };
            let key = (s.bytes_in, s.bytes_out);
            if last.get(&s.id) != Some(&key) {
                changed.push(s.clone());
            }
            seen.insert(s.id, key);
        }
        last = seen;
        if !changed.is_empty() {
            let _ = shared.events.send(Event::Counters { streams: changed });
        }
    }
}

/// How often memory freed by idle streams (their buffers) is handed back to the system.
pub const RELEASE_INTERVAL: Duration = Duration::from_secs(10);

static RELEASE_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// How to give free pages back, for a binary that chose its own global allocator (the
/// library cannot know which); unset, the C library's `malloc_trim`.
pub fn set_memory_release(release: fn()) {
    let _ = RELEASE_HOOK.set(release);
}

/// Give free heap pages back to the system: idle streams drop their buffers, but an
/// allocator keeps freed pages in the process (its resident memory) until asked.
fn release_memory() {
    if let Some(release) = RELEASE_HOOK.get() {
        return release();
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// History and outcomes to disk on a short timer; snapshots of open streams; block expiry;
/// retention.
async fn maintenance_loop(shared: Arc<Shared>) {
    let st = shared.settings.store.clone();
    let mut flush = tokio::time::interval(st.flush_interval);
    let mut snapshot = tokio::time::interval(st.snapshot_interval);
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let mut prune = tokio::time::interval(Duration::from_secs(600));
    let mut release = tokio::time::interval(RELEASE_INTERVAL);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = release.tick() => release_memory(),
            _ = flush.tick() => {
                if let Err(e) = shared.store.flush().await {
                    tracing::error!("store flush: {e}");
                }
            }
            _ = snapshot.tick() => {
                if let Err(e) = shared.store.snapshot_open(&shared.table.snapshots(false)) {
                    tracing::error!("store: {e}");
                }
            }
            _ = expiry.tick() => {
                for d in shared.policy.expire_blocks() {
                    tracing::info!("the block of {d} expired");
                    if let Some(record) = shared.policy.record(&d) {
                        let _ = shared.events.send(Event::DomainChanged { record });
                    }
                }
            }
            _ = prune.tick() => {
                match shared.store.prune(st.max_records, st.max_age.as_millis() as u64, now_ms()) {
                    Ok(n) if n > 0 => tracing::info!(records = n, "pruned old history (store.max_records / store.max_age)"),
                    Ok(_) => {}
                    Err(e) => tracing::error!("store prune: {e}"),
                }
            }
        }
    }
}
