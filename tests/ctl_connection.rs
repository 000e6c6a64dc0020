//! The control socket's client side against a running engine: a kept connection gets the
//! engine's typed replies and refusals, and a subscribed connection sees what a request
//! changed.

mod common;

use common::*;
use drawbridge::control::{Connection, Delivered, Events, RequestError};
use drawbridge::engine::events::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_replies_refusals_and_events_over_the_socket() {
    let dns = Dns::start().await;
    let mut b = start_server("b.test", &dns, "").await;
    drawbridge::control::start(&mut b.engine).unwrap();
    let sock = b.engine.settings().control_socket.clone();

    let conn = Connection::new(sock.clone());
    let Reply::Status(s) = within("status", conn.request(&Request::Status)).await.unwrap() else { panic!("status answers a status") };
    assert_eq!(s.domains, vec!["b.test".to_owned()]);
    // A refusal is the engine's reason, not a broken connection; the connection stays usable.
    match within("close", conn.request(&Request::Close { id: "nope".into() })).await {
        Err(RequestError::Refused(why)) => assert!(why.contains("no live stream with id nope"), "{why}"),
        other => panic!("not a refusal: {other:?}"),
    }

    // What one connection changes, a subscribed one sees.
    let mut events = within("subscribe", Events::subscribe(&sock)).await.unwrap();
    let req = Request::Block { domain: "x.test".into(), for_secs: None, reason: Some("test".into()) };
    let Reply::Change(c) = within("block", conn.request(&req)).await.unwrap() else { panic!("a change answers a change report") };
    assert!(c.changed);
    loop {
        match within("the domain event", events.next()).await {
            Some(Delivered::Event(e)) if matches!(&*e, Event::DomainChanged { record } if record.domain == "x.test") => break,
            Some(_) => continue,
            None => panic!("the subscription ended"),
        }
    }
    // The change was attributed to the socket's peer user, not to "engine".
    let log = domain_report(&b.engine, "x.test").await.policy_log;
    assert!(log[0].who.contains("uid"), "{:?}", log[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_the_engine_cannot_read_is_answered_not_dropped() {
    let dns = Dns::start().await;
    let mut b = start_server("b.test", &dns, "").await;
    drawbridge::control::start(&mut b.engine).unwrap();
    let sock = b.engine.settings().control_socket.clone();
    let r = drawbridge::control::request(&sock, &Request::Mode { mode: "sideways".into() }).await.unwrap();
    assert!(!r.ok && r.error.as_deref().unwrap().contains("\"sideways\" is not a mode"), "{r:?}");
    // `subscribe` is the socket's own command, not an engine request.
    assert!(matches!(drawbridge::control::parse_request(b"{\"cmd\":\"subscribe\"}"), Ok(drawbridge::control::Command::Subscribe)));
    assert!(drawbridge::control::parse_request(b"{\"cmd\":\"launch\"}").is_err());
}
