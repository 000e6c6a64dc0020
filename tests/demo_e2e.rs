//! `drawbridge demo` in tmux: a living dashboard within seconds, the newcomer approved from
//! the keyboard (after its dry run), and q leaves nothing running and nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_comes_alive_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_drawbridge");
    // TMPDIR so the demo's temporary directory is one this test can inspect.
    let t = Tmux::start("db-demo-e2e", &format!("env TMPDIR={} {bin} demo", tmp.path().display()));
    t.wait_for(&["drawbridge.demo", "friend.example", "established", "dialback ✓"]).await;
    t.wait_for(&["pending 1"]).await;
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "the demo works in one temporary directory");
    // The spoofer and the malformed peer show up.
    t.keys(&["3"]);
    t.wait_for(&["invalid", "said the dialback key is invalid"]).await;
    t.keys(&["1"]);
    t.wait_for(&["garbled.example", "spam.example"]).await;
    // Approve the newcomer from the Domains view (pending is pinned first): its dry run
    // first (held now, allowed then), then y.
    t.keys(&["2", "g", "a"]);
    t.wait_for(&["dry run: approve newcomer.example", "newly allowed (1):", "y applies it"]).await;
    t.keys(&["y"]);
    t.wait_for(&["newcomer.example: approved"]).await;
    t.wait_for(&["pending 0"]).await;
    t.keys(&["q"]);
    let t0 = Instant::now();
    while t.alive() {
        assert!(t0.elapsed() < *WAIT, "q did not end the demo");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing left behind");
    let ps = std::process::Command::new("pgrep").args(["-f", &format!("{bin} demo")]).output().unwrap();
    assert!(ps.stdout.is_empty(), "nothing left running");
}
