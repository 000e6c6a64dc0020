//! `drawbridge store migrate --to-postgres CONNINFO` (issue 20): a node's embedded store,
//! filled by a real engine, copied by the real binary into a throw-away PostgreSQL
//! (tests/common/postgres.rs); then a node started on that database finds the same secret,
//! mode, decisions, history and outcomes. And what it refuses: a database that holds data
//! (its own earlier copy included), a data dir in use, a wrong CONNINFO.

mod common;

use std::path::{Path, PathBuf};

use common::postgres::Postgres;
use common::*;
use drawbridge::events::{ConnSnapshot, VerificationOutcome};
use drawbridge::policy::{DomainRecord, DomainState, PolicyAction};
use drawbridge::store::SledStore;
use drawbridge::store::transfer::LEFT_OPEN;

const NODE: &str = "edge-1";

/// A feed whose action keeps a familiarity set (so the store has its secret).
const FEEDS: &str = "[[rtbl]]\nservice = \"xmppbl.test\"\naction = \"strangers\"\n";

/// `[store]` and `[cluster]` for a node on `pg`.
fn on(pg: &Postgres, node: &str) -> String {
    format!("[store]\nbackend = \"postgres\"\npostgres = \"{}\"\n[cluster]\nnode = \"{node}\"\n", pg.conninfo())
}

/// PostgreSQL, started off the runtime's threads (initdb takes a second or two).
async fn postgres() -> Postgres {
    tokio::task::spawn_blocking(Postgres::start).await.unwrap()
}

/// The config a server in `dir` ran with, as a file for the binary, naming this node.
fn config_file(dir: &Path, dns: &Dns, extra: &str) -> PathBuf {
    let path = dir.join("drawbridge.toml");
    std::fs::write(&path, config_text("home.test", dir, dns.addr, &format!("{extra}[cluster]\nnode = \"{NODE}\"\n"))).unwrap();
    path
}

/// The binary: `--config CONFIG store migrate ARGS…`; its exit code, stdout and stderr.
async fn migrate(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("--config")
        .arg(config)
        .args(["store", "migrate"])
        .args(args)
        .output()
        .await
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// An engine on the data dir in `dir`, as a config file with `extra` names it.
async fn start_on(dir: &Path, dns: &Dns, extra: &str) -> drawbridge::engine::Engine {
    let text = config_text("home.test", dir, dns.addr, extra);
    let settings = drawbridge::config::Settings::parse(&text, &dir.join("drawbridge.toml")).unwrap();
    drawbridge::engine::Engine::start(settings).await.unwrap()
}

/// How many rows each table holds.
fn counts(pg: &Postgres) -> String {
    pg.psql(
        "SELECT (SELECT count(*) FROM drawbridge_meta), (SELECT count(*) FROM domains), (SELECT count(*) FROM domain_stats),
                (SELECT count(*) FROM policy_log), (SELECT count(*) FROM outcomes), (SELECT count(*) FROM history),
                (SELECT count(*) FROM open_streams), (SELECT count(*) FROM rtbl), (SELECT count(*) FROM rtbl_feeds),
                (SELECT count(*) FROM familiar)",
    )
}

fn outcome(remote: &str, time_ms: u64) -> VerificationOutcome {
    VerificationOutcome {
        time_ms,
        stream: format!("s-{remote}"),
        direction: drawbridge::events::Direction::In,
        local: "home.test".into(),
        remote: remote.into(),
        method: drawbridge::events::AuthMethod::Dialback,
        result: drawbridge::events::VerificationResult::Valid,
        reason: "key valid".into(),
        peer_addr: Some("127.0.0.1:5555".into()),
    }
}

/// A stopped node's embedded store, and what its engine showed before it stopped.
struct Filled {
    dir: tempfile::TempDir,
    config: PathBuf,
    secret: Vec<u8>,
    familiar_secret: [u8; 32],
    domains: Vec<DomainRecord>,
    history: Vec<ConnSnapshot>,
    outcomes: Vec<VerificationOutcome>,
    log: Vec<PolicyAction>,
    left_open: ConnSnapshot,
}

impl Filled {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// A server on the embedded store: operators' decisions and the mode through the engine's
/// API, outcomes as its drivers report them, a blocklist entry as its subscriber stores it,
/// a stream that a raw peer opens as an approved domain and leaves (streams of known
/// domains reach the history); stopped. Then, in its store, what the engine
/// cannot be made to leave here: familiar pairs and a stream left open (as after a kill).
async fn filled(dns: &Dns) -> Filled {
    let s = start_server("home.test", dns, FEEDS).await;
    change(&s.engine, Request::Block { domain: "spam.test".into(), for_secs: None, reason: Some("flood".into()) }).await;
    change(&s.engine, Request::Blacklist { domain: "evil.test".into(), reason: "sends spam".into() }).await;
    change(&s.engine, Request::Approve { domain: "good.test".into(), reason: Some("partner".into()) }).await;
    ask(&s.engine, Request::Mode { mode: "approval".into() }).await;
    let now = drawbridge::events::now_ms();
    for (i, remote) in ["x.test", "y.test", "x.test"].iter().enumerate() {
        s.engine.testing().record_outcome(outcome(remote, now + i as u64));
    }
    let feed = drawbridge::rtbl::FeedKey { service: "xmppbl.test".into(), node: "spam_source_domains".into() };
    let listing = drawbridge::rtbl::report::Listing {
        reason: Some("urn:xmpp:reporting:spam".into()),
        text: Some("bots".into()),
        block_strangers: true,
    };
    let entry = drawbridge::rtbl::Entry {
        domain: drawbridge::domain::Domain::parse("listed.example").unwrap(),
        listing,
        first_seen_ms: now,
        last_seen_ms: now,
    };
    s.engine.testing().rtbl_change(&feed, &drawbridge::rtbl::Change::Added(entry));
    let mut peer = RawPeer::connect(s.addr).await;
    peer.open("good.test", "home.test").await;
    drop(peer);
    let history = within("the peer's stream in the history", async {
        loop {
            let Reply::Streams(h) = ask(&s.engine, Request::History { domain: None, limit: Some(100) }).await else {
                panic!("not streams")
            };
            if !h.is_empty() {
                return h;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let Reply::Outcomes(outcomes) = ask(&s.engine, Request::Verifications { domain: Some("x.test".into()), limit: Some(100) }).await else {
        panic!("not outcomes")
    };
    assert_eq!(outcomes.len(), 2);
    let domains = domains(&s.engine, None).await;
    let secret = s.engine.testing().dialback_secret().to_vec();
    let TestServer { engine, dir, .. } = s;
    engine.shutdown().await;

    let config = config_file(dir.path(), dns, FEEDS);
    let store = SledStore::open(&dir.path().join("data")).unwrap();
    let familiar_secret = store.familiar_secret().unwrap();
    let mut familiar = drawbridge::rtbl::familiar::Familiar::new(familiar_secret, 10, 1_000_000_000);
    for remote in ["bob@x.test", "carol@y.test"] {
        store.familiar_write(&familiar.note("alice@home.test", remote, now)).unwrap();
    }
    let left_open = ConnSnapshot {
        id: "left-open-1".into(),
        state: drawbridge::events::ConnState::Established,
        close_reason: None,
        remote: Some("open.test".into()),
        ..history[0].clone()
    };
    store.snapshot_open(std::slice::from_ref(&left_open)).unwrap();
    let log = store.policy_log(None, usize::MAX).unwrap();
    assert_eq!(store.history(None, usize::MAX).unwrap(), history, "the engine's history is the store's");
    store.flush().await.unwrap();
    drop(store);
    Filled { dir, config, secret, familiar_secret, domains, history, outcomes, log, left_open }
}

/// Everything is copied, with the node's name, and a node started on the database finds
/// the same secret, mode, decisions, history and outcomes. The embedded store is unchanged.
/// A second run says the data is already there and copies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moves_to_postgres_with_its_secret_policy_and_records() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let f = filled(&dns).await;
    assert_eq!(
        f.log.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["mode approval", "approve", "blacklist (source operator)", "block"],
        "newest first: {:?}",
        f.log
    );

    let (code, out, err) = migrate(&f.config, &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    for want in [
        &format!("Copied the embedded store of node {NODE} ({}/db) into PostgreSQL database drawbridge", f.data().display()),
        "  gateway CA             none made here\n",
        "  mode                   approval\n",
        &format!("  domains                {}\n", f.domains.len()),
        "  policy log entries     4\n",
        "  verification outcomes  3\n",
        &format!("  closed streams         {} (1 left open, closed as \"{LEFT_OPEN}\")\n", f.history.len() + 1),
        "  blocklist entries      1\n",
        "  familiar pairs         2\n",
        &format!("Next: in {} set\n", f.config.display()),
        &format!("  [store]\n  backend = \"postgres\"\n  postgres = \"{}\"\n\n  [cluster]\n  node = \"{NODE}\"\n", pg.conninfo()),
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }

    // The rows, each with the node's name where the table has one.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(pg.psql("SELECT encode(value, 'hex') FROM drawbridge_meta WHERE key = 'dialback_secret'"), hex(&f.secret));
    assert_eq!(pg.psql("SELECT encode(value, 'hex') FROM drawbridge_meta WHERE key = 'familiar_secret'"), hex(&f.familiar_secret));
    assert_eq!(pg.psql("SELECT convert_from(value, 'UTF8') FROM drawbridge_meta WHERE key = 'mode'"), "approval");
    assert_eq!(
        pg.psql("SELECT decision->>'state', decision->>'reason', decided_ms > 0 FROM domains WHERE domain = 'spam.test'"),
        "blocked|flood|t"
    );
    assert_eq!(pg.psql("SELECT decision->>'state' FROM domains WHERE domain = 'evil.test'"), "blacklisted");
    let domains: Vec<String> = f.domains.iter().map(|d| d.domain.clone()).collect();
    assert_eq!(pg.psql("SELECT string_agg(domain, ',' ORDER BY domain) FROM domains"), domains.join(","));
    assert_eq!(pg.psql("SELECT string_agg(domain || ':' || node, ',' ORDER BY domain) FROM domain_stats"), {
        domains.iter().map(|d| format!("{d}:{NODE}")).collect::<Vec<_>>().join(",")
    });
    assert_eq!(
        pg.psql("SELECT string_agg(node || ' ' || (record->>'action') || ' ' || coalesce(domain, '-'), ',' ORDER BY id) FROM policy_log"),
        "edge-1 block spam.test,edge-1 blacklist (source operator) evil.test,edge-1 approve good.test,edge-1 mode approval -"
    );
    assert_eq!(
        pg.psql("SELECT string_agg(node || ' ' || remote, ',' ORDER BY id) FROM outcomes"),
        "edge-1 x.test,edge-1 y.test,edge-1 x.test"
    );
    assert_eq!(pg.psql("SELECT count(*), count(*) FILTER (WHERE node = 'edge-1') FROM history"), format!("{0}|{0}", f.history.len() + 1));
    assert_eq!(
        pg.psql("SELECT record->>'state', record->>'close_reason', remotes::text FROM history WHERE record->>'id' = 'left-open-1'"),
        format!("closed|{LEFT_OPEN}|{{open.test}}")
    );
    assert_eq!(
        pg.psql("SELECT service, feed_node, domain, record->>'text' FROM rtbl"),
        "xmppbl.test|spam_source_domains|listed.example|bots"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM rtbl_feeds WHERE service = 'xmppbl.test' AND feed_node = 'spam_source_domains'"), "1");
    assert_eq!(pg.psql("SELECT count(*) FROM familiar"), "2");
    assert_eq!(pg.psql("SELECT count(*) FROM open_streams"), "0");

    // Again: the data is already there; nothing is copied twice.
    let before = counts(&pg);
    let (code, out, err) = migrate(&f.config, &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&format!("already holds the data of node {NODE} migrated from {}", f.data().display())), "{err}");
    assert!(err.contains("nothing was copied again") && out.is_empty(), "{out}{err}");
    assert_eq!(counts(&pg), before);

    // The embedded store is as it was: the stream left open is still there to recover.
    {
        let store = SledStore::open(&f.data()).unwrap();
        assert_eq!(store.history(None, usize::MAX).unwrap(), f.history);
        assert_eq!(store.policy_log(None, usize::MAX).unwrap(), f.log);
        assert_eq!(store.familiar_pairs().unwrap().len(), 2);
        assert_eq!(store.dialback_secret().unwrap(), f.secret);
        assert_eq!(store.recover_open().unwrap(), 1, "the open stream was copied, not moved");
    }

    // The node on the database, its config set as the migration said (its data dir as
    // before): the same secret, mode, decisions, records.
    let node = start_on(f.dir.path(), &dns, &format!("{}{FEEDS}", on(&pg, NODE))).await;
    assert_eq!(node.testing().dialback_secret(), f.secret.as_slice(), "keys in flight stay valid");
    let Reply::Status(status) = ask(&node, Request::Status).await else { panic!("not a status") };
    assert_eq!(status.mode, "approval");
    let spam = record(&node, "spam.test").await.expect("spam.test's record");
    assert_eq!((spam.state, spam.reason.as_deref()), (DomainState::Blocked, Some("flood")));
    assert_eq!(record(&node, "evil.test").await.unwrap().state, DomainState::Blacklisted);
    assert_eq!(record(&node, "good.test").await.unwrap().state, DomainState::Approved);
    let now: Vec<DomainRecord> = common::domains(&node, None).await;
    let view = |v: &[DomainRecord]| {
        v.iter().map(|r| (r.domain.clone(), r.state, r.reason.clone(), r.streams_in, r.last_verification.clone())).collect::<Vec<_>>()
    };
    assert_eq!(view(&now), view(&f.domains), "decisions and this node's counters");
    let Reply::Streams(history) = ask(&node, Request::History { domain: None, limit: Some(100) }).await else { panic!("not streams") };
    let mut expected = f.history.clone();
    expected.push(ConnSnapshot {
        state: drawbridge::events::ConnState::Closed,
        close_reason: Some(LEFT_OPEN.into()),
        ..f.left_open.clone()
    });
    let ids = |v: &[ConnSnapshot]| {
        let mut ids: Vec<(String, Option<String>)> = v.iter().map(|s| (s.id.clone(), s.close_reason.clone())).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&history), ids(&expected));
    assert_eq!(history.iter().find(|s| s.id == f.history[0].id), Some(&f.history[0]), "a record as it was");
    let Reply::Outcomes(outcomes) = ask(&node, Request::Verifications { domain: Some("x.test".into()), limit: Some(100) }).await else {
        panic!("not outcomes")
    };
    assert_eq!(outcomes, f.outcomes);
    node.shutdown().await;
}

/// Gateway mode with the CA drawbridge made itself: the CA goes along, so the node on the
/// database (and any other node) mints with the CA the internal server trusts, instead of
/// making a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_node_keeps_its_ca() {
    const GATEWAY: &str = "[gateway]\ninternal = \"127.0.0.1:9\"\nlisten = [\"127.0.0.1:0\"]\nauth = \"dialback\"\n";
    let pg = postgres().await;
    let dns = Dns::start().await;
    let ca = |dir: &Path| {
        let read = |f: &str| std::fs::read_to_string(dir.join("data/gateway").join(f)).expect("the gateway CA");
        (read("ca.pem"), read("ca.key"))
    };
    let s = start_server("home.test", &dns, GATEWAY).await;
    let TestServer { engine, dir, .. } = s;
    engine.shutdown().await;
    let before = ca(dir.path());
    assert!(before.0.contains("BEGIN CERTIFICATE"));
    let (code, out, err) = migrate(&config_file(dir.path(), &dns, GATEWAY), &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("  gateway CA             copied (DATA_DIR/gateway/ca.pem, ca.key)\n"), "{out}");
    assert_eq!(pg.psql("SELECT count(*) FROM drawbridge_meta WHERE key = 'gateway_ca'"), "1");
    let node = start_on(dir.path(), &dns, &format!("{}{GATEWAY}", on(&pg, NODE))).await;
    assert_eq!(ca(dir.path()), before, "the node on the database kept its CA");
    let other = start_server("home.test", &dns, &format!("{}{GATEWAY}", on(&pg, "edge-2"))).await;
    assert_eq!(ca(other.dir.path()), before, "another node mints with it too");
    other.engine.shutdown().await;
    node.shutdown().await;
}

/// A data dir a drawbridge runs on is refused with its pid, before the database is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_drawbridge_is_refused_with_its_pid() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let running = start_server("home.test", &dns, "").await;
    let config = config_file(running.dir.path(), &dns, "");
    let (code, out, err) = migrate(&config, &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&format!("is in use by a running drawbridge (pid {})", std::process::id())), "{err}");
    assert!(err.contains("stop it first") && err.contains("nothing was copied"), "{err}");
    assert_eq!(pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0", "the database was not touched");
    running.engine.shutdown().await;
}

/// What is wrong with the target is said, with what to do; nothing is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_target_is_a_clear_error() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let s = start_server("home.test", &dns, "").await;
    change(&s.engine, Request::Block { domain: "spam.test".into(), for_secs: None, reason: None }).await;
    let TestServer { engine, dir, .. } = s;
    engine.shutdown().await;
    let config = config_file(dir.path(), &dns, "");

    let missing = dir.path().join("no-such-dir");
    let cases: &[(String, &[&str])] = &[
        (
            format!("host={} dbname=drawbridge", missing.display()),
            &[&format!("cannot connect to PostgreSQL database drawbridge on {} (--to-postgres)", missing.display()), "check --to-postgres"],
        ),
        (
            pg.conninfo().replace("dbname=drawbridge", "dbname=nosuch"),
            &["cannot connect to PostgreSQL database nosuch", "database \"nosuch\" does not exist", "check --to-postgres"],
        ),
        ("nonsense".into(), &["--to-postgres: not a PostgreSQL connection string"]),
        ("user=drawbridge".into(), &["--to-postgres: names no host"]),
    ];
    for (conninfo, wants) in cases {
        let (code, out, err) = migrate(&config, &["--to-postgres", conninfo]).await;
        assert_eq!(code, Some(1), "{conninfo}: {out}{err}");
        for want in *wants {
            assert!(err.contains(want), "{conninfo}: {want:?} not in {err}");
        }
        assert!(out.is_empty(), "{out}");
    }
    let (code, _, err) = migrate(&config, &["--to-postgres", &pg.conninfo(), "--node", "edge 1"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("node name \"edge 1\" is not valid"), "{err}");
    // A config whose data dir has no store.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, _, err) = migrate(&config_file(elsewhere.path(), &dns, ""), &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("{}/data/db does not exist", elsewhere.path().display())) && err.contains("server.data_dir"), "{err}");
    assert!(!elsewhere.path().join("data").exists(), "no store was created there");
    assert_eq!(pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0", "the database was not touched");

    // A database a node has started on (its own secret), then one holding its decision.
    let other = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let (code, _, err) = migrate(&config, &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("already holds data (a dialback secret other than this node's: a drawbridge node has started on it)"), "{err}");
    assert!(err.contains("nothing was copied") && err.contains("Migrate into an empty database"), "{err}");
    change(&other.engine, Request::Approve { domain: "partner.test".into(), reason: None }).await;
    let before = counts(&pg);
    let (code, _, err) = migrate(&config, &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("already holds data (1 domain, 1 domain's counters, 1 policy log entry, a dialback secret other"), "{err}");
    assert_eq!(counts(&pg), before);
    assert_eq!(pg.psql("SELECT count(*) FROM domains WHERE domain = 'spam.test'"), "0");
    other.engine.shutdown().await;
}

/// All or nothing: a copy that fails part-way (the database refuses the history) leaves the
/// database as it was, and the next run, once the cause is gone, copies everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_leaves_nothing_behind() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    // The schema, made by a node that is then stopped and whose secrets are removed.
    let made = start_server("home.test", &dns, &on(&pg, "schema")).await;
    made.engine.shutdown().await;
    pg.psql("DELETE FROM drawbridge_meta");
    pg.psql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON history FOR EACH STATEMENT EXECUTE FUNCTION refuse()",
    );
    let f = filled(&dns).await;
    let (code, out, err) = migrate(&f.config, &["--to-postgres", &pg.conninfo()]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("the copy failed: writing history: refused by the test (P0001)"), "{err}");
    assert!(err.contains("nothing was copied (the transaction was rolled back)"), "{err}");
    assert_eq!(counts(&pg), "0|0|0|0|0|0|0|0|0|0", "secrets, domains, log and outcomes were written before the history: rolled back");
    pg.psql("DROP TRIGGER refuse ON history");
    let (code, out, err) = migrate(&f.config, &["--to-postgres", &pg.conninfo(), "--json"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["copied"]["history"], f.history.len() + 1);
    assert_eq!(report["copied"]["domains"], f.domains.len());
    assert_eq!(report["config"]["cluster"]["node"], NODE);
    assert_eq!(pg.psql("SELECT count(*) FROM history"), (f.history.len() + 1).to_string());
}

/// `--node` names the rows; a large store (20 000 closed streams, 20 000 outcomes, 2 000
/// domains, 2 000 log entries) is copied many rows to a statement, in seconds; a record
/// PostgreSQL cannot hold (a NUL) is left out and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_store_is_copied_in_seconds() {
    const N: u64 = 20_000;
    let pg = postgres().await;
    let dns = Dns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let template: ConnSnapshot = serde_json::from_value(serde_json::json!({
        "id": "", "direction": "in", "local": "home.test", "remote": null, "peer_addr": "127.0.0.1:40000", "state": "closed",
        "stream_id": "abc", "tls": null, "pairs": [], "opened_ms": 0, "last_activity_ms": 0, "stanzas_in": 3, "stanzas_out": 2,
        "bytes_in": 300, "bytes_out": 200, "close_reason": "the peer closed the stream"
    }))
    .unwrap();
    {
        let store = SledStore::open(&dir.path().join("data")).unwrap();
        store.dialback_secret().unwrap();
        let t0 = 1_700_000_000_000u64;
        for i in 0..N {
            let remote = format!("d{}.test", i % 2000);
            store
                .add_history(&ConnSnapshot {
                    id: format!("s{i}"),
                    remote: Some(remote.clone()),
                    opened_ms: t0 + i * 1000,
                    last_activity_ms: t0 + i * 1000 + 500,
                    ..template.clone()
                })
                .unwrap();
            store.add_outcome(&outcome(&remote, t0 + i * 1000)).unwrap();
            if i < 2000 {
                store.put_domain(&DomainRecord { domain: remote.clone(), streams_in: 10, ..Default::default() }).unwrap();
                store
                    .log_action(&PolicyAction {
                        time_ms: t0 + i,
                        who: "root".into(),
                        action: "approve".into(),
                        domain: Some(remote),
                        reason: None,
                    })
                    .unwrap();
            }
        }
        store.add_outcome(&VerificationOutcome { reason: "a\u{0}b".into(), ..outcome("nul.test", t0) }).unwrap();
        store.flush().await.unwrap();
    }
    let config = config_file(dir.path(), &dns, "");
    let started = std::time::Instant::now();
    let (code, out, err) = migrate(&config, &["--to-postgres", &pg.url(), "--node", "big-1", "--json"]).await;
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["node"], "big-1");
    assert_eq!(report["copied"]["history"], N);
    assert_eq!(report["copied"]["outcomes"], N);
    assert_eq!(report["copied"]["domains"], 2000);
    assert_eq!(report["copied"]["policy_log"], 2000);
    assert_eq!(report["skipped"]["outcomes"], 1, "{report}");
    assert_eq!(report["config"]["cluster"]["node"], "big-1");
    eprintln!(
        "migrated {N} streams, {N} outcomes, 2000 domains, 2000 log entries: {} ms in the copy, {took:?} in all",
        report["elapsed_ms"]
    );
    assert_eq!(
        pg.psql("SELECT (SELECT count(*) FROM history WHERE node = 'big-1'), (SELECT count(*) FROM outcomes WHERE node = 'big-1'), (SELECT count(*) FROM domain_stats WHERE node = 'big-1')"),
        format!("{N}|{N}|2000")
    );
    // Oldest first, as the node wrote them: ids follow time.
    assert_eq!(pg.psql("SELECT record->>'id' FROM history ORDER BY id DESC LIMIT 1"), format!("s{}", N - 1));
    assert_eq!(pg.psql("SELECT remotes::text FROM history WHERE record->>'id' = 's2001'"), "{d1.test}");
    // Measured on 2 cores, debug build: 2.3 s; one row to a statement took 14 s.
    assert!(took < scaled(std::time::Duration::from_secs(12)), "{took:?}: rows are not written many to a statement?");
}
