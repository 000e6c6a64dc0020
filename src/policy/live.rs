//! The live policy: mode and domain standings in memory (read-locked per stream, never per
//! stanza), written through to the store and flushed before a change is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::{BlacklistHit, DomainState, Facts, Listed, Mode, Standing, Trace, Verdict, decide, explain, suffixes};
use super::{DomainRecord, PolicyAction, PolicyStore, PolicyWrite, StorageError};
use crate::domain::Domain;
use crate::types::now_ms;

pub struct Policy {
    inner: RwLock<Inner>,
    store: Arc<dyn PolicyStore>,
    /// Bumped on every change: held streams wait on it.
    changed: watch::Sender<u64>,
    /// Operator changes one at a time: each is computed, written and flushed, and only then
    /// applied in memory (a failed write leaves the previous policy in force).
    writing: tokio::sync::Mutex<()>,
    /// The decisions streams asked for (allow, hold, refuse × the rule that decided), for
    /// the metrics: atomics, no lock.
    decisions: [[std::sync::atomic::AtomicU64; 6]; 3],
    /// Writers waiting for the write lock (or just given it): a dry run copying the policy
    /// lets them in between its chunks ([`Policy::snapshot`]). std's lock alone would not: a
    /// reader that unlocks and locks again at once wins the race with the writer it woke.
    writers: std::sync::atomic::AtomicUsize,
}

struct Inner {
    mode: Mode,
    domains: HashMap<String, DomainRecord>,
    /// How many blacklist entries exist (skips the suffix walk when there are none).
    blacklisted: usize,
    /// Real-time blocklist listings per domain (one per feed that lists it).
    listed: HashMap<String, Vec<Listed>>,
    /// Bumped under the write lock by every change a verdict can depend on (an operator's,
    /// a listing's, an expired block): what a dry run saw ([`WhatIf::generation`]) and a
    /// change made after it may insist on ([`Policy::apply_expecting`]). A domain entering
    /// the approval inbox (pending judges as unknown) and a sighting's counters do not count.
    generation: u64,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// It was asked for with the generation a dry run saw, and the policy has changed since.
    #[error("the policy changed since the preview; review it again")]
    Stale { previewed: u64, now: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ChangeError {
    /// Without an expected generation a change is never stale.
    fn storage(self) -> StorageError {
        match self {
            ChangeError::Storage(e) => e,
            ChangeError::Stale { .. } => unreachable!("no generation was expected"),
        }
    }
}

/// Domains copied per hold of the read lock while a dry run takes its snapshot: writers
/// (a verification noted, a stream's verdict waiting behind it) get in between.
const SNAPSHOT_CHUNK: usize = 1024;
/// Snapshots begun again because the policy changed in between, before the last one is
/// taken under a single hold.
const SNAPSHOT_TRIES: usize = 3;
/// How long a dry run's copy waits, between two chunks, for the writers waiting to be done.
const WRITERS_GAP: std::time::Duration = std::time::Duration::from_millis(20);

/// What an operator asks for.
#[derive(Debug, Clone)]
pub enum Change {
    Approve,
    Block { expires_ms: Option<u64> },
    Blacklist { source: String },
    Unblock,
}

/// A change to the policy as an operator proposes it: what the command applies and what its
/// dry run judges ([`Policy::what_if`]), planned by the same code either way.
#[derive(Debug, Clone)]
pub enum Proposal {
    Domain {
        domain: Domain,
        change: Change,
        reason: Option<String>,
    },
    Mode(Mode),
    /// An imported blacklist: every entry with its comment (its reason), under `source`.
    Import {
        entries: Vec<(Domain, Option<String>)>,
        source: String,
    },
}

/// One record a proposal writes: as it is (none: never seen nor decided) and as it would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub before: Option<DomainRecord>,
    pub after: DomainRecord,
}

/// What a proposal would write, nothing written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The mode now and the one proposed (a mode change).
    pub mode: Option<(Mode, Mode)>,
    /// The records whose standing changes.
    pub records: Vec<Planned>,
    /// Domains named whose standing stays as it is (re-applying is idempotent; an import's
    /// entries already blacklisted, or listed twice).
    pub unchanged: Vec<DomainRecord>,
}

impl Proposal {
    /// The domains whose records the plan reads.
    fn domains(&self) -> Vec<&str> {
        match self {
            Proposal::Domain { domain, .. } => vec![domain.as_str()],
            Proposal::Mode(_) => Vec::new(),
            Proposal::Import { entries, .. } => entries.iter().map(|(d, _)| d.as_str()).collect(),
        }
    }
}

impl Plan {
    /// Whether applying it would change anything.
    pub fn changes(&self) -> bool {
        !self.records.is_empty() || self.mode.is_some_and(|(a, b)| a != b)
    }
}

/// The record after an operator's change to one domain, and whether its standing changed
/// (the same standing again is no change: nothing is written or logged).
pub fn next_record(
    current: Option<&DomainRecord>,
    domain: &Domain,
    change: &Change,
    who: &str,
    reason: Option<&str>,
    now: u64,
) -> (DomainRecord, bool) {
    let mut rec = current.cloned().unwrap_or_else(|| DomainRecord { domain: domain.to_string(), ..Default::default() });
    let before = rec.clone();
    let current = standing(&rec).effective(now);
    match change {
        Change::Approve => {
            rec.state = DomainState::Approved;
            rec.expires_ms = None;
            rec.source = None;
        }
        Change::Block { expires_ms } => {
            if current != DomainState::Blocked {
                rec.previous = if current == DomainState::Blacklisted { DomainState::Unknown } else { current };
            }
            rec.state = DomainState::Blocked;
            rec.expires_ms = *expires_ms;
        }
        Change::Blacklist { source } => {
            rec.state = DomainState::Blacklisted;
            rec.expires_ms = None;
            rec.source = Some(source.clone());
        }
        Change::Unblock => {
            rec.state = match current {
                DomainState::Blocked | DomainState::Blacklisted => {
                    if rec.previous == DomainState::Blocked || rec.previous == DomainState::Blacklisted {
                        DomainState::Unknown
                    } else {
                        rec.previous
                    }
                }
                s => s,
            };
            rec.expires_ms = None;
            rec.source = None;
        }
    }
    let same_standing = rec.state == before.state
        && rec.expires_ms == before.expires_ms
        && rec.source == before.source
        && reason.is_none_or(|r| before.reason.as_deref() == Some(r));
    if !same_standing {
        rec.reason =
            reason.map(str::to_owned).or(if matches!(change, Change::Unblock | Change::Approve) { None } else { rec.reason.clone() });
        rec.who = Some(who.to_owned());
        rec.when_ms = Some(now);
    }
    (rec, !same_standing)
}

/// An imported list's entries as records: those newly blacklisted, and (in `unchanged`) those
/// already blacklisted or listed twice.
fn import_plan<'a>(
    current: impl Fn(&str) -> Option<&'a DomainRecord>,
    entries: &[(Domain, Option<String>)],
    source: &str,
    who: &str,
    now: u64,
) -> (Vec<Planned>, Vec<DomainRecord>) {
    let (mut records, mut unchanged) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for (d, reason) in entries {
        let before = current(d.as_str()).cloned();
        let mut rec = before.clone().unwrap_or_else(|| DomainRecord { domain: d.to_string(), ..Default::default() });
        if rec.state == DomainState::Blacklisted || !seen.insert(d.as_str()) {
            unchanged.push(rec);
            continue;
        }
        rec.state = DomainState::Blacklisted;
        rec.expires_ms = None;
        rec.source = Some(source.to_owned());
        rec.reason = Some(reason.clone().unwrap_or_else(|| format!("listed in {source}")));
        rec.who = Some(who.to_owned());
        rec.when_ms = Some(now);
        records.push(Planned { before, after: rec });
    }
    (records, unchanged)
}

impl Policy {
    /// Load from the store; the persisted mode wins over the configured one (it was changed
    /// live by an operator).
    pub fn load(store: Arc<dyn PolicyStore>, configured: Mode) -> Result<Policy, StorageError> {
        let mode = store.mode()?.unwrap_or(configured);
        let domains: HashMap<String, DomainRecord> = store.domains()?.into_iter().map(|r| (r.domain.clone(), r)).collect();
        let blacklisted = domains.values().filter(|r| r.state == DomainState::Blacklisted).count();
        let (changed, _) = watch::channel(0);
        Ok(Policy {
            inner: RwLock::new(Inner { mode, domains, blacklisted, listed: HashMap::new(), generation: 0 }),
            store,
            changed,
            writing: tokio::sync::Mutex::new(()),
            decisions: Default::default(),
            writers: Default::default(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.inner.read().unwrap().mode
    }

    /// The write lock, counted in [`Policy::writers`] while waited for.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        use std::sync::atomic::Ordering::SeqCst;
        self.writers.fetch_add(1, SeqCst);
        let inner = self.inner.write().unwrap();
        self.writers.fetch_sub(1, SeqCst);
        inner
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The verdict for a remote domain now.
    pub fn verdict(&self, domain: &Domain) -> Verdict {
        let inner = self.inner.read().unwrap();
        inner.with_facts(domain.as_str(), None, decide)
    }

    /// The same decision as [`Policy::verdict`], with every rule it applied (`ctl explain`);
    /// `security` adds the authentication rules to the trace.
    pub fn explain(&self, domain: &Domain, security: Option<&crate::types::Security>) -> Trace {
        let inner = self.inner.read().unwrap();
        inner.with_facts(domain.as_str(), security, explain)
    }

    /// The `strangers` action for one inbound stanza from `domain` to a local user (see
    /// [`super::decision::strangers`]): the refusal's text, or `None` to let it through.
    pub fn strangers(&self, domain: &Domain, inbound: super::Inbound, familiar: impl FnOnce() -> bool) -> Option<String> {
        let inner = self.inner.read().unwrap();
        if inner.listed.is_empty() {
            return None;
        }
        inner.with_facts(domain.as_str(), None, |f| super::decision::strangers(f, inbound, familiar))
    }

    /// The operator keeps what a listing did after it was retracted: the domain becomes
    /// blocked by the operator, the reason naming the feed and its report (provenance).
    pub async fn keep_listing(&self, domain: &Domain, listing: &Listed, who: &str) -> Result<(DomainRecord, bool), StorageError> {
        let reason = format!("kept after a listing by {} (node {}): {}", listing.service, listing.node, listing.reason);
        self.apply(domain, Change::Block { expires_ms: None }, who, Some(&reason)).await
    }

    /// The listings of a domain by the real-time blocklists followed.
    pub fn listings(&self, domain: &str) -> Vec<Listed> {
        self.inner.read().unwrap().listed.get(domain).cloned().unwrap_or_default()
    }

    /// Apply one feed's change to the listings in force (after it was persisted). Feeds
    /// are told apart by service and node. A retract lifts only what the listing caused: a
    /// domain it had put in the approval inbox (pending) and that nothing else holds now
    /// leaves the inbox; those records are returned (persisted) for the operator's view.
    pub fn apply_rtbl(&self, feed: &crate::rtbl::FeedSettings, change: &crate::rtbl::Change) -> Vec<DomainRecord> {
        use crate::rtbl::Change as C;
        let same = |l: &Listed| l.service == feed.service && l.node == feed.node;
        let lifted = {
            let mut inner = self.write();
            let mut affected: Vec<String> = Vec::new();
            match change {
                C::Added(e) | C::Updated(e) => {
                    let l = Listed {
                        service: feed.service.clone(),
                        node: feed.node.clone(),
                        action: feed.action,
                        reason: e.listing.summary(),
                        block_strangers: e.listing.block_strangers,
                    };
                    let v = inner.listed.entry(e.domain.to_string()).or_default();
                    match v.iter_mut().find(|x| same(x)) {
                        Some(slot) => *slot = l,
                        None => v.push(l),
                    }
                }
                C::Retracted { domain, .. } => {
                    if let Some(v) = inner.listed.get_mut(domain.as_str()) {
                        v.retain(|x| !same(x));
                        if v.is_empty() {
                            inner.listed.remove(domain.as_str());
                        }
                        affected.push(domain.to_string());
                    }
                }
                C::Cleared { .. } => {
                    inner.listed.retain(|d, v| {
                        let before = v.len();
                        v.retain(|x| !same(x));
                        if v.len() != before {
                            affected.push(d.clone());
                        }
                        !v.is_empty()
                    });
                }
                C::Confirmed { .. } => return Vec::new(),
            }
            inner.generation += 1;
            let now = now_ms();
            let mut lifted = Vec::new();
            for d in affected {
                let still_held = inner.with_facts(&d, None, decide) == Verdict::Hold;
                if let Some(rec) = inner.domains.get_mut(&d).filter(|r| r.state == DomainState::Pending && !still_held) {
                    rec.state = DomainState::Unknown;
                    rec.when_ms = Some(now);
                    lifted.push(rec.clone());
                }
            }
            lifted
        };
        for rec in &lifted {
            if let Err(e) = self.store.put_domain(rec, Some(DomainState::Pending)) {
                tracing::error!("store: {e}");
            }
        }
        self.changed.send_modify(|g| *g += 1);
        lifted
    }

    pub fn record(&self, domain: &str) -> Option<DomainRecord> {
        self.inner.read().unwrap().domains.get(domain).cloned()
    }

    /// Records, optionally of one (effective) state, sorted by domain.
    pub fn records(&self, state: Option<DomainState>) -> Vec<DomainRecord> {
        let now = now_ms();
        let inner = self.inner.read().unwrap();
        let mut v: Vec<DomainRecord> = inner
            .domains
            .values()
            .filter(|r| state.is_none_or(|s| standing(r).effective(now) == s))
            .map(|r| effective_record(r, now))
            .collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v
    }

    /// Every record as stored, visited under the read lock without copying any: for a scrape
    /// that reads one field of many domains.
    pub fn for_each_record(&self, mut f: impl FnMut(&DomainRecord)) {
        self.inner.read().unwrap().domains.values().for_each(&mut f);
    }

    /// How many domains are in each (effective) state.
    pub fn counts(&self) -> HashMap<DomainState, usize> {
        let now = now_ms();
        let mut m = HashMap::new();
        for r in self.inner.read().unwrap().domains.values() {
            *m.entry(standing(r).effective(now)).or_insert(0) += 1;
        }
        m
    }

    /// Change the mode (flushed before it returns). Returns whether it changed: the mode in
    /// force again is no change (nothing written, logged or announced).
    pub async fn set_mode(&self, mode: Mode, who: &str) -> Result<bool, StorageError> {
        self.set_mode_expecting(mode, who, None).await.map_err(ChangeError::storage)
    }

    /// [`Policy::set_mode`], refused as stale when `expect` is given and the policy's
    /// generation is no longer it.
    pub async fn set_mode_expecting(&self, mode: Mode, who: &str, expect: Option<u64>) -> Result<bool, ChangeError> {
        let _one = self.writing.lock().await;
        {
            let inner = self.inner.read().unwrap();
            inner.expect(expect)?;
            if inner.mode == mode {
                return Ok(false);
            }
        }
        let action =
            PolicyAction { time_ms: now_ms(), who: who.into(), action: format!("mode {}", mode.as_str()), domain: None, reason: None };
        self.store.commit(&PolicyWrite { mode: Some(mode), domains: Vec::new(), actions: vec![action] }).await?;
        {
            let mut inner = self.write();
            inner.mode = mode;
            inner.generation += 1;
        }
        self.changed.send_modify(|g| *g += 1);
        Ok(true)
    }

    /// Apply an operator's change to a domain; flushed before it returns. Returns the record
    /// and whether anything changed (re-applying the same is idempotent).
    pub async fn apply(
        &self,
        domain: &Domain,
        change: Change,
        who: &str,
        reason: Option<&str>,
    ) -> Result<(DomainRecord, bool), StorageError> {
        self.apply_expecting(domain, change, who, reason, None).await.map_err(ChangeError::storage)
    }

    /// [`Policy::apply`], refused as stale when `expect` is given and the policy's
    /// generation is no longer it (the change a dry run judged is no longer what it would do).
    pub async fn apply_expecting(
        &self,
        domain: &Domain,
        change: Change,
        who: &str,
        reason: Option<&str>,
        expect: Option<u64>,
    ) -> Result<(DomainRecord, bool), ChangeError> {
        let _one = self.writing.lock().await;
        let now = now_ms();
        let (rec, changed) = {
            let inner = self.inner.read().unwrap();
            inner.expect(expect)?;
            next_record(inner.domains.get(domain.as_str()), domain, &change, who, reason, now)
        };
        if changed {
            let action = match &change {
                Change::Approve => "approve".to_owned(),
                Change::Block { expires_ms: Some(t) } => format!("block until {}", crate::types::fmt_utc(*t)),
                Change::Block { expires_ms: None } => "block".to_owned(),
                Change::Blacklist { source } => format!("blacklist (source {source})"),
                Change::Unblock => "unblock".to_owned(),
            };
            let action =
                PolicyAction { time_ms: now, who: who.into(), action, domain: Some(domain.to_string()), reason: reason.map(str::to_owned) };
            self.store.commit(&PolicyWrite { mode: None, domains: vec![rec.clone()], actions: vec![action] }).await?;
            self.put_in_memory(std::slice::from_ref(&rec));
            self.changed.send_modify(|g| *g += 1);
        }
        Ok((rec, changed))
    }

    /// Blacklist many domains at once (an imported list): one batch, one flush. Returns the
    /// domains newly blacklisted and those that already were.
    pub async fn blacklist_many(
        &self,
        entries: &[(Domain, Option<String>)],
        source: &str,
        who: &str,
    ) -> Result<(Vec<String>, Vec<String>), StorageError> {
        self.blacklist_many_expecting(entries, source, who, None).await.map_err(ChangeError::storage)
    }

    /// [`Policy::blacklist_many`], refused as stale when `expect` is given and the policy's
    /// generation is no longer it.
    pub async fn blacklist_many_expecting(
        &self,
        entries: &[(Domain, Option<String>)],
        source: &str,
        who: &str,
        expect: Option<u64>,
    ) -> Result<(Vec<String>, Vec<String>), ChangeError> {
        let _one = self.writing.lock().await;
        let now = now_ms();
        let (records, unchanged) = {
            let inner = self.inner.read().unwrap();
            inner.expect(expect)?;
            import_plan(|d| inner.domains.get(d), entries, source, who, now)
        };
        let records: Vec<DomainRecord> = records.into_iter().map(|p| p.after).collect();
        let added: Vec<String> = records.iter().map(|r| r.domain.clone()).collect();
        let already: Vec<String> = unchanged.into_iter().map(|r| r.domain).collect();
        if !records.is_empty() {
            let actions = records
                .iter()
                .map(|r| PolicyAction {
                    time_ms: now,
                    who: who.into(),
                    action: format!("blacklist (imported from {source})"),
                    domain: Some(r.domain.clone()),
                    reason: r.reason.clone(),
                })
                .collect();
            let w = PolicyWrite { mode: None, domains: records, actions };
            self.store.commit(&w).await?;
            let records = w.domains;
            self.put_in_memory(&records);
            self.changed.send_modify(|g| *g += 1);
        }
        Ok((added, already))
    }

    /// Run `f` while no operator change of this node is in flight. Another node's decisions
    /// are read and applied inside it: a change committed here between the read and its
    /// application would otherwise be overwritten in memory by the older read.
    pub async fn between_changes<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let _one = self.writing.lock().await;
        f.await
    }

    /// Decisions another node made (read back from the shared store) take effect here: each
    /// record keeps this node's counters; with `mode`, the mode too. Nothing is written (the
    /// store is where they came from). Returns the records that changed, as they are now.
    pub fn apply_remote(&self, mode: Option<Mode>, decisions: &[DomainRecord]) -> Vec<DomainRecord> {
        let mut changed = Vec::new();
        let mode_changed = {
            let mut inner = self.write();
            for d in decisions {
                let was_blacklisted;
                let now = match inner.domains.get_mut(&d.domain) {
                    Some(rec) => {
                        let before = standing(rec);
                        was_blacklisted = rec.state == DomainState::Blacklisted;
                        rec.take_decision(d);
                        if standing(rec) == before {
                            continue;
                        }
                        rec.clone()
                    }
                    None => {
                        was_blacklisted = false;
                        let mut rec = DomainRecord { domain: d.domain.clone(), ..Default::default() };
                        rec.take_decision(d);
                        inner.domains.insert(rec.domain.clone(), rec.clone());
                        rec
                    }
                };
                inner.blacklisted = inner.blacklisted + usize::from(now.state == DomainState::Blacklisted) - usize::from(was_blacklisted);
                changed.push(now);
            }
            let mode_changed = mode.is_some_and(|m| m != inner.mode);
            if let Some(m) = mode {
                inner.mode = m;
            }
            if mode_changed || !changed.is_empty() {
                inner.generation += 1;
            }
            mode_changed
        };
        if mode_changed || !changed.is_empty() {
            self.changed.send_modify(|g| *g += 1);
        }
        changed
    }

    /// Records that are on disk take effect.
    fn put_in_memory(&self, records: &[DomainRecord]) {
        let mut inner = self.write();
        inner.generation += 1;
        for rec in records {
            let was = inner.domains.insert(rec.domain.clone(), rec.clone()).is_some_and(|r| r.state == DomainState::Blacklisted);
            inner.blacklisted = inner.blacklisted + usize::from(rec.state == DomainState::Blacklisted) - usize::from(was);
        }
    }

    /// A verified domain waiting for the operator (approval mode): listed as pending.
    /// Returns the record when it newly became pending.
    pub fn mark_pending(&self, domain: &Domain) -> Option<DomainRecord> {
        let rec = {
            let mut inner = self.write();
            let rec = inner
                .domains
                .entry(domain.to_string())
                .or_insert_with(|| DomainRecord { domain: domain.to_string(), ..Default::default() });
            if rec.state != DomainState::Unknown {
                return None;
            }
            rec.state = DomainState::Pending;
            rec.when_ms = Some(now_ms());
            rec.clone()
        };
        if let Err(e) = self.store.put_domain(&rec, Some(DomainState::Unknown)) {
            tracing::error!("store: {e}");
        }
        self.changed.send_modify(|g| *g += 1);
        Some(rec)
    }

    /// Note a domain that authenticated on a stream (counters; persisted by the periodic
    /// flush): its record is created if it has none. Never called for mere claims.
    pub fn note(&self, domain: &str, update: impl FnOnce(&mut DomainRecord)) {
        let rec = {
            let mut inner = self.write();
            let rec =
                inner.domains.entry(domain.to_owned()).or_insert_with(|| DomainRecord { domain: domain.to_owned(), ..Default::default() });
            let now = now_ms();
            rec.first_seen_ms.get_or_insert(now);
            rec.last_seen_ms = Some(now);
            update(rec);
            rec.clone()
        };
        if let Err(e) = self.store.put_domain(&rec, None) {
            tracing::error!("store: {e}");
        }
    }

    /// Blocks whose time is up: persist the return to the previous state. Returns them.
    pub fn expire_blocks(&self) -> Vec<String> {
        let now = now_ms();
        let expired: Vec<DomainRecord> = {
            let mut inner = self.write();
            let mut out = Vec::new();
            for rec in inner.domains.values_mut() {
                if rec.state == DomainState::Blocked && rec.expires_ms.is_some_and(|t| t <= now) {
                    rec.state = rec.previous;
                    rec.expires_ms = None;
                    rec.when_ms = Some(now);
                    rec.who = Some("drawbridge (block expired)".into());
                    out.push(rec.clone());
                }
            }
            if !out.is_empty() {
                inner.generation += 1;
            }
            out
        };
        for rec in &expired {
            let _ = self.store.put_domain(rec, Some(DomainState::Blocked));
            let _ = self.store.log_action(&PolicyAction {
                time_ms: now,
                who: "drawbridge".into(),
                action: "block expired".into(),
                domain: Some(rec.domain.clone()),
                reason: None,
            });
        }
        if !expired.is_empty() {
            self.changed.send_modify(|g| *g += 1);
        }
        expired.into_iter().map(|r| r.domain).collect()
    }
}

impl Inner {
    /// Refused when a generation is expected and the policy has moved on from it.
    fn expect(&self, expect: Option<u64>) -> Result<(), ChangeError> {
        match expect {
            Some(previewed) if previewed != self.generation => Err(ChangeError::Stale { previewed, now: self.generation }),
            _ => Ok(()),
        }
    }

    /// An empty copy, room made for `n` records (allocated before the lock is taken: the
    /// map never grows, nor rehashes, under it).
    fn with_room(n: usize) -> Inner {
        Inner { mode: Mode::Open, domains: HashMap::with_capacity(n), blacklisted: 0, listed: HashMap::new(), generation: 0 }
    }

    /// Into `snap`, what every judgement reads whatever the domain: the mode,
    /// whether any blacklist entry exists, the generation.
    fn copy_scalars(&self, snap: &mut Inner) {
        (snap.mode, snap.blacklisted, snap.generation) = (self.mode, self.blacklisted, self.generation);
    }

    /// Into `snap`, what the decision reads of `d`: its record, the blacklist entries among
    /// its parents, its listings. A parent that is not a blacklist entry is never read.
    fn copy_facts(&self, d: &str, snap: &mut Inner) {
        for (i, s) in suffixes(d).enumerate() {
            if i > 0 && self.blacklisted == 0 {
                break;
            }
            if snap.domains.contains_key(s) {
                continue;
            }
            if let Some(r) = self.domains.get(s).filter(|r| i == 0 || r.state == DomainState::Blacklisted) {
                snap.domains.insert(s.to_owned(), r.clone());
            }
        }
        if let Some(l) = self.listed.get(d) {
            snap.listed.insert(d.to_owned(), l.clone());
        }
    }

    /// The facts about `d` as the decision sees them.
    fn with_facts<T>(&self, d: &str, security: Option<&crate::types::Security>, f: impl FnOnce(&Facts<'_>) -> T) -> T {
        self.view(None).with_facts(d, security, now_ms(), f)
    }

    /// What `p` would write, judged against the policy as it is.
    fn plan(&self, p: &Proposal, who: &str, now: u64) -> Plan {
        match p {
            Proposal::Domain { domain, change, reason } => {
                let before = self.domains.get(domain.as_str());
                let (after, changed) = next_record(before, domain, change, who, reason.as_deref(), now);
                if changed {
                    Plan { records: vec![Planned { before: before.cloned(), after }], ..Default::default() }
                } else {
                    Plan { unchanged: vec![after], ..Default::default() }
                }
            }
            Proposal::Mode(m) => Plan { mode: Some((self.mode, *m)), ..Default::default() },
            Proposal::Import { entries, source } => {
                let (records, unchanged) = import_plan(|d| self.domains.get(d), entries, source, who, now);
                Plan { records, unchanged, ..Default::default() }
            }
        }
    }
}

/// The policy as the decision reads it: the mode, each domain's record (the live ones, or
/// those a proposal would write in their place), the listings.
struct View<'a> {
    mode: Mode,
    domains: &'a HashMap<String, DomainRecord>,
    /// Records a proposal would write, in place of the live ones.
    over: Option<&'a HashMap<&'a str, &'a DomainRecord>>,
    /// Whether any record is a blacklist entry (else no suffix walk).
    any_blacklisted: bool,
    listed: &'a HashMap<String, Vec<Listed>>,
}

impl View<'_> {
    fn lookup(&self, d: &str) -> Option<&DomainRecord> {
        self.over.and_then(|o| o.get(d).copied()).or_else(|| self.domains.get(d))
    }

    fn with_facts<T>(&self, d: &str, security: Option<&crate::types::Security>, now: u64, f: impl FnOnce(&Facts<'_>) -> T) -> T {
        let blacklisted_by = if self.any_blacklisted {
            suffixes(d).find_map(|s| {
                self.lookup(s).filter(|r| r.state == DomainState::Blacklisted).map(|r| BlacklistHit {
                    entry: s,
                    reason: r.reason.as_deref(),
                    source: r.source.as_deref(),
                })
            })
        } else {
            None
        };
        let own = self.lookup(d).map(standing);
        // No feed lists anything (the common case): no lookup per stream.
        let listings = if self.listed.is_empty() { &[][..] } else { self.listed.get(d).map_or(&[][..], Vec::as_slice) };
        f(&Facts { mode: self.mode, domain: d, own: own.as_ref(), blacklisted_by, listings, security, now_ms: now })
    }
}

/// The policy in force and as it would be once a [`Plan`] is applied, side by side, both
/// judged by [`super::decision::decide_by`] at one instant. Nothing is written, published or
/// enforced: this is what a dry run reads.
pub struct WhatIf<'a> {
    /// The policy's facts about the domains asked for, copied.
    inner: &'a Inner,
    plan: &'a Plan,
    /// The planned records by domain.
    over: HashMap<&'a str, &'a DomainRecord>,
    now: u64,
    /// The domains whose facts were copied: no other may be judged.
    #[cfg(debug_assertions)]
    asked: std::collections::HashSet<&'a str>,
}

impl<'a> WhatIf<'a> {
    /// The plan being judged.
    pub fn plan(&self) -> &Plan {
        self.plan
    }

    /// The policy's generation the facts were copied at: a change asked for with it is
    /// refused if the policy has changed since.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The verdict now, and the rule that gives it.
    pub fn before(&self, d: &str) -> (Verdict, super::Rule) {
        self.asked(d);
        self.inner.view(None).with_facts(d, None, self.now, super::decision::decide_by)
    }

    fn asked(&self, _d: &str) {
        #[cfg(debug_assertions)]
        assert!(self.asked.contains(_d), "a dry run judged {_d}, whose facts it did not ask for");
    }

    /// The verdict once the plan is applied, and the rule that would give it.
    pub fn after(&self, d: &str) -> (Verdict, super::Rule) {
        self.asked(d);
        let mut view = self.inner.view(Some(&self.over));
        view.mode = self.plan.mode.map_or(view.mode, |(_, m)| m);
        view.with_facts(d, None, self.now, super::decision::decide_by)
    }
}

impl Inner {
    /// The policy in force, or with `over` in place of the records it names.
    fn view<'a>(&'a self, over: Option<&'a HashMap<&'a str, &'a DomainRecord>>) -> View<'a> {
        let planned_blacklist = over.is_some_and(|o| o.values().any(|r| r.state == DomainState::Blacklisted));
        View {
            mode: self.mode,
            domains: &self.domains,
            over,
            any_blacklisted: self.blacklisted > 0 || planned_blacklist,
            listed: &self.listed,
        }
    }
}

impl Policy {
    /// A dry run of `proposal`, judging `domains` (and those the proposal names): what the
    /// decision reads of them is copied ([`Policy::snapshot`], the read lock held a chunk at a
    /// time, never while judging), planned by the code that applies it ([`next_record`], the
    /// import's planner, the mode), then `judge` reads the policy before and after at `now`
    /// on the copy, with no lock held: streams' verdicts and the recorder's writes go on.
    /// Nothing is written, logged, announced or enforced.
    pub fn what_if<T>(&self, proposal: &Proposal, who: &str, now: u64, domains: &[&str], judge: impl FnOnce(&WhatIf<'_>) -> T) -> T {
        let mut asked = proposal.domains();
        asked.extend_from_slice(domains);
        let snap = self.snapshot(&asked, SNAPSHOT_CHUNK, |_| {});
        let plan = snap.plan(proposal, who, now);
        let over = plan.records.iter().map(|p| (p.after.domain.as_str(), &p.after)).collect();
        judge(&WhatIf {
            inner: &snap,
            plan: &plan,
            over,
            now,
            #[cfg(debug_assertions)]
            asked: asked.iter().copied().collect(),
        })
    }

    /// What the decision reads of `domains`, copied: their records, the blacklist entries
    /// among their parents, their listings, the mode. The read lock is taken for `chunk`
    /// domains at a time (`between` runs in between, with no lock held); when the policy
    /// changed in between (its generation moved) the copy is begun again, the last try
    /// under one hold, so the copy is the policy at one generation.
    fn snapshot(&self, domains: &[&str], chunk: usize, mut between: impl FnMut(usize)) -> Inner {
        let mut snap = Inner::with_room(domains.len());
        for attempt in 1..=SNAPSHOT_TRIES {
            let chunk = if attempt == SNAPSHOT_TRIES { domains.len().max(1) } else { chunk.max(1) };
            let parts: Vec<&[&str]> = if domains.is_empty() { vec![&[]] } else { domains.chunks(chunk).collect() };
            // What a try that stopped had copied, let go of with no lock held.
            snap.domains.clear();
            snap.listed.clear();
            let mut moved = false;
            for (i, part) in parts.into_iter().enumerate() {
                if i > 0 {
                    between(i);
                    // Writers first (bounded: a steady stream of them does not stop the copy).
                    let t0 = std::time::Instant::now();
                    while self.writers.load(std::sync::atomic::Ordering::SeqCst) > 0 && t0.elapsed() < WRITERS_GAP {
                        std::thread::yield_now();
                    }
                }
                let inner = self.inner.read().unwrap();
                if i == 0 {
                    inner.copy_scalars(&mut snap);
                } else if inner.generation != snap.generation {
                    moved = true;
                    break;
                }
                for d in part {
                    inner.copy_facts(d, &mut snap);
                }
            }
            if !moved {
                return snap;
            }
        }
        unreachable!("the last try is taken under one hold")
    }
}

fn standing(r: &DomainRecord) -> Standing {
    Standing { state: r.state, reason: r.reason.clone(), expires_ms: r.expires_ms, previous: r.previous }
}

/// The record as it stands now (an expired block shown as lifted).
fn effective_record(r: &DomainRecord, now: u64) -> DomainRecord {
    let eff = standing(r).effective(now);
    if eff == r.state { r.clone() } else { DomainRecord { state: eff, expires_ms: None, ..r.clone() } }
}

impl crate::proto::machine::PolicyView for Policy {
    /// What a stream asks when a domain claims or authenticates: decided, and counted.
    fn verdict(&self, remote: &Domain) -> Verdict {
        let (verdict, rule) = self.inner.read().unwrap().with_facts(remote.as_str(), None, super::decision::decide_by);
        let d = match verdict {
            Verdict::Allow => 0,
            Verdict::Hold => 1,
            Verdict::Refuse(_) => 2,
        };
        let r = super::decision::Rule::ALL.iter().position(|x| *x == rule).unwrap_or(0);
        self.decisions[d][r].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        verdict
    }
}

impl Policy {
    /// The decisions streams asked for since start: (decision, the rule that made it, how many).
    pub fn decisions(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (d, name) in ["allow", "hold", "refuse"].into_iter().enumerate() {
            for (r, rule) in super::decision::Rule::ALL.into_iter().enumerate() {
                let n = self.decisions[d][r].load(std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    out.push((name, rule.as_str(), n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtbl::report::Listing;
    use crate::rtbl::{Action, Change as R, Entry, FeedSettings};

    fn feed(service: &str, action: Action) -> FeedSettings {
        FeedSettings { service: service.into(), node: "spam_source_domains".into(), action, max_entries: 10 }
    }

    fn added(d: &str) -> R {
        let listing = Listing { reason: None, text: Some("bots".into()), block_strangers: false };
        R::Added(Entry { domain: Domain::parse(d).unwrap(), listing, first_seen_ms: 1, last_seen_ms: 1 })
    }

    /// The policy's store, in memory: what is written is kept (this module sits below the
    /// sled store).
    #[derive(Default)]
    struct Mem(std::sync::Mutex<Vec<DomainRecord>>);

    impl PolicyStore for Mem {
        fn mode(&self) -> Result<Option<Mode>, StorageError> {
            Ok(None)
        }
        fn domains(&self) -> Result<Vec<DomainRecord>, StorageError> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn put_domain(&self, rec: &DomainRecord, _: Option<DomainState>) -> Result<(), StorageError> {
            let mut v = self.0.lock().unwrap();
            v.retain(|x| x.domain != rec.domain);
            v.push(rec.clone());
            Ok(())
        }
        fn log_action(&self, _: &PolicyAction) -> Result<(), StorageError> {
            Ok(())
        }
        fn commit<'a>(
            &'a self,
            w: &'a PolicyWrite,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'a>> {
            for r in &w.domains {
                let _ = self.put_domain(r, None);
            }
            Box::pin(async { Ok(()) })
        }
    }

    /// Listings reach the live verdict and its trace; a retract lifts only that feed's
    /// listing; the operator's approve wins.
    #[tokio::test]
    async fn listings_change_the_verdict_and_the_operator_wins() {
        let store = Arc::new(Mem::default());
        let p = Policy::load(store.clone(), Mode::Open).unwrap();
        let d = Domain::parse("spam.example").unwrap();
        let (block, flag) = (feed("a.test", Action::Block), feed("b.test", Action::Flag));
        let seen = p.subscribe();
        p.apply_rtbl(&block, &added("spam.example"));
        p.apply_rtbl(&flag, &added("spam.example"));
        assert!(seen.has_changed().unwrap(), "held streams are woken");
        assert!(matches!(p.verdict(&d), Verdict::Refuse(w) if w.contains("listed as a spam source by a.test") && w.ends_with(": bots")));
        let t = p.explain(&d, None);
        assert_eq!((t.verdict.clone(), t.decided_by), (p.verdict(&d), crate::policy::Rule::Rtbl));
        assert_eq!(t.marks, ["listed by a.test: bots", "listed by b.test: bots"]);
        p.apply_rtbl(&block, &R::Retracted { domain: d.clone(), at_ms: 2 });
        assert_eq!(p.verdict(&d), Verdict::Allow);
        assert_eq!(p.listings("spam.example").len(), 1, "the flag stays");
        p.apply_rtbl(&block, &added("spam.example"));
        p.apply(&d, Change::Approve, "op", None).await.unwrap();
        assert_eq!(p.verdict(&d), Verdict::Allow, "approve overrides the listing");
        assert_eq!(store.domains().unwrap()[0].state, DomainState::Approved, "the approve was written");
        let strangers = feed("c.test", Action::Strangers);
        p.apply_rtbl(&strangers, &added("other.example"));
        let o = Domain::parse("other.example").unwrap();
        assert!(p.strangers(&o, crate::policy::Inbound::Message, || false).is_some_and(|w| w.contains("by c.test")));
        assert_eq!(p.strangers(&d, crate::policy::Inbound::Message, || false), None, "approved");
        p.apply_rtbl(&block, &R::Cleared { at_ms: 3 });
        p.apply_rtbl(&flag, &R::Cleared { at_ms: 3 });
        assert!(p.listings("spam.example").is_empty());
    }

    /// A hold listing sends a domain to the approval inbox; its retract takes it out again
    /// unless something else still holds it (approval mode, another hold feed).
    #[tokio::test]
    async fn a_retract_lifts_only_the_hold_the_listing_caused() {
        let store = Arc::new(Mem::default());
        let p = Policy::load(store.clone(), Mode::Open).unwrap();
        let (hold, hold2) = (feed("a.test", Action::Hold), feed("b.test", Action::Hold));
        let d = Domain::parse("spam.example").unwrap();
        p.apply_rtbl(&hold, &added("spam.example"));
        p.apply_rtbl(&hold2, &added("spam.example"));
        assert_eq!(p.verdict(&d), Verdict::Hold);
        assert!(p.mark_pending(&d).is_some(), "the engine lists it as pending, as in approval mode");
        assert!(p.apply_rtbl(&hold, &R::Retracted { domain: d.clone(), at_ms: 2 }).is_empty(), "b.test still holds it");
        assert_eq!(p.record("spam.example").unwrap().state, DomainState::Pending);
        let lifted = p.apply_rtbl(&hold2, &R::Cleared { at_ms: 3 });
        assert_eq!(lifted.len(), 1);
        assert_eq!(p.record("spam.example").unwrap().state, DomainState::Unknown);
        assert_eq!(store.domains().unwrap()[0].state, DomainState::Unknown, "written");
        assert_eq!(p.verdict(&d), Verdict::Allow);
        // In approval mode the domain stays pending: the mode holds it, not the listing.
        p.set_mode(Mode::Approval, "op").await.unwrap();
        let e = Domain::parse("other.example").unwrap();
        p.apply_rtbl(&hold, &added("other.example"));
        p.mark_pending(&e);
        assert!(p.apply_rtbl(&hold, &R::Retracted { domain: e.clone(), at_ms: 4 }).is_empty());
        assert_eq!(p.record("other.example").unwrap().state, DomainState::Pending);
        // The operator keeps a retracted listing's block: an operator decision with provenance.
        let l = Listed { service: "a.test".into(), node: "n".into(), action: Action::Block, reason: "bots".into(), block_strangers: false };
        let (rec, changed) = p.keep_listing(&e, &l, "op").await.unwrap();
        assert!(changed && rec.state == DomainState::Blocked);
        assert_eq!(rec.reason.as_deref(), Some("kept after a listing by a.test (node n): bots"));
        let t = p.explain(&e, None);
        assert_eq!(t.decided_by, crate::policy::Rule::OperatorDecision);
        assert!(matches!(t.verdict, Verdict::Refuse(ref w) if w.contains("blocked: kept after a listing by a.test")));
    }

    /// A dry run judges with the decision function on the policy as it would be — blacklist
    /// entries covering subdomains, timed blocks, modes, approvals — and changes nothing:
    /// no record in memory or in the store, no wake-up of held streams.
    #[tokio::test]
    async fn a_dry_run_judges_the_change_and_changes_nothing() {
        let store = Arc::new(Mem::default());
        let p = Policy::load(store.clone(), Mode::Open).unwrap();
        let d = |s: &str| Domain::parse(s).unwrap();
        p.apply(&d("friend.example"), Change::Approve, "op", None).await.unwrap();
        p.apply(&d("flood.example"), Change::Block { expires_ms: None }, "op", Some("flood")).await.unwrap();
        let seen = p.subscribe();
        let now = now_ms();
        let kind = |v: &Verdict| match v {
            Verdict::Allow => "allow",
            Verdict::Hold => "hold",
            Verdict::Refuse(_) => "refuse",
        };
        let judge = |prop: Proposal, domains: &[&str]| -> (Plan, Vec<(String, String)>) {
            p.what_if(&prop, "op", now, domains, |w| {
                let v = domains.iter().map(|x| (kind(&w.before(x).0).to_owned(), kind(&w.after(x).0).to_owned())).collect();
                (w.plan().clone(), v)
            })
        };
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());

        // A blacklist entry covers its subdomains; an approved subdomain is refused too.
        let prop = Proposal::Domain {
            domain: d("evil.example"),
            change: Change::Blacklist { source: "operator".into() },
            reason: Some("spam".into()),
        };
        let (plan, v) = judge(prop, &["chat.evil.example", "evil.example", "friend.example"]);
        assert_eq!(v, [pair("allow", "refuse"), pair("allow", "refuse"), pair("allow", "allow")]);
        assert_eq!(plan.records.len(), 1);
        assert_eq!((plan.records[0].before.clone(), plan.records[0].after.state), (None, DomainState::Blacklisted));
        assert!(plan.changes());
        let reason = p.what_if(&plan_blacklist(), "op", now, &["chat.evil.example"], |w| w.after("chat.evil.example").0);
        assert_eq!(reason, Verdict::Refuse("chat.evil.example is blacklisted through evil.example: spam".into()));

        // A timed block refuses now; unblocking returns to what the domain was.
        let prop = Proposal::Domain { domain: d("friend.example"), change: Change::Block { expires_ms: Some(now + 60_000) }, reason: None };
        let (plan, v) = judge(prop, &["friend.example"]);
        assert_eq!(v, [pair("allow", "refuse")]);
        assert_eq!((plan.records[0].after.expires_ms, plan.records[0].after.previous), (Some(now + 60_000), DomainState::Approved));
        let (_, v) = judge(Proposal::Domain { domain: d("flood.example"), change: Change::Unblock, reason: None }, &["flood.example"]);
        assert_eq!(v, [pair("refuse", "allow")]);

        // Modes: allowlist refuses whoever is not approved; approval holds them.
        let (plan, v) = judge(Proposal::Mode(Mode::Allowlist), &["stranger.example", "friend.example", "flood.example"]);
        assert_eq!(v, [pair("allow", "refuse"), pair("allow", "allow"), pair("refuse", "refuse")]);
        assert_eq!(plan.mode, Some((Mode::Open, Mode::Allowlist)));
        let (_, v) = judge(Proposal::Mode(Mode::Approval), &["stranger.example"]);
        assert_eq!(v, [pair("allow", "hold")]);
        // Unblocking in approval mode holds the domain for approval; approving allows it.
        assert!(!seen.has_changed().unwrap(), "the dry runs before woke nobody");
        p.set_mode(Mode::Approval, "op").await.unwrap();
        let seen = p.subscribe();
        let (_, v) = judge(Proposal::Domain { domain: d("flood.example"), change: Change::Unblock, reason: None }, &["flood.example"]);
        assert_eq!(v, [pair("refuse", "hold")]);
        let (_, v) =
            judge(Proposal::Domain { domain: d("stranger.example"), change: Change::Approve, reason: None }, &["stranger.example"]);
        assert_eq!(v, [pair("hold", "allow")]);

        // An import: each entry once, those already blacklisted apart, subdomains covered.
        assert!(!seen.has_changed().unwrap(), "the dry runs before woke nobody");
        p.apply(&d("old.example"), Change::Blacklist { source: "operator".into() }, "op", Some("x")).await.unwrap();
        let written = store.domains().unwrap().len();
        let seen = p.subscribe();
        let entries = vec![(d("spam.example"), None), (d("old.example"), None), (d("spam.example"), Some("twice".into()))];
        let (plan, v) = judge(Proposal::Import { entries, source: "list".into() }, &["a.spam.example", "friend.example"]);
        assert_eq!(plan.records.iter().map(|r| r.after.domain.as_str()).collect::<Vec<_>>(), ["spam.example"]);
        assert_eq!(plan.records[0].after.reason.as_deref(), Some("listed in list"));
        assert_eq!(plan.unchanged.iter().map(|r| r.domain.as_str()).collect::<Vec<_>>(), ["old.example", "spam.example"]);
        assert_eq!(v, [pair("hold", "refuse"), pair("allow", "allow")]);

        // The same standing again changes nothing.
        let (plan, _) = judge(Proposal::Domain { domain: d("friend.example"), change: Change::Approve, reason: None }, &[]);
        assert!(!plan.changes() && plan.records.is_empty() && plan.unchanged.len() == 1);

        // Nothing was written, applied or announced.
        assert_eq!(store.domains().unwrap().len(), written);
        assert!(p.record("spam.example").is_none() && p.record("evil.example").is_none());
        assert_eq!(p.record("friend.example").unwrap().state, DomainState::Approved);
        assert_eq!(p.mode(), Mode::Approval);
        assert!(!seen.has_changed().unwrap(), "held streams were not woken");
    }

    fn plan_blacklist() -> Proposal {
        Proposal::Domain {
            domain: Domain::parse("evil.example").unwrap(),
            change: Change::Blacklist { source: "operator".into() },
            reason: Some("spam".into()),
        }
    }

    /// What apply writes is what a dry run plans ([`next_record`] for both).
    #[tokio::test]
    async fn apply_writes_what_the_dry_run_planned() {
        let store = Arc::new(Mem::default());
        let p = Policy::load(store.clone(), Mode::Open).unwrap();
        let now = now_ms();
        let prop = plan_blacklist();
        let planned = p.what_if(&prop, "op", now, &[], |w| w.plan().records[0].after.clone());
        let Proposal::Domain { domain, change, reason } = prop else { unreachable!() };
        let (rec, changed) = p.apply(&domain, change, "op", reason.as_deref()).await.unwrap();
        assert!(changed);
        assert_eq!(DomainRecord { when_ms: rec.when_ms, ..planned }, rec);
    }

    /// A dry run copies what it judges by and judges with no lock held: while it judges a
    /// large window, a verification noted (the write lock) and a stream's verdict on another
    /// thread complete. (Before, the judging held the read lock, the note waited behind it
    /// and the verdict behind the note.)
    #[tokio::test]
    async fn a_dry_run_judges_without_holding_the_policy() {
        let store = Arc::new(Mem::default());
        let p = Arc::new(Policy::load(store.clone(), Mode::Open).unwrap());
        let names: Vec<String> = (0..3000).map(|i| format!("d{i}.example")).collect();
        for n in &names {
            p.note(n, |_| {});
        }
        p.apply(&Domain::parse("example").unwrap(), Change::Blacklist { source: "operator".into() }, "op", Some("all")).await.unwrap();
        let asked: Vec<&str> = names.iter().map(String::as_str).collect();
        let (others_done, refused) = p.what_if(&Proposal::Mode(Mode::Allowlist), "op", now_ms(), &asked, |w| {
            // Mid-way: another thread notes a verification and asks a verdict.
            let (tx, rx) = std::sync::mpsc::channel();
            let q = p.clone();
            let t = std::thread::spawn(move || {
                q.note("late.example", |_| {});
                let v = q.verdict(&Domain::parse("d1.example").unwrap());
                let _ = tx.send(v);
            });
            let done = rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok();
            let refused = asked.iter().filter(|d| matches!(w.after(d).0, Verdict::Refuse(_))).count();
            (done, (refused, t))
        });
        let (refused, t) = refused;
        t.join().unwrap();
        assert!(others_done, "note() and verdict() waited for the dry run");
        assert_eq!(refused, asked.len(), "judged on the copy: every one is blacklisted through example");
        assert!(p.record("late.example").is_some());
    }

    /// The copy is taken a chunk at a time, no lock held in between; when the policy changes
    /// in between (here a listing arrives) the copy is begun again, so it is the policy at
    /// one generation, the listing in it.
    #[tokio::test]
    async fn a_snapshot_across_a_change_begins_again() {
        let p = Policy::load(Arc::new(Mem::default()), Mode::Open).unwrap();
        let names: Vec<String> = (0..10).map(|i| format!("d{i}.example")).collect();
        for n in &names {
            p.note(n, |_| {});
        }
        let asked: Vec<&str> = names.iter().map(String::as_str).collect();
        let block = feed("a.test", Action::Block);
        let mut calls = 0;
        let snap = p.snapshot(&asked, 2, |_| {
            calls += 1;
            // No lock is held here: a writer gets in.
            p.note("between.example", |_| {});
            if calls == 1 {
                p.apply_rtbl(&block, &added("d0.example"));
            }
        });
        assert_eq!(calls, 1 + 4, "the first try stopped at the change, the second went through");
        assert_eq!(snap.generation, p.inner.read().unwrap().generation);
        assert_eq!(snap.domains.len(), 10);
        assert_eq!(snap.listed.get("d0.example").map(Vec::len), Some(1), "the copy has the listing that came in between");
        // Always changing: the last try is taken under one hold.
        let mut calls = 0;
        let snap = p.snapshot(&asked, 2, |_| {
            calls += 1;
            p.apply_rtbl(&block, &added(&format!("e{calls}.example")));
        });
        assert_eq!(snap.generation, p.inner.read().unwrap().generation);
        assert_eq!(snap.domains.len(), 10);
    }

    /// A change sent with the generation its dry run saw is refused once the policy moved
    /// on — an operator's change, a listing, an expired block — and made when it has not;
    /// without one it is made as ever. A domain entering the approval inbox is no change.
    #[tokio::test]
    async fn a_change_after_a_stale_preview_is_refused() {
        let store = Arc::new(Mem::default());
        let p = Policy::load(store.clone(), Mode::Approval).unwrap();
        let d = |s: &str| Domain::parse(s).unwrap();
        let generation = || p.what_if(&Proposal::Mode(Mode::Open), "op", now_ms(), &[], |w| w.generation());
        let g = generation();
        p.mark_pending(&d("new.example"));
        p.note("seen.example", |_| {});
        assert_eq!(generation(), g, "a pending mark and a sighting change no verdict");
        p.apply(&d("x.example"), Change::Block { expires_ms: None }, "other op", None).await.unwrap();
        let stale = p.apply_expecting(&d("y.example"), Change::Approve, "op", None, Some(g)).await;
        assert!(matches!(stale, Err(ChangeError::Stale { .. })), "{stale:?}");
        assert_eq!(stale.unwrap_err().to_string(), "the policy changed since the preview; review it again");
        assert!(p.record("y.example").is_none(), "nothing changed");
        assert!(matches!(p.set_mode_expecting(Mode::Open, "op", Some(g)).await, Err(ChangeError::Stale { .. })));
        assert!(matches!(p.blacklist_many_expecting(&[(d("z.example"), None)], "l", "op", Some(g)).await, Err(ChangeError::Stale { .. })));
        assert_eq!(p.mode(), Mode::Approval);
        let g = generation();
        p.apply_rtbl(&feed("a.test", Action::Block), &added("spam.example"));
        assert!(matches!(p.set_mode_expecting(Mode::Open, "op", Some(g)).await, Err(ChangeError::Stale { .. })), "a listing moved it");
        let g = generation();
        p.apply(&d("t.example"), Change::Block { expires_ms: Some(now_ms() - 1) }, "op", None).await.unwrap();
        let g2 = generation();
        assert_eq!(p.expire_blocks(), ["t.example"]);
        assert!(matches!(p.set_mode_expecting(Mode::Open, "op", Some(g2)).await, Err(ChangeError::Stale { .. })), "a block expired");
        assert_ne!(g, g2);
        let g = generation();
        assert!(p.apply_expecting(&d("y.example"), Change::Approve, "op", None, Some(g)).await.unwrap().1);
        assert!(p.apply(&d("w.example"), Change::Approve, "op", None).await.unwrap().1, "no generation: made as ever");
    }

    /// The mode in force again is no change: nothing written or logged, no wake-up, the
    /// generation as it was — as the dry run says.
    #[tokio::test]
    async fn the_same_mode_again_does_nothing() {
        #[derive(Default)]
        struct Counting(std::sync::atomic::AtomicUsize);
        impl PolicyStore for Counting {
            fn mode(&self) -> Result<Option<Mode>, StorageError> {
                Ok(None)
            }
            fn domains(&self) -> Result<Vec<DomainRecord>, StorageError> {
                Ok(Vec::new())
            }
            fn put_domain(&self, _: &DomainRecord, _: Option<DomainState>) -> Result<(), StorageError> {
                Ok(())
            }
            fn log_action(&self, _: &PolicyAction) -> Result<(), StorageError> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
            fn commit<'a>(
                &'a self,
                w: &'a PolicyWrite,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'a>> {
                let n = usize::from(w.mode.is_some()) + w.domains.len() + w.actions.len();
                self.0.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async { Ok(()) })
            }
        }
        let store = Arc::new(Counting::default());
        let p = Policy::load(store.clone(), Mode::Allowlist).unwrap();
        let seen = p.subscribe();
        let g = p.inner.read().unwrap().generation;
        let planned = p.what_if(&Proposal::Mode(Mode::Allowlist), "op", now_ms(), &[], |w| w.plan().changes());
        assert!(!planned, "the dry run says it changes nothing");
        assert!(!p.set_mode(Mode::Allowlist, "op").await.unwrap(), "unchanged");
        assert_eq!(store.0.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing written or logged");
        assert!(!seen.has_changed().unwrap(), "no stream woken");
        assert_eq!(p.inner.read().unwrap().generation, g);
        assert!(p.set_mode(Mode::Open, "op").await.unwrap());
        assert_eq!(store.0.load(std::sync::atomic::Ordering::SeqCst), 2, "the mode and its log entry");
        assert!(seen.has_changed().unwrap());
    }
}
