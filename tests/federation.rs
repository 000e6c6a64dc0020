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
    let out = conns
        .iter()
        .find(|c| c.direction == Direction::Out && c.remote.as_deref() == Some("b.test"))
        .expect("a has an outbound stream to b");
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
    let outcomes = a.engine.outcomes();
    assert!(outcomes.iter().any(|o| o.direction == Direction::In && o.remote == "b.test" && o.result == VerificationResult::Valid));
    assert!(outcomes.iter().any(|o| o.direction == Direction::Out && o.remote == "b.test" && o.result == VerificationResult::Valid));

    // A second probe reuses the streams: no new outbound stream.
    let r = within("second probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok);
    let outs =
        a.engine.connections(false).into_iter().filter(|c| c.direction == Direction::Out && c.remote.as_deref() == Some("b.test")).count();
    assert_eq!(outs, 1, "one outbound stream per domain pair");

    // ctl domains / ctl domain: b.test's streams open now, apart from those that ended.
    let row = domain_rows(&a.engine, None).await.into_iter().find(|r| r.record.domain == "b.test").expect("a has a record of b.test");
    assert_eq!((row.live.inbound, row.live.outbound), (1, 1), "one live stream each way: {row:?}");
    assert_eq!((row.record.streams_in, row.record.streams_out), (0, 0), "none ended yet: {row:?}");
    assert_eq!(domain_report(&a.engine, "b.test").await.live, row.live);

    // Graceful shutdown closes the streams on both sides: b sees both of a's streams close.
    let mut events = b.engine.subscribe();
    a.engine.shutdown().await;
    let mut closed = 0;
    while closed < 2 {
        let ev = wait_event(
            &mut events,
            "b's streams with a to close",
            |e| matches!(e, Event::StreamClosed { stream } if stream.remote.as_deref() == Some("a.test")),
        )
        .await;
        let Event::StreamClosed { stream } = ev else { unreachable!() };
        assert!(stream.state == ConnState::Closed);
        closed += 1;
    }
    assert!(b.engine.connections(false).iter().all(|c| c.remote.as_deref() != Some("a.test")));
    // Now b counts them among a.test's ended streams (written just after the close event),
    // none live.
    let t0 = std::time::Instant::now();
    let row = loop {
        let row = domain_rows(&b.engine, None).await.into_iter().find(|r| r.record.domain == "a.test").expect("b has a record of a.test");
        if (row.record.streams_in, row.record.streams_out) == (1, 1) || t0.elapsed() > *WAIT {
            break row;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!((row.live.inbound, row.live.outbound, row.record.streams_in, row.record.streams_out), (0, 0, 1, 1), "{row:?}");
}

/// Transcripts: from the first byte of the header, through TLS, with dialback keys masked;
/// a failed attempt stays readable after it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_record_negotiation_and_mask_keys() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let b = start_published("b.test", &dns, "").await;
    let r = within("probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok);
    let t = a.engine.transcript(r.stream.as_deref().unwrap()).unwrap();
    let text: Vec<String> = t.iter().map(|l| format!("{} {}", l.dir, l.text)).collect();
    let pos = |needle: &str| text.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {text:#?}"));
    assert!(pos("out <stream:stream") < pos("in <stream:features"));
    assert!(pos("out <starttls") < pos("in <proceed"));
    assert!(pos("note TLS established: TLS 1.3") < pos("out <db:result"));
    let db = t.iter().find(|l| l.dir == "out" && l.text.contains("<db:result")).unwrap();
    assert!(db.text.contains(drawbridge::xml::writer::KEY_MARKER), "{}", db.text);
    assert_eq!(db.key.as_ref().map(|k| k.len()), Some(64), "the key is kept apart for an operator who reveals it");
    assert!(!db.text.contains(db.key.as_deref().unwrap()));
    assert!(t.iter().any(|l| l.dir == "in" && l.text.contains("type='valid'")));
    // The receiving side's transcript ends with the answer that established the stream.
    let inbound =
        b.engine.connections(false).into_iter().find(|c| c.direction == Direction::In && c.remote.as_deref() == Some("a.test")).unwrap();
    let bt = b.engine.transcript(&inbound.id).unwrap();
    assert!(bt.iter().any(|l| l.dir == "out" && l.text.contains("<db:result") && l.text.contains("type='valid'")), "{bt:#?}");

    // A refused attempt: its transcript is still there after the stream closed.
    change(&b.engine, Request::Block { domain: "a.test".into(), for_secs: None, reason: Some("test".into()) }).await;
    let mut p = RawPeer::connect(b.addr).await;
    p.send(&header("a.test", "b.test")).await;
    p.expect_stream_error().await;
    let mut events = b.engine.subscribe();
    let closed = loop {
        if let Some(c) =
            b.engine.connections(true).into_iter().find(|c| c.state == ConnState::Closed && c.direction == Direction::In && c.tls.is_none())
        {
            break c;
        }
        wait_event(&mut events, "the refused stream to close", |e| matches!(e, Event::StreamClosed { .. })).await;
    };
    let t = b.engine.transcript(&closed.id).unwrap();
    assert!(t.iter().any(|l| l.dir == "in" && l.text.contains("from='a.test'")), "{closed:#?}\n{t:#?}\n{:#?}", b.engine.connections(true));
    assert!(t.iter().any(|l| l.dir == "out" && l.text.contains("policy-violation") && l.text.contains("a.test is blocked")));
}
