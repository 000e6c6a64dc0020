//! Replays the fuzz targets' seed corpora and every input that once crashed them
//! (fuzz/corpus/TARGET, fuzz/regressions/TARGET) on stable, so a fixed crash stays fixed.
//! The fuzzers themselves run with `fuzz/run.sh` (nightly, cargo-fuzz).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut v = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            v.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
    v.sort();
    assert!(!v.is_empty(), "no inputs for {target}");
    v
}

/// Counts this thread's live heap bytes and their peak (for the framer's heap budget;
/// other tests' threads do not count).
struct Counting;

thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(l) };
        if !p.is_null() {
            let _ = LIVE.try_with(|live| {
                live.set(live.get() + l.size() as isize);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
            });
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) };
        let _ = LIVE.try_with(|live| live.set(live.get() - l.size() as isize));
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Each input parsed, written back and re-parsed, its peak heap within the budget the fuzz
/// target enforces.
#[test]
fn framer_corpus() {
    for (path, data) in inputs("framer") {
        let base = LIVE.with(|l| l.get());
        PEAK.with(|p| p.set(base));
        drawbridge::fuzzing::framer(&data);
        let peak = (PEAK.with(|p| p.get()) - base).max(0) as usize;
        let budget = drawbridge::fuzzing::heap_budget(data.len());
        assert!(peak <= budget, "{}: {peak} bytes of heap, budget {budget}", path.display());
    }
}

#[test]
fn config_corpus() {
    for (_, data) in inputs("config") {
        drawbridge::fuzzing::config(&data);
    }
}

#[test]
fn control_corpus() {
    for (_, data) in inputs("control") {
        drawbridge::fuzzing::control(&data);
    }
}

/// Each pre-authentication input against a live server; the server answers every one
/// (something comes back or the connection ends) and still serves a fresh peer after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_corpus() {
    let dns = Dns::start().await;
    // As the fuzz target runs it: a.test may skip TLS, so dialback is reachable in plain text.
    let server =
        start_server("island.test", &dns, "[timeouts]\nnegotiation = \"3s\"\n[[domain]]\nname = \"a.test\"\nrequire_encryption = false\n")
            .await;
    for (path, data) in inputs("preauth") {
        let got = drawbridge::fuzzing::preauth_exchange(server.addr, &data, Duration::from_secs(10)).await;
        assert!(!got.is_empty(), "{}: no answer", path.display());
    }
    let mut p = RawPeer::connect(server.addr).await;
    let (_, features) = p.open("after.test", "island.test").await;
    assert!(features.has_child("starttls", drawbridge::proto::ns::TLS));
}
