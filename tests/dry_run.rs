//! Policy dry runs (`ctl … --dry-run`) with the real binary against a running engine: two
//! real peers over TLS on loopback, one live and one in the recorded history (its streams
//! closed by a restart), and older history written to the sled store before the start.
//! Each dry run names the live streams the change would close and the domains seen in the
//! window it would refuse, hold or allow; nothing changes — no record, no policy log entry,
//! no event, no stream closed.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use drawbridge::engine::events::{AuthMethod, ConnSnapshot, ConnState, Direction, Event, PairInfo, PairStatus};
use drawbridge::engine::{ExplainVerdict, PreviewReport};
use drawbridge::policy::{DomainRecord, DomainState, Rule};

const DAY: u64 = 86_400_000;

fn ctl(sock: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("ctl").arg("--socket").arg(sock).args(args).output().unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

async fn run_ctl(sock: &std::path::Path, args: &[&str]) -> String {
    let (sock, args): (std::path::PathBuf, Vec<String>) = (sock.to_owned(), args.iter().map(|s| s.to_string()).collect());
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&sock, &args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap();
    assert!(ok, "{out}");
    out
}

/// `ctl ARGS --dry-run --json`, read back.
async fn dry(sock: &std::path::Path, args: &[&str]) -> PreviewReport {
    let args: Vec<&str> = args.iter().copied().chain(["--dry-run", "--json"]).collect();
    let out = run_ctl(sock, &args).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn names(v: &[drawbridge::engine::DomainImpact]) -> BTreeSet<&str> {
    v.iter().map(|i| i.domain.as_str()).collect()
}

/// A stream of `remote` that ended `ago_ms` ago, as the history keeps it.
fn closed_stream(remote: &str, ago_ms: u64, stanzas_in: u64) -> ConnSnapshot {
    let t = drawbridge::engine::events::now_ms() - ago_ms;
    ConnSnapshot {
        id: format!("old-{remote}"),
        direction: Direction::In,
        kind: Default::default(),
        local: Some("b.test".into()),
        remote: Some(remote.into()),
        peer_addr: Some("127.0.0.1:5269".into()),
        state: ConnState::Closed,
        stream_id: None,
        tls: None,
        pairs: vec![PairInfo { local: "b.test".into(), remote: remote.into(), status: PairStatus::Valid, method: AuthMethod::Dialback }],
        opened_ms: t - 60_000,
        last_activity_ms: t,
        stanzas_in,
        stanzas_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        close_reason: Some("idle".into()),
        limits: None,
    }
}

/// b.test's streams that carry `domain` authenticated.
fn established(b: &drawbridge::engine::EngineHandle, domain: &str) -> BTreeSet<String> {
    b.connections(false)
        .into_iter()
        .filter(|s| s.pairs.iter().any(|p| p.remote == domain && p.status == PairStatus::Valid))
        .map(|s| s.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_judge_live_streams_and_history_and_change_nothing() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let c = start_published("c.test", &dns, "").await;

    // b.test on a port of its own (kept across its restart), its store seeded with what
    // older history would hold: recent.test 10 days ago, chat.spam.test 2 days ago,
    // stale.test 40 days ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    dns.add_a("xmpp.b.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_srv("b.test", 0, 5, "xmpp.b.test", port).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = drawbridge::store::Store::open(&dir.path().join("data")).unwrap();
        let now = drawbridge::engine::events::now_ms();
        for (d, ago, stanzas) in [("recent.test", 10 * DAY, 12), ("chat.spam.test", 2 * DAY, 5), ("stale.test", 40 * DAY, 99)] {
            let rec = DomainRecord {
                domain: d.into(),
                first_seen_ms: Some(now - ago - DAY),
                last_seen_ms: Some(now - ago),
                streams_in: 1,
                stanzas_in: stanzas,
                ..Default::default()
            };
            store.put_domain(&rec, None).unwrap();
            store.add_history(&closed_stream(d, ago, stanzas)).unwrap();
        }
        store.flush().await.unwrap();
    }
    let settings = || {
        let extra = format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n");
        drawbridge::config::Settings::parse(&config_text("b.test", dir.path(), dns.addr, &extra), &dir.path().join("drawbridge.toml"))
            .unwrap()
    };
    // c.test federates with b, then b restarts: c's streams are closed, in the history.
    let b = drawbridge::engine::Engine::start(settings()).await.unwrap();
    assert!(within("c's probe", c.engine.probe("b.test", None)).await.ok);
    b.shutdown().await;
    let mut b = drawbridge::engine::Engine::start(settings()).await.unwrap();
    drawbridge::control::start(&mut b).unwrap();
    let sock = b.settings().control_socket.clone();
    // a.test federates now: its streams are live.
    assert!(within("a's probe", a.engine.probe("b.test", None)).await.ok);
    let a_streams = established(&b, "a.test");
    assert!(!a_streams.is_empty());
    assert!(established(&b, "c.test").is_empty(), "c.test's streams ended with the restart");
    let mut events = b.subscribe();

    // 1. block a.test: its live streams would close; it is newly refused; c.test is not.
    let p = dry(&sock, &["block", "a.test", "--reason", "dry"]).await;
    assert!(p.changes, "{p:?}");
    assert_eq!(p.change, "block a.test");
    assert_eq!((p.records[0].domain.as_str(), p.records[0].from, p.records[0].to), ("a.test", DomainState::Unknown, DomainState::Blocked));
    let closing: BTreeSet<String> = p.closing.iter().map(|c| c.id.clone()).collect();
    assert!(closing.is_superset(&a_streams), "{closing:?} ⊉ {a_streams:?}");
    assert!(p.closing.iter().all(|c| c.domain == "a.test" && c.reason == "a.test is blocked: dry"), "{p:?}");
    assert_eq!(names(&p.newly_refused), BTreeSet::from(["a.test"]));
    let a_seen = &p.newly_refused[0];
    assert_eq!((a_seen.before.verdict, a_seen.after.verdict), (ExplainVerdict::Allow, ExplainVerdict::Refuse));
    assert_eq!(a_seen.after.decided_by, Rule::OperatorDecision);
    assert!(a_seen.live_streams >= a_streams.len() as u64 && a_seen.last_seen_ms.is_some(), "{a_seen:?}");
    assert!(a_seen.stanzas_in + a_seen.stanzas_out >= 1, "the probe and its answer: {a_seen:?}");
    assert_eq!(p.target.as_ref().map(|t| t.after.verdict), Some(ExplainVerdict::Refuse));
    assert!(p.newly_allowed.is_empty() && p.newly_held.is_empty());
    // The same, for a human.
    let out = run_ctl(&sock, &["block", "a.test", "--reason", "dry", "--dry-run"]).await;
    assert!(out.starts_with("dry run: block a.test — nothing has been changed\n"), "{out}");
    assert!(out.contains(&format!("would close {} live stream(s):", p.closing.len())), "{out}");
    assert!(out.contains("newly refused (1):\n  a.test: allowed → refused (operator decision): a.test is blocked: dry\n"), "{out}");

    // 2. Allowlist mode: every domain seen in 30 days and not approved is newly refused,
    // c.test from the history among them; stale.test was seen before the window.
    let p = dry(&sock, &["mode", "allowlist"]).await;
    assert_eq!(p.mode.as_ref().map(|m| (m.from.as_str(), m.to.as_str())), Some(("open", "allowlist")));
    assert_eq!(names(&p.newly_refused), BTreeSet::from(["a.test", "c.test", "chat.spam.test", "recent.test"]));
    let c_seen = p.newly_refused.iter().find(|i| i.domain == "c.test").unwrap();
    assert_eq!(c_seen.live_streams, 0);
    assert!(c_seen.streams >= 1 && c_seen.stanzas_in >= 1 && c_seen.stanzas_out >= 1, "c's ping in, its pong out: {c_seen:?}");
    assert!(c_seen.after.reason.as_deref() == Some("c.test is not on the allowlist (policy mode allowlist)"), "{c_seen:?}");
    let recent = p.newly_refused.iter().find(|i| i.domain == "recent.test").unwrap();
    assert_eq!((recent.streams, recent.stanzas_in, recent.live_streams), (1, 12, 0));
    assert!(closing.is_subset(&p.closing.iter().map(|c| c.id.clone()).collect()));
    // --days: a longer window finds stale.test, a shorter one loses recent.test.
    let p = dry(&sock, &["mode", "allowlist", "--days", "60"]).await;
    assert!(names(&p.newly_refused).contains("stale.test"), "{p:?}");
    let p = dry(&sock, &["mode", "allowlist", "--days", "5"]).await;
    assert_eq!(names(&p.newly_refused), BTreeSet::from(["a.test", "c.test", "chat.spam.test"]));
    let p = dry(&sock, &["mode", "approval"]).await;
    assert_eq!(names(&p.newly_held), BTreeSet::from(["a.test", "c.test", "chat.spam.test", "recent.test"]));
    assert!(p.closing.is_empty(), "held, not closed: {p:?}");

    // 3. A blacklist entry covers its subdomains: chat.spam.test, seen two days ago.
    let p = dry(&sock, &["blacklist", "spam.test", "--reason", "spam"]).await;
    assert_eq!(names(&p.newly_refused), BTreeSet::from(["chat.spam.test"]));
    assert_eq!(p.newly_refused[0].after.reason.as_deref(), Some("chat.spam.test is blacklisted through spam.test: spam"));
    assert!(p.closing.is_empty());
    // An imported list the same way, with its bad lines.
    let list = dir.path().join("community.txt");
    std::fs::write(&list, "# community\nspam.test # spam\nnot a domain\na.test\n").unwrap();
    let p = dry(&sock, &["blacklist", "import", list.to_str().unwrap()]).await;
    assert_eq!(p.source.as_deref(), Some("community.txt"));
    assert_eq!(p.records.iter().map(|r| r.domain.as_str()).collect::<Vec<_>>(), ["spam.test", "a.test"]);
    assert_eq!(p.invalid.iter().map(|b| b.line).collect::<Vec<_>>(), [3]);
    assert_eq!(names(&p.newly_refused), BTreeSet::from(["a.test", "chat.spam.test"]));
    assert!(closing.is_subset(&p.closing.iter().map(|c| c.id.clone()).collect()));
    let out = run_ctl(&sock, &["blacklist", "import", list.to_str().unwrap(), "--dry-run"]).await;
    assert!(out.contains("would add 2 domain(s) from community.txt: spam.test, a.test\n"), "{out}");
    assert!(out.contains("skipped line 3: \"not a domain\""), "{out}");

    // The socket's older form of an import's dry run answers as an import, from the preview.
    let text = std::fs::read_to_string(&list).unwrap();
    let Reply::Import(r) = ask(&b, Request::BlacklistImport { text, source: Some("community.txt".into()), dry_run: true }).await else {
        panic!("an import answers as an import")
    };
    assert!(r.dry_run && r.added == ["spam.test", "a.test"] && r.invalid.len() == 1, "{r:?}");
    assert!(closing.is_subset(&r.closed_streams.iter().cloned().collect()), "{r:?}");

    // Nothing changed: no record, the mode, the streams, no policy log entry, no event.
    assert_eq!(b.status().mode, "open");
    for d in ["a.test", "spam.test", "chat.spam.test", "c.test"] {
        let r = domain_report(&b, d).await;
        assert!(r.record.as_ref().is_none_or(|r| r.state == DomainState::Unknown), "{d}: {:?}", r.record);
        assert!(r.policy_log.is_empty(), "{d}: {:?}", r.policy_log);
    }
    assert!(a_streams.is_subset(&established(&b, "a.test")), "the dry runs closed no stream");

    // 4. The real block: the first policy event is its own; it closes what the dry run said.
    let out = run_ctl(&sock, &["block", "a.test", "--reason", "real"]).await;
    assert!(out.starts_with("a.test: blocked (real)"), "{out}");
    let ev =
        wait_event(&mut events, "the first policy event", |e| matches!(e, Event::DomainChanged { .. } | Event::ModeChanged { .. })).await;
    assert!(
        matches!(&ev, Event::DomainChanged { record } if record.domain == "a.test" && record.reason.as_deref() == Some("real")),
        "{ev:?}"
    );
    assert_eq!(domain_report(&b, "a.test").await.policy_log.len(), 1, "the dry runs logged nothing");

    // 5. Unblocking it would allow it again; in allowlist mode it would stay refused.
    let p = dry(&sock, &["unblock", "a.test"]).await;
    assert_eq!(names(&p.newly_allowed), BTreeSet::from(["a.test"]));
    assert_eq!(p.newly_allowed[0].before.decided_by, Rule::OperatorDecision);
    run_ctl(&sock, &["mode", "allowlist"]).await;
    let p = dry(&sock, &["unblock", "a.test"]).await;
    assert!(p.newly_allowed.is_empty() && p.newly_refused.is_empty(), "{p:?}");
    let t = p.target.unwrap();
    assert_eq!(
        (t.before.verdict, t.after.verdict, t.after.decided_by),
        (ExplainVerdict::Refuse, ExplainVerdict::Refuse, Rule::FederationMode)
    );
    // Approving c.test would let it in again.
    let p = dry(&sock, &["approve", "c.test"]).await;
    assert_eq!(names(&p.newly_allowed), BTreeSet::from(["c.test"]));
    // A dry run is refused as the command is: a hosted domain, a bad --days.
    let sock2 = sock.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&sock2, &["block", "b.test", "--dry-run"])).await.unwrap();
    assert!(!ok && out.contains("b.test is hosted here"), "{out}");
    let sock2 = sock.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&sock2, &["block", "x.test", "--dry-run", "--days", "0"])).await.unwrap();
    assert!(!ok && out.contains("--days"), "{out}");
    drop(dir);
}

/// A preview's change applied with the generation it judged ([`Request::Change`], what the
/// dashboard sends) is made while the policy is as previewed, and refused once another
/// change came in between; one dry run at a time; the mode in force again does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_applies_only_to_the_policy_it_judged() {
    use drawbridge::engine::PolicyChange;
    let dns = Dns::start().await;
    let mut b = start_published("b.test", &dns, "").await;
    drawbridge::control::start(&mut b.engine).unwrap();
    let sock = b.engine.settings().control_socket.clone();
    let preview = |change: PolicyChange| Request::Preview { change, days: None };
    let block = |d: &str| PolicyChange::Block { domain: d.into(), for_secs: None, reason: None };

    // As previewed: made.
    let Reply::Preview(p) = ask(&b.engine, preview(block("x.test"))).await else { panic!("a preview") };
    let c = change(&b.engine, Request::Change { change: block("x.test"), expect_generation: Some(p.generation) }).await;
    assert!(c.changed && c.record.state == DomainState::Blocked, "{c:?}");

    // Another operator's change in between: refused, nothing changed; previewed again, made.
    let approve = PolicyChange::Approve { domain: "y.test".into(), reason: None };
    let Reply::Preview(p) = ask(&b.engine, preview(approve.clone())).await else { panic!("a preview") };
    change(&b.engine, Request::Block { domain: "z.test".into(), for_secs: None, reason: None }).await;
    let stale = Request::Change { change: approve.clone(), expect_generation: Some(p.generation) };
    let err = b.engine.acting_as("tester").execute(stale.clone()).await.unwrap_err();
    assert_eq!(err.to_string(), "the policy changed since the preview; review it again");
    assert!(record(&b.engine, "y.test").await.is_none(), "nothing changed");
    // The same over the socket, as the dashboard attached to it gets it.
    let r = drawbridge::control::request(&sock, &stale).await.unwrap();
    assert!(!r.ok && r.error.as_deref() == Some("the policy changed since the preview; review it again"), "{r:?}");
    let Reply::Preview(p) = ask(&b.engine, preview(approve.clone())).await else { panic!("a preview") };
    let conn = drawbridge::control::Connection::new(sock.clone());
    let fresh = Request::Change { change: approve, expect_generation: Some(p.generation) };
    let Ok(Reply::Change(c)) = conn.request(&fresh).await else { panic!("a change") };
    assert!(c.changed && c.record.state == DomainState::Approved, "{c:?}");

    // One dry run at a time: while one runs, another is refused, saying why.
    let held = b.engine.testing().hold_preview();
    let err = b.engine.acting_as("tester").execute(preview(block("w.test"))).await.unwrap_err();
    assert!(err.to_string().contains("another dry run is being computed"), "{err}");
    drop(held);
    ask(&b.engine, preview(block("w.test"))).await;

    // The mode in force again: unchanged, nothing announced (the first mode event is the
    // real change's), the dry run saying as much.
    let mut events = b.engine.subscribe();
    let Reply::Preview(p) = ask(&b.engine, preview(PolicyChange::Mode { mode: "open".into() })).await else { panic!("a preview") };
    assert!(!p.changes);
    let Reply::Mode(m) = ask(&b.engine, Request::Mode { mode: "open".into() }).await else { panic!("a mode report") };
    assert!(!m.changed && m.mode == "open", "{m:?}");
    let (ok, out) = tokio::task::spawn_blocking({
        let sock = sock.clone();
        move || ctl(&sock, &["mode", "open"])
    })
    .await
    .unwrap();
    assert!(ok && out == "mode open — unchanged\n", "{out}");
    let Reply::Mode(m) = ask(&b.engine, Request::Mode { mode: "approval".into() }).await else { panic!("a mode report") };
    assert!(m.changed);
    let ev = wait_event(&mut events, "the mode event", |e| matches!(e, Event::ModeChanged { .. })).await;
    assert!(matches!(&ev, Event::ModeChanged { mode } if mode == "approval"), "{ev:?}");
}
