//! The engine: the running server behind one API. [`EngineHandle::execute`] takes typed
//! [`Request`]s (every operator action) and [`EngineHandle::subscribe`] gives typed events;
//! the control socket, the dashboard, `ctl`, the demo and the tests are built only on these.

pub use crate::{events, limits, table};

mod api;
mod certs;
mod cluster;
mod commands;
mod handle;
mod metrics;
mod preview;
mod recorder;
mod rtbl;
mod start;
mod testing;
pub use api::*;
pub use handle::{EngineHandle, Subscription};
pub use preview::{Seen, tally};
use recorder::Recorder;
pub use recorder::UNAUTHENTICATED_RING;
pub use testing::Testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::Domain;
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
    /// A `strangers` feed is followed: the familiarity set (its last writes stored at shutdown).
    familiar: Option<Arc<crate::rtbl::familiar::Familiarity>>,
    /// Dry runs one at a time (one permit).
    previews: Arc<tokio::sync::Semaphore>,
    /// Cancelled, the cluster publisher stops (at shutdown; a test's node gone silent).
    heartbeat: CancellationToken,
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
                certs::check_local(self);
                Ok(msg)
            }
            Err(e) => {
                tracing::error!("TLS reload failed, keeping the current certificate: {e}");
                Err(e)
            }
        }
    }

    /// One of `server.domains` (components' domains are not): what `ctl probe --from` may
    /// name, and what policy does not apply to.
    fn is_server_domain(&self, d: &Domain) -> bool {
        self.settings.domains.iter().any(|h| h == d)
    }

    /// Verification outcomes, newest first: the store's and the unauthenticated ring's.
    async fn outcomes_for(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, crate::store::StoreError> {
        self.recorder.outcomes_for(domain, limit).await
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
        if let Some(f) = &self.shared.familiar {
            rtbl::write_familiar(&self.shared, f.take_writes());
        }
        if let Err(e) = self.shared.store.snapshot_open(&[]) {
            tracing::error!("store: {e}");
        }
        if let Err(e) = self.shared.store.flush().await {
            tracing::error!("store: {e}");
        }
        // A shared store: the others see this node stopped, not silent.
        if let Err(e) = self.shared.store.leave().await {
            tracing::error!("store: {e}");
        }
        let _ = std::fs::remove_file(&self.shared.settings.control_socket);
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
            // A shared store's writer commits as records come (and says itself when it cannot).
            _ = flush.tick(), if shared.store.postgres().is_none() => {
                if let Err(e) = shared.store.flush().await {
                    tracing::error!("store flush: {e}");
                }
            }
            // A shared store's rows are kept current by the cluster's publisher.
            _ = snapshot.tick(), if shared.store.postgres().is_none() => {
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
                match shared.store.prune(st.max_records, st.max_age.as_millis() as u64, now_ms()).await {
                    Ok(n) if n > 0 => tracing::info!(records = n, "pruned old history (store.max_records / store.max_age)"),
                    Ok(_) => {}
                    Err(e) => tracing::error!("store prune: {e}"),
                }
            }
        }
    }
}
