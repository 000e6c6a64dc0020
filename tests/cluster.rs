//! Several nodes on one PostgreSQL store (issue 20): what they share, what each keeps, and
//! what a node does when the database goes away. PostgreSQL is Debian's, started by the
//! test in a temp dir on a Unix socket (tests/common/postgres.rs).

mod common;

use common::postgres::Postgres;
use common::*;
use std::time::{Duration, Instant};

use drawbridge::engine::Request;
use drawbridge::engine::events::{AuthMethod, Direction, Event, VerificationOutcome, VerificationResult};
use drawbridge::policy::DomainState;
use drawbridge::proto::dialback::{Answer, DbElement, derive_key};
use drawbridge::proto::stream::StreamErrorCondition;

/// `[store]` and `[cluster]` for a node on `pg`.
fn on(pg: &Postgres, node: &str) -> String {
    on_with(pg, node, "")
}

/// [`on`], with more `[store]` keys.
fn on_with(pg: &Postgres, node: &str, store: &str) -> String {
    format!("[store]\nbackend = \"postgres\"\npostgres = \"{}\"\n{store}\n[cluster]\nnode = \"{node}\"\n", pg.conninfo())
}

/// Wait (bounded) until `engine`'s store status satisfies `ok`.
async fn store_becomes(engine: &drawbridge::engine::EngineHandle, what: &str, ok: impl Fn(&drawbridge::store::StoreStatus) -> bool) {
    within(what, async {
        // The store's state has no event: read it until it is so.
        while !ok(&engine.status().store) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// PostgreSQL, started off the runtime's threads (initdb takes a second or two).
async fn postgres() -> Postgres {
    tokio::task::spawn_blocking(Postgres::start).await.unwrap()
}

/// What `server` answers to a `db:verify` from `peer.test` for `home.test` on stream `S1`.
async fn verify_answer(server: &TestServer, key: &str) -> Answer {
    let (mut p, _, _) = tls_peer(server, "peer.test").await;
    p.send_el(&drawbridge::proto::dialback::verify_request("peer.test", "home.test", "S1", key)).await;
    loop {
        let el = p.next_el().await.expect("db:verify answer");
        if let Some(db) = DbElement::parse(&el) {
            assert!(db.verify);
            return db.answer.expect("an answer");
        }
    }
}

/// XEP-0185: a key that node A sent is answered as valid by node B (the dialback secret is
/// created once, by the first node, and read by every other), and not by a node with its
/// own store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_node_a_sent_is_valid_on_node_b() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let alone = start_server("home.test", &dns, "").await;
    assert_eq!(a.engine.testing().dialback_secret(), b.engine.testing().dialback_secret());
    assert_eq!(pg.psql("SELECT count(*) FROM drawbridge_meta WHERE key = 'dialback_secret'"), "1");
    let key = derive_key(a.engine.testing().dialback_secret(), "peer.test", "home.test", "S1");
    assert_eq!(verify_answer(&b, &key).await, Answer::Valid);
    assert_eq!(verify_answer(&alone, &key).await, Answer::Invalid);
}

/// One node on PostgreSQL: an operator's decision is in the database when acknowledged (with
/// its log entry and the node's name), and a restarted node (a new process on the same
/// database, an empty data dir) starts from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_in_the_database_when_acknowledged_and_survive_a_restart() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    change(&a.engine, Request::Block { domain: "spam.test".into(), for_secs: None, reason: Some("flood".into()) }).await;
    assert_eq!(pg.psql("SELECT decision->>'state' FROM domains WHERE domain = 'spam.test'"), "blocked");
    assert_eq!(pg.psql("SELECT node || ' ' || (record->>'action') FROM policy_log WHERE domain = 'spam.test'"), "edge-1 block");
    a.engine.shutdown().await;
    let again = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let drawbridge::engine::Reply::Domain(report) = ask(&again.engine, Request::Domain { domain: "spam.test".into() }).await else {
        panic!("not a domain report")
    };
    let rec = report.record.expect("the decision was read back");
    assert_eq!(rec.state, drawbridge::policy::DomainState::Blocked);
    assert_eq!(rec.reason.as_deref(), Some("flood"));
}

/// The reasons the streams with `remote` closed for, once `n` of them did.
async fn closed_with(events: &mut drawbridge::engine::events::bus::Receiver, remote: &str, n: usize) -> Vec<String> {
    let mut reasons = Vec::new();
    while reasons.len() < n {
        let ev = wait_event(events, "a stream to close", |e| {
            matches!(e, Event::StreamClosed { stream } if stream.remote.as_deref() == Some(remote) || stream.pairs.iter().any(|p| p.remote == remote))
        })
        .await;
        let Event::StreamClosed { stream } = ev else { unreachable!() };
        reasons.push(stream.close_reason.unwrap_or_default());
    }
    reasons
}

/// A block an operator makes on node A reaches node B within a second: B closes its streams
/// with the domain (both directions), and refuses it afterwards, before TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_node_a_closes_node_b_streams_and_node_b_refuses_afterwards() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_published("home.test", &dns, &on(&pg, "edge-2")).await;
    let mut o = hand_played(&b, &dns, "o.test").await;
    let mut events = b.engine.subscribe();
    let asked = Instant::now();
    change(&a.engine, Request::Block { domain: "o.test".into(), for_secs: None, reason: Some("flood".into()) }).await;
    // The peer reads node B's stream error on both streams (B then waits for the peer's
    // `</stream:stream>`, which this one never sends: the close is recorded later).
    for stream in [&mut o.to_server, &mut o.from_server] {
        let e = stream.expect_condition(StreamErrorCondition::PolicyViolation).await;
        assert!(e.text.contains("o.test is blocked: flood"), "{e}");
    }
    let took = asked.elapsed();
    assert!(took <= scaled(Duration::from_secs(1)), "node B closed them {took:?} after the block on node A");
    for reason in closed_with(&mut events, "o.test", 2).await {
        assert!(reason.contains("o.test is blocked: flood"), "{reason}");
    }
    assert!(domain_report(&b.engine, "o.test").await.verdict.starts_with("refused"), "node B refuses o.test now");
    let mut p = RawPeer::connect(b.addr).await;
    p.send(&header("o.test", "home.test")).await;
    let e = p.expect_condition(StreamErrorCondition::PolicyViolation).await;
    assert!(e.text.contains("blocked"), "{e}");
}

/// Approval mode on two nodes: a peer verified on node A is held there (pending, seen by
/// node B too); the operator approves it on node B, and node A delivers what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_on_node_b_releases_what_node_a_holds() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let approval = "[policy]\nmode = \"approval\"\napproval_wait = \"60s\"\n";
    let a = start_published("home.test", &dns, &format!("{}{approval}", on(&pg, "edge-1"))).await;
    let b = start_server("home.test", &dns, &format!("{}{approval}", on(&pg, "edge-2"))).await;
    let mut o = hand_played(&a, &dns, "o.test").await;
    assert_eq!(record(&a.engine, "o.test").await.map(|r| r.state), Some(DomainState::Pending));
    o.to_server.send("<iq type='get' id='held1' from='o.test' to='home.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    // Node B hears of the pending mark (node A's own write, announced when committed).
    let mut events = b.engine.subscribe();
    if record(&b.engine, "o.test").await.map(|r| r.state) != Some(DomainState::Pending) {
        wait_event(
            &mut events,
            "node B to hear o.test is pending",
            |e| matches!(e, Event::DomainChanged { record } if record.domain == "o.test" && record.state == DomainState::Pending),
        )
        .await;
    }
    change(&b.engine, Request::Approve { domain: "o.test".into(), reason: None }).await;
    let pong = o.next_stanza().await;
    assert_eq!((pong.get_attr("id"), pong.get_attr("type")), (Some("held1"), Some("result")), "released on node A: {pong:?}");
    assert_eq!(record(&a.engine, "o.test").await.map(|r| r.state), Some(DomainState::Approved));
}

/// PostgreSQL stopped: both nodes federate on under the last known policy; a policy change
/// fails at once and changes nothing; records wait in `store.buffer` (beyond it they are
/// dropped, and counted), and `ctl status` says so. PostgreSQL back: what waited is written,
/// and a change made right after reaches the other node (which read everything again when it
/// listened again: the notices sent meanwhile are not replayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_stopped_and_restarted() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_published("home.test", &dns, &on_with(&pg, "edge-1", "buffer = 100")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let peer = start_published("peer.test", &dns, "").await;
    tokio::task::block_in_place(|| pg.stop());
    // Federating on, both ways, both nodes.
    // (An answer goes to whichever node the peer's stream reaches: DNS names node A. Node B
    // is seen federating with a peer that connects to it directly.)
    let r = within("peer → node A", peer.engine.probe("home.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let mut o = hand_played(&b, &dns, "o.test").await;
    o.to_server.send("<iq type='get' id='during' from='o.test' to='home.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(o.next_stanza().await.get_attr("id"), Some("during"), "node B answers");
    store_becomes(&a.engine, "node A to see PostgreSQL gone", |s| !s.reachable).await;
    let status = a.engine.status().store;
    assert_eq!((status.backend.as_str(), status.node.as_deref()), ("postgres", Some("edge-1")));
    assert!(status.error.is_some() && status.down_since_ms.is_some(), "{status:?}");
    // A policy change: refused at once, nothing changed.
    let asked = Instant::now();
    let err = a
        .engine
        .acting_as("tester")
        .execute(Request::Block { domain: "peer.test".into(), for_secs: None, reason: None })
        .await
        .expect_err("no change while the store is unreachable")
        .to_string();
    assert!(asked.elapsed() < scaled(Duration::from_secs(1)), "refused after {:?}", asked.elapsed());
    assert!(err.contains("unreachable") && err.contains("nothing was changed") && err.contains("store.postgres"), "{err}");
    assert!(domain_report(&a.engine, "peer.test").await.verdict.starts_with("allowed"), "not blocked after all");
    // Records beyond the buffer are dropped and counted.
    for i in 0..300u64 {
        a.engine.testing().record_outcome(VerificationOutcome {
            time_ms: drawbridge::engine::events::now_ms(),
            stream: format!("s{i}"),
            direction: Direction::In,
            local: "home.test".into(),
            remote: "burst.test".into(),
            method: AuthMethod::Dialback,
            result: VerificationResult::Valid,
            reason: "test".into(),
            peer_addr: None,
        });
    }
    let status = a.engine.status().store;
    assert!(status.backlog <= 100 && status.dropped >= 150, "{status:?}");
    let printed = {
        let mut out = Vec::new();
        drawbridge::cli::print::status(&a.engine.status(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(printed.contains("UNREACHABLE since") && printed.contains("dropped"), "{printed}");
    // Back.
    tokio::task::block_in_place(|| pg.start_again());
    store_becomes(&a.engine, "node A's backlog to be written", |s| s.reachable && s.backlog == 0).await;
    let written = pg.psql("SELECT count(*) FROM outcomes WHERE node = 'edge-1' AND remote = 'peer.test'");
    assert!(written.parse::<u32>().unwrap() >= 1, "the outcome of the probe made while PostgreSQL was away: {written}");
    let kept = pg.psql("SELECT count(*) FROM outcomes WHERE remote = 'burst.test'").parse::<u64>().unwrap();
    let dropped = a.engine.status().store.dropped;
    assert!(kept > 0 && kept < 300, "what the buffer held was written, the rest not: {kept} of 300");
    assert!(dropped >= 300 - kept, "every outcome missing was counted as dropped ({dropped} records dropped in all)");
    let mut events = b.engine.subscribe();
    change(&a.engine, Request::Block { domain: "peer.test".into(), for_secs: None, reason: Some("after the outage".into()) }).await;
    wait_event(
        &mut events,
        "node B to apply the block",
        |e| matches!(e, Event::DomainChanged { record } if record.domain == "peer.test" && record.state == DomainState::Blocked),
    )
    .await;
}

/// A `drawbridge serve` process on `pg` as `node`, its control socket and log in `dir`.
struct NodeProcess {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl NodeProcess {
    async fn start(pg: &Postgres, dir: &std::path::Path, node: &str) -> NodeProcess {
        let data = dir.join(node);
        let cfg = dir.join(format!("{node}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[server]\ndomains = [\"home.test\"]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{}",
                data.display(),
                on(pg, node)
            ),
        )
        .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{node}.log"))).unwrap())
            .spawn()
            .unwrap();
        let mut p = NodeProcess { child, sock: data.join("control.sock") };
        within("the control socket to answer", async {
            while drawbridge::control::request(&p.sock, &drawbridge::control::Request::Status).await.is_err() {
                assert!(p.child.try_wait().unwrap().is_none(), "drawbridge {node} exited early");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        p
    }

    async fn ask(&self, req: &drawbridge::control::Request) -> drawbridge::control::Response {
        drawbridge::control::request(&self.sock, req).await.expect("the control socket answers")
    }

    async fn blocked(&self) -> Vec<String> {
        let r = self.ask(&drawbridge::control::Request::Domains { state: Some("blocked".into()) }).await;
        let recs: Vec<drawbridge::store::DomainRecord> = serde_json::from_value(r.data.unwrap()).unwrap();
        recs.into_iter().map(|r| r.domain).collect()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -9` of a node while its operator makes changes as fast as they are acknowledged:
/// every acknowledged change is in the database and in force on the other node, which
/// serves on (streams, policy changes); the killed node, restarted, has them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_loses_no_acknowledged_change_and_the_other_serves_on() {
    use drawbridge::control::{Request as Ctl, Response};
    let pg = postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = NodeProcess::start(&pg, dir.path(), "edge-1").await;
    let b = NodeProcess::start(&pg, dir.path(), "edge-2").await;
    let acked: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let writer = {
        let (sock, acked) = (a.sock.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let domain = format!("k{i}.test");
                let req = Ctl::Block { domain: domain.clone(), for_secs: None, reason: Some("kill -9".into()) };
                match drawbridge::control::request(&sock, &req).await {
                    Ok(Response { ok: true, .. }) => acked.lock().unwrap().push(domain),
                    _ => break,
                }
            }
        })
    };
    // Until a few changes were acknowledged, then at once.
    within("a few acknowledged changes", async {
        while acked.lock().unwrap().len() < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let stored = pg.psql("SELECT string_agg(domain, ' ') FROM domains WHERE decision->>'state' = 'blocked'");
    for d in &acked {
        assert!(stored.split(' ').any(|s| s == d), "the acknowledged block of {d} is not in the database: {stored}");
    }
    // Node B: every acknowledged block in force, and serving on.
    within("node B to have every acknowledged block", async {
        loop {
            let blocked = b.blocked().await;
            if acked.iter().all(|d| blocked.contains(d)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let r = b.ask(&Ctl::Block { domain: "after.test".into(), for_secs: None, reason: None }).await;
    assert!(r.ok, "node B takes changes: {:?}", r.error);
    let status = b.ask(&Ctl::Status).await;
    let status: drawbridge::engine::Status = serde_json::from_value(status.data.unwrap()).unwrap();
    let addr: std::net::SocketAddr = status.listen[0].parse().unwrap();
    let mut peer = RawPeer::connect(addr).await;
    let (_, features) = peer.open("peer.test", "home.test").await;
    assert!(features.has_child("starttls", drawbridge::proto::ns::TLS), "node B serves streams");
    // Node A again: the changes, its own and node B's.
    let a = NodeProcess::start(&pg, dir.path(), "edge-1").await;
    let blocked = a.blocked().await;
    for d in acked.iter().chain(["after.test".to_owned()].iter()) {
        assert!(blocked.contains(d), "restarted node A lacks the block of {d}");
    }
}

/// Gateway mode on two nodes with the CA drawbridge makes itself: made once, by the first
/// node, and the same on both (the internal server trusts one CA; what either mints is valid
/// for it); a node with its own store makes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_ca_is_made_once_and_shared() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let gateway = "[gateway]\ninternal = \"127.0.0.1:9\"\nlisten = [\"127.0.0.1:0\"]\nauth = \"dialback\"\n";
    let a = start_server("home.test", &dns, &format!("{}{gateway}", on(&pg, "edge-1"))).await;
    let b = start_server("home.test", &dns, &format!("{}{gateway}", on(&pg, "edge-2"))).await;
    let alone = start_server("home.test", &dns, gateway).await;
    let ca = |s: &TestServer| std::fs::read_to_string(s.dir.path().join("data/gateway/ca.pem")).expect("the gateway CA is written");
    assert!(ca(&a).contains("BEGIN CERTIFICATE"));
    assert_eq!(ca(&a), ca(&b), "both nodes use the one CA");
    assert_ne!(ca(&a), ca(&alone), "a node with its own store has its own");
    assert_eq!(pg.psql("SELECT count(*) FROM drawbridge_meta WHERE key = 'gateway_ca'"), "1");
    // A gateway node that made its own CA on its own store (the internal server trusts it)
    // keeps it as the cluster's when it is the first to join; a later node's is set aside.
    let own = ca(&alone);
    let TestServer { engine, dir, .. } = alone;
    engine.shutdown().await;
    let fresh = postgres().await;
    let rejoin = |pg: &Postgres, node: &str| {
        let text = config_text("home.test", dir.path(), dns.addr, &format!("{}{gateway}", on(pg, node)));
        drawbridge::config::Settings::parse(&text, &dir.path().join("drawbridge.toml")).unwrap()
    };
    let engine = drawbridge::engine::Engine::start(rejoin(&fresh, "edge-1")).await.unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("data/gateway/ca.pem")).unwrap(), own, "its own CA is the cluster's");
    engine.shutdown().await;
    let engine = drawbridge::engine::Engine::start(rejoin(&pg, "edge-3")).await.unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("data/gateway/ca.pem")).unwrap(), ca(&a), "the cluster's CA wins");
    let aside = std::fs::read_dir(dir.path().join("data/gateway"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("ca.pem.before-cluster-"))
        .expect("the node's own CA kept aside");
    assert_eq!(std::fs::read_to_string(aside.path()).unwrap(), own);
    engine.shutdown().await;
}

/// An outcome as a stream driver reports it, for `remote`.
fn outcome(remote: &str, stream: &str) -> VerificationOutcome {
    VerificationOutcome {
        time_ms: drawbridge::engine::events::now_ms(),
        stream: stream.into(),
        direction: Direction::In,
        local: "home.test".into(),
        remote: remote.into(),
        method: AuthMethod::Dialback,
        result: VerificationResult::Valid,
        reason: "test".into(),
        peer_addr: None,
    }
}

/// The database refusing writes as a whole (here: read-only, as during maintenance) loses
/// nothing: the records wait, the store says it is unreachable and why, and they are written
/// once it takes writes again. A record it refuses as data (a constraint) costs only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_writes_loses_nothing_and_a_bad_record_costs_only_itself() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    pg.psql("ALTER SYSTEM SET default_transaction_read_only = on");
    pg.psql("SELECT pg_reload_conf()");
    for i in 0..20 {
        a.engine.testing().record_outcome(outcome("waiting.test", &format!("w{i}")));
    }
    store_becomes(&a.engine, "the store to say the database refuses writes", |s| !s.reachable).await;
    let status = a.engine.status().store;
    assert!(status.error.as_deref().is_some_and(|e| e.contains("read-only")), "{status:?}");
    assert_eq!(status.dropped, 0, "nothing dropped: {status:?}");
    pg.psql("ALTER SYSTEM RESET default_transaction_read_only");
    pg.psql("SELECT pg_reload_conf()");
    store_becomes(&a.engine, "what waited to be written", |s| s.reachable && s.backlog == 0).await;
    assert_eq!(pg.psql("SELECT count(*) FROM outcomes WHERE remote = 'waiting.test'"), "20");
    // A record the database refuses as data, between two it takes.
    pg.psql("ALTER TABLE outcomes ADD CONSTRAINT no_bad CHECK (remote <> 'bad.test')");
    for (remote, stream) in [("good.test", "g1"), ("bad.test", "b"), ("good.test", "g2")] {
        a.engine.testing().record_outcome(outcome(remote, stream));
    }
    within("the good records to be written", async {
        while pg.psql("SELECT count(*) FROM outcomes WHERE remote = 'good.test'") != "2" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(pg.psql("SELECT count(*) FROM outcomes WHERE remote = 'bad.test'"), "0");
    assert!(a.engine.status().store.reachable, "a refused record is no outage");
}

/// drawbridge's own changes to a decision (a pending mark, a lifted hold, an expired block)
/// are written only if the stored decision is still the one they were derived from: a node
/// that had not heard of another node's decision cannot overwrite it; counters never touch a
/// decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_automatic_change_never_overwrites_a_decision() {
    use drawbridge::policy::{DomainRecord, PolicyWrite};
    let pg = postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[server]\ndomains = [\"home.test\"]\ndata_dir = \"{}\"\n{}", dir.path().join("data").display(), on(&pg, "edge-1"));
    let settings = drawbridge::config::Settings::parse(&text, &dir.path().join("d.toml")).unwrap();
    let store = drawbridge::store::Store::open_configured(&settings.store, &settings.data_dir).await.unwrap();
    let state = |d: &str| pg.psql(&format!("SELECT decision->>'state' FROM domains WHERE domain = '{d}'"));
    let rec = |d: &str, state: DomainState, when: u64| DomainRecord { domain: d.into(), state, when_ms: Some(when), ..Default::default() };
    let now = drawbridge::engine::events::now_ms();
    // Another node's operator approved x.test; this node, not yet told, marks it pending.
    let approved = rec("x.test", DomainState::Approved, now);
    store.commit(&PolicyWrite { domains: vec![approved], ..Default::default() }).await.unwrap();
    store.put_domain(&rec("x.test", DomainState::Pending, now + 5), Some(DomainState::Unknown)).unwrap();
    // Counters of a record whose decision is stale: the counters only.
    store.put_domain(&DomainRecord { streams_in: 7, ..rec("x.test", DomainState::Unknown, now + 6) }, None).unwrap();
    // A block extended elsewhere (expiring in an hour) is not lifted by an expiry seen here.
    let block = |expires| DomainRecord { expires_ms: Some(expires), ..rec("y.test", DomainState::Blocked, now) };
    store.commit(&PolicyWrite { domains: vec![block(now + 3_600_000)], ..Default::default() }).await.unwrap();
    store.put_domain(&rec("y.test", DomainState::Unknown, now + 10), Some(DomainState::Blocked)).unwrap();
    // What still holds is applied: a pending mark on an undecided domain, an expired block.
    store.put_domain(&rec("z.test", DomainState::Pending, now), Some(DomainState::Unknown)).unwrap();
    store
        .commit(&PolicyWrite { domains: vec![DomainRecord { domain: "w.test".into(), ..block(now - 1) }], ..Default::default() })
        .await
        .unwrap();
    store.put_domain(&rec("w.test", DomainState::Unknown, now + 10), Some(DomainState::Blocked)).unwrap();
    store.flush().await.unwrap();
    assert_eq!(state("x.test"), "approved", "the operator's decision stands");
    assert_eq!(pg.psql("SELECT record->>'streams_in' FROM domain_stats WHERE domain = 'x.test'"), "7", "the counters were written");
    assert_eq!(state("y.test"), "blocked", "the extended block stands");
    assert_eq!(state("z.test"), "pending");
    assert_eq!(state("w.test"), "unknown", "the expired block lifted");
}

/// A database in another encoding than UTF-8 would refuse some of what peers send (their
/// certificate names, in any script), and whole batches with it: refused at start, saying how
/// to make one that fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_not_in_utf8_is_refused_at_start() {
    let pg = postgres().await;
    pg.psql("CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 OWNER drawbridge");
    let dir = tempfile::tempdir().unwrap();
    let conninfo = pg.conninfo().replace("dbname=drawbridge", "dbname=latin");
    let text = format!(
        "[server]\ndomains = [\"home.test\"]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[store]\nbackend = \"postgres\"\npostgres = \"{conninfo}\"\n",
        dir.path().join("data").display()
    );
    let settings = drawbridge::config::Settings::parse(&text, &dir.path().join("d.toml")).unwrap();
    let err = drawbridge::engine::Engine::start(settings).await.err().expect("refused").to_string();
    assert!(err.contains("LATIN1") && err.contains("needs UTF8"), "{err}");
}
