//! The embedded store (sled): one node's data in `DATA_DIR/db`, the default backend.
//!
//! Trees: `meta` (schema version, dialback secret, federation mode), `domains` (standing and
//! counters per domain), `policy_log` (every operator action), `outcomes` (verification
//! outcomes, time-ordered), `history` (closed streams), `open_streams` (periodic snapshots of
//! live ones; moved to `history` at the next start if the server died), `rtbl` and
//! `rtbl_feeds` (real-time blocklist entries with provenance, and each feed's last status;
//! see [`super::rtbl`]), `familiar` (the keyed hashes of who wrote to whom, for the
//! `strangers` action). Records are JSON.
//!
//! Durability: operator changes are flushed before they are acknowledged
//! ([`SledStore::flush`]); history and outcomes are flushed by the engine on a short timer.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::{StoreError, decode, encode};
use crate::policy::Mode;
use crate::policy::{DomainRecord, PolicyAction};
use crate::types::{ConnSnapshot, VerificationOutcome};

/// Version 1: only `meta/dialback_secret` (drawbridge 0.1 before policy). Version 2: all trees.
pub const SCHEMA_VERSION: u32 = 2;

pub struct SledStore {
    pub(super) db: sled::Db,
    pub(super) meta: sled::Tree,
    pub(super) domains: sled::Tree,
    pub(super) policy_log: sled::Tree,
    pub(super) outcomes: sled::Tree,
    pub(super) history: sled::Tree,
    pub(super) open_streams: sled::Tree,
    pub(super) rtbl: sled::Tree,
    pub(super) rtbl_feeds: sled::Tree,
    pub(super) familiar: sled::Tree,
    /// The longest any stream in `history` lived (its last activity after its opening), in
    /// ms: how far before a window [`SledStore::history_since`] must start, the history being
    /// keyed by when streams opened. Kept in `meta`; never lowered (pruning keeps it).
    pub(super) longest_ms: std::sync::atomic::AtomicU64,
    pub(super) path: PathBuf,
    pub(super) _lock: File,
}

const SECRET_KEY: &[u8] = b"dialback_secret";
const VERSION_KEY: &[u8] = b"schema_version";
const MODE_KEY: &[u8] = b"mode";
const LONGEST_KEY: &[u8] = b"history_longest_ms";

/// Open sled's database. Our own lock on the directory is held, so no other process has
/// it: sled's lock still held is this process's previous `SledStore`, whose flusher thread
/// lets go a moment after the drop (an engine restarted in-process). Waited for, briefly
/// and boundedly.
fn open_sled(path: &Path, temporary: bool) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::Config::new().path(path).temporary(temporary).open() {
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

impl SledStore {
    pub fn open(data_dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_in(data_dir, false)
    }

    /// A node's working copy of a shared store's small state (policy, blocklists, the
    /// familiarity set): `DATA_DIR/shared-copy`, private, rebuilt from the shared store at
    /// every start and removed when dropped. The data dir is locked as for [`SledStore::open`].
    pub fn working_copy(data_dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_in(data_dir, true)
    }

    fn open_in(data_dir: &Path, working_copy: bool) -> Result<SledStore, StoreError> {
        let name = if working_copy { "shared-copy" } else { "db" };
        let fresh = !data_dir.join(name).exists();
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(|err| StoreError::CreateDir { path: data_dir.to_owned(), err })?;
        }
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(name);
        if working_copy {
            // What a killed process left: nothing in it is kept.
            let _ = std::fs::remove_dir_all(&path);
            std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(|err| StoreError::CreateDir { path: path.clone(), err })?;
        }
        let db = open_sled(&path, working_copy).map_err(|e| StoreError::Db {
            path: path.clone(),
            msg: format!("{e}; the directory is kept as it is — move it aside to start afresh, or restore it from a backup"),
        })?;
        let err = |e: sled::Error| StoreError::Db { path: path.clone(), msg: e.to_string() };
        let store = SledStore {
            meta: db.open_tree("meta").map_err(err)?,
            domains: db.open_tree("domains").map_err(err)?,
            policy_log: db.open_tree("policy_log").map_err(err)?,
            outcomes: db.open_tree("outcomes").map_err(err)?,
            history: db.open_tree("history").map_err(err)?,
            open_streams: db.open_tree("open_streams").map_err(err)?,
            rtbl: db.open_tree("rtbl").map_err(err)?,
            rtbl_feeds: db.open_tree("rtbl_feeds").map_err(err)?,
            familiar: db.open_tree("familiar").map_err(err)?,
            longest_ms: Default::default(),
            db,
            path,
            _lock: lock,
        };
        store.migrate(data_dir)?;
        store.load_longest()?;
        if fresh || working_copy {
            // The database holds the dialback secret: ours alone whatever the umask was.
            private_tree(&store.path, true);
            private_tree(data_dir, false);
        }
        for wide in too_wide(data_dir) {
            tracing::warn!("{wide}");
        }
        Ok(store)
    }

    pub(super) fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), msg: e.to_string() }
    }

    /// Bring an older schema up to date; refuse a newer one.
    fn migrate(&self, data_dir: &Path) -> Result<(), StoreError> {
        let found = match self.meta.get(VERSION_KEY).map_err(|e| self.err(e))? {
            Some(v) => u32::from_be_bytes(v.as_ref().try_into().map_err(|_| self.err("schema_version is not 4 bytes"))?),
            // No version: a fresh database, or version 1 (which only had the secret).
            None => {
                if self.meta.get(SECRET_KEY).map_err(|e| self.err(e))?.is_some() {
                    1
                } else {
                    SCHEMA_VERSION
                }
            }
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                place: format!("data dir {}", data_dir.display()),
                found,
                knows: SCHEMA_VERSION,
                fix: "point server.data_dir elsewhere",
            });
        }
        if found < SCHEMA_VERSION {
            tracing::info!(from = found, to = SCHEMA_VERSION, "migrating the store in {}", data_dir.display());
        }
        // 1 → 2: the new trees exist once opened; nothing to rewrite.
        self.meta.insert(VERSION_KEY, &SCHEMA_VERSION.to_be_bytes()).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The longest stream lifetime in the history, from `meta`; a store written before it was
    /// kept has it measured once, by reading the history (only the two times of each entry).
    fn load_longest(&self) -> Result<(), StoreError> {
        let longest = match self.meta.get(LONGEST_KEY).map_err(|e| self.err(e))? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| self.err("history_longest_ms is not 8 bytes"))?),
            None => {
                #[derive(serde::Deserialize)]
                struct Times {
                    opened_ms: u64,
                    last_activity_ms: u64,
                }
                let mut longest = 0;
                for v in self.history.iter().values() {
                    if let Ok(t) = decode::<Times>(&v.map_err(|e| self.err(e))?) {
                        longest = longest.max(t.last_activity_ms.saturating_sub(t.opened_ms));
                    }
                }
                self.meta.insert(LONGEST_KEY, &longest.to_be_bytes()).map_err(|e| self.err(e))?;
                longest
            }
        };
        self.longest_ms.store(longest, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The dialback secret: created once (32 random bytes), flushed before use.
    pub fn dialback_secret(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(v) = self.meta.get(SECRET_KEY).map_err(|e| self.err(e))? {
            return Ok(v.to_vec());
        }
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).expect("OS randomness");
        self.meta.insert(SECRET_KEY, secret.as_slice()).map_err(|e| self.err(e))?;
        self.meta.flush().map_err(|e| self.err(e))?;
        Ok(secret)
    }

    pub fn mode(&self) -> Result<Option<Mode>, StoreError> {
        Ok(self.meta.get(MODE_KEY).map_err(|e| self.err(e))?.and_then(|v| Mode::parse(std::str::from_utf8(&v).ok()?)))
    }

    pub fn put_mode(&self, mode: Mode) -> Result<(), StoreError> {
        self.meta.insert(MODE_KEY, mode.as_str()).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn domains(&self) -> Result<Vec<DomainRecord>, StoreError> {
        self.domains.iter().values().map(|v| decode(&v.map_err(|e| self.err(e))?).map_err(|e| self.err(e))).collect()
    }

    pub fn domain(&self, domain: &str) -> Result<Option<DomainRecord>, StoreError> {
        match self.domains.get(domain).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode(&v).map_err(|e| self.err(e))?)),
            None => Ok(None),
        }
    }

    pub fn put_domain(&self, rec: &DomainRecord) -> Result<(), StoreError> {
        self.domains.insert(rec.domain.as_bytes(), encode(rec)).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Several records in one atomic batch.
    pub fn put_domains(&self, recs: &[DomainRecord]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for r in recs {
            batch.insert(r.domain.as_bytes(), encode(r));
        }
        self.domains.apply_batch(batch).map_err(|e| self.err(e))
    }

    pub fn log_action(&self, action: &PolicyAction) -> Result<(), StoreError> {
        let id = self.db.generate_id().map_err(|e| self.err(e))?;
        self.policy_log.insert(time_key(action.time_ms, id), encode(action)).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Newest first.
    pub fn policy_log(&self, domain: Option<&str>, limit: usize) -> Result<Vec<PolicyAction>, StoreError> {
        newest(&self.policy_log, limit, |a: &PolicyAction| domain.is_none_or(|d| a.domain.as_deref() == Some(d))).map_err(|e| self.err(e))
    }

    pub fn add_outcome(&self, o: &VerificationOutcome) -> Result<(), StoreError> {
        let id = self.db.generate_id().map_err(|e| self.err(e))?;
        self.outcomes.insert(time_key(o.time_ms, id), encode(o)).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Newest first.
    pub fn outcomes(&self, domain: Option<&str>, limit: usize) -> Result<Vec<VerificationOutcome>, StoreError> {
        newest(&self.outcomes, limit, |o: &VerificationOutcome| domain.is_none_or(|d| o.remote == d)).map_err(|e| self.err(e))
    }

    pub fn add_history(&self, s: &ConnSnapshot) -> Result<(), StoreError> {
        let id = self.db.generate_id().map_err(|e| self.err(e))?;
        // The longest lifetime first: a window's scan must never start after this stream.
        let lived = s.last_activity_ms.saturating_sub(s.opened_ms);
        if lived > self.longest_ms.load(std::sync::atomic::Ordering::Relaxed) {
            self.meta
                .fetch_and_update(LONGEST_KEY, |old| {
                    let old = old.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes);
                    Some(old.max(lived).to_be_bytes().to_vec())
                })
                .map_err(|e| self.err(e))?;
            self.longest_ms.fetch_max(lived, std::sync::atomic::Ordering::Relaxed);
        }
        self.history.insert(time_key(s.opened_ms, id), encode(s)).map_err(|e| self.err(e))?;
        self.open_streams.remove(s.id.as_bytes()).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Newest first.
    pub fn history(&self, domain: Option<&str>, limit: usize) -> Result<Vec<ConnSnapshot>, StoreError> {
        newest(&self.history, limit, |s: &ConnSnapshot| {
            domain.is_none_or(|d| s.remote.as_deref() == Some(d) || s.pairs.iter().any(|p| p.remote == d))
        })
        .map_err(|e| self.err(e))
    }

    /// The closed streams active at or after `since_ms` (their last activity), newest first.
    /// The history is keyed by when streams opened: only the entries opened after `since_ms`
    /// less the longest any stream lived are read, so the cost follows the window, not the
    /// history's size. (Streams open now are the table's.)
    pub fn history_since(&self, since_ms: u64) -> Result<Vec<ConnSnapshot>, StoreError> {
        Ok(self.history_scan(since_ms)?.0)
    }

    /// [`SledStore::history_since`], with how many entries it decoded.
    fn history_scan(&self, since_ms: u64) -> Result<(Vec<ConnSnapshot>, usize), StoreError> {
        let start = since_ms.saturating_sub(self.longest_ms.load(std::sync::atomic::Ordering::Relaxed));
        let (mut out, mut decoded) = (Vec::new(), 0);
        for v in self.history.range(time_key(start, 0)..).values().rev() {
            let v = v.map_err(|e| self.err(e))?;
            decoded += 1;
            if let Ok(s) = decode::<ConnSnapshot>(&v)
                && s.last_activity_ms.max(s.opened_ms) >= since_ms
            {
                out.push(s);
            }
        }
        Ok((out, decoded))
    }

    /// Replace the snapshots of open streams.
    pub fn snapshot_open(&self, live: &[ConnSnapshot]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let keep: std::collections::HashSet<&str> = live.iter().map(|s| s.id.as_str()).collect();
        for k in self.open_streams.iter().keys() {
            let k = k.map_err(|e| self.err(e))?;
            if !keep.contains(std::str::from_utf8(&k).unwrap_or("")) {
                batch.remove(k);
            }
        }
        for s in live {
            batch.insert(s.id.as_bytes(), encode(s));
        }
        self.open_streams.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Streams that were open when the server last stopped without closing them: into the
    /// history, closed with that reason. Returns how many.
    pub fn recover_open(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.open_streams.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if let Ok(mut s) = decode::<ConnSnapshot>(&v) {
                s.state = crate::types::ConnState::Closed;
                s.close_reason = Some("drawbridge stopped without closing it (crash or kill)".into());
                self.add_history(&s)?;
                n += 1;
            }
            self.open_streams.remove(k).map_err(|e| self.err(e))?;
        }
        Ok(n)
    }

    /// Keep at most `max` records per time-ordered tree, none older than `max_age_ms`.
    pub fn prune(&self, max: usize, max_age_ms: u64, now_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let mut removed = 0;
        for tree in [&self.outcomes, &self.history, &self.policy_log] {
            let excess = tree.len().saturating_sub(max);
            for (i, k) in tree.iter().keys().enumerate() {
                let k = k.map_err(|e| self.err(e))?;
                let t = u64::from_be_bytes(k[..8].try_into().unwrap_or([0; 8]));
                if i < excess || t < cutoff {
                    tree.remove(&k).map_err(|e| self.err(e))?;
                    removed += 1;
                } else {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// An operator's change: the mode, the records and their log entries, then a flush.
    pub async fn commit(&self, w: &crate::policy::PolicyWrite) -> Result<(), StoreError> {
        if let Some(mode) = w.mode {
            self.put_mode(mode)?;
        }
        self.put_domains(&w.domains)?;
        for a in &w.actions {
            self.log_action(a)?;
        }
        self.flush().await
    }

    /// Everything written so far reaches the disk before this returns.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map(|_| ()).map_err(|e| self.err(e))
    }
}

/// Time-ordered key: big-endian time then a unique id.
fn time_key(time_ms: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

fn newest<T: DeserializeOwned>(tree: &sled::Tree, limit: usize, mut keep: impl FnMut(&T) -> bool) -> Result<Vec<T>, sled::Error> {
    let mut out = Vec::new();
    for v in tree.iter().values().rev() {
        if out.len() >= limit {
            break;
        }
        if let Ok(rec) = decode::<T>(&v?)
            && keep(&rec)
        {
            out.push(rec);
        }
    }
    Ok(out)
}

/// Make `path` (and with `recursive`, everything under it) 0700 for directories and 0600
/// for files.
fn private_tree(path: &Path, recursive: bool) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if recursive && meta.is_dir() {
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            private_tree(&e.path(), true);
        }
    }
}

/// Paths in the data dir that other local users can read or write: the dir itself and the
/// database (with the dialback secret). Each names the path, its mode and the fix. (Key
/// files, the self-signed one in `DATA_DIR/tls/` included, are checked at start by the
/// `secrets` module, a layer above.)
pub fn too_wide(data_dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut check = |p: &Path| {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                let want = if m.is_dir() { "700" } else { "600" };
                out.push(format!(
                    "{} is open to other local users (mode {mode:o}; it holds the dialback secret or keys): chmod {want} it",
                    p.display()
                ));
            }
        }
    };
    check(data_dir);
    let mut stack = vec![data_dir.join("db")];
    while let Some(p) = stack.pop() {
        check(&p);
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    out
}

/// An exclusive lock on `DATA_DIR/drawbridge.lock` holding our pid, so a second drawbridge
/// is refused with the first one's pid rather than a database error.
fn lock_data_dir(data_dir: &Path) -> Result<File, StoreError> {
    let path = data_dir.join("drawbridge.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|err| StoreError::CreateDir { path: path.clone(), err })?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() { "its pid is unknown".to_owned() } else { format!("pid {pid}") };
            return Err(StoreError::Locked { path: data_dir.to_owned(), holder });
        }
        Err(std::fs::TryLockError::Error(err)) => return Err(StoreError::CreateDir { path, err }),
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    let _ = f.sync_all();
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_is_private_and_wide_modes_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let s = SledStore::open(&data).unwrap();
        s.dialback_secret().unwrap();
        s.db.flush().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert!(too_wide(&data).is_empty(), "{:?}", too_wide(&data));
        let db_file = data.join("db").join("db");
        assert_eq!(mode(&db_file), 0o600);
        drop(s);
        std::fs::set_permissions(&db_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = too_wide(&data);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains(&db_file.display().to_string()) && w[0].contains("644") && w[0].contains("chmod 600"));
        // Reopening an existing store warns but leaves the operator's modes alone.
        drop(SledStore::open(&data).unwrap());
        assert_eq!(mode(&db_file), 0o644);
    }

    #[test]
    fn secret_is_stable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = SledStore::open(dir.path()).unwrap().dialback_secret().unwrap();
        let b = SledStore::open(dir.path()).unwrap().dialback_secret().unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(a, SledStore::open(other.path()).unwrap().dialback_secret().unwrap());
    }

    #[test]
    fn locked_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).err().expect("second open must fail");
        let msg = err.to_string();
        assert!(msg.contains("in use by another drawbridge") && msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    }

    /// A version-1 store (only the dialback secret, as drawbridge 0.1 wrote it) is migrated
    /// and keeps its secret; a newer one is refused.
    #[test]
    fn migrates_v1_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            db.open_tree("meta").unwrap().insert(SECRET_KEY, &[7u8; 32][..]).unwrap();
            db.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.dialback_secret().unwrap(), vec![7u8; 32]);
        assert_eq!(s.meta.get(VERSION_KEY).unwrap().unwrap().as_ref(), &SCHEMA_VERSION.to_be_bytes());
        s.meta.insert(VERSION_KEY, &99u32.to_be_bytes()).unwrap();
        s.db.flush().unwrap();
        drop(s);
        let err = SledStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("newer drawbridge (schema 99"), "{err}");
    }

    /// A domain record as the version before certificate forecasts wrote it (no `cert`)
    /// still reads, with no certificate; one with a certificate round-trips, its expiry typed.
    #[test]
    fn domain_records_without_a_certificate_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let old = br#"{"domain":"old.test","state":"approved","reason":null,"who":"root","when_ms":5,"expires_ms":null,"previous":"unknown","source":null,"first_seen_ms":1,"last_seen_ms":2,"streams_in":3,"streams_out":4,"stanzas_in":5,"stanzas_out":6,"last_verification":"valid","cert_auth_seen":true,"downgrade":null}"#;
        s.domains.insert("old.test", &old[..]).unwrap();
        let rec = s.domain("old.test").unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.streams_in, rec.cert_auth_seen, rec.cert.clone()),
            (crate::policy::DomainState::Approved, 3, true, None)
        );
        let cert = crate::types::RemoteCert {
            not_after_s: 1_800_000_000,
            issuer: "CN=Peer CA".into(),
            subject: "CN=old.test".into(),
            fingerprint_sha256: "AB:CD".into(),
            method: crate::types::AuthMethod::SaslExternal,
            direction: crate::types::Direction::In,
            seen_ms: 7,
        };
        s.put_domain(&DomainRecord { cert: Some(cert.clone()), ..rec.clone() }).unwrap();
        assert_eq!(s.domain("old.test").unwrap().unwrap().cert, Some(cert));
        // A record with none is written as before (no `cert` key).
        s.put_domain(&rec).unwrap();
        assert!(!String::from_utf8(s.domains.get("old.test").unwrap().unwrap().to_vec()).unwrap().contains("cert\":"));
    }

    #[test]
    fn records_round_trip_newest_first_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for (i, who) in ["alice", "bob", "carol"].iter().enumerate() {
            s.log_action(&PolicyAction {
                time_ms: 1000 + i as u64,
                who: (*who).into(),
                action: "block".into(),
                domain: Some("x.test".into()),
                reason: None,
            })
            .unwrap();
        }
        let log = s.policy_log(None, 10).unwrap();
        assert_eq!(log.iter().map(|a| a.who.as_str()).collect::<Vec<_>>(), vec!["carol", "bob", "alice"]);
        assert_eq!(s.prune(2, u64::MAX, 0).unwrap(), 1);
        assert_eq!(s.policy_log(None, 10).unwrap().len(), 2);
        assert_eq!(s.prune(10, 999, 2001).unwrap(), 1, "only the record older than 999 ms at t=2001");
        let rec = DomainRecord {
            domain: "x.test".into(),
            state: crate::policy::DomainState::Blocked,
            reason: Some("r".into()),
            ..Default::default()
        };
        s.put_domain(&rec).unwrap();
        assert_eq!(s.domain("x.test").unwrap(), Some(rec));
    }

    fn stream(id: &str, opened_ms: u64, last_activity_ms: u64) -> ConnSnapshot {
        ConnSnapshot {
            id: id.into(),
            direction: crate::types::Direction::In,
            kind: Default::default(),
            local: Some("home.test".into()),
            remote: Some("x.test".into()),
            peer_addr: None,
            state: crate::types::ConnState::Closed,
            stream_id: None,
            tls: None,
            pairs: Vec::new(),
            opened_ms,
            last_activity_ms,
            stanzas_in: 0,
            stanzas_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            close_reason: None,
            limits: None,
        }
    }

    /// A window of the history reads the entries opened in it and those opened before it by
    /// at most the longest lifetime recorded, not the whole history; a long-lived stream
    /// widens the scan so it is still found; the longest lifetime survives a reopen and is
    /// measured for a store that did not keep it.
    #[test]
    fn a_window_reads_only_its_part_of_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        // 1000 streams of a minute each, one every ten minutes.
        for i in 0..1000u64 {
            s.add_history(&stream(&format!("s{i}"), i * 600_000, i * 600_000 + 60_000)).unwrap();
        }
        let since = 995 * 600_000;
        let (found, decoded) = s.history_scan(since).unwrap();
        assert_eq!(found.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s999", "s998", "s997", "s996", "s995"]);
        assert!(decoded <= 6, "read {decoded} entries for a window of 5");
        assert_eq!(s.history_scan(1000 * 600_000).unwrap(), (vec![], 0), "an empty window reads nothing");
        // A stream opened long before the window and active in it.
        s.add_history(&stream("long", 10 * 600_000, 996 * 600_000)).unwrap();
        let (found, decoded) = s.history_scan(since).unwrap();
        assert!(found.iter().any(|s| s.id == "long") && found.len() == 6);
        assert!(decoded >= 990, "the long stream's lifetime widens the scan: {decoded}");
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s.history_since(since).unwrap().iter().any(|s| s.id == "long"), "kept across a reopen");
        // A store from before the lifetime was kept: measured at open.
        s.meta.remove(LONGEST_KEY).unwrap();
        s.longest_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        s.load_longest().unwrap();
        assert!(s.history_since(since).unwrap().iter().any(|s| s.id == "long"), "measured");
    }
}
