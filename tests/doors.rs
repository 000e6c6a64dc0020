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
    let cfg = format!("[components]\nlisten = [\"127.0.0.1:0\"]\n[[component]]\ndomain = \"comp.a.test\"\nsecret = \"{SECRET}\"\n");
    let a = start_published("a.test", &dns, &cfg).await;
    let addr = a.engine.shared.listening_components[0];
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
