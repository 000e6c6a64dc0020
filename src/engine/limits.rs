//! Refusals by a limit are logged once per (limit, source) per minute, with how many were
//! not logged since: a flood of refused connections cannot flood the log. The memory this
//! takes is capped too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one (limit, source) is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Distinct (limit, source) pairs remembered; beyond, the oldest half is forgotten.
const REMEMBERED: usize = 4096;

struct Seen {
    at: Instant,
    suppressed: u64,
}

static SEEN: Mutex<Option<HashMap<(&'static str, String), Seen>>> = Mutex::new(None);

/// Whether to log this refusal now, and how many were suppressed before it.
pub fn should_log(limit: &'static str, source: &str, now: Instant) -> Option<u64> {
    let mut g = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(s) = map.get_mut(&(limit, source.to_owned())) {
        if now.duration_since(s.at) < LOG_INTERVAL {
            s.suppressed += 1;
            return None;
        }
        let n = s.suppressed;
        *s = Seen { at: now, suppressed: 0 };
        return Some(n);
    }
    if map.len() >= REMEMBERED {
        let mut ages: Vec<Instant> = map.values().map(|s| s.at).collect();
        ages.sort();
        let cut = ages[ages.len() / 2];
        map.retain(|_, s| s.at > cut);
    }
    map.insert((limit, source.to_owned()), Seen { at: now, suppressed: 0 });
    Some(0)
}

/// Log a refusal by `limit` for `source` (an address or a domain), at most once a minute.
pub fn refused_once(limit: &'static str, source: &str, msg: impl FnOnce() -> String) {
    if let Some(suppressed) = should_log(limit, source, Instant::now()) {
        if suppressed > 0 {
            tracing::warn!(limit, source, "{} ({suppressed} more refused by {limit} since the last report)", msg());
        } else {
            tracing::warn!(limit, source, "{}", msg());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_per_source_counting_the_rest() {
        let t = Instant::now();
        assert_eq!(should_log("test.limit", "a", t), Some(0));
        assert_eq!(should_log("test.limit", "a", t + Duration::from_secs(1)), None);
        assert_eq!(should_log("test.limit", "a", t + Duration::from_secs(2)), None);
        assert_eq!(should_log("test.limit", "b", t), Some(0));
        assert_eq!(should_log("test.limit", "a", t + LOG_INTERVAL + Duration::from_secs(1)), Some(2));
        // Memory stays capped whatever the number of sources.
        for i in 0..10_000 {
            should_log("test.flood", &format!("10.0.{}.{}", i / 256, i % 256), t + Duration::from_millis(i));
        }
        assert!(SEEN.lock().unwrap().as_ref().unwrap().len() <= REMEMBERED);
    }
}
