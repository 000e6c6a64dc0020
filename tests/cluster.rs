//! Several nodes on one PostgreSQL store (issue 20): what they share, what each keeps, and
//! what a node does when the database goes away. PostgreSQL is Debian's, started by the
//! test in a temp dir on a Unix socket (tests/common/postgres.rs).

mod common;

use common::postgres::Postgres;
use common::*;
use drawbridge::engine::Request;
use drawbridge::proto::dialback::{Answer, DbElement, derive_key};

/// `[store]` and `[cluster]` for a node on `pg`.
fn on(pg: &Postgres, node: &str) -> String {
    format!("[store]\nbackend = \"postgres\"\npostgres = \"{}\"\n[cluster]\nnode = \"{node}\"\n", pg.conninfo())
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
