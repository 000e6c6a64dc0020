//! Persistence: one interface, two backends. [`embedded`] (sled, in `DATA_DIR/db`) is the
//! default and serves one node; the PostgreSQL backend lets several nodes share secret,
//! policy and history (`[store] backend`).
//!
//! What each caller may expect of [`Store`], whatever the backend:
//! - reads and writes of the small state (secret, mode, domain records, blocklist entries,
//!   the familiarity set) are synchronous and never wait on a network;
//! - history, outcomes and the policy log are appended synchronously and reach the disk or
//!   the database within `[store] flush_interval` ([`Store::flush`] to wait for it); reading
//!   them back is `async`;
//! - an operator's decision goes through [`Store::commit`], which returns only once it is
//!   durable (and fails at once when it cannot be).

use std::path::PathBuf;

use serde::{Serialize, de::DeserializeOwned};

pub use crate::policy::{DomainRecord, PolicyAction};
use crate::policy::{Mode, PolicyWrite};
use crate::rtbl::familiar::{PairHash, Write};
use crate::rtbl::{Change, Entry, FeedKey, FeedStatus};
use crate::types::{ConnSnapshot, VerificationOutcome};

pub mod embedded;
pub mod postgres;
pub mod rtbl;
pub mod transfer;
pub use embedded::{SledStore, too_wide};
pub use postgres::PgStore;
pub use rtbl::RtblRecord;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path}: cannot create it: {err} (check server.data_dir)")]
    CreateDir { path: PathBuf, err: std::io::Error },
    #[error("data dir {path} is in use by another drawbridge ({holder}): stop it or use another server.data_dir")]
    Locked { path: PathBuf, holder: String },
    #[error("{place} was written by a newer drawbridge (schema {found}, this one knows {knows}): upgrade drawbridge or {fix}")]
    Newer { place: String, found: u32, knows: u32, fix: &'static str },
    #[error("database in {path}: {msg}")]
    Db { path: PathBuf, msg: String },
    #[error("{place}: {msg}")]
    Postgres { place: String, msg: String },
    #[error(
        "{place} is unreachable since {since} ({error}): nothing was changed; drawbridge federates on under the last known policy, try again when the database is back"
    )]
    Unreachable { place: String, since: String, error: String },
}

/// `[store] backend`: where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// sled in `DATA_DIR/db`: one node.
    Sled,
    /// A PostgreSQL database that several nodes share (libpq conninfo or URL).
    Postgres { conninfo: String },
}

/// This machine's host name: a node's default name (`[cluster] node`).
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() { "drawbridge".to_owned() } else { name.to_owned() }
}

/// `[store]` (with `[cluster] node`): the backend, retention and write cadence.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub backend: Backend,
    /// Records waiting for a shared store that is unreachable, at most (then dropped, counted).
    pub buffer: usize,
    /// This node's name: the rows it writes to a shared store carry it.
    pub node: String,
    /// Records kept per time-ordered tree (outcomes, history, policy log).
    pub max_records: usize,
    pub max_age: std::time::Duration,
    /// History and outcomes reach the disk at least this often.
    pub flush_interval: std::time::Duration,
    /// Open streams are snapshotted this often (the embedded store; a shared store's view
    /// is published every `cluster.heartbeat`).
    pub snapshot_interval: std::time::Duration,
    /// `[cluster]`: how this node shows itself to the others on a shared store.
    pub cluster: ClusterSettings,
}

/// `[cluster]`: this node among the nodes sharing one PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's name (the same as [`StoreSettings::node`]).
    pub node: String,
    /// How often this node publishes its live streams and its heartbeat (`cluster.heartbeat`).
    pub heartbeat: std::time::Duration,
    /// A node whose last heartbeat is older is taken for gone: its streams are not shown
    /// (`cluster.node_timeout`).
    pub node_timeout: std::time::Duration,
}

impl ClusterSettings {
    /// `cluster.heartbeat` when not set.
    pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

    /// `cluster.node_timeout` when not set: three heartbeats, at least 10 s.
    pub fn default_timeout(heartbeat: std::time::Duration) -> std::time::Duration {
        (heartbeat * 3).max(std::time::Duration::from_secs(10))
    }
}

/// One node of a shared store, as its heartbeats tell (`ctl status`, the dashboard's header).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// Its last heartbeat (unix ms, the database's clock).
    pub heartbeat_ms: u64,
    /// When it started (unix ms, its own clock).
    pub started_ms: u64,
    /// When it stopped cleanly (unix ms); a node that died says nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_ms: Option<u64>,
    /// Its heartbeat is younger than this node's `cluster.node_timeout` and it did not stop:
    /// its streams are shown.
    pub alive: bool,
    /// The live streams it published last.
    pub streams: usize,
    /// Its drawbridge version.
    #[serde(default)]
    pub version: String,
    /// Where it listens for federation.
    #[serde(default)]
    pub listen: Vec<String>,
    /// How old its last heartbeat was when this was read (ms), by the database's clock.
    #[serde(default)]
    pub age_ms: u64,
}

/// A stream and the node that has it (`ctl connections --cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NodeStream {
    pub node: String,
    #[serde(flatten)]
    pub stream: ConnSnapshot,
}

/// Where the store is and whether it is reachable (`ctl status`, the dashboard's header,
/// the metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StoreStatus {
    /// `sled` or `postgres`.
    pub backend: String,
    /// The data dir's database, or the PostgreSQL database (never its password).
    pub place: String,
    /// This node's name (`[cluster] node`) on a shared store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub reachable: bool,
    /// Unreachable since then (unix ms), and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records waiting to be written, of at most `buffer`.
    #[serde(default)]
    pub backlog: usize,
    #[serde(default)]
    pub buffer: usize,
    /// Records dropped because the buffer was full, since start.
    #[serde(default)]
    pub dropped: u64,
    /// A shared store: every node that published a heartbeat (this one too), by name, as
    /// this node's publisher last read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
    /// `cluster.heartbeat` and `cluster.node_timeout` (ms), on a shared store.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heartbeat_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub node_timeout_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a node says of itself with each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub version: String,
    /// Where it listens for federation.
    pub listen: Vec<String>,
    /// When it started (unix ms).
    pub started_ms: u64,
}

/// The store the engine runs on.
pub struct Store {
    backend: Open,
}

enum Open {
    Sled(SledStore),
    Postgres(Box<PgStore>),
}

/// The same call on whichever backend this is (both have the same methods).
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match &$self.backend {
            Open::Sled($s) => $e,
            Open::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// The embedded store in `data_dir` (created if missing, locked against a second process).
    pub fn open(data_dir: &std::path::Path) -> Result<Store, StoreError> {
        Ok(Store { backend: Open::Sled(SledStore::open(data_dir)?) })
    }

    /// The store `[store]` names: the embedded one in `data_dir`, or the shared one (whose
    /// working copy is kept in `data_dir`).
    pub async fn open_configured(settings: &StoreSettings, data_dir: &std::path::Path) -> Result<Store, StoreError> {
        match &settings.backend {
            Backend::Sled => Store::open(data_dir),
            Backend::Postgres { conninfo } => Ok(Store {
                backend: Open::Postgres(Box::new(PgStore::open(conninfo, &settings.cluster, settings.buffer, data_dir).await?)),
            }),
        }
    }

    /// The embedded store, if that is what this is (for its own tests and tools).
    pub fn sled(&self) -> Option<&SledStore> {
        match &self.backend {
            Open::Sled(s) => Some(s),
            Open::Postgres(_) => None,
        }
    }

    /// The shared store, if that is what this is.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Open::Sled(_) => None,
            Open::Postgres(p) => Some(p),
        }
    }

    pub fn status(&self) -> StoreStatus {
        match &self.backend {
            Open::Sled(s) => {
                StoreStatus { backend: "sled".into(), place: s.path.display().to_string(), reachable: true, ..Default::default() }
            }
            Open::Postgres(p) => {
                let (backlog, dropped) = p.backlog();
                let (down_since_ms, error) = match p.health() {
                    postgres::Health::Up => (None, None),
                    postgres::Health::Down { since_ms, error } => (Some(since_ms), Some(error)),
                };
                StoreStatus {
                    backend: "postgres".into(),
                    place: p.place().to_owned(),
                    node: Some(p.node().to_owned()),
                    reachable: down_since_ms.is_none(),
                    down_since_ms,
                    error,
                    backlog,
                    buffer: p.buffer(),
                    dropped,
                    nodes: p.nodes(),
                    heartbeat_ms: p.cluster().heartbeat.as_millis() as u64,
                    node_timeout_ms: p.cluster().node_timeout.as_millis() as u64,
                }
            }
        }
    }

    /// The dialback secret: created once (32 random bytes), durable before first use.
    pub fn dialback_secret(&self) -> Result<Vec<u8>, StoreError> {
        each!(self, s => s.dialback_secret())
    }

    pub fn mode(&self) -> Result<Option<Mode>, StoreError> {
        each!(self, s => s.mode())
    }

    pub fn domains(&self) -> Result<Vec<DomainRecord>, StoreError> {
        each!(self, s => s.domains())
    }

    pub fn domain(&self, domain: &str) -> Result<Option<DomainRecord>, StoreError> {
        each!(self, s => s.domain(domain))
    }

    /// A record drawbridge changed itself, written behind like the history: its counters
    /// (`from: None`), or also its decision changed from the state `from` (written only if the
    /// stored decision is still that one; see [`crate::policy::PolicyStore::put_domain`]).
    pub fn put_domain(&self, rec: &DomainRecord, from: Option<crate::policy::DomainState>) -> Result<(), StoreError> {
        match &self.backend {
            // One node: its memory is the truth, written as it is.
            Open::Sled(s) => s.put_domain(rec),
            Open::Postgres(s) => s.put_domain(rec, from),
        }
    }

    /// An operator's change, durable when this returns.
    pub async fn commit(&self, w: &PolicyWrite) -> Result<(), StoreError> {
        each!(self, s => s.commit(w).await)
    }

    pub fn add_outcome(&self, o: &VerificationOutcome) -> Result<(), StoreError> {
        each!(self, s => s.add_outcome(o))
    }

    pub fn add_history(&self, snap: &ConnSnapshot) -> Result<(), StoreError> {
        each!(self, s => s.add_history(snap))
    }

    /// Newest first.
    pub async fn outcomes(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, StoreError> {
        match &self.backend {
            Open::Sled(s) => s.outcomes(domain, limit),
            Open::Postgres(s) => s.outcomes(domain, limit).await,
        }
    }

    /// The newest outcomes at hand without waiting, newest first: every one on the embedded
    /// store; on a shared one, those this node recorded or loaded at start.
    pub fn recent_outcomes(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, StoreError> {
        match &self.backend {
            Open::Sled(s) => s.outcomes(domain, limit),
            Open::Postgres(s) => s.recent_outcomes(domain, limit),
        }
    }

    /// Newest first.
    pub async fn history(&self, domain: Option<&str>, limit: usize) -> Result<Vec<ConnSnapshot>, StoreError> {
        match &self.backend {
            Open::Sled(s) => s.history(domain, limit),
            Open::Postgres(s) => s.history(domain, limit).await,
        }
    }

    /// The closed streams active at or after `since_ms`, newest first.
    pub async fn history_since(&self, since_ms: u64) -> Result<Vec<ConnSnapshot>, StoreError> {
        match &self.backend {
            Open::Sled(s) => s.history_since(since_ms),
            Open::Postgres(s) => s.history_since(since_ms).await,
        }
    }

    /// Newest first.
    pub async fn policy_log(&self, domain: Option<&str>, limit: usize) -> Result<Vec<PolicyAction>, StoreError> {
        match &self.backend {
            Open::Sled(s) => s.policy_log(domain, limit),
            Open::Postgres(s) => s.policy_log(domain, limit).await,
        }
    }

    /// Replace the snapshots of this node's open streams (on a shared store the publisher
    /// keeps them current: see [`Store::publish`]).
    pub fn snapshot_open(&self, live: &[ConnSnapshot]) -> Result<(), StoreError> {
        each!(self, s => s.snapshot_open(live))
    }

    /// A shared store: this node's live streams (what changed since the last call) and its
    /// heartbeat, in one transaction; then the nodes are read again for [`Store::status`].
    /// Nothing to do on the embedded store.
    pub async fn publish(&self, live: &[ConnSnapshot], me: &NodeInfo) -> Result<(), StoreError> {
        match &self.backend {
            Open::Sled(_) => Ok(()),
            Open::Postgres(p) => p.publish(live, me).await,
        }
    }

    /// A shared store: this node stops (cleanly): its streams are no longer shown and the
    /// others see it stopped, not silent.
    pub async fn leave(&self) -> Result<(), StoreError> {
        match &self.backend {
            Open::Sled(_) => Ok(()),
            Open::Postgres(p) => p.leave().await,
        }
    }

    /// A shared store: the live streams of the other nodes that are alive (as they last
    /// published them), and with `closed` the streams they closed last (at most `closed_max`).
    /// `None` on the embedded store: there are no other nodes.
    pub async fn cluster_streams(&self, closed: bool, closed_max: usize) -> Option<Result<Vec<NodeStream>, StoreError>> {
        match &self.backend {
            Open::Sled(_) => None,
            Open::Postgres(p) => Some(p.cluster_streams(closed, closed_max).await),
        }
    }

    /// Streams this node left open when it last stopped without closing them: into the
    /// history, closed with that reason. Returns how many.
    pub fn recover_open(&self) -> Result<usize, StoreError> {
        each!(self, s => s.recover_open())
    }

    /// Keep at most `max` records per time-ordered table, none older than `max_age_ms`.
    pub async fn prune(&self, max: usize, max_age_ms: u64, now_ms: u64) -> Result<usize, StoreError> {
        match &self.backend {
            Open::Sled(s) => s.prune(max, max_age_ms, now_ms),
            Open::Postgres(s) => s.prune(max, max_age_ms, now_ms).await,
        }
    }

    /// Everything written so far is durable when this returns.
    pub async fn flush(&self) -> Result<(), StoreError> {
        each!(self, s => s.flush().await)
    }

    /// Persist one change a blocklist feed's machine made; how many records it retracted.
    pub fn rtbl_apply(&self, feed: &FeedKey, change: &Change) -> Result<usize, StoreError> {
        each!(self, s => s.rtbl_apply(feed, change))
    }

    pub fn rtbl_retracted_count(&self, feed: &FeedKey) -> Result<usize, StoreError> {
        each!(self, s => s.rtbl_retracted_count(feed))
    }

    pub fn rtbl_records(&self, feed: &FeedKey) -> Result<Vec<RtblRecord>, StoreError> {
        each!(self, s => s.rtbl_records(feed))
    }

    pub fn rtbl_listed(&self, feed: &FeedKey) -> Result<Vec<Entry>, StoreError> {
        each!(self, s => s.rtbl_listed(feed))
    }

    pub fn rtbl_for_domain(&self, domain: &str) -> Result<Vec<RtblRecord>, StoreError> {
        each!(self, s => s.rtbl_for_domain(domain))
    }

    pub fn rtbl_record(&self, feed: &FeedKey, domain: &str) -> Result<Option<RtblRecord>, StoreError> {
        each!(self, s => s.rtbl_record(feed, domain))
    }

    pub fn rtbl_prune_retracted(&self, feed: &FeedKey, max: usize) -> Result<usize, StoreError> {
        each!(self, s => s.rtbl_prune_retracted(feed, max))
    }

    pub fn rtbl_put_status(&self, status: &FeedStatus) -> Result<(), StoreError> {
        each!(self, s => s.rtbl_put_status(status))
    }

    pub fn rtbl_status(&self, feed: &FeedKey) -> Result<Option<FeedStatus>, StoreError> {
        each!(self, s => s.rtbl_status(feed))
    }

    pub fn rtbl_feeds(&self) -> Result<Vec<FeedKey>, StoreError> {
        each!(self, s => s.rtbl_feeds())
    }

    pub fn rtbl_remove_feed(&self, feed: &FeedKey) -> Result<(), StoreError> {
        each!(self, s => s.rtbl_remove_feed(feed))
    }

    pub fn familiar_secret(&self) -> Result<[u8; 32], StoreError> {
        each!(self, s => s.familiar_secret())
    }

    pub fn familiar_write(&self, writes: &[Write]) -> Result<(), StoreError> {
        each!(self, s => s.familiar_write(writes))
    }

    pub fn familiar_pairs(&self) -> Result<Vec<(PairHash, u64)>, StoreError> {
        each!(self, s => s.familiar_pairs())
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}

impl From<StoreError> for crate::policy::StorageError {
    fn from(e: StoreError) -> Self {
        crate::policy::StorageError(e.to_string())
    }
}

/// The policy keeps operators' decisions here.
impl crate::policy::PolicyStore for Store {
    fn mode(&self) -> Result<Option<Mode>, crate::policy::StorageError> {
        Ok(Store::mode(self)?)
    }
    fn domains(&self) -> Result<Vec<DomainRecord>, crate::policy::StorageError> {
        Ok(Store::domains(self)?)
    }
    fn put_domain(&self, rec: &DomainRecord, from: Option<crate::policy::DomainState>) -> Result<(), crate::policy::StorageError> {
        Ok(Store::put_domain(self, rec, from)?)
    }
    fn log_action(&self, action: &PolicyAction) -> Result<(), crate::policy::StorageError> {
        Ok(each!(self, s => s.log_action(action))?)
    }
    fn commit<'a>(
        &'a self,
        w: &'a PolicyWrite,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::policy::StorageError>> + Send + 'a>> {
        Box::pin(async move { Ok(Store::commit(self, w).await?) })
    }
}
