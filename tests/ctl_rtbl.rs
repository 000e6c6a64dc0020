//! The operator's view of the real-time blocklists through the real `drawbridge ctl` binary
//! against a running engine given a feed's entries and status as its subscriber persists and
//! applies them: `ctl rtbl` for a human and as JSON (a service's
//! hostile report text escaped), `ctl domain` showing a domain's listings with their reports,
//! `ctl keep` turning a listing into the operator's decision, and the snapshot the dashboard
//! builds its "listed" marks from.

mod common;

use common::*;
use drawbridge::domain::Domain;
use drawbridge::engine::Engine;
use drawbridge::policy::DomainState;
use drawbridge::rtbl::report::Listing;
use drawbridge::rtbl::{Action, Change, Entry, FeedKey, FeedState, FeedStatus};
use std::process::Command;

fn ctl(sock: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("ctl").arg("--socket").arg(sock).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn ctl_async(sock: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let sock = sock.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || ctl(&sock, &args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

/// What a service may put in a report: a terminal escape, a forged line, a bidi override.
const HOSTILE: &str = "bots\u{1b}[2J\nFORGED: all clear\u{202e}";

const FEEDS: &str = r#"
[[rtbl]]
service = "xmppbl.test"
action = "block"

[[rtbl]]
service = "pubsub.other.test"
node = "mine"
"#;

fn entry(d: &str, reason: Option<&str>, text: Option<&str>, strangers: bool, t: u64) -> Entry {
    Entry {
        domain: Domain::parse(d).unwrap(),
        listing: Listing { reason: reason.map(str::to_owned), text: text.map(str::to_owned), block_strangers: strangers },
        first_seen_ms: t,
        last_seen_ms: t,
    }
}

/// The first feed's entries and status, as its subscriber persists and applies them:
/// spam.example listed with a hostile report, old.example listed then retracted. The second
/// feed lists spam.example, with no status stored.
fn seed(engine: &Engine) {
    let t = engine.testing();
    let feed = FeedKey { service: "xmppbl.test".into(), node: "spam_source_domains".into() };
    let at = 1_767_225_600_000; // 2026-01-01
    t.rtbl_change(&feed, &Change::Added(entry("spam.example", Some("urn:xmpp:reporting:spam"), Some(HOSTILE), true, at)));
    t.rtbl_change(&feed, &Change::Added(entry("old.example", Some("urn:xmpp:reporting:spam"), None, false, at)));
    t.rtbl_change(&feed, &Change::Retracted { domain: Domain::parse("old.example").unwrap(), at_ms: at + 3_600_000 });
    t.rtbl_put_status(&FeedStatus {
        service: feed.service.clone(),
        node: feed.node.clone(),
        action: Action::Block,
        state: FeedState::Subscribed,
        entries: 1,
        last_sync_ms: Some(at + 7_200_000),
        last_change_ms: Some(at + 3_600_000),
        ignored_foreign: 1,
        ignored_invalid: 2,
        ignored_over_limit: 3,
        ignored_protected: 0,
    });
    let other = FeedKey { service: "pubsub.other.test".into(), node: "mine".into() };
    t.rtbl_change(&other, &Change::Added(entry("spam.example", None, Some("from mine"), false, at + 60_000)));
}

/// An engine on b.test following the two feeds, seeded, with its control socket.
async fn start(dns: &Dns) -> (Engine, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text("b.test", dir.path(), dns.addr, FEEDS);
    let settings = drawbridge::config::Settings::parse(&text, &dir.path().join("drawbridge.toml")).unwrap();
    let mut engine = Engine::start(settings).await.unwrap();
    seed(&engine);
    drawbridge::control::start(&mut engine).unwrap();
    let sock = engine.settings().control_socket.clone();
    (engine, dir, sock)
}

fn no_raw_controls(out: &str) {
    assert!(!out.contains('\u{1b}') && !out.contains('\u{202e}'), "a raw escape reached the terminal: {out:?}");
    assert!(!out.lines().any(|l| l.starts_with("FORGED")), "a forged line: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_rtbl_shows_each_feed_and_its_entries_escaped() {
    let dns = Dns::start().await;
    let (engine, _dir, sock) = start(&dns).await;

    let (ok, out, err) = ctl_async(&sock, &["rtbl"]).await;
    assert!(ok, "{out}{err}");
    no_raw_controls(&out);
    // The feeds in the configuration's order; the state is whatever its subscriber stored
    // last (a live subscriber may have moved it on), the action the configuration's.
    let first = out.find("xmppbl.test node spam_source_domains: ").unwrap_or_else(|| panic!("{out}"));
    let second = out.find("pubsub.other.test node mine: ").unwrap_or_else(|| panic!("{out}"));
    assert!(first < second, "{out}");
    assert!(out[first..second].lines().next().unwrap().ends_with(", action block"), "{out}");
    assert!(out[second..].lines().next().unwrap().ends_with(", action flag"), "{out}");
    assert!(out.contains("(max 10000)"), "{out}");
    let spam = out.lines().find(|l| l.trim_start().starts_with("spam.example")).unwrap_or_else(|| panic!("{out}"));
    assert!(spam.contains("urn:xmpp:reporting:spam") && spam.contains("first seen 2026-01-01 00:00:00 UTC"), "{spam}");
    assert!(spam.contains("block-strangers") && !spam.contains("RETRACTED"), "{spam}");
    assert!(out.contains("report: bots\\x1b[2J\\nFORGED: all clear\\u{202e}"), "the report, escaped: {out}");
    let old = out.lines().find(|l| l.trim_start().starts_with("old.example")).unwrap_or_else(|| panic!("{out}"));
    assert!(old.contains("RETRACTED 2026-01-01 01:00:00 UTC"), "{old}");
    let listed = out.find("listed (1):").unwrap_or_else(|| panic!("{out}"));
    let retracted = out.find("retracted (1):").unwrap_or_else(|| panic!("{out}"));
    assert!(listed < out.find("spam.example").unwrap() && retracted < out.find("old.example").unwrap(), "{out}");

    let (ok, json, err) = ctl_async(&sock, &["rtbl", "--json"]).await;
    assert!(ok, "{json}{err}");
    assert!(!json.contains('\u{1b}') && !json.contains('\u{202e}'), "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let feeds = v["feeds"].as_array().unwrap();
    assert_eq!(feeds.len(), 2, "{json}");
    let (a, b) = (&feeds[0], &feeds[1]);
    assert_eq!((a["status"]["service"].as_str(), a["status"]["node"].as_str()), (Some("xmppbl.test"), Some("spam_source_domains")));
    assert_eq!(a["status"]["action"], "block");
    assert_eq!(a["max_entries"], 10_000);
    let entries = a["entries"].as_array().unwrap();
    let by = |d: &str| entries.iter().find(|e| e["domain"] == d).unwrap_or_else(|| panic!("{d}: {json}"));
    assert_eq!(by("spam.example")["text"].as_str(), Some(HOSTILE), "JSON carries the text as it is (escaped as JSON)");
    assert_eq!(by("spam.example")["block_strangers"], true);
    assert!(by("spam.example")["retracted_ms"].is_null());
    assert_eq!(by("old.example")["retracted_ms"], 1_767_225_600_000u64 + 3_600_000);
    assert_eq!((b["status"]["service"].as_str(), b["status"]["action"].as_str()), (Some("pubsub.other.test"), Some("flag")));
    assert!(b["status"]["state"]["state"].is_string(), "the state as README gives it: {json}");
    assert_eq!(b["status"]["entries"], 0, "no status stored: none counted");
    assert_eq!(b["entries"].as_array().map(Vec::len), Some(1));

    // The same through the engine's door, typed.
    let r = match ask(&engine, drawbridge::engine::Request::Rtbl).await {
        drawbridge::engine::Reply::Rtbl(r) => *r,
        other => panic!("not an RTBL report: {other:?}"),
    };
    assert_eq!(r.feeds.len(), 2);
    assert_eq!(r.listed().keys().collect::<Vec<_>>(), ["spam.example"], "retracted entries are not listed");
    // What the dashboard's "listed" marks are built from: the snapshot carries it.
    let snap = engine.subscribe().snapshot;
    assert_eq!(snap.rtbl, r);
    assert_eq!(
        snap.rtbl.listed()["spam.example"],
        [format!("listed by xmppbl.test: {HOSTILE}"), "listed by pubsub.other.test: from mine".to_owned()]
    );
    engine.shutdown().await;
}

/// A feed configured but with no status stored yet (its subscriber has not written one) is
/// shown as subscribing with no entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_with_nothing_stored_is_subscribing() {
    let dns = Dns::start().await;
    let s = start_server("b.test", &dns, "[[rtbl]]\nservice = \"fresh.test\"\naction = \"hold\"\n").await;
    let r = match ask(&s.engine, drawbridge::engine::Request::Rtbl).await {
        drawbridge::engine::Reply::Rtbl(r) => *r,
        other => panic!("not an RTBL report: {other:?}"),
    };
    assert_eq!(r.feeds.len(), 1);
    let f = &r.feeds[0];
    assert_eq!((f.status.service.as_str(), f.status.node.as_str(), f.status.action), ("fresh.test", "spam_source_domains", Action::Hold));
    assert!(f.entries.is_empty() && f.status.entries == 0 && f.status.last_sync_ms.is_none(), "{f:?}");
    // Subscribing until its subscriber stores a status (a live one may have failed to reach
    // the service already: fresh.test is nowhere).
    assert!(matches!(f.status.state, FeedState::Subscribing | FeedState::Error(_)), "{:?}", f.status);
    // With no [[rtbl]] at all: no feeds, said so.
    let mut plain = start_server("c.test", &dns, "").await;
    drawbridge::control::start(&mut plain.engine).unwrap();
    let (ok, out, _) = ctl_async(&plain.engine.settings().control_socket.clone(), &["rtbl"]).await;
    assert!(ok && out.contains("no real-time blocklists followed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_domain_shows_listings_and_keep_makes_them_the_operators() {
    let dns = Dns::start().await;
    let (engine, _dir, sock) = start(&dns).await;

    let (ok, out, err) = ctl_async(&sock, &["domain", "spam.example"]).await;
    assert!(ok, "{out}{err}");
    no_raw_controls(&out);
    assert!(out.starts_with("spam.example: refused: spam.example is listed as a spam source by xmppbl.test"), "{out}");
    assert!(out.contains("real-time blocklists:\nxmppbl.test node spam_source_domains: listed now\n"), "{out}");
    assert!(out.contains("reason urn:xmpp:reporting:spam; first seen 2026-01-01 00:00:00 UTC"), "{out}");
    assert!(out.contains("block-strangers recommended"), "{out}");
    assert!(out.contains("report: bots\\x1b[2J\\nFORGED: all clear\\u{202e}"), "{out}");
    // Every configured feed's listing, in the configuration's order (whether or not its
    // subscriber stored a status).
    assert!(out.contains("pubsub.other.test node mine: listed now\n  reason none given; first seen 2026-01-01 00:01:00 UTC"), "{out}");
    assert!(out.find("xmppbl.test node").unwrap() < out.find("pubsub.other.test node").unwrap(), "{out}");
    let (ok, out, _) = ctl_async(&sock, &["domain", "old.example"]).await;
    assert!(ok && out.contains("xmppbl.test node spam_source_domains: retracted 2026-01-01 01:00:00 UTC"), "{out}");
    let (ok, out, _) = ctl_async(&sock, &["domain", "clean.example"]).await;
    assert!(ok && !out.contains("real-time blocklists"), "{out}");

    // Keep the retracted listing: an operator's block, the listing its provenance.
    let mut events = engine.subscribe();
    let (ok, out, err) = ctl_async(&sock, &["keep", "old.example", "--reason", "still spamming"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with(
            "old.example: blocked (kept after a listing by xmppbl.test (node spam_source_domains): spam; the operator: still spamming)\n"
        ),
        "{out}"
    );
    assert!(out.contains("kept: xmppbl.test node spam_source_domains: retracted 2026-01-01 01:00:00 UTC"), "{out}");
    wait_event(&mut events, "old.example's change", |e| {
        matches!(e, drawbridge::engine::events::Event::DomainChanged { record } if record.domain == "old.example" && record.state == DomainState::Blocked)
    })
    .await;
    let report = domain_report(&engine, "old.example").await;
    let rec = report.record.expect("a record");
    assert_eq!(rec.state, DomainState::Blocked);
    assert!(rec.who.as_deref().is_some_and(|w| w.contains("uid")), "attributed to the Unix user: {rec:?}");
    assert!(report.policy_log[0].action == "block" && report.policy_log[0].reason.as_deref().is_some_and(|r| r.contains("xmppbl.test")));
    let explained = match ask(&engine, drawbridge::engine::Request::Explain { domain: "old.example".into() }).await {
        drawbridge::engine::Reply::Explain(r) => *r,
        other => panic!("{other:?}"),
    };
    assert_eq!(explained.decided_by, drawbridge::policy::Rule::OperatorDecision);
    assert_eq!(explained.verdict, drawbridge::engine::ExplainVerdict::Refuse);
    // Again: nothing changes, and it says so.
    let (ok, out, _) = ctl_async(&sock, &["keep", "old.example", "--reason", "still spamming"]).await;
    assert!(ok && out.lines().next().unwrap().ends_with("— unchanged"), "{out}");

    // Keep before the retract, as JSON: the listing in force (of the feed whose action weighs
    // most). Until then the listing decides.
    let explained = match ask(&engine, drawbridge::engine::Request::Explain { domain: "spam.example".into() }).await {
        drawbridge::engine::Reply::Explain(r) => *r,
        other => panic!("{other:?}"),
    };
    assert_eq!(explained.decided_by, drawbridge::policy::Rule::Rtbl);
    assert!(explained.marks.iter().any(|m| m == "listed by pubsub.other.test: from mine"), "{:?}", explained.marks);
    let (ok, json, err) = ctl_async(&sock, &["keep", "spam.example", "--json"]).await;
    assert!(ok, "{json}{err}");
    assert!(!json.contains('\u{1b}'), "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["record"]["state"].as_str(), v["changed"].as_bool()), (Some("blocked"), Some(true)), "{json}");
    assert_eq!(v["listing"]["domain"], "spam.example");
    assert!(v["listing"]["retracted_ms"].is_null());
    assert_eq!(
        v["record"]["reason"].as_str(),
        Some(format!("kept after a listing by xmppbl.test (node spam_source_domains): {HOSTILE}").as_str())
    );
    let explained = match ask(&engine, drawbridge::engine::Request::Explain { domain: "spam.example".into() }).await {
        drawbridge::engine::Reply::Explain(r) => *r,
        other => panic!("{other:?}"),
    };
    assert_eq!(explained.decided_by, drawbridge::policy::Rule::OperatorDecision, "the operator's now");

    // Never listed: a refusal naming the domain and what to do instead.
    let (ok, out, err) = ctl_async(&sock, &["keep", "never.example"]).await;
    assert!(!ok, "{out}");
    assert!(err.contains("never.example is not listed by any real-time blocklist followed"), "{err}");
    assert!(err.contains("drawbridge ctl block never.example"), "{err}");
    assert!(record(&engine, "never.example").await.is_none(), "nothing written");
    let e = engine.execute(drawbridge::engine::Request::Keep { domain: "b.test".into(), reason: None }).await.unwrap_err();
    assert!(matches!(e, drawbridge::engine::EngineError::Hosted(_)), "{e}");
    let e = engine.execute(drawbridge::engine::Request::Keep { domain: "not a domain".into(), reason: None }).await.unwrap_err();
    assert!(matches!(e, drawbridge::engine::EngineError::InvalidDomain { .. }), "{e}");
    engine.shutdown().await;
}
