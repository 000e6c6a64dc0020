//! Who is familiar to whom, for the `strangers` action: (local bare JID, remote bare JID)
//! pairs learnt from stanzas that leave (a local user wrote to the remote one), so that a
//! listed domain's messages still reach the users who know the sender.
//!
//! Pairs are kept as keyed hashes (HMAC-SHA-256 under a secret of the server's own,
//! truncated to 128 bits): neither memory nor the store holds who talks to whom in clear,
//! and the hashes cannot be recomputed without the secret. The set is bounded (least
//! recently used pairs go first) and forgets pairs unused for longer than the retention.
//! Sans-I/O: the caller persists the [`Write`]s it is given and loads them back at start.

use std::collections::{BTreeSet, HashMap};

use hmac::{KeyInit, Mac};

/// `[strangers]`: how many pairs are kept and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamiliarSettings {
    pub max_pairs: usize,
    pub retention: std::time::Duration,
}

impl Default for FamiliarSettings {
    /// 100 000 pairs (about 5 MB in memory, 3 MB stored); half a year.
    fn default() -> Self {
        FamiliarSettings { max_pairs: 100_000, retention: std::time::Duration::from_secs(180 * 86_400) }
    }
}

/// A pair's keyed hash.
pub type PairHash = [u8; 16];

/// What the caller persists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The pair was last used at this time (unix ms).
    Put(PairHash, u64),
    Remove(PairHash),
}

pub struct Familiar {
    key: [u8; 32],
    capacity: usize,
    retention_ms: u64,
    /// A pair's last use is written again only when it is this much older (the set is
    /// consulted and touched per stanza; the store is not written per stanza).
    write_every_ms: u64,
    /// Pair → (last use, last use written).
    pairs: HashMap<PairHash, (u64, u64)>,
    /// (last use, pair): the least recently used first.
    order: BTreeSet<(u64, PairHash)>,
}

/// A pair's keyed hash under `key` (HMAC-SHA-256 of the two bare JIDs, truncated).
pub fn pair_hash(key: &[u8; 32], local: &str, remote: &str) -> PairHash {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(bare(local).as_bytes());
    mac.update(&[0]);
    mac.update(bare(remote).as_bytes());
    let mut h = [0u8; 16];
    h.copy_from_slice(&mac.finalize().into_bytes()[..16]);
    h
}

/// A bare JID as compared: the resource cut, the localpart in lower case (localparts
/// compare case-insensitively in practice; RFC 7622's casefolding), the domain in its
/// normal form (IDNA, no trailing dot: [`crate::domain::Domain`]), so that one contact
/// written two ways is one pair.
fn bare(jid: &str) -> String {
    let bare = jid.split('/').next().unwrap_or("");
    let (local, domain) = match bare.rsplit_once('@') {
        Some((l, d)) => (Some(l), d),
        None => (None, bare),
    };
    let domain = crate::domain::Domain::parse(domain).map_or_else(|_| domain.to_lowercase(), |d| d.as_str().to_owned());
    match local {
        Some(l) => format!("{}@{domain}", l.to_lowercase()),
        None => domain,
    }
}

impl Familiar {
    /// An empty set keyed by `key` (a secret of the server's own, stored apart).
    pub fn new(key: [u8; 32], capacity: usize, retention_ms: u64) -> Familiar {
        Familiar { key, capacity: capacity.max(1), retention_ms, write_every_ms: 3_600_000, pairs: HashMap::new(), order: BTreeSet::new() }
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn hash(&self, local: &str, remote: &str) -> PairHash {
        pair_hash(&self.key, local, remote)
    }

    /// The stored pairs at start; the most recent are kept when there are more than fit,
    /// and those past the retention are dropped (returned as removals).
    pub fn load(&mut self, stored: impl IntoIterator<Item = (PairHash, u64)>, now_ms: u64) -> Vec<Write> {
        let mut all: Vec<(PairHash, u64)> = stored.into_iter().collect();
        all.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        let mut out = Vec::new();
        for (h, t) in all {
            if self.pairs.len() >= self.capacity || now_ms.saturating_sub(t) > self.retention_ms {
                out.push(Write::Remove(h));
            } else if let std::collections::hash_map::Entry::Vacant(e) = self.pairs.entry(h) {
                e.insert((t, t));
                self.order.insert((t, h));
            }
        }
        out
    }

    /// A local user wrote to a remote one: the pair is familiar from now on.
    pub fn note(&mut self, local: &str, remote: &str, now_ms: u64) -> Vec<Write> {
        let h = self.hash(local, remote);
        self.note_hash(h, now_ms)
    }

    /// [`Familiar::note`] for a pair already hashed (with this set's key).
    pub fn note_hash(&mut self, h: PairHash, now_ms: u64) -> Vec<Write> {
        let mut out = Vec::new();
        match self.pairs.get_mut(&h) {
            Some((used, written)) => {
                self.order.remove(&(*used, h));
                *used = now_ms.max(*used);
                self.order.insert((*used, h));
                if used.saturating_sub(*written) >= self.write_every_ms {
                    *written = *used;
                    out.push(Write::Put(h, *used));
                }
            }
            None => {
                while self.pairs.len() >= self.capacity {
                    let Some(&(t, old)) = self.order.iter().next() else { break };
                    self.order.remove(&(t, old));
                    self.pairs.remove(&old);
                    out.push(Write::Remove(old));
                }
                self.pairs.insert(h, (now_ms, now_ms));
                self.order.insert((now_ms, h));
                out.push(Write::Put(h, now_ms));
            }
        }
        out
    }

    /// Whether `local` wrote to `remote` within the retention.
    pub fn knows(&self, local: &str, remote: &str, now_ms: u64) -> bool {
        self.knows_hash(&self.hash(local, remote), now_ms)
    }

    /// [`Familiar::knows`] for a pair already hashed (with this set's key).
    pub fn knows_hash(&self, h: &PairHash, now_ms: u64) -> bool {
        self.pairs.get(h).is_some_and(|(used, _)| now_ms.saturating_sub(*used) <= self.retention_ms)
    }

    /// Forget the pairs unused for longer than the retention (call periodically).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Write> {
        let mut out = Vec::new();
        while let Some(&(t, h)) = self.order.iter().next() {
            if now_ms.saturating_sub(t) <= self.retention_ms {
                break;
            }
            self.order.remove(&(t, h));
            self.pairs.remove(&h);
            out.push(Write::Remove(h));
        }
        out
    }
}

/// How many shards the shared set has at most: stanzas of different pairs rarely wait for
/// each other, and each shard stays a plain [`Familiar`].
const SHARDS: usize = 16;
/// Writes a shard keeps for the persisting task at most; beyond, they are dropped and
/// counted (the pairs stay known in memory; only their persistence is lost).
const MAX_PENDING: usize = 4096;

/// The familiarity set as the stanza path shares it: sharded by pair hash (one short lock
/// per stanza, never one lock for all), the HMAC computed outside any lock, and the writes
/// left for a task to persist in batches ([`Familiarity::take_writes`]) — the stanza path
/// never touches the store. Each shard holds a share of `max_pairs` (least recently used
/// first within its shard).
pub struct Familiarity {
    key: [u8; 32],
    shards: Box<[std::sync::Mutex<Shard>]>,
}

struct Shard {
    set: Familiar,
    pending: Vec<Write>,
    dropped: u64,
}

impl Familiarity {
    pub fn new(key: [u8; 32], settings: FamiliarSettings) -> Familiarity {
        let n = SHARDS.min(settings.max_pairs.max(1));
        let per = settings.max_pairs.div_ceil(n);
        let retention_ms = u64::try_from(settings.retention.as_millis()).unwrap_or(u64::MAX);
        let shards = (0..n)
            .map(|_| std::sync::Mutex::new(Shard { set: Familiar::new(key, per, retention_ms), pending: Vec::new(), dropped: 0 }))
            .collect();
        Familiarity { key, shards }
    }

    fn shard(&self, h: &PairHash) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[usize::from(h[0]) % self.shards.len()].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored pairs at start (see [`Familiar::load`]): the removals to persist.
    pub fn load(&self, stored: impl IntoIterator<Item = (PairHash, u64)>, now_ms: u64) -> Vec<Write> {
        let mut per: Vec<Vec<(PairHash, u64)>> = vec![Vec::new(); self.shards.len()];
        for (h, t) in stored {
            per[usize::from(h[0]) % self.shards.len()].push((h, t));
        }
        let mut out = Vec::new();
        for (shard, pairs) in self.shards.iter().zip(per) {
            out.extend(shard.lock().unwrap_or_else(|e| e.into_inner()).set.load(pairs, now_ms));
        }
        out
    }

    /// A local user wrote to a remote one (see [`Familiar::note`]); the writes wait for
    /// [`Familiarity::take_writes`].
    pub fn note(&self, local: &str, remote: &str, now_ms: u64) {
        let h = pair_hash(&self.key, local, remote);
        let mut shard = self.shard(&h);
        let writes = shard.set.note_hash(h, now_ms);
        let room = MAX_PENDING.saturating_sub(shard.pending.len());
        if writes.len() > room {
            shard.dropped += (writes.len() - room) as u64;
        }
        shard.pending.extend(writes.into_iter().take(room));
    }

    pub fn knows(&self, local: &str, remote: &str, now_ms: u64) -> bool {
        let h = pair_hash(&self.key, local, remote);
        self.shard(&h).set.knows_hash(&h, now_ms)
    }

    /// The writes made since the last call, and how many were dropped meanwhile (a shard's
    /// backlog full).
    pub fn take_writes(&self) -> (Vec<Write>, u64) {
        let (mut out, mut dropped) = (Vec::new(), 0);
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            out.append(&mut s.pending);
            dropped += std::mem::take(&mut s.dropped);
        }
        (out, dropped)
    }

    /// Forget the pairs past the retention, in every shard: the removals to persist.
    pub fn expire(&self, now_ms: u64) -> Vec<Write> {
        self.shards.iter().flat_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).set.expire(now_ms)).collect()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).set.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn set(cap: usize) -> Familiar {
        Familiar::new([7; 32], cap, 30 * DAY)
    }

    #[test]
    fn learnt_from_what_leaves_one_way_only() {
        let mut f = set(10);
        assert!(!f.knows("alice@home.test", "bob@spam.example", 0));
        let w = f.note("alice@home.test/phone", "Bob@Spam.example/x", 0);
        assert!(matches!(w.as_slice(), [Write::Put(_, 0)]));
        assert!(f.knows("alice@home.test", "bob@spam.example", 1), "bare, case-insensitive");
        assert!(f.knows("alice@HOME.test.", "bob@spam.example.", 1), "a domain in its normal form");
        f.note("alice@home.test", "bob@böse.example", 0);
        assert!(f.knows("alice@home.test", "bob@xn--bse-sna.example/r", 1), "one contact written two ways is one pair");
        assert!(!f.knows("bob@spam.example", "alice@home.test", 1), "writing to someone does not make them know you");
        assert!(!f.knows("carol@home.test", "bob@spam.example", 1));
        // The pair is not in clear, and another key gives other hashes.
        let Write::Put(h, _) = w[0] else { unreachable!() };
        assert!(!String::from_utf8_lossy(&h).contains("alice"));
        assert_ne!(Familiar::new([8; 32], 10, DAY).hash("alice@home.test", "bob@spam.example"), h);
        // Touches are written at most hourly.
        assert!(f.note("alice@home.test", "bob@spam.example", 1000).is_empty());
        assert_eq!(f.note("alice@home.test", "bob@spam.example", 3_601_000), vec![Write::Put(h, 3_601_000)]);
    }

    #[test]
    fn bounded_least_recently_used_first_and_retention() {
        let mut f = set(3);
        for (i, r) in ["a", "b", "c"].iter().enumerate() {
            f.note("u@home.test", &format!("{r}@x.example"), i as u64);
        }
        f.note("u@home.test", "a@x.example", 10); // a is used again: b is now the oldest
        let w = f.note("u@home.test", "d@x.example", 11);
        assert_eq!(w.len(), 2, "one eviction and the new pair: {w:?}");
        assert_eq!(f.len(), 3);
        assert!(!f.knows("u@home.test", "b@x.example", 11));
        for r in ["a", "c", "d"] {
            assert!(f.knows("u@home.test", &format!("{r}@x.example"), 11), "{r}");
        }
        // Past the retention a pair is no longer familiar, and expire forgets it.
        assert!(!f.knows("u@home.test", "c@x.example", 2 + 30 * DAY + 1));
        let gone = f.expire(2 + 30 * DAY + 1);
        assert_eq!(gone.len(), 1);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn the_shared_set_keeps_writes_for_the_task_and_reloads_into_the_same_shards() {
        let settings = FamiliarSettings { max_pairs: 1000, retention: std::time::Duration::from_secs(30 * 86_400) };
        let f = Familiarity::new([3; 32], settings);
        for i in 0..50 {
            f.note("u@home.test", &format!("p{i}@x.example/r"), 1000);
        }
        assert!(f.knows("u@home.test/phone", "p7@x.example", 2000) && !f.knows("p7@x.example", "u@home.test", 2000));
        let (writes, dropped) = f.take_writes();
        assert_eq!((writes.len(), dropped), (50, 0));
        assert!(f.take_writes().0.is_empty(), "taken once");
        let stored = writes.iter().filter_map(|w| if let Write::Put(h, t) = w { Some((*h, *t)) } else { None });
        let g = Familiarity::new([3; 32], settings);
        assert!(g.load(stored, 2000).is_empty());
        assert_eq!(g.len(), 50);
        assert!(g.knows("u@home.test", "p49@x.example", 2000));
        assert_eq!(g.expire(1000 + 30 * DAY + 1).len(), 50);
        assert!(g.is_empty());
    }

    #[test]
    fn reload_keeps_the_most_recent_within_bounds() {
        let mut f = set(10);
        let mut stored = Vec::new();
        for i in 0..5u64 {
            for w in f.note("u@home.test", &format!("p{i}@x.example"), i * DAY) {
                if let Write::Put(h, t) = w {
                    stored.push((h, t));
                }
            }
        }
        let mut g = set(3);
        let removed = g.load(stored.clone(), 4 * DAY);
        assert_eq!((g.len(), removed.len()), (3, 2));
        assert!(g.knows("u@home.test", "p4@x.example", 4 * DAY) && !g.knows("u@home.test", "p0@x.example", 4 * DAY));
        let mut h = set(10);
        let removed = h.load(stored, 33 * DAY);
        assert_eq!((h.len(), removed.len()), (2, 3), "pairs older than 30 days are dropped at load");
    }
}
