//! One view of the cluster (issue 20, item 3): each node publishes its live streams and its
//! heartbeat to the shared PostgreSQL store; `ctl connections --cluster`, `ctl status` and
//! the dashboard show every node's streams with their node, and a node gone silent or
//! stopped drops out of the view. PostgreSQL is Debian's, started by the test in a temp dir
//! (tests/common/postgres.rs). Heartbeats are short here (200 ms, a node gone after 1 s):
//! paused time does not reach PostgreSQL, so each wait is a bounded loop on what the view
//! shows.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::*;

use drawbridge::engine::{ClusterConnections, EngineHandle, Reply, Request};
use drawbridge::store::{NodeStatus, StoreStatus};

const HEARTBEAT: Duration = Duration::from_millis(200);
const NODE_TIMEOUT: Duration = Duration::from_secs(1);

/// `[store]` and `[cluster]` for a node on `pg`, with a short heartbeat and timeout.
fn on(pg: &Postgres, node: &str) -> String {
    format!(
        "[store]\nbackend = \"postgres\"\npostgres = \"{}\"\n[cluster]\nnode = \"{node}\"\nheartbeat = \"{}ms\"\nnode_timeout = \"{}ms\"\n",
        pg.conninfo(),
        HEARTBEAT.as_millis(),
        NODE_TIMEOUT.as_millis()
    )
}

/// PostgreSQL, started off the runtime's threads (initdb takes a second or two).
async fn postgres() -> Postgres {
    tokio::task::spawn_blocking(Postgres::start).await.unwrap()
}

/// `ctl connections --cluster`, through the API.
async fn cluster_view(engine: &EngineHandle, closed: bool) -> ClusterConnections {
    match ask(engine, Request::Connections { closed, cluster: true }).await {
        Reply::Cluster(c) => *c,
        other => panic!("not the cluster's connections: {other:?}"),
    }
}

/// (node, remote) of each live stream in the view, sorted.
fn rows(v: &ClusterConnections) -> Vec<(String, String)> {
    let mut r: Vec<(String, String)> = v.streams.iter().map(|s| (s.node.clone(), s.stream.remote.clone().unwrap_or_default())).collect();
    r.sort();
    r
}

/// Wait (bounded) until `engine`'s cluster view satisfies `ok`; the view then.
async fn view_becomes(engine: &EngineHandle, what: &str, ok: impl Fn(&ClusterConnections) -> bool) -> ClusterConnections {
    within(what, async {
        loop {
            let v = cluster_view(engine, false).await;
            if ok(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Wait (bounded) until `engine`'s store status satisfies `ok`; the status then.
async fn store_becomes(engine: &EngineHandle, what: &str, ok: impl Fn(&StoreStatus) -> bool) -> StoreStatus {
    within(what, async {
        loop {
            let s = engine.status().store;
            if ok(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn node<'a>(s: &'a StoreStatus, name: &str) -> Option<&'a NodeStatus> {
    s.nodes.iter().find(|n| n.node == name)
}

fn count(v: &ClusterConnections, node: &str) -> usize {
    v.streams.iter().filter(|s| s.node == node).count()
}

/// Both nodes' streams, each with its node, from either node; this node's rows come from its
/// own table, the other's as published; `ctl connections --cluster` prints a NODE column,
/// and the answer is the same after the control socket's JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_lists_both_nodes_streams_with_their_node() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let _p = hand_played(&a, &dns, "p.test").await;
    let _o = hand_played(&b, &dns, "o.test").await;
    let both = |v: &ClusterConnections| count(v, "edge-1") == 2 && count(v, "edge-2") == 2;
    let seen_by_a = view_becomes(&a.engine, "node A to see both nodes' streams", both).await;
    let seen_by_b = view_becomes(&b.engine, "node B to see both nodes' streams", both).await;
    let expected: Vec<(String, String)> = [("edge-1", "p.test"), ("edge-1", "p.test"), ("edge-2", "o.test"), ("edge-2", "o.test")]
        .iter()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    assert_eq!(rows(&seen_by_a), expected);
    assert_eq!(rows(&seen_by_b), expected);
    assert_eq!((seen_by_a.node.as_str(), seen_by_b.node.as_str()), ("edge-1", "edge-2"));
    assert_eq!(seen_by_a.store_error, None);
    // Node A's own rows are its table's (the same ids as `ctl connections`).
    let mut local: Vec<String> = a.engine.connections(false).into_iter().map(|c| c.id).collect();
    let mut own: Vec<String> = seen_by_a.streams.iter().filter(|s| s.node == "edge-1").map(|s| s.stream.id.clone()).collect();
    local.sort();
    own.sort();
    assert_eq!(own, local);
    // In the database: each node's rows, under its name.
    assert_eq!(pg.psql("SELECT count(*) FROM open_streams WHERE node = 'edge-2'"), "2");
    // As `ctl` prints it: a NODE column, this node marked.
    let mut out = Vec::new();
    drawbridge::cli::print::cluster_connections(&seen_by_a, &mut out).unwrap();
    let printed = String::from_utf8(out).unwrap();
    let header = printed.lines().next().unwrap();
    assert!(header.starts_with("NODE") && header.contains("REMOTE"), "{printed}");
    let line_of = |remote: &str| printed.lines().find(|l| l.contains(remote) && !l.trim_start().starts_with("authenticated")).unwrap();
    assert!(line_of("o.test").starts_with("edge-2 "), "{printed}");
    assert!(line_of("p.test").starts_with("edge-1*"), "{printed}");
    // Over the control socket: the same answer.
    let req = Request::Connections { closed: false, cluster: true };
    let json = Reply::Cluster(Box::new(seen_by_a.clone())).to_json();
    assert!(json["streams"][0]["node"].is_string() && json["streams"][0]["id"].is_string(), "{json}");
    let Reply::Cluster(back) = Reply::decode(&req, json).unwrap() else { panic!("not decoded as the cluster's connections") };
    assert_eq!(*back, seen_by_a);
    // `ctl connections` without --cluster is this node's, as before.
    let Reply::Streams(v) = ask(&a.engine, Request::Connections { closed: false, cluster: false }).await else { panic!("not streams") };
    assert_eq!(v.len(), 2);
}

/// `ctl status` lists both nodes with their heartbeat; a node's heartbeat keeps coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_status_lists_both_nodes_with_their_heartbeat() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let _o = hand_played(&b, &dns, "o.test").await;
    let status = store_becomes(&a.engine, "node A to list both nodes alive, node B with its streams", |s| {
        node(s, "edge-1").is_some_and(|n| n.alive) && node(s, "edge-2").is_some_and(|n| n.alive && n.streams == 2)
    })
    .await;
    assert_eq!(status.heartbeat_ms, HEARTBEAT.as_millis() as u64);
    assert_eq!(status.node_timeout_ms, NODE_TIMEOUT.as_millis() as u64);
    let b_row = node(&status, "edge-2").unwrap().clone();
    assert!(b_row.heartbeat_ms > 0 && b_row.age_ms < NODE_TIMEOUT.as_millis() as u64, "{b_row:?}");
    assert_eq!(b_row.listen, vec![b.addr.to_string()]);
    assert_eq!(b_row.version, env!("CARGO_PKG_VERSION"));
    // The heartbeat is renewed.
    store_becomes(&a.engine, "node B's next heartbeat", |s| node(s, "edge-2").is_some_and(|n| n.heartbeat_ms > b_row.heartbeat_ms)).await;
    // Through the API, as `ctl status` asks, and printed.
    let Reply::Status(st) = ask(&a.engine, Request::Status).await else { panic!("not a status") };
    let mut out = Vec::new();
    drawbridge::cli::print::status(&st, &mut out).unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(printed.contains("nodes:       2 of 2 alive"), "{printed}");
    let line = |n: &str| printed.lines().find(|l| l.trim_start().starts_with(n)).unwrap_or_else(|| panic!("no line for {n}: {printed}"));
    assert!(line("edge-1").contains("(this node)") && line("edge-1").contains("alive, last heartbeat"), "{printed}");
    assert!(line("edge-2").contains("alive, last heartbeat") && line("edge-2").contains("2 live stream(s)"), "{printed}");
}

/// A node gone silent (its publisher stopped, as a hung process's would): once its heartbeat
/// is older than node_timeout the other node no longer shows its streams (still in the
/// database: filtered by the heartbeat), and `ctl status` says it is silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_drops_out_of_the_view_after_the_timeout() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let _o = hand_played(&b, &dns, "o.test").await;
    view_becomes(&a.engine, "node A to see node B's streams", |v| count(v, "edge-2") == 2).await;
    b.engine.testing().stop_heartbeat();
    let silenced = Instant::now();
    view_becomes(&a.engine, "node B's streams to drop out of node A's view", |v| count(v, "edge-2") == 0).await;
    let took = silenced.elapsed();
    // Not before its last heartbeat was node_timeout old, by the database's clock.
    let age: u64 = pg
        .psql("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - heartbeat_ms FROM nodes WHERE node = 'edge-2'")
        .parse()
        .unwrap();
    assert!(age >= NODE_TIMEOUT.as_millis() as u64, "dropped out {took:?} after its publisher stopped, its heartbeat {age} ms old");
    assert_eq!(pg.psql("SELECT count(*) FROM open_streams WHERE node = 'edge-2'"), "2", "its rows stay, unshown");
    let status = store_becomes(&a.engine, "node A to see node B silent", |s| node(s, "edge-2").is_some_and(|n| !n.alive)).await;
    let b_row = node(&status, "edge-2").unwrap();
    assert_eq!(b_row.stopped_ms, None, "silent, not stopped");
    assert!(node(&status, "edge-1").unwrap().alive);
    let mut out = Vec::new();
    drawbridge::cli::print::status(&a.engine.status(), &mut out).unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(printed.contains("1 of 2 alive"), "{printed}");
    assert!(printed.lines().any(|l| l.contains("edge-2") && l.contains("SILENT") && l.contains("2 stream(s) are not shown")), "{printed}");
    // Node B itself still lists its own streams.
    assert_eq!(count(&cluster_view(&b.engine, false).await, "edge-2"), 2);
}

/// A node that shuts down: its streams close and leave the view, and the others see it
/// stopped (not silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_leaves_the_view_stopped() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let _o = hand_played(&b, &dns, "o.test").await;
    view_becomes(&a.engine, "node A to see node B's streams", |v| count(v, "edge-2") == 2).await;
    b.engine.shutdown().await;
    let v = view_becomes(&a.engine, "node B's streams to leave node A's view", |v| count(v, "edge-2") == 0).await;
    assert_eq!(v.store_error, None);
    assert_eq!(pg.psql("SELECT count(*) FROM open_streams WHERE node = 'edge-2'"), "0");
    let status =
        store_becomes(&a.engine, "node A to see node B stopped", |s| node(s, "edge-2").is_some_and(|n| n.stopped_ms.is_some())).await;
    assert!(!node(&status, "edge-2").unwrap().alive);
    let mut out = Vec::new();
    drawbridge::cli::print::status(&a.engine.status(), &mut out).unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(printed.lines().any(|l| l.contains("edge-2") && l.contains("stopped at")), "{printed}");
}

/// The rows the publisher keeps are what crash recovery reads: a node that died with streams
/// open (no clean shutdown) finds them at its next start and moves them into the history,
/// within a heartbeat of their opening (no 30 s snapshot needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_died_recovers_the_streams_it_published() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let _o = hand_played(&b, &dns, "o.test").await;
    view_becomes(&a.engine, "node A to see node B's streams", |v| count(v, "edge-2") == 2).await;
    // Node B dies: nothing of it writes any more (its publisher first, then its tasks).
    b.engine.testing().stop_heartbeat();
    drop(b);
    let again = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let recovered = pg.psql(
        "SELECT count(*) FROM history WHERE node = 'edge-2' AND record->>'close_reason' LIKE 'drawbridge stopped without closing it%'",
    );
    assert_eq!(recovered, "2");
    // The restarted node publishes anew: no stream of it in the view.
    store_becomes(&a.engine, "the restarted node B to be alive", |s| node(s, "edge-2").is_some_and(|n| n.alive && n.streams == 0)).await;
    assert_eq!(count(&cluster_view(&a.engine, false).await, "edge-2"), 0);
    drop(again);
}

/// On a node with its own store there is no cluster: `--cluster` says so (and how to share
/// a store), `ctl status` lists no nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_store_the_cluster_view_says_there_is_none() {
    let dns = Dns::start().await;
    let alone = start_server("home.test", &dns, "").await;
    let err = alone
        .engine
        .acting_as("tester")
        .execute(Request::Connections { closed: false, cluster: true })
        .await
        .expect_err("no cluster view on the embedded store")
        .to_string();
    assert!(err.contains("no cluster") && err.contains("store.backend = \"postgres\"") && err.contains("ctl connections"), "{err}");
    let status = alone.engine.status();
    assert!(status.store.nodes.is_empty());
    let mut out = Vec::new();
    drawbridge::cli::print::status(&status, &mut out).unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("nodes:"));
}

/// The dashboard attached to node A (in process): a node column with both nodes' streams,
/// `n` to show this node's only and back, and Enter on node B's stream says where it is
/// instead of opening a transcript.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_nodes_streams_and_where_a_transcript_is() {
    use drawbridge::dashboard::app::{act, refresh_cluster};
    use drawbridge::dashboard::client::Client;
    use drawbridge::dashboard::input::Intent;
    use drawbridge::dashboard::state::{Model, View};

    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let _p = hand_played(&a, &dns, "p.test").await;
    let _o = hand_played(&b, &dns, "o.test").await;
    view_becomes(&a.engine, "node A to see node B's streams", |v| count(v, "edge-2") == 2).await;
    let client = Arc::new(Client::in_process(a.engine.handle()));
    let mut m = Model::new(true);
    m.load(client.snapshot().await.unwrap());
    refresh_cluster(&client, &mut m).await;
    let s = screen(&mut m, 120, 30);
    assert!(s.contains("node") && s.contains("edge-1") && s.contains("edge-2"), "{s}");
    assert!(s.contains("o.test") && s.contains("p.test"), "{s}");
    assert!(s.contains("nodes: every node"), "{s}");
    // `n`: this node's only.
    let (notes, _rx) = tokio::sync::mpsc::channel(4);
    act(&client, &mut m, Intent::Nodes, &notes).await;
    let s = screen(&mut m, 120, 30);
    assert!(s.contains("p.test") && !s.contains("o.test"), "{s}");
    assert!(s.contains("nodes: this node (edge-1)"), "{s}");
    act(&client, &mut m, Intent::Nodes, &notes).await;
    // Node B's stream selected: Enter says where it is.
    let i = (0..m.conn_rows().len())
        .find(|&i| {
            m.selected[0] = i;
            m.selected_node().as_deref() == Some("edge-2")
        })
        .expect("a row of node B");
    m.selected[0] = i;
    act(&client, &mut m, Intent::Open, &notes).await;
    assert_eq!(m.view, View::Connections, "no transcript opened");
    assert_eq!(m.transcript_id, None);
    let msg = m.message.clone().unwrap_or_default();
    assert!(msg.contains("on node edge-2") && msg.contains("attach to that node's dashboard"), "{msg}");
    // And closing it from here is refused, naming the node.
    act(&client, &mut m, Intent::CloseStream, &notes).await;
    assert!(m.prompt.is_none() && m.message.as_deref().is_some_and(|x| x.contains("on node edge-2")), "{:?}", m.message);
}

fn screen(m: &mut drawbridge::dashboard::state::Model, w: u16, h: u16) -> String {
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
    t.draw(|f| drawbridge::dashboard::ui::draw(f, m)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut s = String::new();
    for y in 0..h {
        for x in 0..w {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

/// What the view shows follows each node's streams: a row written again when it changed (its
/// stanza counts), left alone when it did not (the same row version across heartbeats), and
/// gone when its stream ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_follows_changes_and_rewrites_only_what_changed() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    let b = start_server("home.test", &dns, &on(&pg, "edge-2")).await;
    let mut o = hand_played(&b, &dns, "o.test").await;
    view_becomes(&a.engine, "node A to see node B's streams", |v| count(v, "edge-2") == 2).await;
    // Idle: three heartbeats later, the rows are the same row versions (not rewritten).
    let versions = || pg.psql("SELECT string_agg(id || ':' || xmin::text, ',' ORDER BY id) FROM open_streams WHERE node = 'edge-2'");
    let before = versions();
    let beat = |s: &StoreStatus| node(s, "edge-2").map_or(0, |n| n.heartbeat_ms);
    let first = beat(&a.engine.status().store);
    let mut seen = first;
    let mut beats = 0;
    within("three heartbeats of node B", async {
        while beats < 3 {
            let now = store_becomes(&a.engine, "node B's next heartbeat", |s| beat(s) > seen).await;
            seen = beat(&now);
            beats += 1;
        }
    })
    .await;
    assert_eq!(versions(), before, "idle streams' rows are not written again");
    // Traffic: the inbound stream's count grows in node A's view.
    let inbound = |v: &ClusterConnections| {
        v.streams.iter().find(|s| s.node == "edge-2" && s.stream.direction == drawbridge::engine::events::Direction::In).cloned()
    };
    let was = inbound(&cluster_view(&a.engine, false).await).expect("node B's inbound stream").stream.stanzas_in;
    o.to_server.send("<iq type='get' id='ping1' from='o.test' to='home.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(o.next_stanza().await.get_attr("id"), Some("ping1"));
    view_becomes(&a.engine, "node A to see the stanza counted", |v| inbound(v).is_some_and(|s| s.stream.stanzas_in > was)).await;
    // A stream closed on node B leaves the view.
    let id = inbound(&cluster_view(&a.engine, false).await).unwrap().stream.id;
    assert!(b.engine.close_stream(&id, "closed by the test"));
    view_becomes(&a.engine, "node B's closed stream to leave node A's view", |v| {
        count(v, "edge-2") == 1 && v.streams.iter().all(|s| s.stream.id != id)
    })
    .await;
}

/// A database of schema 1 (before the cluster's view) is brought to schema 2 at start, what
/// it held kept, and the node publishes into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_database_is_migrated_to_schema_2() {
    let pg = postgres().await;
    let dns = Dns::start().await;
    let a = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    change(&a.engine, Request::Block { domain: "spam.test".into(), for_secs: None, reason: Some("flood".into()) }).await;
    a.engine.shutdown().await;
    // As a drawbridge of schema 1 left it.
    pg.psql("DROP TABLE nodes");
    pg.psql("DELETE FROM drawbridge_schema WHERE version = 2");
    assert_eq!(pg.psql("SELECT max(version) FROM drawbridge_schema"), "1");
    let again = start_server("home.test", &dns, &on(&pg, "edge-1")).await;
    assert_eq!(pg.psql("SELECT max(version) FROM drawbridge_schema"), "2");
    assert_eq!(pg.psql("SELECT decision->>'state' FROM domains WHERE domain = 'spam.test'"), "blocked");
    store_becomes(&again.engine, "the node's heartbeat in the migrated database", |s| node(s, "edge-1").is_some_and(|n| n.alive)).await;
}
