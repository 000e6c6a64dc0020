//! Stream limits (XEP-0478) and peers' stream errors (RFC 6120 §4.9), over real sockets:
//! the stanza size drawbridge accepts (512 KiB, Prosody's default), the limits it advertises
//! before and after authentication, a peer's advertised `max-bytes` honoured (larger stanzas
//! bounce to their sender, the stream stays up), and a peer's `<stream:error/>` read on
//! inbound and component streams: the stream ends quietly and its reason is kept.

mod common;

use common::*;
use drawbridge::engine::events::{Direction, Event, StreamKind, VerificationResult};
use drawbridge::proto::machine::component::handshake_digest;
use drawbridge::proto::ns;
use drawbridge::xml::Frame;

/// A stream error with a condition, a text (with a newline a log must not keep raw) and an
/// application-specific condition.
const PEER_ERROR: &str = "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>going down&#10;for maintenance</text><maintenance xmlns='urn:example:ops'/></stream:error>";

/// The server answers a peer's stream error with its closing tag only.
async fn expect_quiet_close(p: &mut RawPeer) {
    loop {
        match p.next().await {
            Some(Frame::StreamClose) => break,
            Some(Frame::Element(e)) => assert!(!e.is("error", ns::STREAMS), "no stream error in reply to the peer's: {e:?}"),
            Some(Frame::StreamOpen(_)) => continue,
            None => panic!("the connection ended without </stream:stream>"),
        }
    }
    p.send(drawbridge::proto::stream::CLOSE).await;
}

fn closed_stream(ev: &Event) -> &drawbridge::engine::events::ConnSnapshot {
    let Event::StreamClosed { stream } = ev else { unreachable!() };
    stream
}

/// On an inbound stream, with a claim being verified: no `unsupported-stanza-type` in reply;
/// the condition and text are the closed row's reason and the claim's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_stream_error_on_an_inbound_stream_ends_it_quietly_with_its_reason() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    // x.test's authoritative server accepts the callback's TCP connection and says nothing:
    // the claim stays under verification.
    let _silent = publish_listener(&dns, "x.test").await;
    let mut events = b.engine.subscribe();
    let (mut p, _, _) = tls_peer(&b, "x.test").await;
    p.send_el(&drawbridge::proto::dialback::result_request("x.test", "b.test", "some-key")).await;
    p.send(PEER_ERROR).await;
    expect_quiet_close(&mut p).await;
    let ev = wait_event(
        &mut events,
        "the inbound stream closed",
        |e| matches!(e, Event::StreamClosed { stream } if stream.direction == Direction::In && stream.remote.as_deref() == Some("x.test")),
    )
    .await;
    let row = closed_stream(&ev);
    let reason = row.close_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("<system-shutdown/>")
            && reason.contains("going down\\nfor maintenance")
            && reason.contains("{urn:example:ops}maintenance"),
        "{reason}"
    );
    assert!(!reason.contains("unsupported-stanza-type") && !reason.contains('\n'), "{reason}");
    // `ctl connections --closed` shows the same row.
    let closed = b.engine.connections(true);
    assert!(closed.iter().any(|c| c.id == row.id && c.close_reason.as_deref() == Some(reason.as_str())), "{closed:#?}");
    // The transcript has the error as received and why the stream closed.
    let lines = b.engine.shared.table.transcript(&row.id).expect("the closed stream's transcript");
    assert!(lines.iter().any(|l| l.dir == "in" && l.text.contains("<system-shutdown")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.dir == "note" && l.text.contains("closing:") && l.text.contains("<system-shutdown/>")), "{lines:#?}");
    // The claim under way ended with the peer's reason.
    let outcomes = b.engine.shared.outcomes();
    let o = outcomes.iter().find(|o| o.remote == "x.test").expect("an outcome for the claim");
    assert_eq!(o.result, VerificationResult::Error, "{o:?}");
    assert!(o.reason.contains("system-shutdown") && o.reason.contains("going down\\nfor maintenance"), "{}", o.reason);
}

/// On a component's stream: the same, and the component's domain is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_components_stream_error_ends_its_stream_quietly_with_its_reason() {
    let dns = Dns::start().await;
    let cfg = "[components]\nlisten = [\"127.0.0.1:0\"]\n[[component]]\ndomain = \"comp.a.test\"\nsecret = \"a component secret of some length\"\n";
    let a = start_published("a.test", &dns, cfg).await;
    let addr = a.engine.shared.listening_components[0];
    let mut events = a.engine.subscribe();
    let mut p = RawPeer::connect(addr).await;
    p.send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='comp.a.test'>").await;
    let id = match p.next().await {
        Some(Frame::StreamOpen(h)) => h.id.expect("a stream id"),
        other => panic!("expected a stream header, got {other:?}"),
    };
    p.send(&format!("<handshake>{}</handshake>", handshake_digest(&id, "a component secret of some length"))).await;
    let ok = p.next_el().await.expect("the handshake's answer");
    assert_eq!(ok.name.as_ref(), "handshake", "{ok:?}");
    // The default-namespace form of a stream error.
    p.send("<error xmlns='http://etherx.jabber.org/streams'><reset xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>reconfiguring</text></error>").await;
    expect_quiet_close(&mut p).await;
    let ev = wait_event(
        &mut events,
        "the component's stream closed",
        |e| matches!(e, Event::StreamClosed { stream } if stream.kind == StreamKind::Component),
    )
    .await;
    let reason = closed_stream(&ev).close_reason.clone().unwrap_or_default();
    assert!(reason.contains("<reset/>") && reason.contains("reconfiguring"), "{reason}");
    assert!(!reason.contains("is not a stanza"), "{reason}");
}

/// A message with a body of `kib` KiB from x.test to b.test.
fn message_of(kib: usize) -> String {
    format!("<message from='u@x.test' to='b.test' id='big{kib}'><body>{}</body></message>", "a".repeat(kib * 1024))
}

/// The default stanza size limit is Prosody's (512 KiB): a 500 KiB stanza is taken and the
/// stream carries on; a 600 KiB one ends the stream with `<policy-violation/>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_stanza_limit_takes_500_kib_and_refuses_600_kib() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let mut x = hand_played(&b, &dns, "x.test").await;
    x.to_server.send(&message_of(500)).await;
    // Still up: a ping on the same stream after it is answered.
    x.to_server.send("<iq type='get' id='after' from='u@x.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    loop {
        let st = x.next_stanza().await;
        if st.get_attr("id") == Some("after") {
            assert_eq!(st.get_attr("type"), Some("result"), "{st:?}");
            break;
        }
    }
    x.to_server.send(&message_of(600)).await;
    let e = x.to_server.expect_condition(drawbridge::proto::stream::StreamErrorCondition::PolicyViolation).await;
    assert!(e.text.contains("524288") && e.text.contains("limits.max_stanza_size"), "{e}");
}
