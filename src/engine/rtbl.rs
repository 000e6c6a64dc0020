//! The real-time blocklists in the running engine: the driver of the feeds' machines
//! ([`crate::rtbl::Feeds`]) and the task that persists the familiarity set.
//!
//! The driver decides nothing: it gives the machines what arrives (stanzas to the
//! subscriber's JID, from the router's [`crate::router::rtbl::FeedInbox`]), the time (their
//! deadline) and the reconnects of the streams to the services, and carries out what they
//! return — stanzas routed from the subscriber's JID, entry changes persisted then applied
//! to the policy, statuses persisted and announced. The sequence, the re-syncs (XEP-0060
//! §6.5 items after every reconnect and hourly) and the back-off are the machines'.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::domain::Domain;
use crate::events::Event;
use crate::router::rtbl::Reconnects;
use crate::rtbl::familiar::{Familiarity, Write};
use crate::rtbl::{Action, Change, FeedStatus, Feeds, Now, Output, service_domain};

/// Stanzas to the subscriber's JID waiting for the driver at most, in count and bytes
/// (beyond, the router drops and counts them): a service's burst of events, or a page of
/// items, with room to spare — and no more memory than that while the driver is behind.
pub(super) const INBOX: usize = 1024;
pub(super) const INBOX_BYTES: usize = 16 << 20;

/// What the driver needs besides the engine: the machines, warm, and its inbox.
pub(super) struct Parts {
    pub feeds: Feeds,
    pub inbox: crate::router::queue::QueueRx,
    pub reconnects: Arc<Reconnects>,
}

fn now() -> Now {
    Now { at: tokio::time::Instant::now().into_std(), unix_ms: crate::types::now_ms() }
}

/// How often a status that changed only in its counters is stored and announced: a
/// sender bumping a counter with every stanza costs no write per stanza.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// Run the feeds until shutdown.
pub(super) async fn drive(shared: Arc<Shared>, parts: Parts) {
    let Parts { mut feeds, mut inbox, reconnects } = parts;
    let mut statuses = Statuses::new(&feeds);
    let mut retracted = Retracted::load(&shared, &feeds);
    // Per service domain, the streams authorised (either way) that the feeds were told of;
    // each new one is a reconnect to them (which only a feed following the service acts
    // on: the streams the start's requests open come while it fetches).
    let mut known: HashMap<Domain, u64> = HashMap::new();
    let mut counters = tokio::time::interval(COUNTERS_EVERY);
    let out = feeds.start(now());
    carry(&shared, &feeds, &mut statuses, &mut retracted, out).await;
    loop {
        let deadline = feeds.deadline().map(tokio::time::Instant::from_std);
        let out = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            m = inbox.recv() => match m {
                Some(st) => feeds.stanza(now(), &st),
                None => break,
            },
            _ = reconnects.changed() => reconnected(&mut feeds, &mut known, reconnects.counts()),
            _ = sleep_until(deadline) => feeds.tick(now()),
            _ = counters.tick() => {
                statuses.flush(&shared);
                continue;
            }
        };
        carry(&shared, &feeds, &mut statuses, &mut retracted, out).await;
    }
    statuses.flush(&shared);
}

/// The streams authorised per service domain, against those the feeds were told of: the
/// feeds of a service whose domain has a new stream hear of the reconnect.
fn reconnected(feeds: &mut Feeds, known: &mut HashMap<Domain, u64>, counts: Vec<(Domain, u64)>) -> Vec<(usize, Output)> {
    let mut out = Vec::new();
    for (remote, n) in counts {
        let seen = known.entry(remote.clone()).or_insert(0);
        if n <= *seen {
            continue;
        }
        *seen = n;
        let services: Vec<String> =
            feeds.services().into_iter().filter(|s| service_domain(s) == remote.as_str()).map(str::to_owned).collect();
        for service in services {
            let resync = feeds.reconnected(now(), &service);
            if resync.iter().any(|(_, o)| matches!(o, Output::Send(_))) {
                tracing::info!("real-time blocklists: a new stream with {remote} is up; re-syncing the feeds of {service}");
            }
            out.extend(resync);
        }
    }
    out
}

/// The feeds' statuses as stored and announced. A change of state, entries or sync time
/// is stored and announced at once; one of the `ignored_*` counters alone waits for the
/// next [`COUNTERS_EVERY`] (or shutdown).
struct Statuses {
    saved: Vec<FeedStatus>,
    pending: Vec<Option<FeedStatus>>,
}

impl Statuses {
    fn new(feeds: &Feeds) -> Statuses {
        Statuses { saved: feeds.iter().map(|f| f.status().clone()).collect(), pending: feeds.iter().map(|_| None).collect() }
    }

    fn changed(&mut self, shared: &Shared, i: usize, status: FeedStatus) {
        let Some(saved) = self.saved.get(i) else { return };
        let counters_only = FeedStatus {
            ignored_foreign: saved.ignored_foreign,
            ignored_invalid: saved.ignored_invalid,
            ignored_over_limit: saved.ignored_over_limit,
            ignored_protected: saved.ignored_protected,
            ..status.clone()
        } == *saved;
        if counters_only {
            self.pending[i] = Some(status);
        } else {
            self.pending[i] = None;
            self.save(shared, i, status);
        }
    }

    fn flush(&mut self, shared: &Shared) {
        for i in 0..self.pending.len() {
            if let Some(status) = self.pending[i].take() {
                self.save(shared, i, status);
            }
        }
    }

    fn save(&mut self, shared: &Shared, i: usize, status: FeedStatus) {
        if let Err(e) = shared.store.rtbl_put_status(&status) {
            tracing::error!("store: the status of the feed {}/{} was not saved: {e}", status.service, status.node);
        }
        self.saved[i] = status.clone();
        let _ = shared.events.send(Event::Feed { status });
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The retracted records each feed keeps in the store, counted: pruned back to
/// `max_entries` only when they are a quarter over it, so that a service listing and
/// retracting one domain without end costs one scan of the feed per many retractions, not
/// one per event.
struct Retracted(Vec<usize>);

impl Retracted {
    fn load(shared: &Shared, feeds: &Feeds) -> Retracted {
        Retracted(feeds.iter().map(|f| shared.store.rtbl_retracted_count(&f.settings().key()).unwrap_or(0)).collect())
    }

    fn add(&mut self, shared: &Shared, i: usize, settings: &crate::rtbl::FeedSettings, n: usize) {
        let Some(count) = self.0.get_mut(i) else { return };
        *count += n;
        let max = settings.max_entries;
        if *count > max + (max / 4).max(16) {
            match shared.store.rtbl_prune_retracted(&settings.key(), max) {
                Ok(_) => *count = max.min(*count),
                Err(e) => tracing::error!("store: pruning the retracted entries of the feed {}: {e}", settings.key()),
            }
        }
    }
}

/// Carry out the machines' outputs, in order. A `block` feed's new listings close the
/// live streams of the domains now refused once the batch is applied (the operator's
/// block path, [`super::commands::enforce`]): a first sync of thousands of entries walks
/// the streams once, not per entry; an updated listing refuses nothing new.
async fn carry(shared: &Arc<Shared>, feeds: &Feeds, statuses: &mut Statuses, retracted: &mut Retracted, out: Vec<(usize, Output)>) {
    let mut block = false;
    // A sync or a clear is logged for the operator; single events at debug (a service
    // decides how often they come).
    let mut notable = false;
    // Per feed: entries listed (added or updated) and lifted (retracted or cleared), for one
    // log line and one pruning of the retracted records.
    let mut counts: HashMap<usize, (usize, usize)> = HashMap::new();
    for (i, o) in out {
        let Some(feed) = feeds.iter().nth(i) else { continue };
        let settings = feed.settings();
        match o {
            Output::Send(st) => shared.router.route_waiting(st, shared.settings.timeouts.write).await,
            Output::Change(change) => {
                let c = counts.entry(i).or_default();
                match &change {
                    Change::Added(_) => {
                        c.0 += 1;
                        block |= settings.action == Action::Block;
                    }
                    Change::Updated(_) => c.0 += 1,
                    Change::Retracted { .. } => c.1 += 1,
                    Change::Cleared { .. } => {
                        c.1 += 1;
                        notable = true;
                        tracing::info!("real-time blocklist {}: every entry cleared", settings.key())
                    }
                    Change::Confirmed { .. } => notable = true,
                }
                let n = apply(shared, settings, &change);
                if n > 0 {
                    retracted.add(shared, i, settings, n);
                }
            }
            Output::Status(status) => statuses.changed(shared, i, status),
            Output::Timer(_) => {}
        }
    }
    for (i, (listed, lifted)) in counts {
        if let Some(f) = feeds.iter().nth(i)
            && listed + lifted > 0
        {
            let s = f.settings();
            let line = format!(
                "real-time blocklist {} ({}): {listed} listed or updated, {lifted} retracted; {} listed now",
                s.key(),
                s.action.as_str(),
                f.status().entries
            );
            if notable {
                tracing::info!("{line}");
            } else {
                tracing::debug!("{line}");
            }
        }
    }
    if block {
        let closed = super::commands::enforce(shared);
        if !closed.is_empty() {
            tracing::info!("real-time blocklists: {} streams of newly listed domains closed", closed.len());
        }
    }
}

/// One entry change: persisted, then in force; the records it lifted from the approval
/// inbox announced. Returns how many stored records it marked retracted.
fn apply(shared: &Arc<Shared>, settings: &crate::rtbl::FeedSettings, change: &Change) -> usize {
    let key = settings.key();
    let retracted = shared.store.rtbl_apply(&key, change).unwrap_or_else(|e| {
        tracing::error!("store: a change of the feed {key} was not saved (it is in force until the next start): {e}");
        0
    });
    match change {
        Change::Added(e) | Change::Updated(e) => tracing::debug!("real-time blocklist {key} lists {}: {}", e.domain, e.listing.summary()),
        Change::Retracted { domain, .. } => tracing::debug!("real-time blocklist {key} no longer lists {domain}"),
        Change::Cleared { .. } | Change::Confirmed { .. } => {}
    }
    for record in shared.policy.apply_rtbl(settings, change) {
        let _ = shared.events.send(Event::DomainChanged { record });
    }
    retracted
}

/// How often the familiarity set's writes go to the store, and how often it forgets the
/// pairs past `[strangers] retention`.
const FAMILIAR_FLUSH: Duration = Duration::from_secs(5);
const FAMILIAR_EXPIRE: Duration = Duration::from_secs(3600);

/// Persist the familiarity set's writes in batches, off the stanza path; forget old pairs.
/// (The last writes are stored by `Engine::shutdown`, after the streams ended.)
pub(super) async fn keep_familiar(shared: Arc<Shared>, familiar: Arc<Familiarity>) {
    let mut flush = tokio::time::interval(FAMILIAR_FLUSH);
    let mut expire = tokio::time::interval(FAMILIAR_EXPIRE);
    loop {
        let mut writes = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = flush.tick() => Vec::new(),
            _ = expire.tick() => familiar.expire(crate::types::now_ms()),
        };
        let (taken, dropped) = familiar.take_writes();
        writes.extend(taken);
        write_familiar(&shared, (writes, dropped));
    }
}

pub(super) fn write_familiar(shared: &Shared, (writes, dropped): (Vec<Write>, u64)) {
    if dropped > 0 {
        tracing::warn!("strangers: {dropped} familiarity writes dropped (the set is known in memory, not all of it stored)");
    }
    if !writes.is_empty()
        && let Err(e) = shared.store.familiar_write(&writes)
    {
        tracing::error!("store: {} familiarity writes not saved: {e}", writes.len());
    }
}
