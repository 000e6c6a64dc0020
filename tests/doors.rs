//! Separate doors, separate budgets: unauthenticated connections are limited per listener
//! kind, so a flood on the public listener leaves the internal server (gateway mode) and the
//! components their own room.
//!
//! A (the gateway, hosting `h.test`, with the component `comp.h.test` on its components
//! listener) has its public listener held at `limits.max_inbound_unauthenticated` by
//! connections that never say anything; C, the internal server, then still reaches the
//! component through A's `gateway.listen`, and the component answers through A's internal
//! link — the internal server and the component both came in while the public door was full.

mod common;

use common::*;
use drawbridge::engine::events::{AuthMethod, Direction, PairStatus, StreamKind};
use drawbridge::proto::machine::component::handshake_digest;
use drawbridge::proto::ns;
use drawbridge::xml::Frame;
use tokio::io::AsyncReadExt;

const SECRET: &str = "a component secret of some length";
/// The public door's unauthenticated budget in this test.
const PUBLIC_CAP: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_public_door_leaves_the_internal_server_and_components_their_room() {
    let world = Dns::start().await;
    let internal_dns = Dns::start().await;
    let test_ca = ca("test CA");
    let gw_ca = ca("gateway CA");
    let (dir_a, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (gw_pem, gw_key) = (dir_a.path().join("gw-ca.pem"), dir_a.path().join("gw-ca.key"));
    std::fs::write(&gw_pem, &gw_ca.pem).unwrap();
    std::fs::write(&gw_key, gw_ca.key.serialize_pem()).unwrap();
    // The internal server's certificate chains to the test CA: A trusts it (only) for C.
    let internal_ca = dir_a.path().join("internal-ca.pem");
    std::fs::write(&internal_ca, &test_ca.pem).unwrap();
    // C, the internal server: trusts the gateway CA (what A presents for the domains it
    // stands in for) and the test CA.
    let c_tls = tls_config(dir_c.path(), &test_ca, "h.test", &test_ca);
    std::fs::write(dir_c.path().join("h.test-trust.pem"), format!("{}{}", test_ca.pem, gw_ca.pem)).unwrap();
    let c = start_server("h.test", &internal_dns, &c_tls).await;
    // A: the gateway, its public door small; the stalled connections outlive the test.
    let a_tls = tls_config(dir_a.path(), &test_ca, "h.test", &test_ca);
    let a_cfg = format!(
        "{a_tls}\n[gateway]\ninternal = \"{}\"\nlisten = [\"127.0.0.1:0\"]\nauth = \"pki\"\nca_cert = \"{}\"\nca_key = \"{}\"\ninternal_ca = \"{}\"\n\
         [components]\nlisten = [\"127.0.0.1:0\"]\n[[component]]\ndomain = \"comp.h.test\"\nsecret = \"{SECRET}\"\n\
         [limits]\nmax_inbound_unauthenticated = {PUBLIC_CAP}\nmax_unauthenticated_per_address = {PUBLIC_CAP}\n\
         [timeouts]\nnegotiation = \"120s\"\n",
        c.addr,
        gw_pem.display(),
        gw_key.display(),
        internal_ca.display()
    );
    let a = start_published("h.test", &world, &a_cfg).await;
    let gateway_listen = a.engine.listening().gateway[0];
    let components = a.engine.listening().components[0];
    // The internal server finds the component's domain at A's gateway listener.
    internal_dns.add_a("xmpp.comp.h.test", std::net::Ipv4Addr::LOCALHOST).await;
    internal_dns.add_srv("comp.h.test", 0, 5, "xmpp.comp.h.test", gateway_listen.port()).await;

    // The public door held at its cap by connections that never send anything.
    let mut stalled = Vec::new();
    for _ in 0..PUBLIC_CAP {
        stalled.push(tokio::net::TcpStream::connect(a.addr).await.unwrap());
    }
    // One more is closed at once: the door is full (the accept loop takes them in order).
    let mut refused = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within("the connection over the cap to be closed", refused.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "closed without a word: {n:?}");
    let uses = a.engine.status().limits;
    let used = |k: &str| uses.iter().find(|u| u.key == k).map(|u| (u.used, u.max));
    assert_eq!(used("limits.max_inbound_unauthenticated"), Some((PUBLIC_CAP, PUBLIC_CAP)), "{uses:#?}");

    // The component comes in through its own door.
    let mut comp = RawPeer::connect(components).await;
    comp.send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='comp.h.test'>").await;
    let id = match within("the component's stream header", comp.next()).await {
        Some(Frame::StreamOpen(h)) => h.id.expect("a stream id"),
        other => panic!("expected a stream header, got {other:?}"),
    };
    comp.send(&format!("<handshake>{}</handshake>", handshake_digest(&id, SECRET))).await;
    let answer = within("the handshake's answer", comp.next_el()).await.expect("an answer");
    assert!(answer.name.as_ref() == "handshake" && answer.ns.as_ref() == ns::COMPONENT_ACCEPT, "{answer:?}");

    // The internal server pings the component: in through gateway.listen, out over the
    // internal link.
    let answer_ping = async {
        let iq = within("a ping for the component", comp.next_el()).await.expect("a stanza");
        assert!(iq.has_child("ping", ns::PING), "{iq:?}");
        let (from, to, id) = (iq.get_attr("from").unwrap(), iq.get_attr("to").unwrap(), iq.get_attr("id").unwrap());
        comp.send(&format!("<iq type='result' from='{to}' to='{from}' id='{id}'/>")).await;
    };
    let (report, ()) = tokio::join!(within("C's probe of the component", c.engine.probe("comp.h.test", None)), answer_ping);
    assert!(report.ok, "{:?}", report.error);
    let conns = a.engine.connections(false);
    let internal_in = conns.iter().find(|s| s.internal() && s.direction == Direction::In).expect("the internal server's stream");
    assert!(internal_in.pairs.iter().any(|p| p.status == PairStatus::Valid && p.method == AuthMethod::SaslExternal), "{internal_in:#?}");
    assert!(conns.iter().any(|s| s.kind == StreamKind::Component), "{conns:#?}");
    // And the public door is still full: nobody got in there meanwhile.
    let uses = a.engine.status().limits;
    let used = |k: &str| uses.iter().find(|u| u.key == k).map(|u| u.used);
    assert_eq!(used("limits.max_inbound_unauthenticated"), Some(PUBLIC_CAP));
    drop((stalled, dir_a, dir_c));
}
