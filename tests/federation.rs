//! Two (or three) real drawbridge servers on loopback, found through a real DNS server,
//! federating over STARTTLS with dialback.

mod common;

use common::*;
use drawbridge::engine::events::{ConnState, Direction, Event, PairStatus, VerificationResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_federate_both_ways() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let b = start_published("b.test", &dns, "").await;

    // a.test → b.test: a is originating, b receiving and calling back a (authoritative).
    let r = within("probe a→b", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "probe a→b failed: {:?}", r.error);
    assert!(r.rtt_ms.unwrap() > 0.0);
    assert_eq!(r.auth.as_deref(), Some("dialback (valid)"));
    assert!(r.tls.as_deref().unwrap().starts_with("TLS 1."), "{:?}", r.tls);
    assert_eq!(r.peer_addr.as_deref(), Some(b.addr.to_string().as_str()));

    // And the other way.
    let r = within("probe b→a", b.engine.probe("a.test", None)).await;
    assert!(r.ok, "probe b→a failed: {:?}", r.error);

    // a's table: an established outbound stream to b (dialback valid) and an inbound one from b.
    let conns = a.engine.connections(false);
    let out = conns.iter().find(|c| c.direction == Direction::Out && c.remote.as_deref() == Some("b.test")).expect("a has an outbound stream to b");
    assert_eq!(out.state, ConnState::Established);
    assert_eq!(out.pairs.len(), 1);
    assert_eq!(out.pairs[0].status, PairStatus::Valid);
    assert!(out.stanzas_out >= 1);
    let tls = out.tls.as_ref().expect("TLS recorded");
    let cert = tls.peer_cert.as_ref().expect("peer certificate recorded");
    assert!(cert.names.contains(&"b.test".to_string()), "{cert:?}");
    assert_eq!(cert.fingerprint_sha256.len(), 32 * 3 - 1);
    let inbound = conns
        .iter()
        .find(|c| c.direction == Direction::In && c.pairs.iter().any(|p| p.remote == "b.test" && p.status == PairStatus::Valid))
        .expect("a has an authenticated inbound stream from b");
    assert!(inbound.stanzas_in >= 1, "the pong from b arrived on it");

    // Both sides recorded valid verifications of each other.
    let outcomes = a.engine.shared.outcomes();
    assert!(outcomes.iter().any(|o| o.direction == Direction::In && o.remote == "b.test" && o.result == VerificationResult::Valid));
    assert!(outcomes.iter().any(|o| o.direction == Direction::Out && o.remote == "b.test" && o.result == VerificationResult::Valid));

    // A second probe reuses the streams: no new outbound stream.
    let r = within("second probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok);
    let outs = a.engine.connections(false).into_iter().filter(|c| c.direction == Direction::Out && c.remote.as_deref() == Some("b.test")).count();
    assert_eq!(outs, 1, "one outbound stream per domain pair");

    // Graceful shutdown closes the streams on both sides: b sees both of a's streams close.
    let mut events = b.engine.subscribe();
    a.engine.shutdown().await;
    let mut closed = 0;
    while closed < 2 {
        let ev = wait_event(&mut events, "b's streams with a to close", |e| matches!(e, Event::StreamClosed { stream } if stream.remote.as_deref() == Some("a.test"))).await;
        let Event::StreamClosed { stream } = ev else { unreachable!() };
        assert!(stream.state == ConnState::Closed);
        closed += 1;
    }
    assert!(b.engine.connections(false).iter().all(|c| c.remote.as_deref() != Some("a.test")));
}
