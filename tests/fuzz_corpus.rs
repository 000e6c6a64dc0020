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

#[global_allocator]
static A: drawbridge::fuzzing::HeapCounter = drawbridge::fuzzing::HeapCounter;

/// Each input parsed, written back and re-parsed, its peak heap within the budget the fuzz
/// target enforces.
#[test]
fn framer_corpus() {
    for (path, data) in inputs("framer") {
        let base = drawbridge::fuzzing::HeapCounter::start();
        drawbridge::fuzzing::framer(&data);
        let peak = drawbridge::fuzzing::HeapCounter::peak_since(base);
        let budget = drawbridge::fuzzing::heap_budget(data.len());
        assert!(peak <= budget, "{}: {peak} bytes of heap, budget {budget}", path.display());
    }
}

/// Input sequences for the stream machine (both roles): its properties hold for each.
#[test]
fn machine_corpus() {
    for (_, data) in inputs("machine") {
        drawbridge::fuzzing::machine(&data);
    }
}

#[test]
fn component_corpus() {
    for (_, data) in inputs("component") {
        drawbridge::fuzzing::component(&data);
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
