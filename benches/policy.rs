//! Cost of a policy verdict per stream with an empty blacklist and with 100 000 entries
//! (per-label suffix lookups, not a scan). Run: `cargo bench --bench policy`.

use std::time::{Duration, Instant};

use drawbridge::domain::Domain;
use drawbridge::policy::{Mode, Policy};
use drawbridge::store::Store;

fn per_verdict(policy: &Policy, domains: &[Domain]) -> f64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(1) {
        for d in domains {
            std::hint::black_box(policy.verdict(d));
            n += 1;
        }
    }
    t0.elapsed().as_secs_f64() * 1e9 / n as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
    let policy = Policy::load(store, Mode::Open).unwrap();
    let probes: Vec<Domain> = ["chat.conference.example.org", "xmpp.example.net", "a.b.c.d.e.example.com", "sub.evil-42.example"]
        .iter()
        .map(|d| Domain::parse(d).unwrap())
        .collect();
    let empty = per_verdict(&policy, &probes);
    let entries: Vec<(Domain, Option<String>)> =
        (0..100_000).map(|i| (Domain::parse(&format!("evil-{i}.example")).unwrap(), None)).collect();
    let t0 = Instant::now();
    rt.block_on(policy.blacklist_many(&entries, "bench", "bench")).unwrap();
    let import = t0.elapsed();
    let full = per_verdict(&policy, &probes);
    println!(
        "policy verdict: {empty:.0} ns with an empty blacklist, {full:.0} ns with 100 000 entries (import of 100 000: {:.2} s)",
        import.as_secs_f64()
    );
}
