//! The shared store: PostgreSQL, for several nodes that act as one edge (`[store] backend =
//! "postgres"`). Every node reads and writes the same tables; each row a node appends
//! carries its name (`[cluster] node`).
//!
//! What never waits on the database: the stanza path and everything it calls. The small
//! state (secrets, mode, domain records, blocklist entries, the familiarity set) is read at
//! start into a private working copy ([`SledStore::working_copy`]) that the synchronous
//! reads use; appends (outcomes, history, drawbridge's own record updates, the policy log
//! entries it writes itself) go through a bounded queue to one writer task that commits
//! them in batches. While the database is unreachable the writer keeps what it holds and
//! retries; the queue keeps up to `[store] buffer` records and counts what it drops.
//!
//! An operator's change ([`PgStore::commit`]) is one transaction, acknowledged only once it
//! committed; it fails at once, and changes nothing, while the database is unreachable.
//!
//! The cluster's view ([`PgStore::publish`], every `[cluster] heartbeat`): each node keeps
//! its rows of `open_streams` current (only the streams that changed since its last publish
//! are written, those that ended deleted) and its heartbeat in `nodes`, in one transaction on
//! the session connection, never on the stanza path; while the database is unreachable a
//! publish is skipped, not queued. A node whose heartbeat is older than `[cluster]
//! node_timeout` (by the database's clock: nodes' clocks may differ) is taken for gone: its
//! streams are not shown ([`PgStore::cluster_streams`]), and when it starts again it moves
//! them into the history (crash recovery reads the same rows).
//!
//! Tables (schema version [`SCHEMA_VERSION`], applied at start under an advisory lock so
//! that nodes starting together migrate once): `drawbridge_schema`, `drawbridge_meta`
//! (secrets, mode), `domains` (the decision: state, reason, who, expiry; one row per domain,
//! the newest decision wins), `domain_stats` (counters and sightings, per node), `policy_log`,
//! `outcomes`, `history`, `open_streams` (per node), `rtbl`, `rtbl_feeds`, `familiar`;
//! since version 2 `nodes` (each node's heartbeat, start, clean stop, version, addresses).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Config};

use super::{ClusterSettings, NodeInfo, NodeStatus, NodeStream, RtblRecord, SledStore, StoreError};
use crate::policy::{DomainRecord, Mode, PolicyAction, PolicyWrite};
use crate::rtbl::familiar::{PairHash, Write};
use crate::rtbl::{Change, Entry, FeedKey, FeedStatus};
use crate::types::{ConnSnapshot, VerificationOutcome, now_ms};

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i32 = 2;

/// Each migration brings the schema from the version before it to its own.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE drawbridge_meta (key text PRIMARY KEY, value bytea NOT NULL);
     CREATE TABLE domains (domain text PRIMARY KEY, decision jsonb NOT NULL, decided_ms bigint NOT NULL DEFAULT 0);
     CREATE TABLE domain_stats (domain text NOT NULL, node text NOT NULL, record jsonb NOT NULL, PRIMARY KEY (domain, node));
     CREATE TABLE policy_log (id bigserial PRIMARY KEY, time_ms bigint NOT NULL, node text NOT NULL, domain text, record jsonb NOT NULL);
     CREATE INDEX policy_log_time ON policy_log (time_ms);
     CREATE INDEX policy_log_domain ON policy_log (domain, time_ms);
     CREATE TABLE outcomes (id bigserial PRIMARY KEY, time_ms bigint NOT NULL, node text NOT NULL, remote text NOT NULL, record jsonb NOT NULL);
     CREATE INDEX outcomes_time ON outcomes (time_ms);
     CREATE INDEX outcomes_remote ON outcomes (remote, time_ms);
     CREATE TABLE history (id bigserial PRIMARY KEY, opened_ms bigint NOT NULL, last_ms bigint NOT NULL, node text NOT NULL,
                           remotes text[] NOT NULL, record jsonb NOT NULL);
     CREATE INDEX history_opened ON history (opened_ms);
     CREATE INDEX history_last ON history (last_ms);
     CREATE INDEX history_remotes ON history USING gin (remotes);
     CREATE TABLE open_streams (node text NOT NULL, id text NOT NULL, record jsonb NOT NULL, PRIMARY KEY (node, id));
     CREATE TABLE rtbl (service text NOT NULL, feed_node text NOT NULL, domain text NOT NULL, record jsonb NOT NULL,
                        PRIMARY KEY (service, feed_node, domain));
     CREATE TABLE rtbl_feeds (service text NOT NULL, feed_node text NOT NULL, status jsonb NOT NULL, PRIMARY KEY (service, feed_node));
     CREATE TABLE familiar (pair bytea PRIMARY KEY, last_ms bigint NOT NULL);",
    ),
    // The cluster's view (issue 20): each node's heartbeat; its live streams are its rows
    // of open_streams, kept current by its publisher.
    (
        2,
        "CREATE TABLE nodes (node text PRIMARY KEY, heartbeat_ms bigint NOT NULL, started_ms bigint NOT NULL, stopped_ms bigint,
                            version text NOT NULL DEFAULT '', listen text[] NOT NULL DEFAULT '{}');",
    ),
];

/// The advisory lock nodes take to migrate one at a time ("drawbrg").
const MIGRATION_LOCK: i64 = 0x0064_7261_7762_7267;

/// Outcomes kept at hand for the dashboard's snapshot (the newest, of any node at start).
const RECENT: usize = 500;
/// Records one transaction of the writer carries at most.
const BATCH: usize = 512;
/// How long a connection attempt may take when the conninfo sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Statements of an operator's change or a read, at most.
const STATEMENT_TIMEOUT_MS: u32 = 10_000;
/// A lock waited for, at most.
const LOCK_TIMEOUT_MS: u32 = 5_000;
/// The database's clock, unix ms: heartbeats are written and judged by it alone, so that
/// the nodes' clocks need not agree.
const DB_NOW_MS: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// A libpq conninfo (`host=… dbname=…`) or `postgresql://` URL, checked.
pub fn parse_conninfo(s: &str) -> Result<Config, String> {
    // libpq's verifying modes, which production conninfos spell out: the TLS here always
    // verifies the certificate and the host name, so both mean "require" to tokio-postgres.
    let spelled = s.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require");
    let s = spelled.as_str();
    let mut c = Config::from_str(s).map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    if c.get_hosts().is_empty() {
        return Err("names no host (e.g. host=/run/postgresql for the local server's socket)".into());
    }
    if c.get_dbname().is_none() {
        return Err("names no database (dbname=…)".into());
    }
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(CONNECT_TIMEOUT);
    }
    // A silent network (a failover that moved an address, a firewall dropping idle
    // connections) is noticed in about half a minute, not in the system's two hours.
    let given = |key: &str| s.contains(key);
    if !given("keepalives_idle") {
        c.keepalives_idle(Duration::from_secs(20));
    }
    if !given("keepalives_interval") {
        c.keepalives_interval(Duration::from_secs(5));
    }
    if !given("keepalives_retries") {
        c.keepalives_retries(3);
    }
    if !given("tcp_user_timeout") {
        c.tcp_user_timeout(Duration::from_secs(30));
    }
    // Over TCP the store carries the dialback secret and the gateway CA's key: TLS is
    // required unless the conninfo says otherwise (`sslmode=disable`, `prefer`), so that no
    // one in the path can talk the connection down to plaintext.
    if !given("sslmode") && !local_only(&c) {
        c.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    Ok(c)
}

/// How long the listening connection's keepalive query may take before the connection is
/// taken for lost.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The database, named for messages (never its password).
pub(super) fn describe(c: &Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!("PostgreSQL database {} on {} (store.postgres)", c.get_dbname().unwrap_or("?"), hosts.join(","))
}

/// The channel on which nodes announce policy changes (the payload is a [`Notice`]; the
/// tables stay the source of truth: a node reads what a notice names, and everything after
/// it (re)connects, since notices sent while it was not listening are not replayed).
const CHANNEL: &str = "drawbridge_policy";
/// A notice's payload stays under PostgreSQL's 8 000 bytes: beyond this, "read everything".
const NOTICE_MAX: usize = 7_000;
/// Domains named by notices not yet read, at most; beyond, everything is read again.
const PENDING_MAX: usize = 10_000;

/// What a node changed, as it tells the others.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Notice {
    node: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    mode: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    domains: Vec<String>,
}

impl Notice {
    fn payload(node: &str, mode: bool, domains: impl Iterator<Item = String>) -> String {
        let mut n = Notice { node: node.to_owned(), mode, all: false, domains: domains.collect() };
        let text = serde_json::to_string(&n).expect("a notice serialises");
        if text.len() <= NOTICE_MAX {
            return text;
        }
        n.domains.clear();
        n.all = true;
        serde_json::to_string(&n).expect("a notice serialises")
    }
}

/// What other nodes changed and this one has not read yet.
#[derive(Debug, Default)]
struct Pending {
    all: bool,
    mode: bool,
    domains: std::collections::HashSet<String>,
}

impl Pending {
    fn add(&mut self, n: Notice) {
        self.all |= n.all;
        self.mode |= n.mode;
        self.domains.extend(n.domains);
        if self.domains.len() > PENDING_MAX {
            self.all = true;
            self.domains.clear();
        }
    }

    fn is_empty(&self) -> bool {
        !self.all && !self.mode && self.domains.is_empty()
    }
}

/// Decisions other nodes made, read back from the tables.
#[derive(Debug, Default)]
pub struct RemoteChanges {
    /// Every decision was read (after a (re)connect, or more than a notice could name).
    pub all: bool,
    pub mode: Option<Mode>,
    /// The decisions (only the decision fields are meaningful).
    pub decisions: Vec<DomainRecord>,
}

/// Whether the writer reaches the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Unreachable since then (unix ms), with the last error.
    Down {
        since_ms: u64,
        error: String,
    },
}

/// One record on its way to the database.
enum Op {
    /// A record's counters, and its decision if changed from this state.
    Domain(Box<DomainRecord>, Option<crate::policy::DomainState>),
    Action(Box<PolicyAction>),
    Outcome(Box<VerificationOutcome>),
    History(Box<ConnSnapshot>),
    Open(Vec<ConnSnapshot>),
    Rtbl(FeedKey, Vec<RtblRecord>),
    RtblGone(FeedKey, Vec<String>),
    RtblStatus(Box<FeedStatus>),
    RtblForget(FeedKey),
    Familiar(Vec<Write>),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

pub struct PgStore {
    node: String,
    cluster: ClusterSettings,
    /// What the last publish committed: each live stream's fingerprint by id (`None`: not
    /// known, the next publish writes every row).
    published: Mutex<Option<HashMap<String, u64>>>,
    /// The nodes as the last publish read them.
    nodes: Mutex<Vec<NodeStatus>>,
    config: Config,
    place: String,
    /// The small state, as synchronous reads see it.
    copy: SledStore,
    secret: Vec<u8>,
    familiar_secret: [u8; 32],
    mode: Mutex<Option<Mode>>,
    recent: Mutex<VecDeque<VerificationOutcome>>,
    recovered: usize,
    writes: mpsc::Sender<Op>,
    dropped: Arc<AtomicU64>,
    last_drop_log: Mutex<Option<std::time::Instant>>,
    health: watch::Receiver<Health>,
    /// Reads and operator changes: one at a time, on their own connection.
    session: tokio::sync::Mutex<Option<Client>>,
    /// Other nodes' changes not yet read, and the signal that there are some.
    pending: Arc<Mutex<Pending>>,
    noticed: Arc<tokio::sync::Notify>,
}

impl PgStore {
    /// Connect, migrate, read the shared state into the working copy in `data_dir`, move the
    /// streams this node left open into the history, and start the writer.
    pub async fn open(conninfo: &str, cluster: &ClusterSettings, buffer: usize, data_dir: &Path) -> Result<PgStore, StoreError> {
        let node = cluster.node.as_str();
        let config = parse_conninfo(conninfo).map_err(|msg| StoreError::Postgres { place: "store.postgres".into(), msg })?;
        let place = describe(&config);
        let pg = |e: tokio_postgres::Error| StoreError::Postgres { place: place.clone(), msg: pg_error(&e) };
        let mut client = connect(&config).await.map_err(pg)?;
        migrate(&mut client, &place).await?;
        let copy = SledStore::working_copy(data_dir)?;
        let secret = ensure_secret(&client, "dialback_secret").await.map_err(pg)?;
        let familiar_secret: [u8; 32] = ensure_secret(&client, "familiar_secret")
            .await
            .map_err(pg)?
            .try_into()
            .map_err(|_| StoreError::Postgres { place: place.clone(), msg: "drawbridge_meta.familiar_secret is not 32 bytes".into() })?;
        let mode = client
            .query_opt("SELECT value FROM drawbridge_meta WHERE key = 'mode'", &[])
            .await
            .map_err(pg)?
            .and_then(|r| Mode::parse(std::str::from_utf8(r.get::<_, &[u8]>(0)).ok()?));
        // Peer text (certificate names, reports) is UTF-8: a database in another encoding
        // would refuse some of it, and with it whole batches and heartbeats.
        let encoding: String = client.query_one("SHOW server_encoding", &[]).await.map_err(pg)?.get(0);
        if !encoding.eq_ignore_ascii_case("UTF8") {
            return Err(StoreError::Postgres {
                place: place.clone(),
                msg: format!(
                    "the database's encoding is {encoding}; drawbridge needs UTF8 (CREATE DATABASE drawbridge ENCODING 'UTF8' TEMPLATE template0)"
                ),
            });
        }
        // Without the policy in the working copy a node would start open: a copy that cannot
        // be written stops the start.
        load(&client, node, &copy).await.map_err(|e| match e {
            Loaded::Db(e) => pg(e),
            Loaded::Copy(e) => e,
        })?;
        let recent = client
            .query("SELECT record FROM outcomes ORDER BY time_ms DESC, id DESC LIMIT $1", &[&(RECENT as i64)])
            .await
            .map_err(pg)?
            .iter()
            .filter_map(|r| r.try_get::<_, Json<VerificationOutcome>>(0).ok().map(|j| j.0))
            .collect();
        let recovered = recover_open(&mut client, node).await.map_err(pg)?;
        let (writes, rx) = mpsc::channel(buffer);
        let (health_tx, health) = watch::channel(Health::Up);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(config.clone(), node.to_owned(), place.clone(), client, rx, health_tx));
        let (pending, noticed) = (Arc::new(Mutex::new(Pending::default())), Arc::new(tokio::sync::Notify::new()));
        tokio::spawn(listen(config.clone(), node.to_owned(), place.clone(), pending.clone(), noticed.clone(), writes.downgrade()));
        Ok(PgStore {
            node: node.to_owned(),
            cluster: cluster.clone(),
            published: Mutex::new(None),
            nodes: Mutex::new(Vec::new()),
            config,
            place,
            copy,
            secret,
            familiar_secret,
            mode: Mutex::new(mode),
            recent: Mutex::new(recent),
            recovered,
            writes,
            dropped,
            last_drop_log: Mutex::new(None),
            health,
            session: tokio::sync::Mutex::new(None),
            pending,
            noticed,
        })
    }

    /// Returns once other nodes changed the policy since the last [`PgStore::take_changes`]
    /// (or this node (re)connected to hear about it).
    pub async fn noticed(&self) {
        loop {
            let wait = self.noticed.notified();
            if !self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                return;
            }
            wait.await;
        }
    }

    /// Read what other nodes changed (as their notices said) from the tables, into the
    /// working copy; the caller applies it to the live policy. On failure what was to be
    /// read is kept for the next call.
    pub async fn take_changes(&self) -> Result<RemoteChanges, StoreError> {
        let p = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        match self.read_changes(&p).await {
            Ok(c) => Ok(c),
            Err(e) => {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                pending.add(Notice { node: String::new(), mode: p.mode, all: p.all, domains: p.domains.into_iter().collect() });
                Err(e)
            }
        }
    }

    async fn read_changes(&self, p: &Pending) -> Result<RemoteChanges, StoreError> {
        let mut session = self.session().await?;
        let client = session.as_ref().expect("connected");
        let r: Result<(Option<Mode>, Vec<DomainRecord>), tokio_postgres::Error> = async {
            let mode = if p.all || p.mode {
                client
                    .query_opt("SELECT value FROM drawbridge_meta WHERE key = 'mode'", &[])
                    .await?
                    .and_then(|r| Mode::parse(std::str::from_utf8(r.get::<_, &[u8]>(0)).ok()?))
            } else {
                None
            };
            let rows = if p.all {
                client.query("SELECT decision FROM domains", &[]).await?
            } else if p.domains.is_empty() {
                Vec::new()
            } else {
                let names: Vec<&str> = p.domains.iter().map(String::as_str).collect();
                client.query("SELECT decision FROM domains WHERE domain = ANY($1)", &[&names]).await?
            };
            Ok((mode, rows.iter().filter_map(|r| r.try_get::<_, Json<DomainRecord>>(0).ok().map(|j| j.0)).collect()))
        }
        .await;
        let (mode, decisions) = match r {
            Ok(x) => x,
            Err(e) => {
                if client.is_closed() {
                    *session = None;
                }
                return Err(self.pg(&e));
            }
        };
        drop(session);
        if let Some(m) = mode {
            *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
        }
        let mut merged = Vec::with_capacity(decisions.len());
        for d in &decisions {
            let mut rec = self.copy.domain(&d.domain)?.unwrap_or_else(|| DomainRecord { domain: d.domain.clone(), ..Default::default() });
            rec.take_decision(d);
            merged.push(rec);
        }
        self.copy.put_domains(&merged)?;
        Ok(RemoteChanges { all: p.all, mode, decisions })
    }

    /// The database named for messages (no password).
    pub fn place(&self) -> &str {
        &self.place
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// `[cluster]`.
    pub fn cluster(&self) -> &ClusterSettings {
        &self.cluster
    }

    /// The nodes as this node's publisher last read them (this one included once it
    /// published): name, heartbeat, alive, live streams.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This node's live streams and its heartbeat, in one transaction on the session
    /// connection: the streams whose fingerprint changed since the last publish written,
    /// those that ended deleted (every row, after a failed publish or at the first), the
    /// heartbeat by the database's clock. Then the nodes are read for [`PgStore::nodes`].
    /// Fails at once, and is not queued, when the database cannot be reached.
    pub async fn publish(&self, live: &[ConnSnapshot], me: &NodeInfo) -> Result<(), StoreError> {
        // Taken: a publish that fails leaves `None`, and the next writes everything.
        let before = self.published.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut now = HashMap::with_capacity(live.len());
        let (mut ids, mut records) = (Vec::new(), Vec::new());
        for s in live {
            let fp = fingerprint(s);
            if before.as_ref().and_then(|b| b.get(&s.id)) != Some(&fp) {
                ids.push(s.id.as_str());
                records.push(Json(s));
            }
            now.insert(s.id.clone(), fp);
        }
        let ended: Option<Vec<&str>> = before.as_ref().map(|b| b.keys().filter(|id| !now.contains_key(*id)).map(String::as_str).collect());
        let all: Vec<&str> = live.iter().map(|s| s.id.as_str()).collect();
        let mut session = self.session().await?;
        let client = session.as_mut().expect("connected");
        let r: Result<Vec<NodeStatus>, tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            tx.execute(
                &format!(
                    "INSERT INTO nodes (node, heartbeat_ms, started_ms, stopped_ms, version, listen) VALUES ($1, {DB_NOW_MS}, $2, NULL, $3, $4)
                     ON CONFLICT (node) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms, started_ms = EXCLUDED.started_ms,
                       stopped_ms = NULL, version = EXCLUDED.version, listen = EXCLUDED.listen"
                ),
                &[&self.node, &(me.started_ms as i64), &me.version, &me.listen],
            )
            .await?;
            match &ended {
                None => tx.execute("DELETE FROM open_streams WHERE node = $1 AND NOT (id = ANY($2))", &[&self.node, &all]).await?,
                Some(gone) if !gone.is_empty() => {
                    tx.execute("DELETE FROM open_streams WHERE node = $1 AND id = ANY($2)", &[&self.node, gone]).await?
                }
                Some(_) => 0,
            };
            if !ids.is_empty() {
                tx.execute(
                    "INSERT INTO open_streams (node, id, record) SELECT $1, x.id, x.record FROM unnest($2::text[], $3::jsonb[]) AS x(id, record)
                     ON CONFLICT (node, id) DO UPDATE SET record = EXCLUDED.record",
                    &[&self.node, &ids, &records],
                )
                .await?;
            }
            tx.commit().await?;
            read_nodes(client, self.cluster.node_timeout).await
        }
        .await;
        match r {
            Ok(nodes) => {
                *self.published.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
                Ok(())
            }
            Err(e) => {
                if client.is_closed() {
                    *session = None;
                }
                Err(self.pg(&e))
            }
        }
    }

    /// This node stops cleanly: its rows of `open_streams` deleted, and its heartbeat row
    /// marked stopped (the others show it stopped, not silent).
    pub async fn leave(&self) -> Result<(), StoreError> {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut session = self.session().await?;
        let client = session.as_mut().expect("connected");
        let r: Result<(), tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            tx.execute("DELETE FROM open_streams WHERE node = $1", &[&self.node]).await?;
            tx.execute(
                &format!("UPDATE nodes SET stopped_ms = $2, heartbeat_ms = {DB_NOW_MS} WHERE node = $1"),
                &[&self.node, &(now_ms() as i64)],
            )
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = r {
            if client.is_closed() {
                *session = None;
            }
            return Err(self.pg(&e));
        }
        Ok(())
    }

    /// The live streams of the other nodes that are alive (their heartbeat younger than
    /// `cluster.node_timeout`, by the database's clock, and not stopped), as they last
    /// published them; with `closed`, the streams the other nodes closed last too (at most
    /// `closed_max`, from the history).
    pub async fn cluster_streams(&self, closed: bool, closed_max: usize) -> Result<Vec<NodeStream>, StoreError> {
        let mut session = self.session().await?;
        let client = session.as_ref().expect("connected");
        let timeout = self.cluster.node_timeout.as_millis() as i64;
        let r: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> = async {
            let mut rows = client
                .query(
                    &format!(
                        "SELECT o.node, o.record FROM open_streams o JOIN nodes n ON n.node = o.node
                         WHERE o.node <> $1 AND n.stopped_ms IS NULL AND n.heartbeat_ms > {DB_NOW_MS} - $2
                         ORDER BY o.node, o.id"
                    ),
                    &[&self.node, &timeout],
                )
                .await?;
            if closed {
                rows.extend(
                    client
                        .query(
                            "SELECT node, record FROM history WHERE node <> $1 ORDER BY last_ms DESC, id DESC LIMIT $2",
                            &[&self.node, &(closed_max as i64)],
                        )
                        .await?,
                );
            }
            Ok(rows)
        }
        .await;
        match r {
            Ok(rows) => Ok(rows
                .iter()
                .filter_map(|r| Some(NodeStream { node: r.get(0), stream: r.try_get::<_, Json<ConnSnapshot>>(1).ok()?.0 }))
                .collect()),
            Err(e) => {
                if client.is_closed() {
                    *session = None;
                }
                Err(self.pg(&e))
            }
        }
    }

    /// Whether the writer reaches the database now.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// `[store] buffer`.
    pub fn buffer(&self) -> usize {
        self.writes.max_capacity()
    }

    /// Records waiting for the database, and those dropped because the buffer was full.
    pub fn backlog(&self) -> (usize, u64) {
        (self.writes.max_capacity() - self.writes.capacity(), self.dropped.load(Ordering::Relaxed))
    }

    fn enqueue(&self, op: Op) {
        if self.writes.try_send(op).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                *last = Some(std::time::Instant::now());
                tracing::error!(
                    dropped = n,
                    "store: {} is not keeping up or unreachable and store.buffer is full: records are dropped ({n} so far)",
                    self.place
                );
            }
        }
    }

    /// Fails at once while the writer cannot reach the database.
    fn available(&self) -> Result<(), StoreError> {
        match &*self.health.borrow() {
            Health::Up => Ok(()),
            Health::Down { since_ms, error } => {
                Err(StoreError::Unreachable { place: self.place.clone(), since: crate::types::fmt_utc(*since_ms), error: error.clone() })
            }
        }
    }

    fn pg(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Postgres { place: self.place.clone(), msg: pg_error(e) }
    }

    /// The session connection, (re)connected if needed.
    async fn session(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut s = self.session.lock().await;
        if s.as_ref().is_none_or(Client::is_closed) {
            let c = connect(&self.config).await.map_err(|e| self.pg(&e))?;
            c.batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}")).await.map_err(|e| self.pg(&e))?;
            *s = Some(c);
        }
        Ok(s)
    }

    /// A value the nodes share, made once by whichever node asks first (`make`); every node
    /// gets that one. For what must be the same everywhere and is made only when needed:
    /// the gateway CA.
    pub async fn shared_once(&self, key: &str, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let session = self.session().await?;
        let client = session.as_ref().expect("connected");
        let r = async {
            if let Some(row) = client.query_opt("SELECT value FROM drawbridge_meta WHERE key = $1", &[&key]).await? {
                return Ok(row.get::<_, Vec<u8>>(0));
            }
            client
                .execute("INSERT INTO drawbridge_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", &[&key, &make()])
                .await?;
            Ok(client.query_one("SELECT value FROM drawbridge_meta WHERE key = $1", &[&key]).await?.get::<_, Vec<u8>>(0))
        }
        .await;
        r.map_err(|e: tokio_postgres::Error| self.pg(&e))
    }

    pub fn dialback_secret(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.secret.clone())
    }

    pub fn familiar_secret(&self) -> Result<[u8; 32], StoreError> {
        Ok(self.familiar_secret)
    }

    pub fn mode(&self) -> Result<Option<Mode>, StoreError> {
        Ok(*self.mode.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn domains(&self) -> Result<Vec<DomainRecord>, StoreError> {
        self.copy.domains()
    }

    pub fn domain(&self, domain: &str) -> Result<Option<DomainRecord>, StoreError> {
        self.copy.domain(domain)
    }

    pub fn put_domain(&self, rec: &DomainRecord, from: Option<crate::policy::DomainState>) -> Result<(), StoreError> {
        self.copy.put_domain(rec)?;
        self.enqueue(Op::Domain(Box::new(rec.clone()), from));
        Ok(())
    }

    pub fn log_action(&self, action: &PolicyAction) -> Result<(), StoreError> {
        self.enqueue(Op::Action(Box::new(action.clone())));
        Ok(())
    }

    /// An operator's change: one transaction, acknowledged once committed. The newest
    /// decision for a domain wins on every node.
    pub async fn commit(&self, w: &PolicyWrite) -> Result<(), StoreError> {
        self.available()?;
        let mut session = self.session().await.map_err(|e| match e {
            StoreError::Postgres { place, msg } => StoreError::Unreachable { place, since: "now".into(), error: msg },
            e => e,
        })?;
        let client = session.as_mut().expect("connected");
        let r: Result<(), tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            if let Some(mode) = w.mode {
                tx.execute(
                    "INSERT INTO drawbridge_meta (key, value) VALUES ('mode', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&mode.as_str().as_bytes()],
                )
                .await?;
            }
            for rec in &w.domains {
                tx.execute(
                    "INSERT INTO domains (domain, decision, decided_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (domain) DO UPDATE SET decision = EXCLUDED.decision, decided_ms = EXCLUDED.decided_ms",
                    &[&rec.domain, &Json(rec), &(rec.when_ms.unwrap_or(0) as i64)],
                )
                .await?;
                put_stats(&tx, &self.node, rec).await?;
            }
            for a in &w.actions {
                insert_action(&tx, &self.node, a).await?;
            }
            // Delivered to the other nodes at commit, not before.
            let notice = Notice::payload(&self.node, w.mode.is_some(), w.domains.iter().map(|d| d.domain.clone()));
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &notice]).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = r {
            if client.is_closed() {
                *session = None;
            }
            return Err(self.pg(&e));
        }
        if let Some(mode) = w.mode {
            *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
        }
        self.copy.put_domains(&w.domains)
    }

    pub fn add_outcome(&self, o: &VerificationOutcome) -> Result<(), StoreError> {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.push_front(o.clone());
            recent.truncate(RECENT);
        }
        self.enqueue(Op::Outcome(Box::new(o.clone())));
        Ok(())
    }

    /// The outcomes this node recorded since start and those it loaded, newest first.
    pub fn recent_outcomes(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, StoreError> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        Ok(recent.iter().filter(|o| domain.is_none_or(|d| o.remote == d)).take(limit).cloned().collect())
    }

    pub fn add_history(&self, s: &ConnSnapshot) -> Result<(), StoreError> {
        self.enqueue(Op::History(Box::new(s.clone())));
        Ok(())
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        let mut session = self.session().await?;
        let client = session.as_ref().expect("connected");
        match client.query(sql, params).await {
            Ok(rows) => Ok(rows.iter().filter_map(|r| r.try_get::<_, Json<T>>(0).ok().map(|j| j.0)).collect()),
            Err(e) => {
                if client.is_closed() {
                    *session = None;
                }
                Err(self.pg(&e))
            }
        }
    }

    pub async fn outcomes(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, StoreError> {
        self.read(
            "SELECT record FROM outcomes WHERE $1::text IS NULL OR remote = $1 ORDER BY time_ms DESC, id DESC LIMIT $2",
            &[&domain, &(limit as i64)],
        )
        .await
    }

    pub async fn history(&self, domain: Option<&str>, limit: usize) -> Result<Vec<ConnSnapshot>, StoreError> {
        self.read(
            "SELECT record FROM history WHERE $1::text IS NULL OR $1 = ANY(remotes) ORDER BY opened_ms DESC, id DESC LIMIT $2",
            &[&domain, &(limit as i64)],
        )
        .await
    }

    pub async fn history_since(&self, since_ms: u64) -> Result<Vec<ConnSnapshot>, StoreError> {
        self.read("SELECT record FROM history WHERE last_ms >= $1 ORDER BY opened_ms DESC, id DESC", &[&(since_ms as i64)]).await
    }

    pub async fn policy_log(&self, domain: Option<&str>, limit: usize) -> Result<Vec<PolicyAction>, StoreError> {
        self.read(
            "SELECT record FROM policy_log WHERE $1::text IS NULL OR domain = $1 ORDER BY time_ms DESC, id DESC LIMIT $2",
            &[&domain, &(limit as i64)],
        )
        .await
    }

    pub fn snapshot_open(&self, live: &[ConnSnapshot]) -> Result<(), StoreError> {
        self.enqueue(Op::Open(live.to_vec()));
        Ok(())
    }

    /// How many streams this node had left open, moved into the history at start.
    pub fn recover_open(&self) -> Result<usize, StoreError> {
        Ok(self.recovered)
    }

    /// Keep at most `max` records per table, none older than `max_age_ms` (every node
    /// prunes; the second finds nothing to do).
    pub async fn prune(&self, max: usize, max_age_ms: u64, now_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(max_age_ms) as i64;
        let mut session = self.session().await?;
        let client = session.as_ref().expect("connected");
        let mut removed = 0;
        for (table, time) in [("outcomes", "time_ms"), ("history", "opened_ms"), ("policy_log", "time_ms")] {
            let r = async {
                let old = client.execute(&format!("DELETE FROM {table} WHERE {time} < $1"), &[&cutoff]).await?;
                let excess = client
                    .execute(
                        &format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY {time} DESC, id DESC OFFSET $1)"),
                        &[&(max as i64)],
                    )
                    .await?;
                Ok::<u64, tokio_postgres::Error>(old + excess)
            }
            .await;
            match r {
                Ok(n) => removed += n as usize,
                Err(e) => {
                    if client.is_closed() {
                        *session = None;
                    }
                    return Err(self.pg(&e));
                }
            }
        }
        // Nodes not heard from within max_age, and with no streams left behind (a node
        // that died keeps them until it starts again and moves them into the history).
        let gone = client
            .execute(
                "DELETE FROM nodes n WHERE n.heartbeat_ms < $1 AND NOT EXISTS (SELECT 1 FROM open_streams o WHERE o.node = n.node)",
                &[&cutoff],
            )
            .await;
        if let Err(e) = gone {
            if client.is_closed() {
                *session = None;
            }
            return Err(self.pg(&e));
        }
        Ok(removed)
    }

    /// Everything queued so far is committed when this returns; fails at once while the
    /// database is unreachable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.available()?;
        let (tx, rx) = oneshot::channel();
        let unreachable = || StoreError::Unreachable {
            place: self.place.clone(),
            since: crate::types::fmt_utc(now_ms()),
            error: "the connection was lost while writing".into(),
        };
        self.writes.send(Op::Flush(tx)).await.map_err(|_| unreachable())?;
        rx.await.map_err(|_| unreachable())
    }

    pub fn rtbl_apply(&self, feed: &FeedKey, change: &Change) -> Result<usize, StoreError> {
        let n = self.copy.rtbl_apply(feed, change)?;
        let changed = match change {
            Change::Added(e) | Change::Updated(e) => self.copy.rtbl_record(feed, e.domain.as_str())?.into_iter().collect(),
            Change::Retracted { domain, .. } => self.copy.rtbl_record(feed, domain.as_str())?.into_iter().collect(),
            Change::Cleared { .. } | Change::Confirmed { .. } => self.copy.rtbl_records(feed)?,
        };
        if !changed.is_empty() {
            self.enqueue(Op::Rtbl(feed.clone(), changed));
        }
        Ok(n)
    }

    pub fn rtbl_retracted_count(&self, feed: &FeedKey) -> Result<usize, StoreError> {
        self.copy.rtbl_retracted_count(feed)
    }

    pub fn rtbl_records(&self, feed: &FeedKey) -> Result<Vec<RtblRecord>, StoreError> {
        self.copy.rtbl_records(feed)
    }

    pub fn rtbl_listed(&self, feed: &FeedKey) -> Result<Vec<Entry>, StoreError> {
        self.copy.rtbl_listed(feed)
    }

    pub fn rtbl_for_domain(&self, domain: &str) -> Result<Vec<RtblRecord>, StoreError> {
        self.copy.rtbl_for_domain(domain)
    }

    pub fn rtbl_record(&self, feed: &FeedKey, domain: &str) -> Result<Option<RtblRecord>, StoreError> {
        self.copy.rtbl_record(feed, domain)
    }

    pub fn rtbl_prune_retracted(&self, feed: &FeedKey, max: usize) -> Result<usize, StoreError> {
        let before: Vec<String> = self.copy.rtbl_records(feed)?.into_iter().map(|r| r.domain).collect();
        let n = self.copy.rtbl_prune_retracted(feed, max)?;
        if n > 0 {
            let after: std::collections::HashSet<String> = self.copy.rtbl_records(feed)?.into_iter().map(|r| r.domain).collect();
            self.enqueue(Op::RtblGone(feed.clone(), before.into_iter().filter(|d| !after.contains(d)).collect()));
        }
        Ok(n)
    }

    pub fn rtbl_put_status(&self, status: &FeedStatus) -> Result<(), StoreError> {
        self.copy.rtbl_put_status(status)?;
        self.enqueue(Op::RtblStatus(Box::new(status.clone())));
        Ok(())
    }

    pub fn rtbl_status(&self, feed: &FeedKey) -> Result<Option<FeedStatus>, StoreError> {
        self.copy.rtbl_status(feed)
    }

    pub fn rtbl_feeds(&self) -> Result<Vec<FeedKey>, StoreError> {
        self.copy.rtbl_feeds()
    }

    pub fn rtbl_remove_feed(&self, feed: &FeedKey) -> Result<(), StoreError> {
        self.copy.rtbl_remove_feed(feed)?;
        self.enqueue(Op::RtblForget(feed.clone()));
        Ok(())
    }

    pub fn familiar_write(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.copy.familiar_write(writes)?;
        self.enqueue(Op::Familiar(writes.to_vec()));
        Ok(())
    }

    pub fn familiar_pairs(&self) -> Result<Vec<(PairHash, u64)>, StoreError> {
        self.copy.familiar_pairs()
    }
}

/// The error in words: the server's message (and code) for a database error, else the
/// client's with its cause.
pub(super) fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// TLS to PostgreSQL over TCP (a Unix socket needs none): the server's certificate verified
/// against the system's trust roots and the host name, as libpq's `sslmode=verify-full`
/// would; `sslmode=disable` in the conninfo for none, `sslmode=require` to refuse a server
/// without TLS (the default, `prefer`, takes TLS when the server offers it).
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    static TLS: std::sync::OnceLock<tokio_postgres_rustls::MakeRustlsConnect> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    })
    .clone()
}

/// Whether every host is a Unix socket (local: no TLS, which would have no name to verify).
fn local_only(config: &Config) -> bool {
    config.get_hosts().iter().all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
}

pub(super) async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let client = if local_only(config) {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(drive(connection));
        client
    } else {
        let (client, connection) = config.connect(tls()).await?;
        tokio::spawn(drive(connection));
        client
    };
    // No statement waits for ever on a lock or a slow plan (a session a DBA left idle in a
    // transaction holding a row, say): it fails, and what it carried waits for the next try.
    client
        .batch_execute(&format!(
            "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; SET lock_timeout = {LOCK_TIMEOUT_MS}; SET application_name = 'drawbridge'"
        ))
        .await?;
    Ok(client)
}

async fn drive(connection: impl std::future::Future<Output = Result<(), tokio_postgres::Error>>) {
    if let Err(e) = connection.await {
        tracing::debug!("store: connection to PostgreSQL ended: {e}");
    }
}

/// Apply the migrations this database lacks, one node at a time; refuse a newer schema.
pub(super) async fn migrate(client: &mut Client, place: &str) -> Result<(), StoreError> {
    let pg = |e: tokio_postgres::Error| StoreError::Postgres { place: place.to_owned(), msg: pg_error(&e) };
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS drawbridge_schema (version integer PRIMARY KEY)").await.map_err(pg)?;
    let found: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM drawbridge_schema", &[]).await.map_err(pg)?.get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            place: place.to_owned(),
            found: found as u32,
            knows: SCHEMA_VERSION as u32,
            fix: "upgrade every node to the same version",
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tracing::info!(version, "store: migrating {place} to schema {version}");
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute("INSERT INTO drawbridge_schema (version) VALUES ($1)", &[version]).await.map_err(pg)?;
    }
    tx.commit().await.map_err(pg)
}

/// A secret made once, by whichever node asks first; every node reads that one.
pub(super) async fn ensure_secret(client: &Client, key: &str) -> Result<Vec<u8>, tokio_postgres::Error> {
    let mut fresh = vec![0u8; 32];
    getrandom::fill(&mut fresh).expect("OS randomness");
    client
        .execute("INSERT INTO drawbridge_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", &[&key, &fresh.as_slice()])
        .await?;
    Ok(client.query_one("SELECT value FROM drawbridge_meta WHERE key = $1", &[&key]).await?.get(0))
}

/// A domain's decision (the shared row) over this node's counters.
fn with_decision(mut rec: DomainRecord, d: DomainRecord) -> DomainRecord {
    rec.state = d.state;
    rec.reason = d.reason;
    rec.who = d.who;
    rec.when_ms = d.when_ms;
    rec.expires_ms = d.expires_ms;
    rec.previous = d.previous;
    rec.source = d.source;
    rec
}

/// The shared small state into the working copy.
/// Why the shared state could not be loaded.
enum Loaded {
    Db(tokio_postgres::Error),
    Copy(StoreError),
}

impl From<tokio_postgres::Error> for Loaded {
    fn from(e: tokio_postgres::Error) -> Loaded {
        Loaded::Db(e)
    }
}

impl From<StoreError> for Loaded {
    fn from(e: StoreError) -> Loaded {
        Loaded::Copy(e)
    }
}

async fn load(client: &Client, node: &str, copy: &SledStore) -> Result<(), Loaded> {
    let rows = client
        .query(
            "SELECT d.domain, d.decision, s.record FROM domains d LEFT JOIN domain_stats s ON s.domain = d.domain AND s.node = $1",
            &[&node],
        )
        .await?;
    let mut recs = Vec::with_capacity(rows.len());
    for r in &rows {
        let domain: String = r.get(0);
        let Ok(Json(decision)) = r.try_get::<_, Json<DomainRecord>>(1) else {
            tracing::warn!("store: the decision of {} does not read; skipped", crate::text::escape(&domain));
            continue;
        };
        let stats = r
            .try_get::<_, Option<Json<DomainRecord>>>(2)
            .ok()
            .flatten()
            .map(|j| j.0)
            .unwrap_or_else(|| DomainRecord { domain: domain.clone(), ..Default::default() });
        recs.push(with_decision(stats, decision));
    }
    copy.put_domains(&recs)?;
    for r in client.query("SELECT service, feed_node, record FROM rtbl", &[]).await? {
        let feed = FeedKey { service: r.get(0), node: r.get(1) };
        if let Ok(Json(rec)) = r.try_get::<_, Json<RtblRecord>>(2) {
            copy.rtbl_put_record(&feed, &rec)?;
        }
    }
    for r in client.query("SELECT status FROM rtbl_feeds", &[]).await? {
        if let Ok(Json(status)) = r.try_get::<_, Json<FeedStatus>>(0) {
            copy.rtbl_put_status(&status)?;
        }
    }
    let mut pairs = Vec::new();
    for r in client.query("SELECT pair, last_ms FROM familiar", &[]).await? {
        if let Ok(h) = <PairHash>::try_from(r.get::<_, &[u8]>(0)) {
            pairs.push(Write::Put(h, r.get::<_, i64>(1) as u64));
        }
    }
    copy.familiar_write(&pairs)?;
    Ok(())
}

/// A stream's row as shown (every field): a publish writes it again only when this changed.
fn fingerprint(s: &ConnSnapshot) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(s).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Every node's heartbeat row, with its live streams counted and judged against `timeout`
/// by the database's clock.
async fn read_nodes(client: &Client, timeout: Duration) -> Result<Vec<NodeStatus>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT n.node, n.heartbeat_ms, n.started_ms, n.stopped_ms, n.version, n.listen,
                        (SELECT count(*) FROM open_streams o WHERE o.node = n.node), {DB_NOW_MS}
                 FROM nodes n ORDER BY n.node"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let heartbeat_ms = r.get::<_, i64>(1).max(0) as u64;
            let stopped_ms = r.get::<_, Option<i64>>(3).map(|t| t.max(0) as u64);
            let age_ms = (r.get::<_, i64>(7).max(0) as u64).saturating_sub(heartbeat_ms);
            NodeStatus {
                node: r.get(0),
                heartbeat_ms,
                started_ms: r.get::<_, i64>(2).max(0) as u64,
                stopped_ms,
                alive: stopped_ms.is_none() && age_ms < timeout.as_millis() as u64,
                streams: r.get::<_, i64>(6).max(0) as usize,
                version: r.get(4),
                listen: r.get(5),
                age_ms,
            }
        })
        .collect())
}

/// This node's streams that were open when it last stopped without closing them: into the
/// history, closed with that reason.
async fn recover_open(client: &mut Client, node: &str) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let rows = tx.query("DELETE FROM open_streams WHERE node = $1 RETURNING record", &[&node]).await?;
    let mut n = 0;
    for r in &rows {
        if let Ok(Json(mut s)) = r.try_get::<_, Json<ConnSnapshot>>(0) {
            s.state = crate::types::ConnState::Closed;
            s.close_reason = Some("drawbridge stopped without closing it (crash or kill)".into());
            insert_history(&tx, node, &s).await?;
            n += 1;
        }
    }
    tx.commit().await?;
    Ok(n)
}

pub(super) async fn put_stats(tx: &tokio_postgres::Transaction<'_>, node: &str, rec: &DomainRecord) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO domain_stats (domain, node, record) VALUES ($1, $2, $3)
         ON CONFLICT (domain, node) DO UPDATE SET record = EXCLUDED.record",
        &[&rec.domain, &node, &Json(rec)],
    )
    .await
    .map(|_| ())
}

pub(super) async fn insert_action(tx: &tokio_postgres::Transaction<'_>, node: &str, a: &PolicyAction) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO policy_log (time_ms, node, domain, record) VALUES ($1, $2, $3, $4)",
        &[&(a.time_ms as i64), &node, &a.domain, &Json(a)],
    )
    .await
    .map(|_| ())
}

pub(super) async fn insert_history(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    s: &ConnSnapshot,
) -> Result<(), tokio_postgres::Error> {
    let mut remotes: Vec<&str> = s.remote.as_deref().into_iter().chain(s.pairs.iter().map(|p| p.remote.as_str())).collect();
    remotes.sort_unstable();
    remotes.dedup();
    tx.execute(
        "INSERT INTO history (opened_ms, last_ms, node, remotes, record) VALUES ($1, $2, $3, $4, $5)",
        &[&(s.opened_ms as i64), &(s.last_activity_ms.max(s.opened_ms) as i64), &node, &remotes, &Json(s)],
    )
    .await
    .map(|_| ())
}

/// One batch in one transaction.
async fn write_batch(client: &mut Client, node: &str, batch: &[Op]) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut decided = Vec::new();
    for op in batch {
        match op {
            Op::Domain(rec, from) => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&rec.domain, &Json(rec), &(rec.when_ms.unwrap_or(0) as i64)];
                let n = match from {
                    // Counters: a domain new to the cluster gets its row; an existing decision
                    // is not this write's to touch.
                    None => {
                        tx.execute(
                            "INSERT INTO domains (domain, decision, decided_ms) VALUES ($1, $2, $3) ON CONFLICT (domain) DO NOTHING",
                            &params,
                        )
                        .await?
                    }
                    // drawbridge's own change of the decision (a pending mark, a lifted hold,
                    // an expired block): only if the stored one is still the state it was
                    // derived from (a block: one that has expired by then, not one extended
                    // meanwhile); a decision made meanwhile on any node stands.
                    Some(from) => {
                        tx.execute(
                            "INSERT INTO domains (domain, decision, decided_ms) VALUES ($1, $2, $3)
                             ON CONFLICT (domain) DO UPDATE SET decision = EXCLUDED.decision, decided_ms = EXCLUDED.decided_ms
                             WHERE domains.decision->>'state' = $4
                               AND ($4 <> 'blocked' OR coalesce((domains.decision->>'expires_ms')::bigint, 9223372036854775807) <= $3)",
                            &[params[0], params[1], params[2], &from.as_str()],
                        )
                        .await?
                    }
                };
                if n > 0 && from.is_some() {
                    decided.push(rec.domain.clone());
                }
                put_stats(&tx, node, rec).await?;
            }
            Op::Action(a) => insert_action(&tx, node, a).await?,
            Op::Outcome(o) => {
                tx.execute(
                    "INSERT INTO outcomes (time_ms, node, remote, record) VALUES ($1, $2, $3, $4)",
                    &[&(o.time_ms as i64), &node, &o.remote, &Json(o)],
                )
                .await?;
            }
            Op::History(s) => {
                insert_history(&tx, node, s).await?;
                tx.execute("DELETE FROM open_streams WHERE node = $1 AND id = $2", &[&node, &s.id]).await?;
            }
            Op::Open(live) => {
                let ids: Vec<&str> = live.iter().map(|s| s.id.as_str()).collect();
                tx.execute("DELETE FROM open_streams WHERE node = $1 AND NOT (id = ANY($2))", &[&node, &ids]).await?;
                for s in live {
                    tx.execute(
                        "INSERT INTO open_streams (node, id, record) VALUES ($1, $2, $3)
                         ON CONFLICT (node, id) DO UPDATE SET record = EXCLUDED.record",
                        &[&node, &s.id, &Json(s)],
                    )
                    .await?;
                }
            }
            Op::Rtbl(feed, recs) => {
                for r in recs {
                    tx.execute(
                        "INSERT INTO rtbl (service, feed_node, domain, record) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (service, feed_node, domain) DO UPDATE SET record = EXCLUDED.record",
                        &[&feed.service, &feed.node, &r.domain, &Json(r)],
                    )
                    .await?;
                }
            }
            Op::RtblGone(feed, domains) => {
                tx.execute(
                    "DELETE FROM rtbl WHERE service = $1 AND feed_node = $2 AND domain = ANY($3)",
                    &[&feed.service, &feed.node, domains],
                )
                .await?;
            }
            Op::RtblStatus(st) => {
                tx.execute(
                    "INSERT INTO rtbl_feeds (service, feed_node, status) VALUES ($1, $2, $3)
                     ON CONFLICT (service, feed_node) DO UPDATE SET status = EXCLUDED.status",
                    &[&st.service, &st.node, &Json(st)],
                )
                .await?;
            }
            Op::RtblForget(feed) => {
                tx.execute("DELETE FROM rtbl WHERE service = $1 AND feed_node = $2", &[&feed.service, &feed.node]).await?;
                tx.execute("DELETE FROM rtbl_feeds WHERE service = $1 AND feed_node = $2", &[&feed.service, &feed.node]).await?;
            }
            Op::Familiar(writes) => {
                for w in writes {
                    match w {
                        Write::Put(h, t) => {
                            tx.execute(
                                "INSERT INTO familiar (pair, last_ms) VALUES ($1, $2) ON CONFLICT (pair) DO UPDATE SET last_ms = EXCLUDED.last_ms",
                                &[&&h[..], &(*t as i64)],
                            )
                            .await?;
                        }
                        Write::Remove(h) => {
                            tx.execute("DELETE FROM familiar WHERE pair = $1", &[&&h[..]]).await?;
                        }
                    }
                }
            }
            Op::Flush(_) => {}
        }
    }
    if !decided.is_empty() {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &Notice::payload(node, false, decided.into_iter())]).await?;
    }
    tx.commit().await
}

/// Where a listening connection puts what it hears.
struct Heard {
    pending: Arc<Mutex<Pending>>,
    noticed: Arc<tokio::sync::Notify>,
    node: String,
}

impl Heard {
    /// Drive the listening connection, keeping the other nodes' notices, until it ends.
    async fn hear<S, T>(self, mut connection: tokio_postgres::Connection<S, T>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let Ok(notice) = serde_json::from_str::<Notice>(n.payload()) else {
                        tracing::warn!("store: a notice on {CHANNEL} does not read; everything is read again");
                        self.pending.lock().unwrap_or_else(|e| e.into_inner()).add(Notice { all: true, ..Default::default() });
                        self.noticed.notify_one();
                        continue;
                    };
                    if notice.node != self.node {
                        self.pending.lock().unwrap_or_else(|e| e.into_inner()).add(notice);
                        self.noticed.notify_one();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("store: the listening connection ended: {e}");
                    break;
                }
            }
        }
    }
}

/// Hear the other nodes' notices: on its own connection, reconnecting with a growing pause
/// (up to 5 s). Once listening (again), everything is to be read: what was announced while
/// this node was not listening is not replayed. Ends when the store is dropped.
async fn listen(
    config: Config,
    node: String,
    place: String,
    pending: Arc<Mutex<Pending>>,
    noticed: Arc<tokio::sync::Notify>,
    alive: mpsc::WeakSender<Op>,
) {
    let mut pause = Duration::from_millis(100);
    let mut first = true;
    while alive.upgrade().is_some() {
        let heard = Heard { pending: pending.clone(), noticed: noticed.clone(), node: node.clone() };
        let connected = if local_only(&config) {
            config.connect(tokio_postgres::NoTls).await.map(|(client, connection)| (client, tokio::spawn(heard.hear(connection))))
        } else {
            config.connect(tls()).await.map(|(client, connection)| (client, tokio::spawn(heard.hear(connection))))
        };
        let (client, driver) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("store: listening on {place}: {}", pg_error(&e));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::debug!("store: LISTEN on {place}: {}", pg_error(&e));
            driver.abort();
            tokio::time::sleep(pause).await;
            continue;
        }
        pause = Duration::from_millis(100);
        // What changed before LISTEN took effect (since the load at start, or while the
        // connection was down) is read whole.
        if !first {
            tracing::info!("store: listening to the other nodes again; reading the whole policy");
        }
        first = false;
        pending.lock().unwrap_or_else(|e| e.into_inner()).add(Notice { all: true, ..Default::default() });
        noticed.notify_one();
        // Until the connection ends, or the store is dropped (checked now and then). A
        // listening connection is idle by design: it is asked something every few seconds,
        // so one that went silent (a failover, a firewall's idle timeout) is replaced within
        // EXCHANGE_TIMEOUT, and the policy read again, rather than missing notices unnoticed.
        let mut driver = driver;
        loop {
            tokio::select! {
                _ = &mut driver => break,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    if alive.upgrade().is_none() {
                        driver.abort();
                        return;
                    }
                    if !matches!(tokio::time::timeout(EXCHANGE_TIMEOUT, client.simple_query("SELECT 1")).await, Ok(Ok(_))) {
                        tracing::info!("store: the listening connection to {place} went silent; listening again");
                        driver.abort();
                        break;
                    }
                }
            }
        }
        drop(client);
    }
}

/// The one task that writes what the nodes' streams append: batches of up to [`BATCH`]
/// records per transaction. A batch that fails is kept and retried after a reconnect (with a
/// growing pause, up to 5 s); the queue behind it is bounded by `[store] buffer`. Ends when
/// the store is dropped, after writing what was queued (if it can).
async fn writer(config: Config, node: String, place: String, first: Client, mut rx: mpsc::Receiver<Op>, health: watch::Sender<Health>) {
    let mut client = Some(first);
    let refused_total = AtomicU64::new(0);
    let mut last_refusal_log = None;
    let mut batch: Vec<Op> = Vec::new();
    let mut pause = Duration::from_millis(100);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(op) => batch.push(op),
                None => return,
            }
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect(&config).await {
                Ok(c) => {
                    tracing::info!("store: {place} is reachable again; writing what waited");
                    client = Some(c);
                }
                Err(e) => {
                    down(&health, &place, &pg_error(&e), &mut batch);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        // Filled only once connected: while the database is away, what waits stays in the
        // bounded queue (store.buffer), and beyond it is dropped and counted.
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let c = client.as_mut().expect("connected");
        let written = match tokio::time::timeout(BATCH_TIMEOUT, write_batch(c, &node, &batch)).await {
            Ok(r) => r.map_err(|e| (is_data_error(&e), pg_error(&e))),
            Err(_) => Err((false, format!("no answer within {}s", BATCH_TIMEOUT.as_secs()))),
        };
        match written {
            Ok(()) => {
                pause = Duration::from_millis(100);
                health.send_if_modified(|h| std::mem::replace(h, Health::Up) != Health::Up);
                for op in batch.drain(..) {
                    if let Op::Flush(done) = op {
                        let _ = done.send(());
                    }
                }
            }
            Err((true, msg)) if !c.is_closed() => {
                // The database refused a record as data (class 22 or 23): that one must not
                // cost the others. Each on its own, then: those it refuses as data are
                // dropped and counted; at any other error the rest waits.
                match one_by_one(c, &node, &mut batch).await {
                    Ok(refused) => {
                        let n = refused_total.fetch_add(refused, Ordering::Relaxed) + refused;
                        if last_refusal_log.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(60)) {
                            last_refusal_log = Some(std::time::Instant::now());
                            tracing::error!(
                                refused = n,
                                "store: {place} refused records as data ({msg}); they are dropped ({n} since start)"
                            );
                        }
                    }
                    Err(other) => {
                        down(&health, &place, &other, &mut batch);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Err((_, msg)) => {
                // The connection, or the database as a whole (read-only, full disk, rights
                // revoked, a timeout): nothing is dropped; the batch waits, the store says
                // it is unreachable, and the writer tries again (on a new connection if this
                // one is gone).
                if c.is_closed() || msg.starts_with("no answer") {
                    client = None;
                }
                down(&health, &place, &msg, &mut batch);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long one batch may take before its connection is taken for lost.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// An error about the data itself (SQLSTATE classes 22, data exception, and 23, integrity
/// constraint violation): the record will never be taken; anything else may pass later.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| matches!(&d.code().code()[..2], "22" | "23"))
}

/// Write `batch` a record at a time (after the database refused it as data), answering the
/// flushes as their turn comes. Returns how many records were refused as data (dropped); on
/// any other error, what was not written stays in `batch` and the error is returned.
async fn one_by_one(c: &mut Client, node: &str, batch: &mut Vec<Op>) -> Result<u64, String> {
    let mut refused = 0;
    let ops: Vec<Op> = std::mem::take(batch);
    let mut ops = ops.into_iter();
    while let Some(op) = ops.next() {
        if let Op::Flush(done) = op {
            let _ = done.send(());
            continue;
        }
        let r = match tokio::time::timeout(BATCH_TIMEOUT, write_batch(c, node, std::slice::from_ref(&op))).await {
            Ok(r) => r.map_err(|e| (is_data_error(&e), pg_error(&e))),
            Err(_) => Err((false, format!("no answer within {}s", BATCH_TIMEOUT.as_secs()))),
        };
        match r {
            Ok(()) => {}
            Err((true, _)) if !c.is_closed() => refused += 1,
            Err((_, msg)) => {
                batch.push(op);
                batch.extend(ops);
                return Err(msg);
            }
        }
    }
    Ok(refused)
}

/// The database went away: say so once, and answer the waiting flushes at once (with an
/// error: their records are not committed).
fn down(health: &watch::Sender<Health>, place: &str, error: &str, batch: &mut Vec<Op>) {
    let was_up = health.send_if_modified(|h| {
        if matches!(h, Health::Up) {
            *h = Health::Down { since_ms: now_ms(), error: error.to_owned() };
            true
        } else {
            false
        }
    });
    if was_up {
        tracing::error!("store: {place} is unreachable ({error}); federating on under the last known policy, records wait in store.buffer");
    }
    batch.retain(|op| !matches!(op, Op::Flush(_)));
}

#[cfg(test)]
mod conninfo_tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    /// Over TCP, TLS is required unless the conninfo says otherwise; a Unix socket has none;
    /// a silent network is noticed in about half a minute unless the conninfo says otherwise.
    #[test]
    fn tls_is_required_over_tcp_and_dead_connections_are_noticed() {
        let c = parse_conninfo("host=db.internal dbname=drawbridge user=drawbridge").unwrap();
        assert!(matches!(c.get_ssl_mode(), SslMode::Require));
        assert_eq!((c.get_keepalives_idle(), c.get_tcp_user_timeout()), (Duration::from_secs(20), Some(&Duration::from_secs(30))));
        let c = parse_conninfo("postgresql://drawbridge@db.internal/drawbridge").unwrap();
        assert!(matches!(c.get_ssl_mode(), SslMode::Require), "a URL too");
        let c = parse_conninfo("host=db.internal dbname=drawbridge sslmode=disable keepalives_idle=60").unwrap();
        assert!(matches!(c.get_ssl_mode(), SslMode::Disable));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60), "what the operator set stays");
        let c = parse_conninfo("host=/run/postgresql dbname=drawbridge").unwrap();
        assert!(local_only(&c) && matches!(c.get_ssl_mode(), SslMode::Prefer), "a Unix socket: no TLS to ask for");
        for verifying in ["host=db.internal dbname=d sslmode=verify-full", "postgresql://u@db.internal/d?sslmode=verify-ca"] {
            assert!(matches!(parse_conninfo(verifying).unwrap().get_ssl_mode(), SslMode::Require), "{verifying}");
        }
    }
}
