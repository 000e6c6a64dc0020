//! Issue 16's new doors, attacked as a hostile peer would on loopback: the self-loop guards
//! (own listeners, stream ids), the gateway listener, the component listener.

mod common;

use common::*;
use drawbridge::engine::events::Direction;

/// A DNS answer of `0.0.0.0` is this machine: connecting to the unspecified address reaches
/// loopback. With `[outbound] deny` set by the operator (the default list, which holds
/// 0.0.0.0/8, is then gone), drawbridge still never dials its own listener through it — the
/// own-listener check caught 127.0.0.1 but not 0.0.0.0, and the stream-id check had to end the
/// loop after a whole connection and TLS handshake with itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_address_is_0_0_0_0_is_not_dialled_when_it_is_our_listener() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "[outbound]\ndeny = [\"10.0.0.0/8\"]\n").await;
    dns.add_a("xmpp.zero.test", std::net::Ipv4Addr::UNSPECIFIED).await;
    dns.add_srv("zero.test", 0, 5, "xmpp.zero.test", a.addr.port()).await;
    let r = within("probe of a domain at 0.0.0.0", a.engine.probe("zero.test", None)).await;
    assert!(!r.ok, "{r:?}");
    let err = r.error.unwrap();
    assert!(err.contains("drawbridge itself listens there") && err.contains("server.listen"), "{err}");
    let inbound = a.engine.connections(true).into_iter().filter(|c| c.direction == Direction::In).count();
    assert_eq!(inbound, 0, "not one stream reached our own listener: {:#?}", a.engine.connections(true));
}

const SECRET: &str = "a component secret of some length";

/// A's component listener and the stream id of a fresh component stream for comp.a.test.
async fn component_world() -> (TestServer, std::net::SocketAddr, Dns) {
    let dns = Dns::start().await;
    let cfg = format!(
        "[components]\nlisten = [\"127.0.0.1:0\"]\n[[component]]\ndomain = \"comp.a.test\"\nsecret = \"{SECRET}\"\n\
         [limits]\nmax_unauthenticated_components = 1000\n"
    );
    let a = start_published("a.test", &dns, &cfg).await;
    let addr = a.engine.listening().components[0];
    (a, addr, dns)
}

async fn component_header(addr: std::net::SocketAddr) -> (RawPeer, String) {
    let mut p = RawPeer::connect(addr).await;
    p.send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='comp.a.test'>").await;
    let id = match within("the header", p.next()).await {
        Some(drawbridge::xml::Frame::StreamOpen(h)) => h.id.expect("a stream id"),
        other => panic!("expected a stream header, got {other:?}"),
    };
    (p, id)
}

/// The 8 KiB cap before the handshake holds for the `<handshake/>` element itself (and for
/// one whose digest is padded with whitespace, which the comparison might trim): 20 KB of it
/// ends the stream with policy-violation before the secret is even compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_handshake_cap_holds_across_the_handshake_element() {
    let (_a, addr, _dns) = component_world().await;
    for pad in ["a", " "] {
        let (mut p, id) = component_header(addr).await;
        let digest = drawbridge::proto::machine::component::handshake_digest(&id, SECRET);
        p.send(&format!("<handshake>{}{digest}</handshake>", pad.repeat(20_000))).await;
        p.expect_condition(drawbridge::proto::stream::StreamErrorCondition::PolicyViolation).await;
    }
}

/// A raw peer connected to `to` from the loopback address `from`.
async fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddr) -> RawPeer {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(from.into(), 0)).unwrap();
    RawPeer::from_tcp(sock.connect(to).await.unwrap())
}

/// The once-a-minute logger is keyed by source address, and an attacker has many: an IPv6
/// /64 (what any hosted machine gets), or here 127.0.0.0/8. 300 wrong component secrets from
/// 300 loopback addresses wrote 300 WARN lines; now each limit logs a bounded number of new
/// sources a minute and counts the rest in its next line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_with_many_addresses_cannot_flood_the_log() {
    capture_logs();
    let (a, addr, _dns) = component_world().await;
    let n = 300u32;
    for i in 0..n {
        let from = std::net::Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8);
        let mut p = connect_from(from, addr).await;
        p.send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='comp.a.test'>").await;
        let _ = within("the header", p.next()).await;
        p.send("<handshake>0000000000000000000000000000000000000000</handshake>").await;
        p.expect_condition(drawbridge::proto::stream::StreamErrorCondition::NotAuthorized).await;
    }
    let mut events = a.engine.subscribe();
    while a.engine.connections(false).iter().any(|s| s.kind == drawbridge::engine::events::StreamKind::Component) {
        wait_event(&mut events, "the strangers' streams to end", |e| matches!(e, drawbridge::engine::events::Event::StreamClosed { .. }))
            .await;
    }
    let log = captured_logs();
    let lines = log.lines().filter(|l| l.contains("ended before its handshake")).count();
    eprintln!("{n} addresses, {lines} lines");
    assert!(lines < 40, "{n} connections from {n} addresses wrote {lines} lines:\n{}", log.lines().take(5).collect::<Vec<_>>().join("\n"));
}

/// Issue 16 item 11 (separate doors): whoever shares the component's address (a local user
/// when the component runs on the same machine; everyone behind a proxy) held the shared
/// per-address unauthenticated cap with 16 idle connections to the *public* listener, and the
/// component got no stream header. Each door now counts its own, so the component connects.
/// (Wrong secrets on the component listener itself still hold that door's per-address slots a
/// second each: README says to give components an address of their own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_components_address_cannot_lock_it_out() {
    let (a, addr, _dns) = component_world().await;
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(RawPeer::connect(a.addr).await);
    }
    // Each idle connection is admitted (counted) once accepted; then the component comes.
    tokio::task::yield_now().await;
    let (mut p, _id) = component_header(addr).await;
    let digest = drawbridge::proto::machine::component::handshake_digest(&_id, SECRET);
    p.send(&format!("<handshake>{digest}</handshake>")).await;
    let answer = within("the handshake's answer", p.next_el()).await.expect("an answer");
    assert_eq!(answer.name.as_ref(), "handshake", "{}", answer.to_xml());
}

/// Minted certificates live at `minted/<A-label>.pem` and pruning only lists that directory:
/// no domain a peer can name becomes a path that leaves it (it held — `/`, `\`, empty labels
/// and their full-width or IDNA look-alikes are refused or mapped to harmless A-labels).
#[test]
fn no_domain_name_becomes_a_path_out_of_the_minted_directory() {
    for name in [
        "../evil",
        "a/b.test",
        "a\\b.test",
        "a\u{ff0f}b.test",
        "a\u{2215}b.test",
        "..",
        "a..b",
        ".",
        "a\u{ff0e}\u{ff0e}b",
        "\u{2024}\u{2024}",
    ] {
        if let Ok(d) = drawbridge::domain::Domain::parse(name) {
            let file = format!("{}.pem", d.ascii());
            let p = std::path::Path::new(&file);
            assert_eq!(p.components().count(), 1, "{name:?} → {file:?}");
            assert!(matches!(p.components().next(), Some(std::path::Component::Normal(_))), "{name:?} → {file:?}");
        }
    }
}
