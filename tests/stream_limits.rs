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
    let lines = b.engine.transcript(&row.id).expect("the closed stream's transcript");
    assert!(lines.iter().any(|l| l.dir == "in" && l.text.contains("<system-shutdown")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.dir == "note" && l.text.contains("closing:") && l.text.contains("<system-shutdown/>")), "{lines:#?}");
    // The claim under way ended with the peer's reason.
    let outcomes = b.engine.outcomes();
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
    let addr = a.engine.listening().components[0];
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

/// Before a stream authenticates the size limit stays what it was (256 KiB): what a stranger
/// can make drawbridge buffer and parse did not grow with the stanza limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_authentication_frames_stay_under_256_kib() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let (mut p, _, _) = tls_peer(&b, "x.test").await;
    p.send(&format!("<db:result from='x.test' to='b.test'>{}</db:result>", "k".repeat(300 * 1024))).await;
    let e = p.expect_condition(drawbridge::proto::stream::StreamErrorCondition::PolicyViolation).await;
    assert!(e.text.contains("262144") && e.text.contains("until the stream is authenticated"), "{e}");
}

const COMP_SECRET: &str = "a component secret of some length";

/// A component of b.test connected over its own listener (the sender of the stanzas here).
async fn component(addr: std::net::SocketAddr, domain: &str) -> RawPeer {
    let mut p = RawPeer::connect(addr).await;
    p.send(&format!("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>")).await;
    let id = match p.next().await {
        Some(Frame::StreamOpen(h)) => h.id.expect("a stream id"),
        other => panic!("expected a stream header, got {other:?}"),
    };
    p.send(&format!("<handshake>{}</handshake>", handshake_digest(&id, COMP_SECRET))).await;
    let ok = p.next_el().await.expect("the handshake's answer");
    assert_eq!(ok.name.as_ref(), "handshake", "{ok:?}");
    p
}

/// Play the receiving server `domain` for the server's outbound stream arriving on
/// `listener`: STARTTLS, then features after TLS that carry `extra` (the limits), and a
/// dialback answer of "valid" to whatever it claims. Returns the authenticated stream.
async fn receive_advertising(listener: &tokio::net::TcpListener, domain: &str, extra: &str) -> RawPeer {
    use drawbridge::proto::dialback::{Answer, DbElement, result_answer};
    let (tcp, _) = within("the server's connection", listener.accept()).await.unwrap();
    let mut p = RawPeer::from_tcp(tcp);
    let from = match p.next().await {
        Some(Frame::StreamOpen(h)) => h.from.unwrap_or_default(),
        other => panic!("expected a header, got {other:?}"),
    };
    p.send(&drawbridge::proto::stream::header(Some(domain), Some(&from), Some("pre-tls-id"))).await;
    p.send("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>").await;
    assert!(p.next_el().await.expect("starttls").is("starttls", ns::TLS));
    p.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    let PeerIo::Plain(tcp) = std::mem::replace(&mut p.io, PeerIo::Gone) else { panic!() };
    let acceptor = tokio_rustls::TlsAcceptor::from(peer_tls(domain).server_config(&drawbridge::domain::Domain::parse(domain).unwrap()));
    p.io = PeerIo::Tls(Box::new(tokio_rustls::TlsStream::Server(within("TLS accept", acceptor.accept(tcp)).await.unwrap())));
    p.framer = drawbridge::xml::Framer::new(1 << 20, 64);
    assert!(matches!(p.next().await, Some(Frame::StreamOpen(_))));
    p.send(&drawbridge::proto::stream::header(Some(domain), Some(&from), Some("post-tls-id"))).await;
    p.send(&format!("<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>{extra}</stream:features>")).await;
    let claim = DbElement::parse(&p.next_el().await.expect("db:result")).expect("a dialback claim");
    p.send_el(&result_answer(domain, &claim.from, &Answer::Valid)).await;
    p
}

/// The next stanza on a hand-played stream (whitespace and dialback skipped).
async fn next_stanza(p: &mut RawPeer) -> drawbridge::xml::Element {
    loop {
        let el = p.next_el().await.expect("a stanza");
        if drawbridge::proto::stanza::is_stanza(&el) {
            return el;
        }
    }
}

fn message_from_component(id: &str, kib: usize) -> String {
    format!("<message from='bot@comp.b.test' to='u@x.test' id='{id}'><body>{}</body></message>", "a".repeat(kib * 1024))
}

/// XEP-0478 §3: x.test advertises `max-bytes` 4096. A 10 KiB stanza for it is not sent: its
/// sender (a component) gets `<policy-violation/>` without 'by', saying the limit; stanzas
/// under the limit before and after it arrive on the same stream, which stays up. The
/// stream's row shows both sides' limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_over_the_peers_advertised_max_bytes_bounces_to_its_sender_and_the_stream_stays() {
    let dns = Dns::start().await;
    let cfg = format!("[components]\nlisten = [\"127.0.0.1:0\"]\n[[component]]\ndomain = \"comp.b.test\"\nsecret = \"{COMP_SECRET}\"\n");
    let b = start_published("b.test", &dns, &cfg).await;
    let listener = publish_listener(&dns, "x.test").await;
    let mut c = component(b.engine.listening().components[0], "comp.b.test").await;
    c.send(&message_from_component("first", 1)).await;
    let limits = "<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>4096</max-bytes><idle-seconds>600</idle-seconds></limits>";
    let mut x = receive_advertising(&listener, "x.test", limits).await;
    assert_eq!(next_stanza(&mut x).await.get_attr("id"), Some("first"));

    c.send(&message_from_component("big", 10)).await;
    let bounce = within("the bounce", c.next_el()).await.expect("the bounce");
    assert_eq!(
        (bounce.get_attr("type"), bounce.get_attr("id"), bounce.get_attr("to")),
        (Some("error"), Some("big"), Some("bot@comp.b.test"))
    );
    let err = bounce.elements().find(|e| e.name.as_ref() == "error").expect("an error");
    assert!(err.get_attr("by").is_none(), "the policy is the peer's, not ours: {bounce:?}");
    assert!(err.has_child("policy-violation", ns::STANZA_ERRORS), "{bounce:?}");
    let text = err.elements().find(|e| e.name.as_ref() == "text").map(|t| t.text_content()).unwrap_or_default();
    assert!(text.contains("4096") && text.contains("x.test"), "{text}");
    assert!(bounce.elements().all(|e| e.name.as_ref() != "body"), "the large original is not echoed back");

    c.send(&message_from_component("after", 2)).await;
    assert_eq!(next_stanza(&mut x).await.get_attr("id"), Some("after"), "the next stanza arrives on the same stream");
    let out: Vec<_> = b
        .engine
        .connections(false)
        .into_iter()
        .filter(|s| s.direction == Direction::Out && s.remote.as_deref() == Some("x.test"))
        .collect();
    assert_eq!(out.len(), 1, "{out:#?}");
    let l = out[0].limits.expect("the row's limits");
    assert_eq!((l.max_bytes, l.peer_max_bytes, l.peer_idle_seconds), (512 * 1024, Some(4096), Some(600)));
    // `ctl connections --json` carries them.
    let json = serde_json::to_string(&out[0]).unwrap();
    assert!(json.contains("\"peer_max_bytes\":4096"), "{json}");
}

/// Our features carry the limits (`max-bytes` = `limits.max_stanza_size`, `idle-seconds` =
/// `timeouts.idle_inbound`) before TLS, after TLS and after SASL EXTERNAL authenticated the
/// peer (the restarted stream's features).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_features_advertise_the_limits_before_and_after_authentication() {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
    let dns = Dns::start().await;
    let ca = ca("drawbridge test CA");
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}\n[timeouts]\nidle_inbound = \"15m\"\n", tls_config(dir.path(), &ca, "b.test", &ca));
    let b = start_published("b.test", &dns, &extra).await;
    let mut params = CertificateParams::new(vec!["x.test".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key)).unwrap();
    let ctx = drawbridge::net::tls::TlsContext::from_parts(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        &[drawbridge::domain::Domain::parse("x.test").unwrap()],
    )
    .unwrap();
    let advertised = |f: &drawbridge::xml::Element| {
        let l = f.get_child("limits", ns::STREAM_LIMITS).unwrap_or_else(|| panic!("no limits in {f:?}"));
        let num = |n: &str| l.get_child(n, ns::STREAM_LIMITS).map(|c| c.text_content());
        (num("max-bytes"), num("idle-seconds"))
    };
    let expected = (Some("524288".to_owned()), Some("900".to_owned()));
    let mut p = RawPeer::connect(b.addr).await;
    let (_, f) = p.open("x.test", "b.test").await;
    assert_eq!(advertised(&f), expected, "before TLS");
    let (_, f) = p.starttls_with("x.test", "b.test", &ctx).await;
    assert_eq!(advertised(&f), expected, "after TLS");
    assert!(f.has_child("mechanisms", ns::SASL), "EXTERNAL offered");
    p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>").await;
    assert!(p.next_el().await.expect("success").is("success", ns::SASL));
    p.framer = drawbridge::xml::Framer::new(1 << 20, 64);
    let (_, f) = p.open("x.test", "b.test").await;
    assert_eq!(advertised(&f), expected, "after authentication");
    let row = b.engine.connections(false).into_iter().find(|s| s.direction == Direction::In).expect("the inbound row");
    let l = row.limits.expect("the row's limits");
    assert_eq!((l.max_bytes, l.idle_seconds, l.peer_max_bytes), (524_288, Some(900), None));
}
