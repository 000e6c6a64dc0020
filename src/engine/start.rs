//! Starting the engine, in named steps: open what is kept (store, policy, certificates),
//! bind every listener, assemble the parts the streams share, start the loops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Settings;
use crate::domain::Domain;
use crate::net::resolve::Resolver;
use crate::net::tls::{CurrentTls, TlsContext};
use crate::policy::Policy;
use crate::router::Router;
use crate::store::Store;
use crate::stream::Caps;

impl Engine {
    /// Open the store, load TLS, bind the listeners and start accepting.
    pub async fn start(settings: Settings) -> Result<Engine, StartError> {
        let kept = Kept::open(&settings).await?;
        let (listening, listeners) = bind(&settings).await?;
        let (shared, rtbl) = assemble(settings, kept, listening)?;
        let tasks = spawn_loops(&shared, listeners, rtbl);
        tracing::info!(
            domains = %shared.settings.domains.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(","),
            listen = ?shared.listening.federation,
            "drawbridge started"
        );
        Ok(Engine { handle: EngineHandle::new(shared.clone()), shared, tasks })
    }
}

/// What survives a restart, opened: the store (and the streams the last run left open),
/// the dialback secret, the policy, our certificates.
struct Kept {
    store: Arc<Store>,
    secret: Vec<u8>,
    policy: Arc<Policy>,
    tls: Arc<CurrentTls>,
}

impl Kept {
    async fn open(settings: &Settings) -> Result<Kept, StartError> {
        let store = Arc::new(Store::open_configured(&settings.store, &settings.data_dir).await?);
        let secret = store.dialback_secret()?;
        let recovered = store.recover_open()?;
        if recovered > 0 {
            tracing::warn!(streams = recovered, "the last run stopped without closing its streams; they are in the history");
        }
        shared_gateway_ca(settings, &store).await?;
        let policy = Arc::new(Policy::load(store.clone(), settings.policy.mode)?);
        let tls = Arc::new(CurrentTls::new(TlsContext::load(&settings.tls, &settings.domains, &settings.data_dir)?));
        Ok(Kept { store, secret, policy, tls })
    }
}

/// Gateway mode on several nodes, with the CA drawbridge makes itself (no `gateway.ca_cert`):
/// made once, by the first node, kept in the shared store, and written where each node's
/// [`crate::gateway::GatewayCa::open`] reads it, so that a certificate any node mints is
/// valid on all of them (the internal server trusts one CA).
async fn shared_gateway_ca(settings: &Settings, store: &Store) -> Result<(), StartError> {
    let (Some(g), Some(pg)) = (&settings.gateway, store.postgres()) else { return Ok(()) };
    if g.ca_cert.is_some() || g.ca_key.is_some() {
        return Ok(());
    }
    let dir = settings.data_dir.join("gateway");
    let bad = |why: String| crate::gateway::ca::CaError::File { path: dir.clone(), why };
    // The CA this node made before it joined (the internal server trusts it) is offered
    // first; a new one only if it has none.
    let local = (std::fs::read_to_string(dir.join("ca.pem")), std::fs::read_to_string(dir.join("ca.key")));
    let local = match local {
        (Ok(c), Ok(k)) => Some((c, k)),
        _ => None,
    };
    let offered = match &local {
        Some(pems) => pems.clone(),
        None => crate::gateway::ca::new_ca().map_err(bad)?,
    };
    let blob = pg.shared_once("gateway_ca", || serde_json::to_vec(&offered).expect("two strings serialise")).await?;
    let (cert, key): (String, String) =
        serde_json::from_slice(&blob).map_err(|e| bad(format!("the shared store's gateway_ca does not read: {e}")))?;
    if let Some((c, k)) = &local
        && (c != &cert || k != &key)
    {
        // Kept aside, not lost: an operator may need it while the internal server's trust
        // moves to the cluster's CA.
        let aside = dir.join(format!("ca.pem.before-cluster-{}", crate::types::now_ms() / 1000));
        std::fs::copy(dir.join("ca.pem"), &aside).map_err(|e| bad(format!("cannot keep the old CA aside: {e}")))?;
        tracing::warn!(
            "gateway: the cluster's CA (made by the first node) replaces this node's own in {}; the old certificate is kept in {}: the internal server must trust the cluster's",
            dir.display(),
            aside.display()
        );
    }
    crate::gateway::ca::write_ca(&dir, &cert, &key)?;
    Ok(())
}

/// Gateway mode: the CA minting the certificates drawbridge presents as remote domains.
fn gateway_ca(settings: &Settings) -> Result<Option<Arc<crate::gateway::GatewayCa>>, StartError> {
    let Some(g) = &settings.gateway else { return Ok(None) };
    let ca = crate::gateway::GatewayCa::open(g.ca_cert.as_deref(), g.ca_key.as_deref(), &settings.data_dir)?
        .with_mint_limit(g.mints_per_minute)
        .with_max_minted(g.max_minted, std::time::SystemTime::now());
    Ok(Some(Arc::new(ca)))
}

/// The parts every task shares: event bus, table, recorder, router, the stream drivers'
/// capabilities (federation's, the internal link's, the components'), the outbound opener.
fn assemble(settings: Settings, kept: Kept, listening: Listening) -> Result<(Arc<Shared>, Rtbl), StartError> {
    let Kept { store, secret, policy, tls } = kept;
    // One issuer for every listener: a stream of ours that comes back on any of them is
    // recognised by the outbound side that opened it.
    let stream_ids = Arc::new(crate::proto::machine::StreamIds::new());
    let env = Arc::new(stream_env(&settings, &secret, policy.clone(), tls.clone(), stream_ids.clone()));
    let resolver = Arc::new(Resolver::new(&settings.dns)?);
    let gateway_ca = gateway_ca(&settings)?;
    let l = &settings.limits;
    let events = bus::channel(bus::Backlog { entries: l.event_backlog, bytes: l.event_backlog_bytes });
    let budget = table::TranscriptBudget::new(l.transcript_lines, l.transcript_bytes, l.transcript_total_bytes);
    let table = Arc::new(ConnTable::new(events.clone(), (l.closed_streams, l.closed_streams_bytes), budget));
    let recorder = Arc::new(Recorder {
        store: store.clone(),
        policy: policy.clone(),
        events: events.clone(),
        table: table.clone(),
        unauthenticated: std::sync::Mutex::new(recorder::OutcomeRing::new(l.unauthenticated_outcomes_bytes)),
    });
    let (rtbl, inbox, strangers) = rtbl_setup(&settings, &store, &policy)?;
    let mut router = Router::new(settings.domains.clone(), policy.clone(), settings.timeouts.dialback)
        .with_gateway(settings.gateway.is_some())
        .with_components(settings.components.domains().cloned().collect());
    if let Some(inbox) = inbox {
        router = router.with_feeds(inbox);
    }
    if let Some(strangers) = strangers {
        router = router.with_strangers(strangers);
    }
    let router = Arc::new(router);
    let (dials, tasks, shutdown) = (
        Arc::new(tokio::sync::Semaphore::new(settings.outbound.max_dials)),
        tokio_util::task::TaskTracker::new(),
        CancellationToken::new(),
    );
    let streams = Arc::new(Caps {
        env,
        tls: tls.clone(),
        router: router.clone(),
        table: table.clone(),
        observer: recorder.clone(),
        policy_changes: policy.subscribe(),
        resolver,
        dials: dials.clone(),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        settings: stream_settings(&settings, &listening),
        internal: None,
    });
    let internal_streams = internal_caps(&settings, &streams, gateway_ca.as_ref(), &recorder, stream_ids)?;
    let gauges: Arc<limits::Gauges> = Arc::default();
    router.set_opener(Box::new(OutboundOpener {
        streams: Arc::downgrade(&streams),
        internal: internal_streams.as_ref().map(|c| (Arc::downgrade(c), settings.domains.clone())),
        gauges: gauges.clone(),
        limits: settings.limits.clone(),
    }));
    let shared = Arc::new(Shared {
        table,
        tls,
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
        familiar: rtbl.familiar.clone(),
        previews: Arc::new(tokio::sync::Semaphore::new(1)),
        heartbeat: CancellationToken::new(),
    });
    Ok((shared, rtbl))
}

/// The real-time blocklists' parts, when `[[rtbl]]` feeds are configured: the driver's
/// (its machines warm from the store, its inbox), the familiarity set when a feed has the
/// `strangers` action.
#[derive(Default)]
struct Rtbl {
    driver: Option<super::rtbl::Parts>,
    familiar: Option<Arc<crate::rtbl::familiar::Familiarity>>,
}

/// Load what the feeds listed before (in force at once, before any service answers: a
/// warm start), their last statuses, the familiarity set; the router's hooks for them.
/// Feeds no longer configured are forgotten.
#[allow(clippy::type_complexity)]
fn rtbl_setup(
    settings: &Settings,
    store: &Arc<Store>,
    policy: &Arc<Policy>,
) -> Result<(Rtbl, Option<crate::router::rtbl::FeedInbox>, Option<crate::router::rtbl::Strangers>), StartError> {
    use crate::rtbl::{Action, Change, Feeds};
    for old in store.rtbl_feeds()? {
        if !settings.rtbl.iter().any(|f| f.key() == old) {
            tracing::info!("real-time blocklist {old} is no longer configured; forgetting its entries");
            store.rtbl_remove_feed(&old)?;
        }
    }
    if settings.rtbl.is_empty() {
        return Ok((Rtbl::default(), None, None));
    }
    let first = &settings.domains[0];
    let mut served = settings.domains.clone();
    served.extend(settings.components.list.iter().map(|c| c.domain.clone()));
    let mut feeds = Feeds::new(&settings.rtbl, first, &served, settings.rtbl_timing, |key| {
        store.rtbl_listed(key).unwrap_or_else(|e| {
            tracing::error!("store: the entries of the feed {key} could not be read (starting empty): {e}");
            Vec::new()
        })
    });
    for (i, feed) in settings.rtbl.iter().enumerate() {
        match store.rtbl_status(&feed.key()) {
            Ok(Some(prev)) => {
                if let Some(m) = feeds.get_mut(i) {
                    m.restore(&prev);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!("store: the last status of the feed {} could not be read: {e}", feed.key()),
        }
        if let Some(m) = feeds.iter().nth(i) {
            // What the feed no longer takes from the store (a domain now served here or a
            // service's, beyond a lowered max_entries) is retracted there too: the store
            // lists nothing that is not in force.
            let now = crate::types::now_ms();
            for e in store.rtbl_listed(&feed.key()).unwrap_or_default() {
                if m.entry(e.domain.as_str()).is_none() {
                    tracing::info!(
                        "real-time blocklist {}: {} is no longer taken from the store (served here, a service's domain, or beyond max_entries)",
                        feed.key(),
                        e.domain
                    );
                    store.rtbl_apply(&feed.key(), &Change::Retracted { domain: e.domain, at_ms: now })?;
                }
            }
            for e in m.entries() {
                policy.apply_rtbl(feed, &Change::Added(e.clone()));
            }
            // This run's state (subscribing again, the counters carried over) replaces the
            // last run's: the operator's view reads the store.
            if let Err(e) = store.rtbl_put_status(m.status()) {
                tracing::error!("store: the status of the feed {} was not saved: {e}", feed.key());
            }
        }
    }
    let (tx, rx) = crate::router::queue::queue(super::rtbl::INBOX, super::rtbl::INBOX_BYTES);
    let services = feeds.services().into_iter().filter_map(|s| Domain::parse(crate::rtbl::service_domain(s)).ok()).collect();
    let reconnects = Arc::new(crate::router::rtbl::Reconnects::default());
    let inbox = crate::router::rtbl::FeedInbox::new(first.clone(), services, tx, reconnects.clone());
    let driver = super::rtbl::Parts { feeds, inbox: rx, reconnects };
    if !settings.rtbl.iter().any(|f| f.action == Action::Strangers) {
        return Ok((Rtbl { driver: Some(driver), familiar: None }, Some(inbox), None));
    }
    let familiar = Arc::new(crate::rtbl::familiar::Familiarity::new(store.familiar_secret()?, settings.strangers));
    let removed = familiar.load(store.familiar_pairs()?, now_ms());
    if !removed.is_empty() {
        store.familiar_write(&removed)?;
    }
    let strangers = crate::router::rtbl::Strangers { policy: policy.clone(), familiar: familiar.clone() };
    Ok((Rtbl { driver: Some(driver), familiar: Some(familiar) }, Some(inbox), Some(strangers)))
}

/// What the stream drivers need of the settings.
fn stream_settings(settings: &Settings, listening: &Listening) -> crate::stream::StreamSettings {
    crate::stream::StreamSettings {
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
    }
}

/// Gateway mode: the same drivers, with the internal link's environment, certificates and
/// address, recorded as the internal link.
fn internal_caps(
    settings: &Settings,
    streams: &Caps,
    gateway_ca: Option<&Arc<crate::gateway::GatewayCa>>,
    recorder: &Arc<Recorder>,
    stream_ids: Arc<crate::proto::machine::StreamIds>,
) -> Result<Option<Arc<Caps>>, StartError> {
    let (Some(g), Some(ca)) = (&settings.gateway, gateway_ca) else { return Ok(None) };
    let trust = Arc::new(crate::gateway::InternalTrust::load(g.internal_ca.as_deref())?);
    Ok(Some(Arc::new(Caps {
        env: Arc::new(crate::gateway::internal_env(&streams.env, settings, g.auth, stream_ids, trust)),
        tls: Arc::new(crate::gateway::GatewayTls { ca: ca.clone() }),
        internal: Some(g.internal),
        ..streams.reporting_to(Arc::new(recorder::LinkObserver { recorder: recorder.clone(), label: "internal link" }))
    })))
}

/// One accept loop per listener, each door with its drivers' capabilities; the counters and
/// maintenance loops.
fn spawn_loops(shared: &Arc<Shared>, listeners: Listeners, rtbl: Rtbl) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let federation = &shared.streams;
    // Components: federation's capabilities, their outcomes marked and kept off the domain
    // records.
    let components =
        Arc::new(federation.reporting_to(Arc::new(recorder::LinkObserver { recorder: shared.recorder.clone(), label: "component" })));
    let secrets: crate::proto::machine::component::Secrets =
        Arc::new(shared.settings.components.list.iter().map(|c| (c.domain.clone(), c.secret.clone())).collect());
    let mut doors: Vec<(Vec<TcpListener>, Accept, limits::Door, Arc<Caps>)> = vec![
        (listeners.federation, Accept::S2s, limits::Door::Federation, federation.clone()),
        (listeners.direct_tls, Accept::DirectTls, limits::Door::Federation, federation.clone()),
        (listeners.components, Accept::Component(secrets), limits::Door::Components, components),
    ];
    if let Some(internal) = &shared.internal_streams {
        doors.push((listeners.gateway, Accept::S2s, limits::Door::Gateway, internal.clone()));
    }
    for (ls, how, door, caps) in doors {
        for l in ls {
            tasks.spawn(accept_loop(shared.clone(), l, how.clone(), door, caps.clone()));
        }
    }
    if !listeners.metrics.is_empty() {
        let allow: Arc<[crate::net::dial::IpRange]> = shared.settings.metrics.allow.clone().into();
        let weak = Arc::downgrade(shared);
        let render: crate::metrics::http::Render = Arc::new(move || weak.upgrade().map(|s| super::metrics::render(&s)).unwrap_or_default());
        for l in listeners.metrics {
            tasks.spawn(crate::metrics::http::serve(l, allow.clone(), render.clone(), shared.shutdown.clone()));
        }
    }
    tasks.spawn(counters_loop(shared.clone()));
    tasks.spawn(maintenance_loop(shared.clone()));
    tasks.spawn(super::cluster::follow(shared.clone()));
    tasks.spawn(super::cluster::publish(shared.clone()));
    tasks.spawn(super::certs::local_loop(shared.clone()));
    if let Some(parts) = rtbl.driver {
        tasks.spawn(super::rtbl::drive(shared.clone(), parts));
    }
    if let Some(familiar) = rtbl.familiar {
        tasks.spawn(super::rtbl::keep_familiar(shared.clone(), familiar));
    }
    tasks
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
        entry.apply(&crate::proto::machine::Observed::Domains { local: Some(local.to_string()), remote: Some(remote.to_string()) });
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

/// Every listener of the settings, bound, by door.
struct Listeners {
    federation: Vec<TcpListener>,
    direct_tls: Vec<TcpListener>,
    gateway: Vec<TcpListener>,
    components: Vec<TcpListener>,
    metrics: Vec<TcpListener>,
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
    let (metrics, met) = each(settings.metrics.listen.iter()).await?;
    Ok((
        Listening { federation, direct_tls, gateway, components, metrics },
        Listeners { federation: fed, direct_tls: direct, gateway: gw, components: comp, metrics: met },
    ))
}

/// What a listener accepts.
#[derive(Clone)]
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
