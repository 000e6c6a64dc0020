//! The real binary in tmux: `attach` to a `serve` that follows a real-time blocklist whose
//! entries its store holds (written before it started, as its subscriber would have): the
//! RTBL view (5) lists the feed and its entries, a stream to a listed domain carries the
//! "listed" mark, and `e` on a listed domain shows why it is treated as it is, over the view,
//! until any key. Needs tmux (installed by .ci/run).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use drawbridge::control::{self, Request};
use drawbridge::domain::Domain;
use drawbridge::rtbl::report::Listing;
use drawbridge::rtbl::{Change, Entry, FeedKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtbl_view_listed_mark_and_explain_from_the_keyboard() {
    let dns = Dns::start().await;
    let _a = start_published("a.test", &dns, "").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    dns.add_a("xmpp.b.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_srv("b.test", 0, 5, "xmpp.b.test", port).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sock = data.join("control.sock");
    // a.test listed (its report carrying a terminal escape), gone.test listed and retracted.
    {
        let store = drawbridge::store::Store::open(&data).unwrap();
        let feed = FeedKey { service: "xmppbl.test".into(), node: "spam_source_domains".into() };
        let entry = |d: &str, text: &str| Entry {
            domain: Domain::parse(d).unwrap(),
            listing: Listing { reason: Some("urn:xmpp:reporting:spam".into()), text: Some(text.into()), block_strangers: false },
            first_seen_ms: 1_767_225_600_000,
            last_seen_ms: 1_767_225_600_000,
        };
        store.rtbl_apply(&feed, &Change::Added(entry("a.test", "relay\u{1b}[31m spam"))).unwrap();
        store.rtbl_apply(&feed, &Change::Added(entry("gone.test", "old"))).unwrap();
        store.rtbl_apply(&feed, &Change::Retracted { domain: Domain::parse("gone.test").unwrap(), at_ms: 1_767_229_200_000 }).unwrap();
        store.flush().await.unwrap();
    }
    let cfg = dir.path().join("b.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomains = [\"b.test\"]\nlisten = [\"127.0.0.1:{port}\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\n[[rtbl]]\nservice = \"xmppbl.test\"\n",
            data.display(),
            dns.addr
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_drawbridge");
    let serve =
        Serve(Command::new(bin).arg("--config").arg(&cfg).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let t0 = Instant::now();
    while control::request(&sock, &Request::Status).await.is_err() {
        assert!(t0.elapsed() < *WAIT, "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A stream to the listed a.test.
    let r = control::request(&sock, &Request::Probe { domain: "a.test".into(), from: None }).await.unwrap();
    let report: drawbridge::engine::ProbeReport = serde_json::from_value(r.data.unwrap()).unwrap();
    assert!(report.ok, "{:?}", report.error);

    let attach = Tmux::start(&format!("db-rtbl-{port}"), &format!("{bin} attach --socket {}", sock.display()));
    attach.wait_for(&["drawbridge", "b.test", "5 RTBL"]).await;
    let s = attach.wait_for(&["a.test [listed]", "established"]).await;
    assert!(!s.contains('\u{1b}'), "{s}");
    attach.keys(&["5"]);
    let s = attach
        .wait_for(&["Real-time blocklists (1)", "xmppbl.test spam_source_domains", "Listed domains (1 listed, 1 retracted kept)"])
        .await;
    assert!(s.contains("a.test") && s.contains("relay\\x1b[31m spam"), "the report, escaped: {s}");
    assert!(s.contains("gone.test") && s.contains("retracted 2026-01-01 01:00:00"), "{s}");
    // The first entry (a.test, in force) selected: explain it.
    attach.keys(&["g", "e"]);
    let s = attach.wait_for(&["Explain (any key closes)", "a.test: ", "decided by:", "real-time blocklist"]).await;
    assert!(s.contains("rules, in the order applied"), "{s}");
    attach.keys(&["x"]);
    let t0 = Instant::now();
    while attach.screen().contains("Explain (any key closes)") {
        assert!(t0.elapsed() < *WAIT, "any key closes the explanation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    attach.wait_for(&["Listed domains"]).await;
    // K keeps a.test's listing as the operator's block, with a reason.
    attach.keys(&["K"]);
    attach.wait_for(&["keep a.test's listing as your block"]).await;
    attach.keys(&["confirmed", "Enter"]);
    let s =
        attach.wait_for(&["a.test: blocked, keeping a listing in force by xmppbl.test; closed 2 stream(s) — kept after a listing"]).await;
    assert!(!s.contains('\u{1b}'), "{s}");
    let r = control::request(&sock, &Request::Domain { domain: "a.test".into() }).await.unwrap();
    let report: drawbridge::engine::DomainReport = serde_json::from_value(r.data.unwrap()).unwrap();
    assert_eq!(report.record.map(|r| r.state), Some(drawbridge::policy::DomainState::Blocked));
    assert!(report.policy_log[0].who.contains("uid"), "attributed to the attached user: {:?}", report.policy_log[0]);
    attach.keys(&["q"]);
    drop(serve);
}

/// The `serve` process, ended when the test ends (also when it fails).
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
