//! Federation policy enforced on real streams: block, expiry, blacklist (with subdomains),
//! approval and allowlist modes, refusal before TLS, and persistence across restarts.

mod common;

use common::*;
use drawbridge::domain::Domain;
use drawbridge::engine::events::{Direction, Event};
use drawbridge::policy::{DomainState, Mode};
use drawbridge::proto::stream::StreamErrorCondition as C;

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

async fn wait_closed_with(events: &mut drawbridge::engine::events::bus::Receiver, remote: &str, n: usize) -> Vec<String> {
    let mut reasons = Vec::new();
    while reasons.len() < n {
        let ev = wait_event(
            events,
            "a stream to close",
            |e| matches!(e, Event::StreamClosed { stream } if stream.remote.as_deref() == Some(remote)),
        )
        .await;
        let Event::StreamClosed { stream } = ev else { unreachable!() };
        reasons.push(stream.close_reason.unwrap_or_default());
    }
    reasons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_closes_live_streams_refuses_both_ways_and_expires() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let b = start_published("b.test", &dns, "").await;
    assert!(within("probe", a.engine.probe("b.test", None)).await.ok);

    let mut events = b.engine.subscribe();
    let c = change(&b.engine, Request::Block { domain: "a.test".into(), for_secs: None, reason: Some("flooding".into()) }).await;
    assert!(c.changed);
    assert_eq!(c.record.state, DomainState::Blocked);
    assert_eq!(c.closed_streams.len(), 2, "both streams with a.test close at once");
    for reason in wait_closed_with(&mut events, "a.test", 2).await {
        assert!(reason.contains("a.test is blocked: flooding"), "{reason}");
    }
    // New streams are refused in both directions; b does not even try to connect.
    let r = within("probe a→b", a.engine.probe("b.test", None)).await;
    assert!(!r.ok);
    assert!(r.error.as_deref().unwrap().contains("policy-violation"), "{:?}", r.error);
    let r = within("probe b→a", b.engine.probe("a.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("<policy-violation/>") && err.contains("a.test is blocked"), "{err}");
    assert!(b.engine.connections(false).iter().all(|c| c.direction != Direction::Out), "no connection attempted");

    // A block for one second lifts by itself.
    change(&b.engine, Request::Block { domain: "a.test".into(), for_secs: Some(1), reason: Some("cool down".into()) }).await;
    wait_event(
        &mut events,
        "the block to expire",
        |e| matches!(e, Event::DomainChanged { record } if record.domain == "a.test" && record.state == DomainState::Unknown),
    )
    .await;
    let r = within("probe after expiry", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let log = domain_report(&b.engine, "a.test").await.policy_log;
    assert_eq!(log[0].action, "block expired");
    assert!(log.iter().any(|a| a.who == "tester" && a.reason.as_deref() == Some("flooding")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blacklisting_a_parent_refuses_subdomains_even_before_tls() {
    let dns = Dns::start().await;
    let a = start_published("chat.evil.test", &dns, "").await;
    let b = start_published("b.test", &dns, "").await;
    change(&b.engine, Request::Blacklist { domain: "evil.test".into(), reason: "spam source".into() }).await;
    let r = within("probe from the subdomain", a.engine.probe("b.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("stream error <policy-violation/> (chat.evil.test is blacklisted through evil.test: spam source)"), "{err}");
    let r = within("probe to the subdomain", b.engine.probe("chat.evil.test", None)).await;
    let err = r.error.unwrap();
    assert!(err.contains("chat.evil.test is blacklisted through evil.test: spam source"), "{err}");
    // A peer naming a blacklisted domain in its header is cut off at once, in plaintext.
    let mut events = b.engine.subscribe();
    let mut p = RawPeer::connect(b.addr).await;
    p.send(&header("x.evil.test", "b.test")).await;
    let e = p.expect_condition(C::PolicyViolation).await;
    assert!(e.text.contains("blacklisted"), "{e}");
    let ev = wait_event(
        &mut events,
        "the refused stream to close",
        |e| matches!(e, Event::StreamClosed { stream } if stream.remote.as_deref() == Some("x.evil.test")),
    )
    .await;
    let Event::StreamClosed { stream } = ev else { unreachable!() };
    assert!(stream.tls.is_none(), "refused before TLS");
    assert!(stream.close_reason.as_deref().is_some_and(|r| r.contains("policy-violation")), "{stream:?}");
}

/// Approval mode holds what a verified but undecided peer sends: the server reads the
/// stanzas and delivers none of them until the operator approves, then all, in order. The
/// hold is seen on the stream itself (its delivered-stanza count), not at the far side of
/// the answers, whose own outbound hold would hide a missing inbound one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_mode_holds_then_releases_in_order_or_refuses() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[policy]\nmode = \"approval\"\napproval_wait = \"60s\"\n").await;
    // hand_played returns once b answered db:result valid, which it does after listing the
    // verified domain as pending.
    let mut o = hand_played(&b, &dns, "o.test").await;
    let pending = record(&b.engine, "o.test").await.map(|r| r.state);
    assert_eq!(pending, Some(DomainState::Pending));
    for i in 1..=3 {
        o.to_server.send(&format!("<iq type='get' id='held{i}' from='o.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    }
    // The server has read them once it answers a db:verify sent after them on the same
    // stream (one task reads, decides and counts in arrival order).
    o.to_server.send_el(&drawbridge::proto::dialback::verify_request("o.test", "b.test", "sync", "00")).await;
    let (answer, before) = until_db_answer(&mut o.to_server, "verify").await;
    assert_eq!(answer.get_attr("id"), Some("sync"));
    assert!(before.is_empty(), "{before:?}");
    let held = b
        .engine
        .connections(false)
        .into_iter()
        .find(|c| c.direction == Direction::In && c.pairs.iter().any(|p| p.remote == "o.test"))
        .unwrap();
    assert!(held.bytes_in > 0);
    assert_eq!(held.stanzas_in, 0, "read, and not one delivered: {held:#?}");
    change(&b.engine, Request::Approve { domain: "o.test".into(), reason: None }).await;
    for id in ["held1", "held2", "held3"] {
        let pong = o.next_stanza().await;
        assert_eq!(pong.get_attr("id"), Some(id), "released in order");
        assert_eq!(pong.get_attr("type"), Some("result"));
    }
    let row = b.engine.connections(false).into_iter().find(|c| c.id == held.id).unwrap();
    assert_eq!(row.stanzas_in, 3, "delivered once approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_timeout_refuses_and_keeps_the_domain_pending() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[policy]\nmode = \"approval\"\napproval_wait = \"300ms\"\n").await;
    let mut o = hand_played(&b, &dns, "o.test").await;
    o.to_server.send("<iq type='get' id='x' from='o.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let e = o.to_server.expect_condition(C::PolicyViolation).await;
    assert!(e.text.contains("awaits approval"), "{e}");
    assert_eq!(record(&b.engine, "o.test").await.unwrap().state, DomainState::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_mode_refuses_until_approved() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let b = start_published("b.test", &dns, "").await;
    ask(&b.engine, Request::Mode { mode: "allowlist".into() }).await;
    let r = within("probe refused", a.engine.probe("b.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("stream error <policy-violation/> (a.test is not on the allowlist (policy mode allowlist))"), "{err}");
    // Refused at once, before it proved anything: shown among the verifications (memory
    // only), not written as a domain record — an unauthenticated claim never grows the store.
    assert!(record(&b.engine, "a.test").await.is_none());
    let Reply::Outcomes(refused) = ask(&b.engine, Request::Verifications { domain: Some("a.test".into()), limit: Some(10) }).await else {
        panic!("verifications answer with outcomes")
    };
    assert!(
        refused.iter().any(|o| o.result == drawbridge::engine::events::VerificationResult::Refused
            && o.method == drawbridge::engine::events::AuthMethod::Policy
            && o.reason.contains("allowlist")),
        "{refused:?}"
    );
    change(&b.engine, Request::Approve { domain: "a.test".into(), reason: None }).await;
    let r = within("probe allowed", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_states_mode_history_and_outcomes() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let b = start_published("b.test", &dns, "").await;
    assert!(within("probe", a.engine.probe("b.test", None)).await.ok);
    change(&b.engine, Request::Block { domain: "blocked.test".into(), for_secs: None, reason: Some("r1".into()) }).await;
    change(&b.engine, Request::Blacklist { domain: "evil.test".into(), reason: "r2".into() }).await;
    change(&b.engine, Request::Approve { domain: "good.test".into(), reason: None }).await;
    ask(&b.engine, Request::Mode { mode: "approval".into() }).await;
    let before: Vec<_> = domains(&b.engine, None).await.into_iter().map(|r| (r.domain, r.state, r.reason)).collect();
    let text =
        drawbridge::config::Settings::parse(&config_text("b.test", b.dir.path(), dns.addr, ""), &b.dir.path().join("drawbridge.toml"))
            .unwrap();
    let TestServer { engine, dir, .. } = b;
    engine.shutdown().await;
    let again = drawbridge::engine::Engine::start(text).await.unwrap();
    let after: Vec<_> = domains(&again, None).await.into_iter().map(|r| (r.domain, r.state, r.reason)).collect();
    assert_eq!(after, before);
    assert_eq!(again.status().mode, Mode::Approval.as_str());
    assert!(
        again
            .testing()
            .stored_outcomes(Some("a.test"), 10)
            .iter()
            .any(|o| o.result == drawbridge::engine::events::VerificationResult::Valid)
    );
    let Reply::Streams(history) = ask(&again, Request::History { domain: Some("a.test".into()), limit: Some(10) }).await else {
        panic!("history answers with streams")
    };
    assert!(!history.is_empty(), "closed streams are in the history");
    let rec = record(&again, "a.test").await.unwrap();
    assert!(rec.streams_in >= 1 && rec.last_verification.is_some(), "{rec:?}");
    drop(dir);
}

/// Approval mode holds outbound traffic to an undecided domain too: the stanza waits on
/// the authenticated stream (the domain listed as pending) and flows once approved. The
/// far side is played by hand, so nothing but the outbound hold stands between the ping
/// and the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_mode_holds_outbound_traffic_until_approved() {
    use drawbridge::proto::dialback::{Answer, DbElement, result_answer, verify_answer};
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[policy]\nmode = \"approval\"\napproval_wait = \"60s\"\n").await;
    let listener = publish_listener(&dns, "a.test").await;
    let mut events = b.engine.subscribe();
    let engine = b.engine.handle();
    let probe = tokio::spawn(async move { engine.probe("a.test", None).await });
    let (mut from_server, _) = accept_as_server(&listener, "a.test").await;
    let el = from_server.next_el().await.expect("b's db:result");
    let db = DbElement::parse(&el).expect("a dialback element");
    assert!(!db.verify && db.answer.is_none(), "{el:?}");
    from_server.send_el(&result_answer("a.test", "b.test", &Answer::Valid)).await;
    wait_event(
        &mut events,
        "a.test pending",
        |e| matches!(e, Event::DomainChanged { record } if record.domain == "a.test" && record.state == DomainState::Pending),
    )
    .await;
    let (before, mut to_server, verify) = stanzas_before_a_verify(&mut from_server, &b, "a.test").await;
    assert!(before.is_empty(), "nothing sent to a.test before approval: {before:?}");
    assert!(!probe.is_finished(), "the ping is held, not answered");
    let sid = verify.get_attr("id").unwrap().to_owned();
    from_server.send_el(&verify_answer("a.test", "b.test", &sid, &Answer::Valid)).await;
    let (answer, _) = until_db_answer(&mut to_server, "result").await;
    assert_eq!(answer.get_attr("type"), Some("valid"));
    change(&b.engine, Request::Approve { domain: "a.test".into(), reason: None }).await;
    let ping = loop {
        let el = from_server.next_el().await.expect("the ping, once approved");
        if drawbridge::proto::stanza::is_stanza(&el) {
            break el;
        }
    };
    let pong = format!(
        "<iq type='result' id='{}' from='{}' to='{}'/>",
        ping.get_attr("id").unwrap(),
        ping.get_attr("to").unwrap(),
        ping.get_attr("from").unwrap()
    );
    to_server.send(&pong).await;
    let r = within("the held probe", probe).await.unwrap();
    assert!(r.ok, "{:?}", r.error);
}

/// IDNA: a U-label and its A-label are one domain to the policy, whichever is blacklisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blacklisting_either_form_of_an_internationalised_name_refuses_the_other() {
    let dns = Dns::start().await;
    let b = start_server("b.test", &dns, "").await;
    change(&b.engine, Request::Blacklist { domain: "xn--bse-sna.example".into(), reason: "evil".into() }).await;
    assert!(domain_report(&b.engine, "BÖSE.example").await.verdict.starts_with("refused"));
    assert!(domain_report(&b.engine, "sub.böse.example").await.verdict.starts_with("refused"), "subdomains too");
    // A peer naming the U-label in its header is refused at once.
    let mut p = RawPeer::connect(b.addr).await;
    p.send(&header("böse.example", "b.test")).await;
    let e = p.expect_condition(C::PolicyViolation).await;
    assert!(e.text.contains("evil"), "{e}");
    // And the other way round.
    change(&b.engine, Request::Block { domain: "grüße.example".into(), for_secs: None, reason: None }).await;
    let a_label = d("grüße.example").ascii().into_owned();
    assert!(a_label.starts_with("xn--"), "{a_label}");
    assert!(domain_report(&b.engine, &a_label).await.verdict.starts_with("refused"));
}
