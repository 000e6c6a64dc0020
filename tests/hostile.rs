//! Hostile peers against the real binary: frames built to multiply memory or CPU, sent in
//! parallel before TLS; the process's peak memory must stay within a fixed budget and every
//! connection gets its stream error.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drawbridge::control::{self, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='bomb.test' to='island.test' version='1.0'>";

/// One long namespace declared once, then `children` empty children using it.
pub fn namespace_bomb(ns_len: usize, children: usize) -> String {
    let mut s = format!("<message xmlns:p='urn:{}'>", "n".repeat(ns_len));
    for _ in 0..children {
        s.push_str("<p:c/>");
    }
    s.push_str("</message>");
    s
}

/// `attrs` prefixed attributes, all bound to one `ns_len`-byte namespace.
pub fn attribute_bomb(ns_len: usize, attrs: usize) -> String {
    let mut s = format!("<message xmlns:p='urn:{}'", "n".repeat(ns_len));
    for i in 0..attrs {
        s.push_str(&format!(" p:a{i}=''"));
    }
    s.push_str("/>");
    s
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn ready(sock: &Path, child: &mut Child) -> String {
    for _ in 0..400 {
        if let Ok(r) = control::request(sock, &Request::Status).await {
            let status: drawbridge::engine::Status = serde_json::from_value(r.data.unwrap()).unwrap();
            return status.listen[0].clone();
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("drawbridge exited early: {s}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("control socket never answered");
}

/// Send the header and `frame`, then read until the server closes; return what it sent.
async fn send_bomb(addr: &str, frame: String, src: std::net::Ipv4Addr) -> String {
    // Each from its own loopback address: the per-address limit is not what is tested here.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((src, 0).into()).unwrap();
    let mut s = sock.connect(addr.parse().unwrap()).await.unwrap();
    s.write_all(HEADER.as_bytes()).await.unwrap();
    // The server may answer (and close) before reading everything: a failed write is fine.
    let _ = s.write_all(frame.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(scaled(Duration::from_secs(60)), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bomb_frames_before_tls_stay_within_a_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomains = [\"island.test\"]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n",
            data.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = ready(&data.join("control.sock"), &mut child).await;
    let pid = child.id();
    let before = proc_kib(pid, "VmRSS:");

    // The frames of the report (128 KiB namespace bomb, 25 KiB attribute frame) and the
    // same scaled ×10 (ten times the children / attributes in a frame under the 256 KiB
    // limit), each sent by ten peers at once.
    let frames =
        [namespace_bomb(120_000, 2_000), attribute_bomb(8_000, 2_000), namespace_bomb(20_000, 20_000), attribute_bomb(8_000, 19_000)];
    for f in &frames {
        assert!(f.len() < 256 * 1024, "{} bytes", f.len());
    }
    let mut tasks = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        for j in 0..10u8 {
            let (addr, f) = (addr.clone(), f.clone());
            let src = std::net::Ipv4Addr::new(127, 0, 1 + i as u8, 1 + j);
            tasks.push(tokio::spawn(async move { send_bomb(&addr, f, src).await }));
        }
    }
    for t in tasks {
        let answer = t.await.unwrap();
        // Stanzas before TLS are refused with the RFC's condition (and nothing else).
        assert!(answer.contains("<policy-violation"), "answer: {}", &answer[..answer.len().min(500)]);
    }
    let peak = proc_kib(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("peak memory growth: {growth_mib} MiB over {before} KiB");
    // Before interning namespaces, one 128 KiB frame cost over 600 MiB.
    assert!(growth_mib < 64, "peak memory grew by {growth_mib} MiB (from {before} KiB)");

    // Still serving: a fresh peer gets its features.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(HEADER.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("</stream:features>") {
        let n = tokio::time::timeout(*WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use drawbridge::engine::events::{Direction, Event};

/// A hand-played peer whose receive window is tiny and which never reads what the server
/// sends it; pings into the server make the server's replies pile up on that stream.
async fn stalled_peer(extra: &str) -> (Dns, TestServer, HandPlayed, drawbridge::engine::events::bus::Receiver) {
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, extra).await;
    let events = server.engine.subscribe();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(16).unwrap();
    dns.add_a("xmpp.slow.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_srv("slow.test", 0, 5, "xmpp.slow.test", listener.local_addr().unwrap().port()).await;
    let peer = hand_played_on(&server, "slow.test", listener).await;
    (dns, server, peer, events.into_events())
}

/// Send `batch(0)`, `batch(1)`, … to the server until `done` says so (`Some(true)`; `None`:
/// give up, `false` returned), checking it every 20 ms also while a send waits — a send is
/// never abandoned halfway (that would cut an element in two), and the server taking its
/// time to read under load does not stop the filling. Bounded by [`LOADED`].
async fn send_until(peer: &mut RawPeer, batch: impl Fn(usize) -> String, done: impl Fn() -> Option<bool>, what: &str) -> bool {
    let t0 = std::time::Instant::now();
    for i in 0.. {
        let s = batch(i);
        let send = peer.send(&s);
        tokio::pin!(send);
        loop {
            match done() {
                Some(true) => return true,
                None => return false,
                Some(false) => {}
            }
            assert!(t0.elapsed() < *LOADED, "{what}: not within {:?}", *LOADED);
            tokio::select! {
                _ = &mut send => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    unreachable!()
}

/// Pings into the server until its write towards the peer really waits, as observed: the
/// server's end of the stalled connection takes no more bytes (its send buffer is full:
/// polled on the socket itself) while answers to pings it delivered are not all written
/// (each answer carries its ping's 1 KB id back, so more delivered pings than KB written
/// means answers wait). The padding makes the kernel's buffers on loopback — a few MB —
/// fill after a few thousand answers: quick on a busy machine. Returns `false` if the
/// stream ended first (a write deadline).
async fn fill_until_stuck(peer: &mut RawPeer, from_server: &RawPeer, engine: &drawbridge::engine::EngineHandle) -> bool {
    fill_until_stuck_behind(peer, from_server, engine, 0).await
}

/// [`fill_until_stuck`], with at least `backlog` bytes of answers waiting inside the
/// server besides: the kernel's buffers may still grow after a moment when the server's end
/// was not writable (TCP autotuning), and a test that needs what it queues next to stay in
/// the server's hands needs more waiting there than they can take.
async fn fill_until_stuck_behind(
    peer: &mut RawPeer,
    from_server: &RawPeer,
    engine: &drawbridge::engine::EngineHandle,
    backlog: u64,
) -> bool {
    let row = |d: Direction| engine.connections(false).into_iter().find(|c| c.direction == d);
    let stuck = || {
        let (Some(inbound), Some(outbound)) = (row(Direction::In), row(Direction::Out)) else { return Some(false) };
        let waiting = inbound.stanzas_in * 1000 > outbound.bytes_out + backlog;
        Some(!from_server.server_end_writable()? && waiting)
    };
    let pad = "x".repeat(1000);
    let batch = |b: usize| {
        (0..100)
            .map(|i| format!("<iq type='get' id='p{b}-{i}-{pad}' from='slow.test' to='island.test'><ping xmlns='urn:xmpp:ping'/></iq>"))
            .collect::<String>()
    };
    send_until(peer, batch, stuck, "the server's writes towards the peer getting stuck").await
}

/// Tests that fill kernel buffers with megabytes, or whose deadlines are 2 s, take turns:
/// run together they fight for the machine's cores, and a deadline meant for the peer would
/// catch a starved server instead.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn closed(ev: &Event, id: &str) -> Option<String> {
    match ev {
        Event::StreamClosed { stream } if stream.id == id => stream.close_reason.clone(),
        _ => None,
    }
}

/// The server's established stream to the stalled peer.
fn outbound_id(server: &TestServer) -> String {
    let c = server.engine.connections(false);
    c.into_iter()
        .find(|c| c.direction == Direction::Out && c.state == drawbridge::engine::events::ConnState::Established)
        .expect("the established outbound stream")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_reads_is_closed_by_the_write_deadline() {
    let _turn = TURNS.lock().await;
    let (_dns, server, peer, mut events) = stalled_peer("[timeouts]\nwrite = \"2s\"\n").await;
    let HandPlayed { mut to_server, from_server } = peer;
    let id = outbound_id(&server);
    let stuck = Arc::new(AtomicBool::new(false));
    let flag = stuck.clone();
    let engine = server.engine.handle();
    let filler = tokio::spawn(async move {
        if fill_until_stuck(&mut to_server, &from_server, &engine).await {
            flag.store(true, Ordering::SeqCst);
        }
        (to_server, from_server)
    });
    // An event, not a clock: the wait is bounded generously (a loaded machine is slow to
    // fill the kernel's buffers), the deadline under test is the configured 2 s.
    let ev = wait_event_within(&mut events, "the outbound stream closed", *LOADED, |e| closed(e, &id).is_some()).await;
    let reason = closed(&ev, &id).unwrap();
    assert!(reason.contains("timeouts.write"), "close reason: {reason}");
    filler.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_close_ends_a_stream_whose_write_is_blocked() {
    let _turn = TURNS.lock().await;
    let (_dns, server, peer, mut events) = stalled_peer("[timeouts]\nwrite = \"10m\"\n").await;
    let HandPlayed { mut to_server, from_server } = peer;
    assert!(fill_until_stuck(&mut to_server, &from_server, &server.engine).await, "the stream ended while filling");
    let id = outbound_id(&server);
    // The write is waiting now (and stays so: the peer never reads).
    assert!(server.engine.close_stream(&id, "operator test"));
    // Far inside the 10 minutes the write would wait.
    let ev = wait_event_within(&mut events, "the outbound stream closed", *LOADED, |e| closed(e, &id).is_some()).await;
    assert!(closed(&ev, &id).unwrap().contains("operator test"), "{ev:?}");
    drop(from_server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_from_an_ip_literal_is_improper_addressing() {
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, "").await;
    // Claimed on the header: refused at once.
    let mut p = RawPeer::connect(server.addr).await;
    p.send(&header("127.0.0.1", "island.test")).await;
    assert_eq!(p.expect_stream_error().await.condition, drawbridge::proto::stream::StreamErrorCondition::InvalidFrom);
    // Claimed in a db:result on a stream opened for a domain: nothing to call back.
    let (mut p, _, _) = tls_peer(&server, "peer.test").await;
    p.send_el(&drawbridge::proto::dialback::result_request("127.0.0.1", "island.test", "k")).await;
    p.expect_condition(drawbridge::proto::stream::StreamErrorCondition::ImproperAddressing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_ranges_are_never_dialled() {
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, "[outbound]\ndeny = [\"127.0.0.0/8\"]\n").await;
    // A listener that must see no connection.
    let l = publish_listener(&dns, "inside.test").await;
    let r = within("probe", server.engine.probe("inside.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap_or_default();
    assert!(err.contains("outbound.deny") && err.contains("127.0.0.0/8"), "{err}");
    // A connection the server made would be in the listener's queue before the probe's
    // answer: asked of the kernel directly (non-blocking accept), not within some time.
    let l = l.into_std().unwrap();
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a denied address was dialled: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_callbacks_tell_the_peer_nothing_about_addresses() {
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, "").await;
    let mut events = server.engine.subscribe();
    // gone.test's authoritative server refuses connections.
    let closed_port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    dns.add_a("xmpp.gone.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_srv("gone.test", 0, 5, "xmpp.gone.test", closed_port).await;
    let (mut p, _, _) = tls_peer(&server, "gone.test").await;
    p.send_el(&drawbridge::proto::dialback::result_request("gone.test", "island.test", "k")).await;
    let answer = loop {
        let el = p.next_el().await.expect("the db:result answer");
        if let Some(db) = drawbridge::proto::dialback::DbElement::parse(&el) {
            break el.to_xml() + &format!("{:?}", db.answer);
        }
    };
    assert!(answer.contains("remote-connection-failed"), "{answer}");
    for leak in ["127.0.0.1", &closed_port.to_string(), "refused", "xmpp.gone.test"] {
        assert!(!answer.contains(leak), "the answer reveals {leak:?}: {answer}");
    }
    // The operator sees the whole story.
    let ev = wait_event(&mut events, "the verification outcome", |e| matches!(e, Event::Verification { outcome } if outcome.remote == "gone.test" && outcome.method == drawbridge::engine::events::AuthMethod::Dialback)).await;
    let Event::Verification { outcome } = ev else { unreachable!() };
    assert!(outcome.reason.contains("refused") && outcome.reason.contains(&closed_port.to_string()), "{}", outcome.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_claims_are_never_persisted() {
    let dns = Dns::start().await;
    // The per-stream rate limit is tested on its own; here the claims must all be answered.
    let server = start_server("island.test", &dns, "[limits]\nverifications_per_minute = 5000\n").await;
    // A domain the operator knows: claims in its name are not persisted either.
    change(&server.engine, Request::Approve { domain: "known.test".into(), reason: None }).await;
    let domains_before = server.engine.testing().stored_domains().len();
    let (mut p, _, _) = tls_peer(&server, "claimer.test").await;
    // Empty keys for 1 000 made-up domains and one known one (answered invalid, one by one).
    let mut batch = String::new();
    for i in 0..1000 {
        batch.push_str(&format!("<db:result from='made-up-{i}.test' to='island.test'></db:result>"));
    }
    batch.push_str("<db:result from='known.test' to='island.test'></db:result>");
    p.send(&batch).await;
    let mut answered = 0;
    while answered < 1001 {
        let el = p.next_el().await.expect("answers");
        if drawbridge::proto::dialback::DbElement::parse(&el).is_some_and(|d| d.answer.is_some()) {
            answered += 1;
        }
    }
    assert_eq!(server.engine.testing().stored_domains().len(), domains_before, "domain records were created for unauthenticated claims");
    assert!(record(&server.engine, "made-up-7.test").await.is_none());
    assert!(
        server.engine.testing().stored_outcomes(None, 5000).iter().all(|o| !o.remote.starts_with("made-up-")),
        "outcomes of claims reached the disk"
    );
    // The operator still sees them, from memory, bounded.
    let Reply::Outcomes(seen) = ask(&server.engine, Request::Verifications { domain: None, limit: Some(5000) }).await else {
        panic!("verifications answer with outcomes")
    };
    let claims = seen.iter().filter(|o| o.remote.starts_with("made-up-")).count();
    assert!((1..=drawbridge::engine::UNAUTHENTICATED_RING).contains(&claims), "{claims}");
    assert!(seen.iter().any(|o| o.remote == "made-up-999.test" && o.reason.contains("empty dialback key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_longer_than_a_domain_end_the_stream() {
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, "").await;
    let long = format!("{}.test", "a".repeat(2000));
    let mut p = RawPeer::connect(server.addr).await;
    p.send(&header(&long, "island.test")).await;
    let e = p.expect_stream_error().await;
    assert_eq!(e.condition, drawbridge::proto::stream::StreamErrorCondition::InvalidFrom, "{e}");
    assert!(e.text.len() < 300, "the error echoes the whole name: {} bytes", e.text.len());
    let mut p = RawPeer::connect(server.addr).await;
    p.send(&header("peer.test", &long)).await;
    let e = p.expect_stream_error().await;
    assert_eq!(e.condition, drawbridge::proto::stream::StreamErrorCondition::HostUnknown, "{e}");
    assert!(e.text.len() < 300, "{} bytes", e.text.len());
    assert!(server.engine.testing().stored_domains().is_empty());
}

/// A raw connection from `src` (a loopback address) to `dst`.
async fn connect_from(src: &str, dst: std::net::SocketAddr) -> RawPeer {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    RawPeer::from_tcp(sock.connect(dst).await.unwrap())
}

/// Whether the server keeps this connection: it answers a header with its own.
async fn accepted(p: &mut RawPeer) -> bool {
    p.send(&header("flood.test", "b.test")).await;
    matches!(p.next().await, Some(drawbridge::xml::Frame::StreamOpen(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_flood_cannot_stop_outbound_federation() {
    let dns = Dns::start().await;
    // Certificates both ways: a authenticates b's outbound stream by SASL EXTERNAL, with
    // no callback into b's (flooded) listener.
    let ca = ca("test CA");
    let dir = tempfile::tempdir().unwrap();
    let limits = "[limits]\nmax_inbound_unauthenticated = 4\nmax_unauthenticated_per_address = 2\n";
    let a = start_published("a.test", &dns, &tls_config(dir.path(), &ca, "a.test", &ca)).await;
    let b = start_published("b.test", &dns, &format!("{limits}{}", tls_config(dir.path(), &ca, "b.test", &ca))).await;
    let mut b_events = b.engine.subscribe();
    let mut held = Vec::new();
    for src in ["127.0.0.1", "127.0.0.1"] {
        let mut p = connect_from(src, b.addr).await;
        assert!(accepted(&mut p).await);
        held.push(p);
    }
    // A third from the same address is closed at once; another address still gets in.
    assert!(!accepted(&mut connect_from("127.0.0.1", b.addr).await).await, "per-address limit");
    for src in ["127.0.0.2", "127.0.0.3"] {
        let mut p = connect_from(src, b.addr).await;
        assert!(accepted(&mut p).await);
        held.push(p);
    }
    assert!(!accepted(&mut connect_from("127.0.0.4", b.addr).await).await, "unauthenticated limit");
    // Use is reported against each limit.
    let status = b.engine.status();
    let unauth = status.limits.iter().find(|l| l.key == "limits.max_inbound_unauthenticated").unwrap();
    assert_eq!((unauth.used, unauth.max), (4, 4));
    // Outbound federation has its own room: b's stream to a opens and authenticates while
    // b's door is full (a's answers would need b's inbound room, which the flood holds).
    let probe = tokio::spawn({
        let b = b.engine.handle();
        async move { b.probe("a.test", None).await }
    });
    wait_event(&mut b_events, "b's outbound stream to a authenticated", |e| {
        matches!(e, Event::PairAuthorised { remote, .. } if remote == "a.test")
            && b.engine.connections(false).iter().any(|c| c.direction == Direction::Out && c.remote.as_deref() == Some("a.test"))
    })
    .await;
    // Once the flood is gone, the whole round trip works.
    drop(held);
    probe.abort();
    for _ in 0..4 {
        wait_event(
            &mut b_events,
            "a flood connection closed",
            |e| matches!(e, Event::StreamClosed { stream } if stream.direction == Direction::In),
        )
        .await;
    }
    let r = within("probe b→a", b.engine.probe("a.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_requests_per_stream_are_limited() {
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, "[limits]\nverifications_per_minute = 5\n").await;
    let (mut p, _, _) = tls_peer(&server, "claimer.test").await;
    let mut batch = String::new();
    for i in 0..50 {
        batch.push_str(&format!("<db:result from='made-up-{i}.test' to='island.test'></db:result>"));
    }
    p.send(&batch).await;
    let e = p.expect_condition(drawbridge::proto::stream::StreamErrorCondition::PolicyViolation).await;
    assert!(e.text.contains("limits.verifications_per_minute"), "{e}");
}

/// RFC 6120 §8 on an authenticated stream: malformed iq and presence are answered with
/// bad-request, results and errors never are, and the stream carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stanzas_get_bad_request_and_errors_get_nothing() {
    let dns = Dns::start().await;
    let server = start_published("island.test", &dns, "").await;
    let mut peer = hand_played(&server, &dns, "peer.test").await;
    let ping = drawbridge::proto::ns::PING;
    let sent = [
        "<iq type='get' from='peer.test' to='island.test'><ping xmlns='urn:xmpp:ping'/></iq>".to_owned(),
        format!("<iq type='set' id='two' from='peer.test' to='island.test'><ping xmlns='{ping}'/><ping xmlns='{ping}'/></iq>"),
        "<iq type='result' id='r2' from='peer.test' to='island.test'><a xmlns='urn:x'/><b xmlns='urn:x'/></iq>".to_owned(),
        "<iq type='error' id='e' from='peer.test' to='island.test'/>".to_owned(),
        "<iq type='fetch' id='bogus' from='peer.test' to='island.test'><ping xmlns='urn:xmpp:ping'/></iq>".to_owned(),
        "<presence type='dance' id='pr' from='a@peer.test' to='island.test'/>".to_owned(),
        "<iq type='get' id='last' from='peer.test' to='island.test'><ping xmlns='urn:xmpp:ping'/></iq>".to_owned(),
    ];
    peer.to_server.send(&sent.concat()).await;
    let mut got = Vec::new();
    loop {
        let st = peer.next_stanza().await;
        let done = st.get_attr("id") == Some("last");
        got.push((st.name.to_string(), st.get_attr("id").map(str::to_owned), st.get_attr("type").map(str::to_owned), st.to_xml()));
        if done {
            break;
        }
    }
    let summary: Vec<(String, Option<String>, Option<String>)> = got.iter().map(|(n, i, t, _)| (n.clone(), i.clone(), t.clone())).collect();
    let e = |n: &str, id: Option<&str>, t: &str| (n.to_owned(), id.map(str::to_owned), Some(t.to_owned()));
    assert_eq!(
        summary,
        vec![
            e("iq", None, "error"),
            e("iq", Some("two"), "error"),
            e("iq", Some("bogus"), "error"),
            e("presence", Some("pr"), "error"),
            e("iq", Some("last"), "result"),
        ],
        "{got:#?}"
    );
    assert!(got[..4].iter().all(|(.., xml)| xml.contains("bad-request")), "{got:#?}");
}

/// A domain publishing many SRV targets makes drawbridge try only `outbound.max_targets`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_tried_are_capped() {
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, "[outbound]\nmax_targets = 3\n").await;
    // Ten targets, each a closed loopback port (connection refused).
    for i in 0..10 {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        dns.add_a(&format!("t{i}.many.test"), std::net::Ipv4Addr::LOCALHOST).await;
        dns.add_srv("many.test", 0, 1, &format!("t{i}.many.test"), port).await;
    }
    let r = within("probe", server.engine.probe("many.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap_or_default();
    assert!(err.contains("10 SRV targets, only the first 3 tried (outbound.max_targets)"), "{err}");
    assert_eq!(err.matches("refused").count(), 3, "{err}");
}

/// An authenticated inbound stream that carries nothing (not even a keepalive) is closed
/// with <connection-timeout/> after `timeouts.idle_inbound`; keepalives keep it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_inbound_streams_are_closed() {
    let _turn = TURNS.lock().await;
    let dns = Dns::start().await;
    let server = start_published("island.test", &dns, "[timeouts]\nidle_inbound = \"2s\"\n").await;
    let mut peer = hand_played(&server, &dns, "quiet.test").await;
    // Keepalives for longer than the idle time: still open.
    for _ in 0..4 {
        peer.to_server.send(" ").await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    peer.to_server.send("<iq type='get' id='alive' from='quiet.test' to='island.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(peer.next_stanza().await.get_attr("id"), Some("alive"));
    // Then silence.
    let e = peer.to_server.expect_condition(drawbridge::proto::stream::StreamErrorCondition::ConnectionTimeout).await;
    assert!(e.text.contains("timeouts.idle_inbound"), "{e}");
}

/// A link that makes no room: the stream whose answers meet its full queue stops reading
/// (TCP pushes back on the sender, memory stays bounded), and the operator's probe — a
/// request for the stalled domain — is bounced once `timeouts.write` (5 s here) passed
/// without room, instead of waiting for ever or being dropped. (The exact deadline is
/// proved with paused time in `router::tests`.) The probe is made while the stalled stream
/// is still open, its write waiting (observed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_makes_no_room_bounces_requests_after_the_write_deadline() {
    let _turn = TURNS.lock().await;
    // The probe's own limit far beyond the 5 s write deadline and the replacing stream's
    // 10 s negotiation deadline: one of those answers it, not the probe's clock. 5 s, not
    // 2: the stuck write must be seen before the deadline ends the stream.
    let (_dns, server, peer, _events) = stalled_peer("[timeouts]\nwrite = \"5s\"\nprobe = \"60s\"\n").await;
    let HandPlayed { mut to_server, from_server } = peer;
    assert!(
        fill_until_stuck(&mut to_server, &from_server, &server.engine).await,
        "the stream ended (write deadline) before its stuck write was seen"
    );
    let r = tokio::time::timeout(*LOADED, server.engine.probe("slow.test", None)).await.expect("the probe is answered");
    let err = r.error.unwrap_or_default();
    // Bounced: by the overflow rule if the link is still there at the deadline, else by the
    // stream that replaced it (the stalled one is closed by the same deadline; the peer
    // accepts no new connection).
    assert!(!r.ok && ["resource-constraint", "remote-server-timeout", "remote-server-not-found"].iter().any(|c| err.contains(c)), "{err}");
    drop(from_server);
}

/// A stanza the stream took from its queue but could not write before it ended is not lost:
/// here the operator closes the stream to a peer that stopped reading; the closing drain
/// feeds the queued probe to the connection, whose writes then fail (`timeouts.close`). The
/// probe is routed again (a new stream, which the peer refuses) and bounced: an answer,
/// never silence. (The queue is far larger than the filling, so the probe is queued, not
/// waiting for room: it is in the stream's hands when the stream ends.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_fed_to_a_stream_that_then_cannot_write_is_bounced_not_lost() {
    let _turn = TURNS.lock().await;
    let cfg = "[timeouts]\nwrite = \"10m\"\nclose = \"1s\"\nprobe = \"30s\"\n[limits]\noutbound_queue_bytes = 268435456\noutbound_queue = 1000000\n";
    let (_dns, server, peer, _events) = stalled_peer(cfg).await;
    let HandPlayed { mut to_server, from_server } = peer;
    // More waiting in the server than the kernel's buffers could still take (tcp_wmem's
    // and tcp_rmem's growth): the probe queued behind it stays in the server's hands.
    assert!(fill_until_stuck_behind(&mut to_server, &from_server, &server.engine, 48 << 20).await, "the stream ended while filling");
    let id = outbound_id(&server);
    // Polled once: the probe is routed (queued: the queue has room) and waits for its answer.
    let mut probe = Box::pin(server.engine.probe("slow.test", None));
    std::future::poll_fn(|cx| {
        assert!(probe.as_mut().poll(cx).is_pending(), "the probe waits for its answer");
        std::task::Poll::Ready(())
    })
    .await;
    assert!(server.engine.close_stream(&id, "closed by the test"));
    let r = tokio::time::timeout(*LOADED, probe).await.expect("the probe is answered");
    let err = r.error.unwrap_or_default();
    assert!(!r.ok && ["remote-server-not-found", "remote-server-timeout"].iter().any(|c| err.contains(c)), "{err}");
    drop(from_server);
}

/// Reads and writes are not serialised: while the server's writes to a peer that stopped
/// reading wait (for up to ten minutes here), it still reads that peer, and the peer's
/// close ends the stream at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_blocked_in_a_write_still_reads_its_peer() {
    let _turn = TURNS.lock().await;
    let (_dns, server, peer, mut events) = stalled_peer("[timeouts]\nwrite = \"10m\"\n").await;
    let HandPlayed { mut to_server, mut from_server } = peer;
    assert!(fill_until_stuck(&mut to_server, &from_server, &server.engine).await, "the stream ended while filling");
    let id = outbound_id(&server);
    assert_eq!(from_server.server_end_writable(), Some(false), "the outbound stream is open, its write waiting");
    // The peer closes the stream the server writes to (never reading what is queued).
    from_server.send("</stream:stream>").await;
    let ev = wait_event(&mut events, "the outbound stream closed by its peer", |e| closed(e, &id).is_some()).await;
    let reason = closed(&ev, &id).unwrap();
    assert!(reason.contains("closed by the peer"), "close reason: {reason}");
}

/// The negotiation deadline bounds writes only until the stream is authenticated: an
/// authenticated inbound stream (after STARTTLS) whose answers the peer does not read
/// (write deadline 10 min) is not closed when the 2 s negotiation deadline of its start has
/// long passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_negotiation_deadline_does_not_cut_writes_of_established_streams() {
    let _turn = TURNS.lock().await;
    let dns = Dns::start().await;
    let server = start_server("island.test", &dns, "[timeouts]\nwrite = \"10m\"\nnegotiation = \"2s\"\n").await;
    let mut events = server.engine.subscribe();
    let HandPlayed { mut to_server, from_server } = hand_played(&server, &dns, "reader.test").await;
    let opened = std::time::Instant::now();
    let inbound =
        || server.engine.connections(false).into_iter().find(|c| c.direction == Direction::In).expect("the inbound stream still open");
    let id = inbound().id;
    // Authoritative-server questions whose answers pile up on the inbound stream, unread.
    let mut batch = String::new();
    for i in 0..2000 {
        batch.push_str(&format!("<db:verify from='reader.test' to='island.test' id='s{i}'>{}</db:verify>", "ab".repeat(32)));
    }
    // Until the server's end of the inbound stream takes no more bytes (its send buffer
    // full, polled on the socket): from then on every answer it has is a waiting write.
    let (ours, theirs) = (to_server.tcp().local_addr().unwrap(), to_server.tcp().peer_addr().unwrap());
    let full = || match socket_writable(theirs, ours) {
        Some(writable) => Some(!writable),
        None => panic!("the inbound stream ended while filling"),
    };
    send_until(&mut to_server, |_| batch.clone(), full, "the server's writes to the peer getting stuck").await;
    let stuck_at = std::time::Instant::now();
    // Well past the 2 s deadline of the stream's negotiation, with its writes waiting.
    let quiet = Duration::from_secs(3).saturating_sub(opened.elapsed()) + Duration::from_secs(2);
    let closed_early =
        tokio::time::timeout(quiet, wait_event(&mut events, "the inbound stream closed", |e| closed(e, &id).is_some())).await;
    assert!(closed_early.is_err(), "closed while its writes waited: {:?}", closed_early.ok().and_then(|e| closed(&e, &id)));
    // The writes waited the whole time, and past the deadline.
    assert_eq!(to_server.server_end_writable(), Some(false), "the server's writes went on");
    assert!(stuck_at.elapsed() >= quiet && opened.elapsed() > Duration::from_secs(2));
    drop(from_server);
}
