//! Routing: local services of hosted domains, addressing errors, bounces, SRV order and
//! fallback, overrides, idle outbound streams, operator close.

mod common;

use common::*;
use drawbridge::control::{self, Request};
use drawbridge::engine::events::{Direction, Event};
use drawbridge::proto::ns;
use drawbridge::proto::stanza::error_of;
use drawbridge::proto::stream::StreamErrorCondition as C;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_domain_services() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let mut o = hand_played(&b, &dns, "o.test").await;
    o.to_server.send("<iq type='get' id='1' from='u@o.test/r' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    o.to_server
        .send("<iq type='get' id='2' from='u@o.test/r' to='b.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    o.to_server.send("<iq type='get' id='3' from='u@o.test/r' to='b.test'><query xmlns='jabber:iq:version'/></iq>").await;
    o.to_server.send("<iq type='get' id='4' from='u@o.test/r' to='b.test'><query xmlns='urn:unknown'/></iq>").await;
    o.to_server.send("<iq type='set' id='5' from='u@o.test/r' to='someone@b.test'><query xmlns='jabber:iq:roster'/></iq>").await;
    o.to_server.send("<message type='chat' id='6' from='u@o.test/r' to='someone@b.test'><body>hello &amp; bye</body></message>").await;
    // None of these may be answered (RFC 6121 §8.5.2; never an error to an error).
    o.to_server.send("<message type='error' id='7' from='u@o.test/r' to='someone@b.test'/>").await;
    o.to_server.send("<message type='groupchat' id='8' from='u@o.test/r' to='someone@b.test'><body>x</body></message>").await;
    o.to_server.send("<presence type='subscribe' id='9' from='u@o.test' to='someone@b.test'/>").await;
    o.to_server.send("<iq type='result' id='10' from='u@o.test/r' to='b.test'/>").await;
    o.to_server.send("<iq type='error' id='11' from='u@o.test/r' to='b.test'/>").await;
    o.to_server.send("<iq type='get' id='12' from='u@o.test/r' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;

    let r1 = o.next_stanza().await;
    assert_eq!(
        (r1.get_attr("type"), r1.get_attr("id"), r1.get_attr("from"), r1.get_attr("to")),
        (Some("result"), Some("1"), Some("b.test"), Some("u@o.test/r"))
    );
    let r2 = o.next_stanza().await;
    let q = r2.get_child("query", ns::DISCO_INFO).expect("disco#info result");
    let ident = q.get_child("identity", ns::DISCO_INFO).unwrap();
    assert_eq!((ident.get_attr("category"), ident.get_attr("type")), (Some("server"), Some("im")));
    let features: Vec<_> = q.elements().filter_map(|f| f.get_attr("var")).collect();
    for f in [ns::DISCO_INFO, ns::PING, ns::VERSION] {
        assert!(features.contains(&f), "{features:?}");
    }
    let r3 = o.next_stanza().await;
    let v = r3.get_child("query", ns::VERSION).unwrap();
    assert_eq!(v.get_child("name", ns::VERSION).unwrap().text_content(), "drawbridge");
    for id in ["4", "5"] {
        let r = o.next_stanza().await;
        assert_eq!(r.get_attr("id"), Some(id));
        assert_eq!(error_of(&r).map(|e| e.0), Some("service-unavailable".into()), "{}", r.to_xml());
    }
    let r6 = o.next_stanza().await;
    assert_eq!((&*r6.name, r6.get_attr("id"), r6.get_attr("type")), ("message", Some("6"), Some("error")));
    assert_eq!(error_of(&r6).unwrap().0, "service-unavailable");
    assert_eq!(r6.get_child("body", ns::SERVER).unwrap().text_content(), "hello & bye");
    // The next thing we get is the answer to ping 12: nothing was sent for 7–11.
    let r12 = o.next_stanza().await;
    assert_eq!((r12.get_attr("id"), r12.get_attr("type")), (Some("12"), Some("result")));

    // Addressing errors close the stream with the RFC 6120 condition.
    o.to_server.send("<message from='u@o.test' to='x@elsewhere.test'/>").await;
    o.to_server.expect_condition(C::HostUnknown).await;
    let mut o = hand_played(&b, &dns, "o2.test").await;
    o.to_server.send("<message from='u@o2.test'/>").await;
    o.to_server.expect_condition(C::ImproperAddressing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_domains_bounce_with_the_reason() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    // No DNS records at all.
    let r = within("probe", a.engine.probe("nowhere.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("remote-server-not-found") && err.contains("no A/AAAA"), "{err}");
    // SRV pointing at a closed port: several queued stanzas all bounce.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    dns.add_a("xmpp.down.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_srv("down.test", 0, 1, "xmpp.down.test", closed_port).await;
    let (r1, r2, r3) = within("three probes", async {
        tokio::join!(a.engine.probe("down.test", None), a.engine.probe("down.test", None), a.engine.probe("down.test", None))
    })
    .await;
    for r in [r1, r2, r3] {
        assert!(!r.ok);
        let err = r.error.unwrap();
        assert!(err.contains("remote-server-not-found") && err.contains("refused"), "{err}");
    }
    // The failed attempts are in the table's closed list with their reason.
    let closed: Vec<_> =
        a.engine.connections(true).into_iter().filter(|c| c.state == drawbridge::engine::events::ConnState::Closed).collect();
    assert!(closed.iter().any(|c| c.direction == Direction::Out
        && c.remote.as_deref() == Some("down.test")
        && c.close_reason.as_deref().unwrap().contains("refused")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_priority_order_and_fallback_to_the_next_target() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let b = start_server("b.test", &dns, "").await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    dns.add_a("first.b.test", std::net::Ipv4Addr::LOCALHOST).await;
    dns.add_a("second.b.test", std::net::Ipv4Addr::LOCALHOST).await;
    // Priority 0 refuses; priority 10 is the real server.
    dns.add_srv("b.test", 10, 5, "second.b.test", b.addr.port()).await;
    dns.add_srv("b.test", 0, 5, "first.b.test", closed_port).await;
    let r = within("probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.peer_addr, Some(b.addr.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_come_before_dns() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    // DNS says b.test is elsewhere (closed port); the override says where it really is.
    let a = start_published(
        "a.test",
        &dns,
        &format!("[[dns.override]]\ndomain = \"b.test\"\nhost = \"127.0.0.1\"\nport = {}\n", b.addr.port()),
    )
    .await;
    let r = within("probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.peer_addr, Some(b.addr.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outbound_streams_close_and_reopen_on_demand() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "[timeouts]\nidle_outbound = \"300ms\"\n").await;
    let _b = start_published("b.test", &dns, "").await;
    let mut events = a.engine.subscribe();
    let r = within("probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let first = r.stream.clone().unwrap();
    let ev = wait_event(&mut events, "the idle close", |e| matches!(e, Event::StreamClosed { stream } if stream.id == first)).await;
    let Event::StreamClosed { stream } = ev else { unreachable!() };
    assert!(stream.close_reason.unwrap().contains("idle"));
    let r = within("probe again", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_ne!(r.stream.unwrap(), first, "a new outbound stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_status_connections_close() {
    let dns = Dns::start().await;
    let mut a = start_published("a.test", &dns, "").await;
    let _b = start_published("b.test", &dns, "").await;
    drawbridge::control::start(&mut a.engine).unwrap();
    let sock = a.engine.settings().control_socket.clone();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let r = control::request(&sock, &Request::Probe { domain: "b.test".into(), from: None }).await.unwrap();
    assert!(r.ok);
    let report: drawbridge::engine::ProbeReport = serde_json::from_value(r.data.unwrap()).unwrap();
    assert!(report.ok, "{:?}", report.error);
    let r = control::request(&sock, &Request::Status).await.unwrap();
    let status: drawbridge::engine::Status = serde_json::from_value(r.data.unwrap()).unwrap();
    assert_eq!(status.domains, vec!["a.test"]);
    assert!(status.streams_out >= 1 && status.streams_in >= 1);
    let r = control::request(&sock, &Request::Connections { closed: false, cluster: false }).await.unwrap();
    let conns: Vec<drawbridge::engine::events::ConnSnapshot> = serde_json::from_value(r.data.unwrap()).unwrap();
    let out = conns.iter().find(|c| c.direction == Direction::Out).unwrap();

    let mut events = a.engine.subscribe();
    let r = control::request(&sock, &Request::Close { id: out.id.clone() }).await.unwrap();
    assert!(r.ok, "{:?}", r.error);
    let ev = wait_event(&mut events, "the closed stream", |e| matches!(e, Event::StreamClosed { stream } if stream.id == out.id)).await;
    let Event::StreamClosed { stream } = ev else { unreachable!() };
    assert!(stream.close_reason.unwrap().contains("operator"));
    let r = control::request(&sock, &Request::Close { id: "nope".into() }).await.unwrap();
    assert!(!r.ok && r.error.unwrap().contains("no live stream"));

    // The real `drawbridge ctl` binary against this engine.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["ctl", "--socket"])
        .arg(&sock)
        .args(["probe", "b.test"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pong from b.test to a.test") && stdout.contains("auth:    dialback (valid)"), "{stdout}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["ctl", "--socket"])
        .arg(&sock)
        .args(["probe", "nowhere.test"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "a failed probe exits non-zero");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
}

/// RFC 6120 §4.6.1: an idle outbound stream carries whitespace keepalives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outbound_streams_send_whitespace_keepalives() {
    use tokio::io::AsyncReadExt;
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[timeouts]\nkeepalive = \"100ms\"\n").await;
    let mut o = hand_played(&b, &dns, "o.test").await;
    // b's stream to us is established; with nothing to send, it sends single spaces.
    let mut buf = [0u8; 64];
    let mut spaces = 0;
    while spaces < 3 {
        let n = within("a keepalive", o.from_server.io.read(&mut buf)).await.unwrap();
        assert!(n > 0, "stream closed");
        assert!(buf[..n].iter().all(|b| *b == b' '), "only whitespace while idle: {:?}", String::from_utf8_lossy(&buf[..n]));
        spaces += n;
    }
}
