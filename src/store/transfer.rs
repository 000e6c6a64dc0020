//! `drawbridge store migrate --to-postgres`: one node's embedded store copied into an
//! empty PostgreSQL database, to move that node onto the shared store (issue 20).
//!
//! What is copied, with the node's name where a table has one: the dialback secret (keys in
//! flight stay valid), the familiarity set's secret (its hashes stay valid), the gateway CA
//! drawbridge made itself (`DATA_DIR/gateway/`: the internal server trusts it), the mode, every
//! domain record (the decision into `domains`, the counters into `domain_stats`), the policy
//! log, the outcomes, the history (streams left open in `open_streams` go in closed, as
//! [`SledStore::recover_open`] would), the blocklist entries and feed statuses, and the
//! familiarity set. All of it in one transaction: a failure leaves the database as it was.
//! Rows go many to a statement, so a store of 100 000 records copies in seconds.
//!
//! The database must hold nothing yet: no domain, log entry, outcome, stream or blocklist
//! entry, no secret or mode other than ours. A marker in `drawbridge_meta`
//! (`migrated_from`) makes a second run say the data is already there instead of copying it
//! twice. The embedded store is read, never changed: its data dir's lock is taken as a
//! running drawbridge takes it, so a drawbridge still running on it is refused by its pid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{Client, Transaction};

use super::postgres::{connect, describe, migrate, parse_conninfo, pg_error};
use super::{RtblRecord, SledStore, StoreError, decode};
use crate::policy::{DomainRecord, Mode, PolicyAction};
use crate::rtbl::FeedStatus;
use crate::rtbl::familiar::PairHash;
use crate::types::{ConnSnapshot, VerificationOutcome};

/// The key in `drawbridge_meta` that records a migration (JSON: [`Marker`]).
pub const MARKER_KEY: &str = "migrated_from";

/// The key in `drawbridge_meta` of the gateway CA drawbridge made itself, as the engine keeps
/// it for every node (JSON: its certificate and its key, PEM).
pub const GATEWAY_CA_KEY: &str = "gateway_ca";

/// The close reason of a stream left open, as [`SledStore::recover_open`] gives it.
pub const LEFT_OPEN: &str = "drawbridge stopped without closing it (crash or kill)";

/// Rows per INSERT statement, at most (PostgreSQL takes up to 65 535 parameters in one).
const ROWS: usize = 1000;

/// How long the copy waits for the tables (a node writing to them) before giving up.
const LOCK_TIMEOUT_S: u32 = 10;

/// Why nothing was copied. Each names what was wrong and how to proceed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("node name {0:?} is not valid (1 to 64 letters, digits, '-', '_' or '.'): set [cluster] node or pass --node NAME")]
    BadNode(String),
    #[error("--to-postgres: {msg}")]
    Conninfo { msg: String },
    #[error(
        "{} does not exist: there is no embedded store to migrate (check server.data_dir in the config given with --config)",
        path.display()
    )]
    NoStore { path: PathBuf },
    #[error(
        "{} belongs to {owner}, and this is {us}: run the migration as {owner} (e.g. sudo -u {owner} drawbridge --config … store migrate …), so that what the embedded store writes when opened stays that user's; nothing was copied",
        path.display()
    )]
    Owner { path: PathBuf, owner: String, us: String },
    #[error(
        "{}: {err}: the gateway CA drawbridge made itself is copied too (the internal server trusts it): make it readable, or move {} aside if the gateway is not used; nothing was copied",
        path.display(), path.parent().unwrap_or(path).display()
    )]
    GatewayCa { path: PathBuf, err: std::io::Error },
    #[error(
        "data dir {} is in use by a running drawbridge ({holder}): stop it first (e.g. systemctl stop drawbridge), then migrate; nothing was copied",
        path.display()
    )]
    Running { path: PathBuf, holder: String },
    #[error(
        "cannot connect to {place}: {msg}: check --to-postgres (host, port, dbname, user, password) and that the server runs; nothing was copied"
    )]
    Connect { place: String, msg: String },
    #[error(
        "{place}: its tables stayed in use by another client for {LOCK_TIMEOUT_S} s (a drawbridge node running on it?): stop it and migrate again; nothing was copied"
    )]
    Busy { place: String },
    #[error(
        "{place} already holds the data of node {node} migrated from {data_dir} at {at}: nothing was copied again. Start drawbridge on it ([store] backend = \"postgres\"); to copy afresh, migrate into an empty database"
    )]
    AlreadyMigrated { place: String, node: String, data_dir: String, at: String },
    #[error(
        "{place} already holds data ({found}): nothing was copied. Migrate into an empty database that no drawbridge node has started on (e.g. createdb --owner drawbridge drawbridge_new), or empty this one if its data is not needed"
    )]
    NotEmpty { place: String, found: String },
    #[error("{place}: the copy failed: {msg}; nothing was copied (the transaction was rolled back)")]
    Copy { place: String, msg: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a migration left in `drawbridge_meta`, for the next run to say so.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub node: String,
    pub data_dir: String,
    pub at_ms: u64,
    pub version: String,
}

/// What was copied, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Copied {
    pub dialback_secret: bool,
    pub familiar_secret: bool,
    /// The gateway CA drawbridge made itself (`DATA_DIR/gateway/ca.pem` and `ca.key`).
    pub gateway_ca: bool,
    pub mode: Option<String>,
    /// Domain records: a decision row and this node's counters each.
    pub domains: usize,
    pub policy_log: usize,
    pub outcomes: usize,
    /// Closed streams, those left open included.
    pub history: usize,
    /// Of `history`: streams the node left open, closed by the copy.
    pub left_open: usize,
    pub rtbl_entries: usize,
    pub rtbl_feeds: usize,
    pub familiar_pairs: usize,
}

/// The outcome of a migration.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The node name the rows carry.
    pub node: String,
    /// The database, named without its password.
    pub database: String,
    pub data_dir: PathBuf,
    pub copied: Copied,
    /// Records that did not read (written by another version, or damaged) or that hold a
    /// NUL character (PostgreSQL's JSON cannot), by kind: left out of the copy, still in the
    /// embedded store.
    pub skipped: BTreeMap<&'static str, usize>,
    pub elapsed_ms: u64,
}

/// A node name as `[cluster] node` takes it.
pub fn check_node(node: &str) -> Result<(), TransferError> {
    if node.is_empty() || node.len() > 64 || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(TransferError::BadNode(node.to_owned()));
    }
    Ok(())
}

/// The gateway CA drawbridge made itself in `data_dir`, as the shared store keeps it.
fn gateway_ca(data_dir: &Path) -> Result<Option<Vec<u8>>, TransferError> {
    let dir = data_dir.join("gateway");
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !cert.exists() && !key.exists() {
        return Ok(None);
    }
    let read = |path: PathBuf| std::fs::read_to_string(&path).map_err(|err| TransferError::GatewayCa { path, err });
    let pems: (String, String) = (read(cert)?, read(key)?);
    Ok(Some(serde_json::to_vec(&pems).expect("two strings serialise")))
}

/// sled writes files of its own when a store is opened (a snapshot, a segment): opened by
/// another user (root), they would be that user's, and the node could no longer open its
/// store. So the store's owner must run the copy.
fn check_owner(db: &Path) -> Result<(), TransferError> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(db).map_err(|err| StoreError::CreateDir { path: db.to_owned(), err })?.uid();
    let us = nix::unistd::geteuid().as_raw();
    if owner == us {
        return Ok(());
    }
    let name = |uid: u32| match nix::unistd::User::from_uid(uid.into()).ok().flatten() {
        Some(u) => format!("user {} (uid {uid})", u.name),
        None => format!("uid {uid}"),
    };
    let owner_name = nix::unistd::User::from_uid(owner.into()).ok().flatten().map_or_else(|| format!("#{owner}"), |u| u.name);
    Err(TransferError::Owner { path: db.to_owned(), owner: owner_name, us: name(us) })
}

/// Copy the embedded store in `data_dir` into the empty database `conninfo` names, its rows
/// carrying `node`. The embedded store is left as it was.
pub async fn to_postgres(data_dir: &Path, conninfo: &str, node: &str) -> Result<Report, TransferError> {
    let started = Instant::now();
    check_node(node)?;
    let config = parse_conninfo(conninfo).map_err(|msg| TransferError::Conninfo { msg })?;
    let place = match describe(&config).strip_suffix(" (store.postgres)") {
        Some(p) => format!("{p} (--to-postgres)"),
        None => describe(&config),
    };
    let db = data_dir.join("db");
    if !db.is_dir() {
        return Err(TransferError::NoStore { path: db });
    }
    check_owner(&db)?;
    let gateway_ca = gateway_ca(data_dir)?;
    let sled = SledStore::open(data_dir).map_err(|e| match e {
        StoreError::Locked { path, holder } => TransferError::Running { path, holder },
        e => TransferError::Store(e),
    })?;
    let mut client = connect(&config).await.map_err(|e| TransferError::Connect { place: place.clone(), msg: pg_error(&e) })?;
    migrate(&mut client, &place).await?;
    let mut copy = Copy { sled: &sled, node, place: &place, gateway_ca, copied: Copied::default(), skipped: BTreeMap::new() };
    copy.run(&mut client, data_dir).await?;
    let Copy { copied, skipped, .. } = copy;
    Ok(Report {
        node: node.to_owned(),
        database: place,
        data_dir: data_dir.to_owned(),
        copied,
        skipped,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

struct Copy<'a> {
    sled: &'a SledStore,
    node: &'a str,
    place: &'a str,
    gateway_ca: Option<Vec<u8>>,
    copied: Copied,
    skipped: BTreeMap<&'static str, usize>,
}

/// A failure of the copy's own statements.
enum Failed {
    Pg(tokio_postgres::Error),
    /// The rows of this table were refused.
    Rows(&'static str, tokio_postgres::Error),
    Refused(TransferError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Pg(e)
    }
}

impl From<TransferError> for Failed {
    fn from(e: TransferError) -> Self {
        Failed::Refused(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Refused(e.into())
    }
}

impl Copy<'_> {
    async fn run(&mut self, client: &mut Client, data_dir: &Path) -> Result<(), TransferError> {
        let tx = client.transaction().await.map_err(|e| self.failed(e))?;
        match self.copy(&tx, data_dir).await {
            Ok(()) => tx.commit().await.map_err(|e| self.failed(e)),
            // Dropping the transaction rolls it back.
            Err(Failed::Refused(e)) => Err(e),
            Err(Failed::Pg(e)) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                Err(TransferError::Busy { place: self.place.to_owned() })
            }
            Err(Failed::Pg(e)) => Err(self.failed(e)),
            Err(Failed::Rows(table, e)) => Err(match self.failed(e) {
                TransferError::Copy { place, msg } => TransferError::Copy { place, msg: format!("writing {table}: {msg}") },
                e => e,
            }),
        }
    }

    fn failed(&self, e: tokio_postgres::Error) -> TransferError {
        if e.is_closed() || e.as_db_error().is_none() {
            TransferError::Connect { place: self.place.to_owned(), msg: pg_error(&e) }
        } else {
            TransferError::Copy { place: self.place.to_owned(), msg: pg_error(&e) }
        }
    }

    fn skip(&mut self, kind: &'static str) {
        *self.skipped.entry(kind).or_default() += 1;
    }

    async fn copy(&mut self, tx: &Transaction<'_>, data_dir: &Path) -> Result<(), Failed> {
        // Nobody writes to the tables until this commits; what is checked stays true.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s';
             LOCK TABLE drawbridge_meta, domains, domain_stats, policy_log, outcomes, history, open_streams, rtbl, rtbl_feeds, familiar
             IN EXCLUSIVE MODE"
        ))
        .await?;
        let sled = self.sled;
        let get = |key: &str| sled.meta.get(key).map_err(|e| sled.err(e));
        let secret = get("dialback_secret")?.map(|v| v.to_vec());
        let familiar_secret = get("familiar_secret")?.map(|v| v.to_vec()).filter(|v| v.len() == 32);
        let mode = get("mode")?.and_then(|v| Mode::parse(std::str::from_utf8(&v).ok()?));
        let gateway_ca = self.gateway_ca.take();
        self.check_empty(tx, &secret, &familiar_secret, &gateway_ca, mode).await?;
        self.copied.dialback_secret = secret.is_some();
        self.copied.familiar_secret = familiar_secret.is_some();
        self.copied.gateway_ca = gateway_ca.is_some();
        self.copied.mode = mode.map(|m| m.as_str().to_owned());

        let meta = [
            ("dialback_secret", secret),
            ("familiar_secret", familiar_secret),
            (GATEWAY_CA_KEY, gateway_ca),
            ("mode", mode.map(|m| m.as_str().into())),
        ];
        for (key, value) in meta {
            if let Some(value) = value {
                tx.execute(
                    "INSERT INTO drawbridge_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&key, &value],
                )
                .await?;
            }
        }

        self.domains(tx).await?;
        self.log_and_outcomes(tx).await?;
        self.history(tx).await?;
        self.rtbl(tx).await?;
        self.familiar(tx).await?;

        let marker = Marker {
            node: self.node.to_owned(),
            data_dir: data_dir.display().to_string(),
            at_ms: crate::types::now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        tx.execute("INSERT INTO drawbridge_meta (key, value) VALUES ($1, $2)", &[&MARKER_KEY, &super::encode(&marker)]).await?;
        Ok(())
    }

    /// Refuse a database that holds anything this copy would add to or overwrite.
    async fn check_empty(
        &self,
        tx: &Transaction<'_>,
        secret: &Option<Vec<u8>>,
        familiar_secret: &Option<Vec<u8>>,
        gateway_ca: &Option<Vec<u8>>,
        mode: Option<Mode>,
    ) -> Result<(), Failed> {
        let mut differ = Vec::new();
        for r in tx.query("SELECT key, value FROM drawbridge_meta", &[]).await? {
            let (key, value): (&str, &[u8]) = (r.get(0), r.get(1));
            let differs = |ours: Option<&[u8]>| ours.is_some_and(|o| o != value);
            match key {
                MARKER_KEY => {
                    let m: Option<Marker> = decode(value).ok();
                    return Err(TransferError::AlreadyMigrated {
                        place: self.place.to_owned(),
                        node: m.as_ref().map_or("?".into(), |m| m.node.clone()),
                        data_dir: m.as_ref().map_or("?".into(), |m| m.data_dir.clone()),
                        at: m.as_ref().map_or("?".into(), |m| crate::types::fmt_utc(m.at_ms)),
                    }
                    .into());
                }
                "dialback_secret" if differs(secret.as_deref()) => {
                    differ.push("a dialback secret other than this node's: a drawbridge node has started on it".to_owned())
                }
                GATEWAY_CA_KEY if differs(gateway_ca.as_deref()) => differ.push("a gateway CA other than this node's".to_owned()),
                "familiar_secret" if differs(familiar_secret.as_deref()) => {
                    differ.push("a familiarity secret other than this node's".to_owned())
                }
                "mode" if differs(mode.map(|m| m.as_str().as_bytes())) => {
                    differ.push(format!("mode {}", crate::text::escape(&String::from_utf8_lossy(value))))
                }
                _ => {}
            }
        }
        let counts = tx
            .query_one(
                "SELECT (SELECT count(*) FROM domains), (SELECT count(*) FROM domain_stats), (SELECT count(*) FROM policy_log),
                        (SELECT count(*) FROM outcomes), (SELECT count(*) FROM history), (SELECT count(*) FROM open_streams),
                        (SELECT count(*) FROM rtbl), (SELECT count(*) FROM rtbl_feeds), (SELECT count(*) FROM familiar)",
                &[],
            )
            .await?;
        let kinds = [
            ("domain", "domains"),
            ("domain's counters", "domains' counters"),
            ("policy log entry", "policy log entries"),
            ("verification outcome", "verification outcomes"),
            ("closed stream", "closed streams"),
            ("open stream", "open streams"),
            ("blocklist entry", "blocklist entries"),
            ("blocklist feed status", "blocklist feed statuses"),
            ("familiar pair", "familiar pairs"),
        ];
        let mut found = Vec::new();
        for (i, (one, many)) in kinds.iter().enumerate() {
            let n: i64 = counts.get(i);
            if n > 0 {
                found.push(format!("{n} {}", if n == 1 { one } else { many }));
            }
        }
        found.extend(differ);
        if !found.is_empty() {
            return Err(TransferError::NotEmpty { place: self.place.to_owned(), found: found.join(", ") }.into());
        }
        Ok(())
    }

    async fn domains(&mut self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let mut decisions = Rows::new("domains", &[("domain", "text"), ("decision", "jsonb"), ("decided_ms", "bigint")]);
        let mut stats = Rows::new("domain_stats", &[("domain", "text"), ("node", "text"), ("record", "jsonb")]);
        for v in self.sled.domains.iter().values() {
            let v = v.map_err(|e| self.sled.err(e))?;
            let Some(rec) = readable::<DomainRecord>(&v) else {
                self.skip("domains");
                continue;
            };
            let decided = rec.when_ms.unwrap_or(0) as i64;
            decisions.push(tx, vec![Box::new(rec.domain.clone()), Box::new(Json(rec.clone())), Box::new(decided)]).await?;
            stats.push(tx, vec![Box::new(rec.domain.clone()), Box::new(self.node.to_owned()), Box::new(Json(rec))]).await?;
        }
        self.copied.domains = decisions.finish(tx).await?;
        stats.finish(tx).await?;
        Ok(())
    }

    async fn log_and_outcomes(&mut self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let mut log = Rows::new("policy_log", &[("time_ms", "bigint"), ("node", "text"), ("domain", "text"), ("record", "jsonb")]);
        for v in self.sled.policy_log.iter().values() {
            let v = v.map_err(|e| self.sled.err(e))?;
            let Some(a) = readable::<PolicyAction>(&v) else {
                self.skip("policy_log");
                continue;
            };
            log.push(tx, vec![Box::new(a.time_ms as i64), Box::new(self.node.to_owned()), Box::new(a.domain.clone()), Box::new(Json(a))])
                .await?;
        }
        self.copied.policy_log = log.finish(tx).await?;
        let mut outcomes = Rows::new("outcomes", &[("time_ms", "bigint"), ("node", "text"), ("remote", "text"), ("record", "jsonb")]);
        for v in self.sled.outcomes.iter().values() {
            let v = v.map_err(|e| self.sled.err(e))?;
            let Some(o) = readable::<VerificationOutcome>(&v) else {
                self.skip("outcomes");
                continue;
            };
            outcomes
                .push(tx, vec![Box::new(o.time_ms as i64), Box::new(self.node.to_owned()), Box::new(o.remote.clone()), Box::new(Json(o))])
                .await?;
        }
        self.copied.outcomes = outcomes.finish(tx).await?;
        Ok(())
    }

    /// The history, oldest first (ids then follow time, as the node would have written
    /// them), then the streams left open, closed.
    async fn history(&mut self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let mut history = Rows::new(
            "history",
            &[("opened_ms", "bigint"), ("last_ms", "bigint"), ("node", "text"), ("remotes", "text[]"), ("record", "jsonb")],
        );
        for v in self.sled.history.iter().values() {
            let v = v.map_err(|e| self.sled.err(e))?;
            let Some(s) = readable::<ConnSnapshot>(&v) else {
                self.skip("history");
                continue;
            };
            history.push(tx, history_row(self.node, s)).await?;
        }
        for v in self.sled.open_streams.iter().values() {
            let v = v.map_err(|e| self.sled.err(e))?;
            let Some(mut s) = readable::<ConnSnapshot>(&v) else {
                self.skip("open_streams");
                continue;
            };
            s.state = crate::types::ConnState::Closed;
            s.close_reason = Some(LEFT_OPEN.into());
            history.push(tx, history_row(self.node, s)).await?;
            self.copied.left_open += 1;
        }
        self.copied.history = history.finish(tx).await?;
        Ok(())
    }

    async fn rtbl(&mut self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let mut entries = Rows::new("rtbl", &[("service", "text"), ("feed_node", "text"), ("domain", "text"), ("record", "jsonb")]);
        for kv in self.sled.rtbl.iter() {
            let (k, v) = kv.map_err(|e| self.sled.err(e))?;
            // The key (`service \0 node \0 domain`) is the entry's identity in the store.
            let mut key = k.splitn(3, |b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
            let (Some(service), Some(node), Some(domain), Some(rec)) = (key.next(), key.next(), key.next(), readable::<RtblRecord>(&v))
            else {
                self.skip("rtbl");
                continue;
            };
            entries.push(tx, vec![Box::new(service), Box::new(node), Box::new(domain), Box::new(Json(rec))]).await?;
        }
        self.copied.rtbl_entries = entries.finish(tx).await?;
        let mut feeds = Rows::new("rtbl_feeds", &[("service", "text"), ("feed_node", "text"), ("status", "jsonb")]);
        for kv in self.sled.rtbl_feeds.iter() {
            let (k, v) = kv.map_err(|e| self.sled.err(e))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let (Some((service, node)), Some(status)) = (key.split_once('\0'), readable::<FeedStatus>(&v)) else {
                self.skip("rtbl_feeds");
                continue;
            };
            feeds.push(tx, vec![Box::new(service.to_owned()), Box::new(node.to_owned()), Box::new(Json(status))]).await?;
        }
        self.copied.rtbl_feeds = feeds.finish(tx).await?;
        Ok(())
    }

    async fn familiar(&mut self, tx: &Transaction<'_>) -> Result<(), Failed> {
        let mut pairs = Rows::new("familiar", &[("pair", "bytea"), ("last_ms", "bigint")]);
        for kv in self.sled.familiar.iter() {
            let (k, v) = kv.map_err(|e| self.sled.err(e))?;
            let (Ok(h), Ok(t)) = (<PairHash>::try_from(k.as_ref()), <[u8; 8]>::try_from(v.as_ref())) else {
                self.skip("familiar");
                continue;
            };
            pairs.push(tx, vec![Box::new(h.to_vec()), Box::new(u64::from_be_bytes(t) as i64)]).await?;
        }
        self.copied.familiar_pairs = pairs.finish(tx).await?;
        Ok(())
    }
}

/// A stored record, unless it does not read or holds what PostgreSQL's JSON cannot (a NUL
/// character, `\u0000`): such a record is left out and counted.
fn readable<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    if holds_nul(json) {
        return None;
    }
    decode(json).ok()
}

/// Whether JSON text holds the escape `\u0000` (not `\\u0000`, an escaped backslash).
fn holds_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json[i + 1..].starts_with(b"u0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// A closed stream's row, as the shared store writes it (`postgres::insert_history`): the
/// remote domains it served, its last activity never before its opening.
fn history_row(node: &str, s: ConnSnapshot) -> Vec<Param> {
    let mut remotes: Vec<String> = s.remote.iter().cloned().chain(s.pairs.iter().map(|p| p.remote.clone())).collect();
    remotes.sort_unstable();
    remotes.dedup();
    vec![
        Box::new(s.opened_ms as i64),
        Box::new(s.last_activity_ms.max(s.opened_ms) as i64),
        Box::new(node.to_owned()),
        Box::new(remotes),
        Box::new(Json(s)),
    ]
}

type Param = Box<dyn ToSql + Sync + Send>;

/// Rows of one table, written [`ROWS`] to a statement.
struct Rows {
    table: &'static str,
    /// Each column's name and type.
    columns: &'static [(&'static str, &'static str)],
    params: Vec<Param>,
    pending: usize,
    written: usize,
    /// The statement of a full batch, prepared once.
    full: Option<tokio_postgres::Statement>,
}

impl Rows {
    fn new(table: &'static str, columns: &'static [(&'static str, &'static str)]) -> Rows {
        Rows { table, columns, params: Vec::new(), pending: 0, written: 0, full: None }
    }

    async fn push(&mut self, tx: &Transaction<'_>, row: Vec<Param>) -> Result<(), Failed> {
        debug_assert_eq!(row.len(), self.columns.len());
        self.params.extend(row);
        self.pending += 1;
        if self.pending == ROWS {
            self.write(tx).await?;
        }
        Ok(())
    }

    /// Writes what is pending; how many rows were written in all.
    async fn finish(&mut self, tx: &Transaction<'_>) -> Result<usize, Failed> {
        self.write(tx).await?;
        Ok(self.written)
    }

    async fn write(&mut self, tx: &Transaction<'_>) -> Result<(), Failed> {
        if self.pending == 0 {
            return Ok(());
        }
        self.statement(tx).await.map_err(|e| Failed::Rows(self.table, e))?;
        self.written += self.pending;
        self.pending = 0;
        self.params.clear();
        Ok(())
    }

    async fn statement(&mut self, tx: &Transaction<'_>) -> Result<u64, tokio_postgres::Error> {
        let params: Vec<&(dyn ToSql + Sync)> = self.params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        if self.pending == ROWS {
            if self.full.is_none() {
                self.full = Some(tx.prepare(&self.sql(ROWS)).await?);
            }
            tx.execute(self.full.as_ref().expect("prepared"), &params).await
        } else {
            tx.execute(&self.sql(self.pending), &params).await
        }
    }

    /// `INSERT INTO t (a, b) VALUES ($1::text, $2::jsonb), ($3::text, $4::jsonb), …`.
    fn sql(&self, rows: usize) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| *n).collect();
        let mut sql = format!("INSERT INTO {} ({}) VALUES ", self.table, names.join(", "));
        let mut n = 0;
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (i, (_, ty)) in self.columns.iter().enumerate() {
                n += 1;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${n}::{ty}"));
            }
            sql.push(')');
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_as_the_config_takes_them() {
        for ok in ["edge-1", "a", "node_2.example", &"x".repeat(64)] {
            assert!(check_node(ok).is_ok(), "{ok}");
        }
        for bad in ["", "edge 1", "ed\"ge", "é", &"x".repeat(65)] {
            let e = check_node(bad).unwrap_err().to_string();
            assert!(e.contains("--node") && e.contains("[cluster] node"), "{e}");
        }
    }

    #[test]
    fn a_nul_escape_is_found_and_an_escaped_backslash_is_not_one() {
        assert!(holds_nul(br#"{"a":"x\u0000y"}"#));
        assert!(holds_nul(br#"{"a":"\\\u0000"}"#), "a backslash, then NUL");
        assert!(!holds_nul(br#"{"a":"\\u0000"}"#), "a backslash, then the text u0000");
        assert!(!holds_nul(br#"{"a":"\u0001 \\"}"#));
        assert_eq!(readable::<String>(br#""a\u0000""#), None);
        assert_eq!(readable::<String>(br#""a\\u0000""#).as_deref(), Some("a\\u0000"));
    }

    #[test]
    fn many_rows_to_a_statement_each_value_typed() {
        let r = Rows::new("familiar", &[("pair", "bytea"), ("last_ms", "bigint")]);
        assert_eq!(r.sql(2), "INSERT INTO familiar (pair, last_ms) VALUES ($1::bytea, $2::bigint), ($3::bytea, $4::bigint)");
        let h = Rows::new("t", &[("a", "text"), ("b", "text[]"), ("c", "jsonb"), ("d", "bigint"), ("e", "bigint")]);
        assert!(ROWS * h.columns.len() <= 65_535, "PostgreSQL's limit of parameters per statement");
        assert!(h.sql(ROWS).ends_with(&format!("${}::bigint)", ROWS * 5)));
    }

    /// A store of another user is refused before it is opened (run as root only: the test
    /// gives the store away).
    #[tokio::test]
    async fn a_store_of_another_user_is_refused_unopened() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: cannot give a store away; not checked");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        let db = dir.path().join("db");
        for e in std::fs::read_dir(&db).unwrap().flatten().map(|e| e.path()).chain([db.clone()]) {
            std::os::unix::fs::chown(&e, Some(65534), Some(65534)).unwrap();
        }
        let files = || std::fs::read_dir(&db).unwrap().count();
        let before = files();
        let e = to_postgres(dir.path(), "host=/nonexistent dbname=drawbridge", "edge-1").await.unwrap_err().to_string();
        assert!(e.contains(&format!("{} belongs to ", db.display())) && e.contains("and this is user root (uid 0)"), "{e}");
        assert!(e.contains("run the migration as ") && e.contains("nothing was copied"), "{e}");
        assert_eq!(files(), before, "the store was not opened");
        assert!(std::fs::read_dir(&db).unwrap().flatten().all(|e| e.metadata().unwrap().uid() == 65534));
    }

    /// A data dir with no store is refused before any connection is tried (the conninfo
    /// names a server that does not exist), and so is a data dir in use.
    #[tokio::test]
    async fn a_missing_or_running_store_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let nowhere = "host=/nonexistent dbname=drawbridge connect_timeout=1";
        let e = to_postgres(dir.path(), nowhere, "edge-1").await.unwrap_err();
        assert!(matches!(e, TransferError::NoStore { .. }), "{e}");
        assert!(!dir.path().join("db").exists(), "no store was created");
        let held = SledStore::open(dir.path()).unwrap();
        let e = to_postgres(dir.path(), nowhere, "edge-1").await.unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("stop it first"), "{e}");
        drop(held);
        let e = to_postgres(dir.path(), nowhere, "edge-1").await.unwrap_err();
        assert!(matches!(e, TransferError::Connect { .. }), "{e}");
        let e = to_postgres(dir.path(), "dbname=x", "edge-1").await.unwrap_err().to_string();
        assert!(e.starts_with("--to-postgres: names no host"), "{e}");
    }
}
