//! The engine: one API (commands + a lossy event stream) over the running server. The
//! control socket and the dashboard are built only on this.

pub use crate::{events, limits, table};

mod recorder;
pub use recorder::{Recorder, UNAUTHENTICATED_RING};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::Domain;
use crate::net::resolve::Resolver;
use crate::net::tls::TlsContext;
use crate::policy::{Change, Mode, Policy, Verdict};
use crate::proto::ns;
use crate::proto::stanza::error_of;
use crate::proto::stream::{StreamError, StreamErrorCondition};
use crate::router::Router;
use crate::store::{DomainRecord, Store};
use crate::xml::Element;
use events::*;
use table::ConnTable;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
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

/// State shared by every task.
pub struct Shared {
    pub settings: Settings,
    /// Replaced as a whole on reload; a stream takes the current one at its handshake.
    tls: Arc<crate::net::tls::CurrentTls>,
    pub resolver: Arc<Resolver>,
    pub secret: Vec<u8>,
    pub table: Arc<ConnTable>,
    pub events: bus::Sender,
    pub router: Arc<Router>,
    pub shutdown: CancellationToken,
    pub started: Instant,
    pub listening: Vec<SocketAddr>,
    /// Direct TLS listeners' bound addresses.
    pub listening_direct: Vec<SocketAddr>,
    /// Gateway mode: where the internal server's streams arrive (`gateway.listen`, bound).
    pub listening_gateway: Vec<SocketAddr>,
    /// Where external components connect (`[components] listen`, bound).
    pub listening_components: Vec<SocketAddr>,
    /// Gateway mode: the CA minting the certificates drawbridge presents as remote domains.
    pub gateway_ca: Option<Arc<crate::gateway::GatewayCa>>,
    /// Gateway mode: what the internal link's stream drivers get.
    pub internal_streams: Option<Arc<crate::stream::Caps>>,
    pub store: Arc<Store>,
    pub policy: Arc<Policy>,
    /// Every per-stream and per-client task, so shutdown can wait for them (they hold the
    /// store, whose lock must be free when `shutdown` returns).
    pub tasks: tokio_util::task::TaskTracker,
    /// Outbound connection attempts in progress (`[outbound] max_dials`).
    pub dials: Arc<tokio::sync::Semaphore>,
    /// Streams in use against `[limits]`.
    pub gauges: Arc<limits::Gauges>,
    /// Outcomes, pending domains, ended streams: recorded.
    pub recorder: Arc<Recorder>,
    /// What stream drivers get.
    pub streams: Arc<crate::stream::Caps>,
}

impl Shared {
    /// The TLS context in force now.
    pub fn tls(&self) -> Arc<TlsContext> {
        self.tls.get()
    }

    /// Re-read certificates and keys (SIGHUP, `ctl reload`). Established streams keep their
    /// sessions; new handshakes use the new files. A broken new certificate keeps the old one.
    pub fn reload_tls(&self) -> Result<String, String> {
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
                let msg = format!("TLS reload failed, keeping the current certificate: {e}");
                tracing::error!("{msg}");
                Err(msg)
            }
        }
    }

    pub fn is_hosted(&self, d: &Domain) -> bool {
        self.settings.domains.iter().any(|h| h == d)
    }

    /// A stream ended (see [`Recorder`]).
    pub fn stream_closed(&self, entry: &table::ConnEntry, reason: &str) {
        self.recorder.stream_closed(entry, reason)
    }

    /// Verification outcomes, newest first: the store's and the unauthenticated ring's.
    pub fn outcomes_for(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, crate::store::StoreError> {
        self.recorder.outcomes_for(domain, limit)
    }

    /// The most recent verification outcomes (newest first).
    pub fn outcomes(&self) -> Vec<VerificationOutcome> {
        self.recorder.outcomes()
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
        let Some(caps) = caps else { return Err(Refusal::Unavailable("shutting down")) };
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

/// `ctl status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub domains: Vec<String>,
    pub listen: Vec<String>,
    pub uptime_s: u64,
    pub streams_in: usize,
    pub streams_out: usize,
    pub established: usize,
    pub require_encryption: bool,
    pub mode: String,
    /// `[policy] approval_wait` in seconds (the dashboard's countdown).
    #[serde(default)]
    pub approval_wait_s: u64,
    pub pending: usize,
    pub blocked: usize,
    pub blacklisted: usize,
    /// Current use against each limit.
    #[serde(default)]
    pub limits: Vec<limits::LimitUse>,
    /// Gateway mode: the internal server and how it is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// Stanzas whose link made no room within `timeouts.write`: bounced or dropped.
    #[serde(default)]
    pub overflows: crate::router::Overflows,
}

/// `ctl status` in gateway mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// `gateway.internal`.
    pub internal: String,
    /// `gateway.listen`, as bound.
    pub listen: Vec<String>,
    pub auth: String,
    /// The CA certificate the internal server must trust.
    pub ca_cert: String,
    /// Whether the internal server is reachable, from the internal link's streams: `Some(true)`
    /// while one of ours to it is established, `Some(false)` when the last one failed
    /// (`last_error` says why), `None` before any was opened.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    /// Streams of the internal link now (ours to it, and its to us).
    pub streams_out: usize,
    pub streams_in: usize,
}

/// `ctl probe`: the outcome of an XEP-0199 ping over federation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    pub ok: bool,
    pub from: String,
    pub to: String,
    pub rtt_ms: Option<f64>,
    pub stream: Option<String>,
    pub peer_addr: Option<String>,
    pub auth: Option<String>,
    pub tls: Option<String>,
    /// Why it failed, in words.
    pub error: Option<String>,
}

/// The running server.
pub struct Engine {
    pub shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Engine {
    /// Open the store, load TLS, bind the listeners and start accepting.
    pub async fn start(settings: Settings) -> Result<Engine, EngineError> {
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
        let mut listeners = Vec::new();
        let mut listening = Vec::new();
        let mut listening_direct = Vec::new();
        for (addr, direct) in settings.listen.iter().map(|a| (a, false)).chain(settings.direct_tls.iter().map(|a| (a, true))) {
            let l = TcpListener::bind(addr).await.map_err(|err| EngineError::Listen { addr: *addr, err })?;
            let local = l.local_addr().map_err(|err| EngineError::Listen { addr: *addr, err })?;
            if direct {
                listening_direct.push(local);
            } else {
                listening.push(local);
            }
            listeners.push((l, direct));
        }
        let gateway_ca = match &settings.gateway {
            Some(g) => Some(Arc::new(
                crate::gateway::GatewayCa::open(g.ca_cert.as_deref(), g.ca_key.as_deref(), &settings.data_dir)?
                    .with_mint_limit(g.mints_per_minute)
                    .with_max_minted(g.max_minted, std::time::SystemTime::now()),
            )),
            None => None,
        };
        let mut listening_gateway = Vec::new();
        let mut gateway_listeners = Vec::new();
        for addr in settings.gateway.iter().flat_map(|g| g.listen.iter()) {
            let l = TcpListener::bind(addr).await.map_err(|err| EngineError::Listen { addr: *addr, err })?;
            listening_gateway.push(l.local_addr().map_err(|err| EngineError::Listen { addr: *addr, err })?);
            gateway_listeners.push(l);
        }
        let mut listening_components = Vec::new();
        let mut component_listeners = Vec::new();
        for addr in &settings.components.listen {
            let l = TcpListener::bind(addr).await.map_err(|err| EngineError::Listen { addr: *addr, err })?;
            listening_components.push(l.local_addr().map_err(|err| EngineError::Listen { addr: *addr, err })?);
            component_listeners.push(l);
        }
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
                        (listening.iter().map(|a| ("server.listen", *a)))
                            .chain(listening_direct.iter().map(|a| ("server.direct_tls", *a)))
                            .chain(listening_gateway.iter().map(|a| ("gateway.listen", *a)))
                            .chain(listening_components.iter().map(|a| ("components.listen", *a))),
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
            resolver,
            secret,
            events,
            router,
            shutdown,
            started: Instant::now(),
            listening,
            listening_direct,
            listening_gateway,
            listening_components,
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
        for (l, direct) in listeners {
            let how = if direct { Accept::DirectTls } else { Accept::S2s };
            tasks.spawn(accept_loop(shared.clone(), l, how, limits::Door::Federation, shared.streams.clone()));
        }
        if let Some(internal) = &shared.internal_streams {
            for l in gateway_listeners {
                tasks.spawn(accept_loop(shared.clone(), l, Accept::S2s, limits::Door::Gateway, internal.clone()));
            }
        }
        let secrets: crate::proto::machine::component::Secrets =
            Arc::new(shared.settings.components.list.iter().map(|c| (c.domain.clone(), c.secret.clone())).collect());
        for l in component_listeners {
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
            listen = ?shared.listening,
            "drawbridge started"
        );
        Ok(Engine { shared, tasks })
    }

    /// Run a task for as long as the engine runs (ended at shutdown).
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.shared.listening
    }

    pub fn subscribe(&self) -> bus::Receiver {
        self.shared.events.subscribe()
    }

    /// Close a stream as `ctl close` does.
    pub fn close_stream(&self, id: &str, reason: &str) -> bool {
        close_stream(&self.shared, id, reason)
    }

    pub fn status(&self) -> Status {
        status(&self.shared)
    }

    /// What the overflow rule did since start (links that made no room in time).
    pub fn router_overflows(&self) -> crate::router::Overflows {
        self.shared.router.overflows()
    }

    pub fn connections(&self, include_closed: bool) -> Vec<ConnSnapshot> {
        self.shared.table.snapshots(include_closed)
    }

    pub async fn probe(&self, domain: &str, from: Option<&str>) -> ProbeReport {
        probe(&self.shared, domain, from).await
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

pub fn status(shared: &Shared) -> Status {
    let snaps = shared.table.snapshots(false);
    let counts = shared.policy.counts();
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        domains: shared.settings.domains.iter().map(|d| d.to_string()).collect(),
        listen: shared.listening.iter().map(|a| a.to_string()).collect(),
        uptime_s: shared.started.elapsed().as_secs(),
        streams_in: snaps.iter().filter(|s| s.direction == Direction::In).count(),
        streams_out: snaps.iter().filter(|s| s.direction == Direction::Out).count(),
        established: snaps.iter().filter(|s| s.state == ConnState::Established).count(),
        require_encryption: shared.settings.tls.require_encryption,
        mode: shared.policy.mode().as_str().to_owned(),
        approval_wait_s: shared.settings.policy.approval_wait.as_secs(),
        pending: counts.get(&crate::policy::DomainState::Pending).copied().unwrap_or(0),
        blocked: counts.get(&crate::policy::DomainState::Blocked).copied().unwrap_or(0),
        blacklisted: counts.get(&crate::policy::DomainState::Blacklisted).copied().unwrap_or(0),
        limits: {
            let mut v = shared.gauges.uses(&shared.settings.limits);
            let max_dials = shared.settings.outbound.max_dials;
            v.push(limits::LimitUse {
                key: "outbound.max_dials".into(),
                used: max_dials - shared.dials.available_permits(),
                max: max_dials,
            });
            v.push(limits::LimitUse {
                key: "limits.transcript_total_bytes".into(),
                used: shared.table.transcript_budget().used(),
                max: shared.settings.limits.transcript_total_bytes,
            });
            let l = &shared.settings.limits;
            for (key, used, max) in [
                ("limits.closed_streams_bytes", shared.table.closed_usage().1, l.closed_streams_bytes),
                ("limits.unauthenticated_outcomes_bytes", shared.recorder.ring_usage().1, l.unauthenticated_outcomes_bytes),
                // The subscriber furthest behind.
                ("limits.event_backlog_bytes", shared.events.largest_backlog(), l.event_backlog_bytes),
            ] {
                v.push(limits::LimitUse { key: key.into(), used, max });
            }
            v
        },
        gateway: gateway_status(shared, &snaps),
        overflows: shared.router.overflows(),
    }
}

/// The internal server's reachability, read off the internal link's streams: established
/// ones now, else how the latest one ended.
fn gateway_status(shared: &Shared, live: &[ConnSnapshot]) -> Option<GatewayStatus> {
    let g = shared.settings.gateway.as_ref()?;
    let internal: Vec<&ConnSnapshot> = live.iter().filter(|s| s.internal()).collect();
    let out_up = internal.iter().any(|s| s.direction == Direction::Out && s.state == ConnState::Established);
    let last = shared.table.closed().into_iter().rev().find(|s| s.internal() && s.direction == Direction::Out);
    let (reachable, last_error) = match (out_up, last) {
        (true, _) => (Some(true), None),
        // The latest ended before authenticating: the internal server failed us.
        (false, Some(s)) if !s.pairs.iter().any(|p| p.status == PairStatus::Valid) => (Some(false), s.close_reason),
        // It worked, and ended (idle).
        (false, Some(_)) => (Some(true), None),
        (false, None) => (None, None),
    };
    Some(GatewayStatus {
        internal: g.internal.to_string(),
        listen: shared.listening_gateway.iter().map(|a| a.to_string()).collect(),
        auth: g.auth.as_str().to_owned(),
        ca_cert: shared.gateway_ca.as_ref().map(|c| c.cert_path().display().to_string()).unwrap_or_default(),
        reachable,
        last_error,
        streams_out: internal.iter().filter(|s| s.direction == Direction::Out).count(),
        streams_in: internal.iter().filter(|s| s.direction == Direction::In).count(),
    })
}

/// Close a stream by id (operator action).
pub fn close_stream(shared: &Shared, id: &str, reason: &str) -> bool {
    match shared.table.get(id) {
        Some(e) => {
            e.request_close(reason);
            true
        }
        None => false,
    }
}

/// Send an XEP-0199 ping from a hosted domain to `domain` and report what happened.
pub async fn probe(shared: &Arc<Shared>, domain: &str, from: Option<&str>) -> ProbeReport {
    let mut report = ProbeReport {
        ok: false,
        from: String::new(),
        to: domain.to_owned(),
        rtt_ms: None,
        stream: None,
        peer_addr: None,
        auth: None,
        tls: None,
        error: None,
    };
    let to = match Domain::parse(domain) {
        Ok(d) => d,
        Err(e) => {
            report.error = Some(format!("{domain:?} is not a valid domain: {e}"));
            return report;
        }
    };
    let from = match from {
        Some(f) => match Domain::parse(f) {
            Ok(d) if shared.is_hosted(&d) => d,
            _ => {
                report.error = Some(format!("--from {f}: not a hosted domain (server.domains)"));
                return report;
            }
        },
        None => shared.settings.domains[0].clone(),
    };
    report.from = from.to_string();
    let id = format!("probe-{}", table::random_id());
    let ping = Element::new("iq", ns::SERVER)
        .attr("type", "get")
        .attr("id", id.clone())
        .attr("from", from.to_string())
        .attr("to", to.to_string())
        .child(Element::new("ping", ns::PING));
    let rx = shared.router.local.expect_reply(&id);
    let t0 = Instant::now();
    shared.router.route_waiting(ping, shared.settings.timeouts.write).await;
    let limit = shared.settings.timeouts.probe;
    let reply = tokio::time::timeout(limit, rx).await;
    let rtt = t0.elapsed();
    shared.router.local.forget(&id);
    if let Some(snap) = shared.router.existing(&from, &to).and_then(|l| shared.table.get(&l.stream)).map(|e| e.snapshot()) {
        report.stream = Some(snap.id.clone());
        report.peer_addr = snap.peer_addr.clone();
        report.tls = snap.tls.as_ref().map(|t| format!("{} {}", t.version, t.cipher));
        report.auth = snap.pairs.iter().find(|p| p.remote == to.as_str()).map(|p| {
            format!(
                "{} ({})",
                serde_json::to_value(p.method).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                serde_json::to_value(p.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            )
        });
    }
    match reply {
        Ok(Ok(el)) => match error_of(&el) {
            None => {
                report.ok = true;
                report.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            }
            Some((cond, text)) => {
                report.error = Some(match text {
                    Some(t) => format!("stanza error <{cond}/>: {t}"),
                    None => format!("stanza error <{cond}/> from {to}"),
                });
            }
        },
        Ok(Err(_)) => report.error = Some("the probe was dropped".into()),
        Err(_) => {
            let state = report.stream.as_ref().and_then(|s| shared.table.get(s)).map(|e| e.state().as_str()).unwrap_or("none");
            report.error = Some(format!("no answer within {}s (timeouts.probe); outbound stream state: {state}", limit.as_secs()));
        }
    }
    report
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
                    limits::refused_once(limits::LimitKey::GatewayAllow, &peer.ip().to_string(), || {
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

/// After a policy change: close every live stream that carries a domain now refused, with
/// `<policy-violation/>`. Returns the ids closed.
pub fn enforce(shared: &Shared) -> Vec<String> {
    let mut closed = Vec::new();
    for e in shared.table.live() {
        // Whose standing a stream depends on: a federation stream's remote domains; on the
        // internal link, the world domain drawbridge stands in for (its local side, the
        // internal server's domains being ours); a component is ours.
        let judged = match e.kind {
            StreamKind::Federation => e.remotes(),
            StreamKind::Internal => e.snapshot().local.into_iter().collect(),
            StreamKind::Component => Vec::new(),
        };
        for remote in judged {
            let Ok(d) = Domain::parse(&remote) else { continue };
            if let Verdict::Refuse(why) = shared.policy.verdict(&d) {
                tracing::info!(stream = %e.id, "closing the stream of {remote}: {why}");
                e.request_close_with(&format!("policy: {why}"), Some(StreamError::new(StreamErrorCondition::PolicyViolation, why)));
                closed.push(e.id.clone());
                break;
            }
        }
    }
    closed
}

/// An operator's change to a domain: applied, flushed, announced, enforced.
pub async fn change_domain(
    shared: &Shared,
    domain: &Domain,
    change: Change,
    who: &str,
    reason: Option<&str>,
) -> Result<(DomainRecord, bool, Vec<String>), crate::policy::StorageError> {
    let (rec, changed) = shared.policy.apply(domain, change, who, reason).await?;
    let closed = enforce(shared);
    if changed {
        let _ = shared.events.send(Event::DomainChanged { record: rec.clone() });
    }
    Ok((rec, changed, closed))
}

pub async fn change_mode(shared: &Shared, mode: Mode, who: &str) -> Result<Vec<String>, crate::policy::StorageError> {
    shared.policy.set_mode(mode, who).await?;
    let _ = shared.events.send(Event::ModeChanged { mode: mode.as_str().to_owned() });
    Ok(enforce(shared))
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

/// What a blacklist import did (or would do, for a dry run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub source: String,
    pub added: Vec<String>,
    pub already: Vec<String>,
    pub invalid: Vec<crate::policy::BadLine>,
    /// Live streams closed (or that would be).
    pub closed_streams: Vec<String>,
}

pub async fn import_blacklist(
    shared: &Shared,
    text: &str,
    source: &str,
    who: &str,
    dry_run: bool,
) -> Result<ImportReport, crate::policy::StorageError> {
    let (entries, invalid) = crate::policy::parse_list(text);
    let entries: Vec<_> = entries.into_iter().filter(|(d, _)| !shared.is_hosted(d)).collect();
    if dry_run {
        let (mut added, mut already) = (Vec::new(), Vec::new());
        for (d, _) in &entries {
            if shared.policy.record(d.as_str()).is_some_and(|r| r.state == crate::policy::DomainState::Blacklisted) {
                already.push(d.to_string());
            } else {
                added.push(d.to_string());
            }
        }
        let set: std::collections::HashSet<&str> = added.iter().map(String::as_str).collect();
        let closed_streams = shared
            .table
            .live()
            .into_iter()
            .filter(|e| e.remotes().iter().any(|r| Policy::covered_by(r, &set)))
            .map(|e| e.id.clone())
            .collect();
        return Ok(ImportReport { dry_run, source: source.into(), added, already, invalid, closed_streams });
    }
    let (added, already) = shared.policy.blacklist_many(&entries, source, who).await?;
    for d in &added {
        if let Some(record) = shared.policy.record(d) {
            let _ = shared.events.send(Event::DomainChanged { record });
        }
    }
    let closed_streams = enforce(shared);
    Ok(ImportReport { dry_run, source: source.into(), added, already, invalid, closed_streams })
}
