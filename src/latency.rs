//! How long things take, as histograms every layer can feed without a lock.
//!
//! A stanza's routing time is observed on the stanza path, by whichever core runs the
//! stream that writes it. A histogram behind a lock (prometheus-client's own takes one per
//! observation) would make every stream's task fight over one lock, and even one shared
//! set of atomic counters is a cache line the cores bounce between them (the cost issue 17
//! found in shared reference counts). So each histogram is striped: a thread counts in its
//! own shard, the shards are summed only when Prometheus scrapes.
//!
//! Process-wide, like the limits' refusal counts: the lowest layer that sees a lookup or a
//! verification (`net`, `stream`) counts it, and one process runs one engine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Finite buckets per histogram (plus `+Inf`): bounds `base·2^k`, k = 0..BUCKETS.
pub const BUCKETS: usize = 16;
/// Shards per histogram: more than the cores a server of this kind usually has.
const SHARDS: usize = 8;

/// One thread's counts, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Shard {
    const fn new() -> Shard {
        Shard { buckets: [const { AtomicU64::new(0) }; BUCKETS + 1], sum_ns: AtomicU64::new(0) }
    }
}

/// A histogram of durations with exponential bucket bounds `base·2^k`.
pub struct Timing {
    base_ns: u64,
    shards: [Shard; SHARDS],
}

impl std::fmt::Debug for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timing").field("base_ns", &self.base_ns).field("count", &self.snapshot().count).finish()
    }
}

/// The summed shards at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// (upper bound in seconds, observations in that bucket alone); the last bound is +∞.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

thread_local! {
    /// The shard this thread counts in, handed out in turn as threads first observe.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

impl Timing {
    /// Buckets from `base` up to `base·2^15`.
    pub const fn new(base: Duration) -> Timing {
        let base_ns = base.as_nanos() as u64;
        Timing { base_ns: if base_ns == 0 { 1 } else { base_ns }, shards: [const { Shard::new() }; SHARDS] }
    }

    /// The bucket of an observation: the first bound `base·2^k` not below it.
    fn bucket(&self, ns: u64) -> usize {
        let q = ns.div_ceil(self.base_ns);
        if q <= 1 { 0 } else { ((64 - (q - 1).leading_zeros()) as usize).min(BUCKETS) }
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[SHARD.with(|s| *s)];
        shard.buckets[self.bucket(ns)].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut counts = [0u64; BUCKETS + 1];
        let mut sum_ns = 0u64;
        for s in &self.shards {
            for (c, b) in counts.iter_mut().zip(&s.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(s.sum_ns.load(Ordering::Relaxed));
        }
        let base = self.base_ns as f64 / 1e9;
        let buckets: Vec<(f64, u64)> =
            counts.iter().enumerate().map(|(k, c)| (if k == BUCKETS { f64::INFINITY } else { base * (1u64 << k) as f64 }, *c)).collect();
        Snapshot { count: counts.iter().sum(), sum_seconds: sum_ns as f64 / 1e9, buckets }
    }
}

/// From a stanza's read off a peer's stream (or its making here) to the moment the stream
/// that carries it on takes it off its link's queue to write it: the router, the queue and
/// any wait for room.
pub static ROUTING: Timing = Timing::new(Duration::from_micros(10));

/// A dialback verification (XEP-0220 §2.1.2): from asking the authoritative server (the
/// DNS, the dial and the callback stream's set-up included) to its answer, by outcome.
pub static DIALBACK: [(&str, Timing); 4] = [
    ("valid", Timing::new(Duration::from_millis(1))),
    ("invalid", Timing::new(Duration::from_millis(1))),
    ("error", Timing::new(Duration::from_millis(1))),
    ("timeout", Timing::new(Duration::from_millis(1))),
];

/// DNS lookups for dialling out: the SRV pair of a domain (RFC 6120 §3.2.1, XEP-0368) and
/// the addresses of a target, answered or not.
pub static DNS: [(&str, Timing); 2] =
    [("srv", Timing::new(Duration::from_micros(100))), ("address", Timing::new(Duration::from_micros(100)))];

/// The histogram of `name` in a labelled set.
pub fn of<'a>(set: &'a [(&str, Timing)], name: &str) -> &'a Timing {
    set.iter().find(|(n, _)| *n == name).map_or(&set[set.len() - 1].1, |(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_not_below_them() {
        let t = Timing::new(Duration::from_micros(10));
        for us in [0, 10, 11, 20, 21, 40, 1_000_000_000] {
            t.observe(Duration::from_micros(us));
        }
        let s = t.snapshot();
        assert_eq!(s.count, 7);
        let at = |bound: f64| s.buckets.iter().find(|(b, _)| (*b - bound).abs() < 1e-12).unwrap().1;
        assert_eq!(at(10e-6), 2, "0 and 10 µs: {s:?}");
        assert_eq!(at(20e-6), 2, "11 and 20 µs");
        assert_eq!(at(40e-6), 2, "21 and 40 µs");
        assert_eq!(s.buckets.last().unwrap(), &(f64::INFINITY, 1), "1 000 s is beyond the last bound");
        assert!((s.sum_seconds - (1000.0 + 102e-6)).abs() < 1e-9, "{}", s.sum_seconds);
        assert_eq!(s.buckets.len(), BUCKETS + 1);
    }

    #[test]
    fn every_thread_counts_and_the_scrape_sums_them() {
        let t: &'static Timing = Box::leak(Box::new(Timing::new(Duration::from_millis(1))));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        t.observe(Duration::from_micros(1500));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let s = t.snapshot();
        assert_eq!(s.count, 12_000);
        assert_eq!(s.buckets[1], (0.002, 12_000));
    }
}
