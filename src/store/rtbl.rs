//! Real-time blocklist entries, per feed, with provenance: what each service listed, with
//! its report, when it was first and last seen, and when it was retracted. A restart
//! starts from [`SledStore::rtbl_listed`] (warm) and re-syncs from there.
//!
//! Keys in `rtbl`: `service \0 node \0 domain`; in `rtbl_feeds`: `service \0 node`. A
//! retracted entry is kept (its provenance explains a past refusal) until
//! [`SledStore::rtbl_prune_retracted`] bounds how many of them a feed keeps.

use serde::{Deserialize, Serialize};

use super::{SledStore, StoreError, decode, encode};
use crate::domain::Domain;
use crate::rtbl::familiar::{PairHash, Write};
use crate::rtbl::report::Listing;
use crate::rtbl::{Change, Entry, FeedKey, FeedStatus};

/// One listing as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtblRecord {
    pub domain: String,
    pub service: String,
    pub node: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The report's text (clipped and escaped when it was read).
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub block_strangers: bool,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    #[serde(default)]
    pub retracted_ms: Option<u64>,
}

impl RtblRecord {
    fn listing(&self) -> Listing {
        Listing { reason: self.reason.clone(), text: self.text.clone(), block_strangers: self.block_strangers }
    }
}

fn feed_prefix(feed: &FeedKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(feed.service.len() + feed.node.len() + 2);
    k.extend_from_slice(feed.service.as_bytes());
    k.push(0);
    k.extend_from_slice(feed.node.as_bytes());
    k.push(0);
    k
}

fn entry_key(feed: &FeedKey, domain: &str) -> Vec<u8> {
    let mut k = feed_prefix(feed);
    k.extend_from_slice(domain.as_bytes());
    k
}

impl SledStore {
    /// Persist one change the feed's machine made (call [`SledStore::flush`] when it must be
    /// durable). A domain listed again keeps its first sighting.
    /// Returns how many records it marked retracted (for the caller's count of them: see
    /// [`SledStore::rtbl_prune_retracted`]).
    pub fn rtbl_apply(&self, feed: &FeedKey, change: &Change) -> Result<usize, StoreError> {
        match change {
            Change::Added(e) | Change::Updated(e) => {
                let key = entry_key(feed, e.domain.as_str());
                let first = match self.rtbl.get(&key).map_err(|x| self.err(x))? {
                    Some(v) => decode::<RtblRecord>(&v).map(|r| r.first_seen_ms.min(e.first_seen_ms)).unwrap_or(e.first_seen_ms),
                    None => e.first_seen_ms,
                };
                let rec = RtblRecord {
                    domain: e.domain.to_string(),
                    service: feed.service.clone(),
                    node: feed.node.clone(),
                    reason: e.listing.reason.clone(),
                    text: e.listing.text.clone(),
                    block_strangers: e.listing.block_strangers,
                    first_seen_ms: first,
                    last_seen_ms: e.last_seen_ms,
                    retracted_ms: None,
                };
                self.rtbl.insert(key, encode(&rec)).map_err(|x| self.err(x))?;
            }
            Change::Retracted { domain, at_ms } => {
                let key = entry_key(feed, domain.as_str());
                if let Some(v) = self.rtbl.get(&key).map_err(|x| self.err(x))? {
                    let mut rec: RtblRecord = decode(&v).map_err(|x| self.err(x))?;
                    if rec.retracted_ms.is_none() {
                        rec.retracted_ms = Some(*at_ms);
                        self.rtbl.insert(key, encode(&rec)).map_err(|x| self.err(x))?;
                        return Ok(1);
                    }
                }
            }
            Change::Cleared { at_ms } => return self.rtbl_rewrite_listed(feed, |r| r.retracted_ms = Some(*at_ms)),
            Change::Confirmed { at_ms } => {
                self.rtbl_rewrite_listed(feed, |r| r.last_seen_ms = *at_ms)?;
            }
        }
        Ok(0)
    }

    /// Change every not-retracted entry of a feed, in one batch; how many.
    fn rtbl_rewrite_listed(&self, feed: &FeedKey, mut f: impl FnMut(&mut RtblRecord)) -> Result<usize, StoreError> {
        let (mut batch, mut n) = (sled::Batch::default(), 0);
        for kv in self.rtbl.scan_prefix(feed_prefix(feed)) {
            let (k, v) = kv.map_err(|x| self.err(x))?;
            let mut rec: RtblRecord = decode(&v).map_err(|x| self.err(x))?;
            if rec.retracted_ms.is_none() {
                f(&mut rec);
                batch.insert(k, encode(&rec));
                n += 1;
            }
        }
        self.rtbl.apply_batch(batch).map_err(|x| self.err(x))?;
        Ok(n)
    }

    /// A record as it is (read from a shared store into the working copy).
    pub fn rtbl_put_record(&self, feed: &FeedKey, rec: &RtblRecord) -> Result<(), StoreError> {
        self.rtbl.insert(entry_key(feed, &rec.domain), encode(rec)).map_err(|x| self.err(x))?;
        Ok(())
    }

    /// How many retracted records a feed keeps (read once at start; the driver counts on).
    pub fn rtbl_retracted_count(&self, feed: &FeedKey) -> Result<usize, StoreError> {
        Ok(self.rtbl_records(feed)?.iter().filter(|r| r.retracted_ms.is_some()).count())
    }

    /// Every record of a feed, retracted ones included, by domain.
    pub fn rtbl_records(&self, feed: &FeedKey) -> Result<Vec<RtblRecord>, StoreError> {
        self.rtbl.scan_prefix(feed_prefix(feed)).values().map(|v| decode(&v.map_err(|x| self.err(x))?).map_err(|x| self.err(x))).collect()
    }

    /// What a feed lists now (not retracted): the machine's warm start. A record whose
    /// domain no longer parses (written by another version) is skipped.
    pub fn rtbl_listed(&self, feed: &FeedKey) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .rtbl_records(feed)?
            .into_iter()
            .filter(|r| r.retracted_ms.is_none())
            .filter_map(|r| {
                Some(Entry {
                    domain: Domain::parse(&r.domain).ok()?,
                    listing: r.listing(),
                    first_seen_ms: r.first_seen_ms,
                    last_seen_ms: r.last_seen_ms,
                })
            })
            .collect())
    }

    /// Every feed's records for one domain (`ctl domain D`, `explain`).
    pub fn rtbl_for_domain(&self, domain: &str) -> Result<Vec<RtblRecord>, StoreError> {
        let mut out = Vec::new();
        for feed in self.rtbl_feeds()? {
            if let Some(v) = self.rtbl.get(entry_key(&feed, domain)).map_err(|x| self.err(x))? {
                out.push(decode(&v).map_err(|x| self.err(x))?);
            }
        }
        Ok(out)
    }

    /// Keep at most `max` retracted records of a feed (the most recently retracted): a
    /// service that lists and retracts without end cannot grow the store. Returns how many
    /// went.
    pub fn rtbl_prune_retracted(&self, feed: &FeedKey, max: usize) -> Result<usize, StoreError> {
        let mut retracted: Vec<(u64, sled::IVec)> = Vec::new();
        for kv in self.rtbl.scan_prefix(feed_prefix(feed)) {
            let (k, v) = kv.map_err(|x| self.err(x))?;
            if let Some(t) = decode::<RtblRecord>(&v).map_err(|x| self.err(x))?.retracted_ms {
                retracted.push((t, k));
            }
        }
        if retracted.len() <= max {
            return Ok(0);
        }
        retracted.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        let mut batch = sled::Batch::default();
        let gone = retracted.len() - max;
        for (_, k) in retracted.drain(max..) {
            batch.remove(k);
        }
        self.rtbl.apply_batch(batch).map_err(|x| self.err(x))?;
        Ok(gone)
    }

    /// A feed's last status (its state, counters, last sync), kept for the next start.
    pub fn rtbl_put_status(&self, status: &FeedStatus) -> Result<(), StoreError> {
        let feed = FeedKey { service: status.service.clone(), node: status.node.clone() };
        let mut k = feed_prefix(&feed);
        k.pop();
        self.rtbl_feeds.insert(k, encode(status)).map_err(|x| self.err(x))?;
        Ok(())
    }

    pub fn rtbl_status(&self, feed: &FeedKey) -> Result<Option<FeedStatus>, StoreError> {
        let mut k = feed_prefix(feed);
        k.pop();
        match self.rtbl_feeds.get(k).map_err(|x| self.err(x))? {
            Some(v) => Ok(Some(decode(&v).map_err(|x| self.err(x))?)),
            None => Ok(None),
        }
    }

    /// The feeds that have a status stored (to find those no longer configured).
    pub fn rtbl_feeds(&self) -> Result<Vec<FeedKey>, StoreError> {
        let mut out = Vec::new();
        for k in self.rtbl_feeds.iter().keys() {
            let k = k.map_err(|x| self.err(x))?;
            let s = String::from_utf8_lossy(&k);
            if let Some((service, node)) = s.split_once('\0') {
                out.push(FeedKey { service: service.to_owned(), node: node.to_owned() });
            }
        }
        Ok(out)
    }

    /// Forget a feed (removed from the configuration): its entries and its status.
    pub fn rtbl_remove_feed(&self, feed: &FeedKey) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self.rtbl.scan_prefix(feed_prefix(feed)).keys() {
            batch.remove(k.map_err(|x| self.err(x))?);
        }
        self.rtbl.apply_batch(batch).map_err(|x| self.err(x))?;
        let mut k = feed_prefix(feed);
        k.pop();
        self.rtbl_feeds.remove(k).map_err(|x| self.err(x))?;
        Ok(())
    }
}

const FAMILIAR_SECRET_KEY: &[u8] = b"familiar_secret";

impl SledStore {
    /// The key of the familiarity set's hashes: created once (32 random bytes), flushed
    /// before use, apart from the dialback secret (one secret, one purpose).
    pub fn familiar_secret(&self) -> Result<[u8; 32], StoreError> {
        if let Some(v) = self.meta.get(FAMILIAR_SECRET_KEY).map_err(|e| self.err(e))? {
            return <[u8; 32]>::try_from(v.as_ref()).map_err(|_| self.err("familiar_secret is not 32 bytes"));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("OS randomness");
        self.meta.insert(FAMILIAR_SECRET_KEY, &secret[..]).map_err(|e| self.err(e))?;
        self.meta.flush().map_err(|e| self.err(e))?;
        Ok(secret)
    }

    /// The familiarity set's writes, in one batch.
    pub fn familiar_write(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for w in writes {
            match w {
                Write::Put(h, t) => batch.insert(&h[..], &t.to_be_bytes()[..]),
                Write::Remove(h) => batch.remove(&h[..]),
            }
        }
        self.familiar.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Every stored pair hash with its last use (records of another length are skipped).
    pub fn familiar_pairs(&self) -> Result<Vec<(PairHash, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.familiar.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if let (Ok(h), Ok(t)) = (<PairHash>::try_from(k.as_ref()), <[u8; 8]>::try_from(v.as_ref())) {
                out.push((h, u64::from_be_bytes(t)));
            }
        }
        Ok(out)
    }
}

impl SledStore {
    /// One feed's record for one domain, retracted or not (`ctl domain`, `ctl keep`: the
    /// configured feeds, whether or not their subscriber stored a status yet).
    pub fn rtbl_record(&self, feed: &FeedKey, domain: &str) -> Result<Option<RtblRecord>, StoreError> {
        match self.rtbl.get(entry_key(feed, domain)).map_err(|x| self.err(x))? {
            Some(v) => Ok(Some(decode(&v).map_err(|x| self.err(x))?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtbl::{Action, FeedState};

    fn feed(node: &str) -> FeedKey {
        FeedKey { service: "xmppbl.test".into(), node: node.into() }
    }

    fn entry(d: &str, text: &str, t: u64) -> Entry {
        Entry {
            domain: Domain::parse(d).unwrap(),
            listing: Listing {
                reason: Some("urn:xmpp:reporting:spam".into()),
                text: Some(text.into()),
                block_strangers: d.starts_with('b'),
            },
            first_seen_ms: t,
            last_seen_ms: t,
        }
    }

    fn status(f: &FeedKey) -> FeedStatus {
        FeedStatus {
            service: f.service.clone(),
            node: f.node.clone(),
            action: Action::Hold,
            state: FeedState::Error("no answer".into()),
            entries: 2,
            last_sync_ms: Some(7),
            last_change_ms: Some(6),
            ignored_foreign: 1,
            ignored_invalid: 2,
            ignored_over_limit: 3,
            ignored_protected: 4,
        }
    }

    #[test]
    fn entries_with_provenance_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, other) = (feed("spam_source_domains"), feed("other"));
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.rtbl_apply(&a, &Change::Added(entry("a.example", "spam", 10))).unwrap();
            s.rtbl_apply(&a, &Change::Added(entry("b.example", "bots", 11))).unwrap();
            s.rtbl_apply(&a, &Change::Added(entry("c.example", "x", 12))).unwrap();
            s.rtbl_apply(&other, &Change::Added(entry("a.example", "elsewhere", 13))).unwrap();
            s.rtbl_apply(&a, &Change::Retracted { domain: Domain::parse("c.example").unwrap(), at_ms: 20 }).unwrap();
            s.rtbl_apply(&a, &Change::Updated(entry("a.example", "spam, again", 30))).unwrap();
            s.rtbl_apply(&a, &Change::Confirmed { at_ms: 40 }).unwrap();
            s.rtbl_put_status(&status(&a)).unwrap();
            // Synchronously: sled's async flush may hold the database a moment after it returns.
            s.db.flush().unwrap();
        }
        // Warm start: the same lists, the same provenance.
        let s = SledStore::open(dir.path()).unwrap();
        let listed = s.rtbl_listed(&a).unwrap();
        assert_eq!(listed.iter().map(|e| e.domain.as_str()).collect::<Vec<_>>(), ["a.example", "b.example"]);
        assert_eq!((listed[0].listing.text.as_deref(), listed[0].first_seen_ms, listed[0].last_seen_ms), (Some("spam, again"), 10, 40));
        assert!(listed[1].listing.block_strangers);
        let recs = s.rtbl_records(&a).unwrap();
        let c = recs.iter().find(|r| r.domain == "c.example").unwrap();
        assert_eq!(
            (c.retracted_ms, c.last_seen_ms, c.service.as_str(), c.node.as_str()),
            (Some(20), 12, "xmppbl.test", "spam_source_domains")
        );
        assert_eq!(s.rtbl_listed(&other).unwrap()[0].listing.text.as_deref(), Some("elsewhere"), "feeds apart");
        assert_eq!(s.rtbl_for_domain("a.example").unwrap().len(), 1, "only feeds with a status are searched");
        assert_eq!(s.rtbl_status(&a).unwrap(), Some(status(&a)));
        assert_eq!(s.rtbl_feeds().unwrap(), vec![a.clone()]);
        // Listed again after a retract: a new listing, its first sighting kept.
        s.rtbl_apply(&a, &Change::Added(entry("c.example", "back", 50))).unwrap();
        let c = s.rtbl_records(&a).unwrap().into_iter().find(|r| r.domain == "c.example").unwrap();
        assert_eq!((c.retracted_ms, c.first_seen_ms, c.text.as_deref()), (None, 12, Some("back")));
        // Cleared: every listed entry retracted at once, the records kept.
        s.rtbl_apply(&a, &Change::Cleared { at_ms: 60 }).unwrap();
        assert!(s.rtbl_listed(&a).unwrap().is_empty());
        assert!(s.rtbl_records(&a).unwrap().iter().all(|r| r.retracted_ms == Some(60)));
        assert_eq!(s.rtbl_listed(&other).unwrap().len(), 1, "another feed is not cleared");
        s.rtbl_remove_feed(&a).unwrap();
        assert!(s.rtbl_records(&a).unwrap().is_empty() && s.rtbl_feeds().unwrap().is_empty());
    }

    #[test]
    fn retracted_records_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let a = feed("n");
        for i in 0..10u64 {
            let d = format!("d{i}.example");
            s.rtbl_apply(&a, &Change::Added(entry(&d, "x", i))).unwrap();
            if i < 8 {
                s.rtbl_apply(&a, &Change::Retracted { domain: Domain::parse(&d).unwrap(), at_ms: 100 + i }).unwrap();
            }
        }
        assert_eq!(s.rtbl_prune_retracted(&a, 3).unwrap(), 5);
        let left: Vec<String> = s.rtbl_records(&a).unwrap().into_iter().map(|r| r.domain).collect();
        assert_eq!(left, ["d5.example", "d6.example", "d7.example", "d8.example", "d9.example"], "the newest retracted and the listed");
        assert_eq!(s.rtbl_prune_retracted(&a, 3).unwrap(), 0);
    }

    #[test]
    fn the_familiarity_set_survives_a_reopen_without_names_in_clear() {
        use crate::rtbl::familiar::Familiar;
        let dir = tempfile::tempdir().unwrap();
        let secret = {
            let s = SledStore::open(dir.path()).unwrap();
            let secret = s.familiar_secret().unwrap();
            assert_ne!(secret.to_vec(), s.dialback_secret().unwrap(), "a secret of its own");
            let mut f = Familiar::new(secret, 2, 1_000_000);
            for (t, r) in [(10, "bob@spam.example"), (11, "carol@spam.example"), (12, "dave@spam.example")] {
                s.familiar_write(&f.note("alice@home.test", r, t)).unwrap();
            }
            // Synchronously: sled's async flush may hold the database a moment after it returns.
            s.db.flush().unwrap();
            secret
        };
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.familiar_secret().unwrap(), secret, "stable across a reopen");
        let pairs = s.familiar_pairs().unwrap();
        assert_eq!(pairs.len(), 2, "the evicted pair was removed from the store too");
        let mut f = Familiar::new(secret, 2, 1_000_000);
        assert!(f.load(pairs, 20).is_empty());
        assert!(f.knows("alice@home.test", "dave@spam.example", 20));
        assert!(!f.knows("alice@home.test", "bob@spam.example", 20));
        drop(s);
        let mut raw = Vec::new();
        for e in walk(dir.path()) {
            raw.extend(std::fs::read(e).unwrap_or_default());
        }
        assert!(!raw.windows(5).any(|w| w == b"alice") && !raw.windows(4).any(|w| w == b"dave"), "no JID in clear on disk");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }
}
