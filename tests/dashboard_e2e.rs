//! The real binary in tmux: the embedded dashboard (`drawbridge run`) blocks a domain from
//! the keyboard and its streams close; after a restart, `attach` against `serve` shows the
//! block persisted. Needs tmux (installed by .ci/run).

mod common;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use common::*;
use drawbridge::control::{self, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_from_the_keyboard_then_attach_after_restart() {
    let dns = Dns::start().await;
    let _a = start_published("a.test", &dns, "").await;
    // b.test runs as the real binary; publish the port it will listen on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    dns.add_a("xmpp.b.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_srv("b.test", 0, 5, "xmpp.b.test", port).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sock = data.join("control.sock");
    let cfg = dir.path().join("b.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomains = [\"b.test\"]\nlisten = [\"127.0.0.1:{port}\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
            data.display(),
            dns.addr
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_drawbridge");

    // 1. Server and dashboard in one process, in tmux.
    let run = Tmux::start(&format!("db-run-{port}"), &format!("{bin} --config {}", cfg.display()));
    run.wait_for(&["drawbridge", "b.test", "1 Connections"]).await;
    let r = control::request(&sock, &Request::Probe { domain: "a.test".into(), from: None }).await.unwrap();
    let report: drawbridge::engine::ProbeReport = serde_json::from_value(r.data.unwrap()).unwrap();
    assert!(report.ok, "{:?}", report.error);
    run.wait_for(&["a.test", "established", "dialback ✓"]).await;
    // Block the selected stream's domain: b, then duration and reason, Enter; the dry run
    // shows what it would do, nothing done yet; y applies it.
    run.keys(&["1", "g", "b"]);
    run.wait_for(&["block a.test"]).await;
    run.keys(&["flooding", "Enter"]);
    run.wait_for(&["Dry run: nothing changed yet", "would close 2 live stream(s)", "newly refused (1)", "y applies it"]).await;
    let st = control::request(&sock, &Request::Status).await.unwrap();
    assert_eq!(st.data.unwrap()["blocked"], 0, "the dry run blocked nothing");
    run.keys(&["y"]);
    let s = run.wait_for(&["a.test: blocked (flooding)", "closed 2 stream(s)"]).await;
    assert!(s.contains("closed"), "{s}");
    run.wait_for(&["0 live"]).await;
    run.keys(&["2"]);
    run.wait_for(&["a.test", "blocked", "flooding"]).await;
    // The next mode, previewed, and not applied.
    run.keys(&["m"]);
    run.wait_for(&["dry run: mode approval", "mode: open → approval", "y applies it"]).await;
    run.keys(&["n"]);
    run.wait_for(&["mode approval: not applied"]).await;
    let st = control::request(&sock, &Request::Status).await.unwrap();
    assert_eq!(st.data.unwrap()["mode"], "open");
    run.keys(&["q"]);
    let t0 = Instant::now();
    while run.alive() {
        assert!(t0.elapsed() < *WAIT, "q did not end the dashboard");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 2. Headless serve, then attach: the block survived the restart.
    let mut serve = Command::new(bin).arg("--config").arg(&cfg).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while control::request(&sock, &Request::Status).await.is_err() {
        assert!(t0.elapsed() < *WAIT, "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attach = Tmux::start(&format!("db-attach-{port}"), &format!("{bin} attach --socket {}", sock.display()));
    attach.wait_for(&["drawbridge", "b.test"]).await;
    attach.keys(&["2"]);
    attach.wait_for(&["a.test", "blocked", "flooding"]).await;
    // A second operator attached at the same time sees the same, and Enter shows the history.
    let second = Tmux::start(&format!("db-attach2-{port}"), &format!("{bin} attach --socket {}", sock.display()));
    second.keys(&["2"]);
    second.wait_for(&["a.test", "blocked"]).await;
    second.keys(&["Enter"]);
    second.wait_for(&["Domain history", "refused: a.test is blocked: flooding", "policy log"]).await;
    second.keys(&["Escape", "q"]);
    // Quitting the attached dashboard leaves the server running.
    attach.keys(&["q"]);
    let t0 = Instant::now();
    while attach.alive() {
        assert!(t0.elapsed() < *WAIT, "q did not end attach");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(control::request(&sock, &Request::Status).await.unwrap().ok, "serve still answers");
    serve.kill().unwrap();
    serve.wait().unwrap();
}
