//! Server Dialback (XEP-0220) end to end: spoofing, the authoritative role, error paths.

mod common;

use common::*;
use drawbridge::engine::events::{Direction, Event, PairStatus, VerificationResult};
use drawbridge::proto::dialback::{Answer, DbElement, derive_key};
use drawbridge::proto::ns;
use drawbridge::proto::stream::StreamErrorCondition as C;
use drawbridge::xml::Element;

fn db_result(from: &str, to: &str, key: &str) -> Element {
    drawbridge::proto::dialback::result_request(from, to, key)
}

async fn expect_db_result(p: &mut RawPeer) -> DbElement {
    loop {
        let el = p.next_el().await.expect("a db:result answer");
        if let Some(db) = DbElement::parse(&el)
            && !db.verify
            && db.answer.is_some()
        {
            return db;
        }
    }
}

/// Dialback's own threat: A claims to be C towards B. B asks C's authoritative server,
/// which says no; nothing A sends is routed, and the outcome is recorded with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_domain_is_refused_made_up_and_replayed_keys() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let c = start_published("c.test", &dns, "").await;
    let mut events = b.engine.subscribe();

    // 1. A made-up key.
    let (mut a, _, features) = tls_peer(&b, "c.test").await;
    assert!(features.has_child("dialback", ns::DIALBACK_FEATURE), "dialback offered after TLS");
    a.send_el(&db_result("c.test", "b.test", &"ab".repeat(32))).await;
    let ans = expect_db_result(&mut a).await;
    assert_eq!(ans.answer, Some(Answer::Invalid));
    assert_eq!((ans.from.as_str(), ans.to.as_str()), ("b.test", "c.test"));
    let ev = wait_event(&mut events, "the invalid outcome", |e| {
        // Inbound: b's own outbound stream to c (for the callback) records its dialback too.
        matches!(e, Event::Verification { outcome } if outcome.remote == "c.test"
            && outcome.direction == Direction::In
            && outcome.method == drawbridge::engine::events::AuthMethod::Dialback)
    })
    .await;
    let Event::Verification { outcome } = ev else { unreachable!() };
    assert_eq!(outcome.result, VerificationResult::Invalid);
    assert!(outcome.reason.contains("authoritative server said the dialback key is invalid"), "{}", outcome.reason);
    a.send("<message from='mallory@c.test' to='alice@b.test'><body>trust me</body></message>").await;
    a.expect_condition(C::NotAuthorized).await;

    // 2. A key replayed from a genuine stream of C.
    let r = within("genuine probe c→b", c.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let genuine = b
        .engine
        .connections(false)
        .into_iter()
        .find(|s| s.direction == Direction::In && s.pairs.iter().any(|p| p.remote == "c.test" && p.status == PairStatus::Valid))
        .expect("c's genuine stream to b");
    let genuine_key = derive_key(c.engine.testing().dialback_secret(), "b.test", "c.test", genuine.stream_id.as_deref().unwrap());
    let (mut a, h, _) = tls_peer(&b, "c.test").await;
    assert_ne!(h.id.as_deref(), genuine.stream_id.as_deref(), "every stream gets a fresh id");
    a.send_el(&db_result("c.test", "b.test", &genuine_key)).await;
    let ans = expect_db_result(&mut a).await;
    assert_eq!(ans.answer, Some(Answer::Invalid), "a replayed key is bound to another stream id");
    a.send("<iq type='get' id='p1' from='mallory@c.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let e = a.expect_stream_error().await;
    assert_eq!(e.condition, C::NotAuthorized, "{e}");

    // Nothing the spoofer sent was routed: its streams closed having counted no stanza.
    for _ in 0..2 {
        let ev = wait_event(&mut events, "a spoofer's stream to close", |e| {
            matches!(e, Event::StreamClosed { stream } if stream.direction == Direction::In && stream.remote.as_deref() == Some("c.test"))
        })
        .await;
        let Event::StreamClosed { stream } = ev else { unreachable!() };
        assert_eq!(stream.stanzas_in, 0, "{stream:?}");
        assert!(stream.close_reason.as_deref().unwrap_or("").contains("not-authorized"), "{stream:?}");
    }
    let dialback = drawbridge::engine::events::AuthMethod::Dialback;
    let invalid = b
        .engine
        .outcomes()
        .into_iter()
        .filter(|o| o.remote == "c.test" && o.method == dialback && o.result == VerificationResult::Invalid)
        .count();
    assert_eq!(invalid, 2);
    // Each TLS stream's certificate was judged too (self-signed test certificates).
    assert!(b.engine.outcomes().iter().any(|o| o.remote == "c.test"
        && o.method == drawbridge::engine::events::AuthMethod::Certificate
        && o.reason == "certificate for c.test: self-signed"));
}

/// Piggybacking: one stream authorises two pairs; a stanza from a third domain is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authoritative_role_and_addressing() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    // We play the receiving server asking b.test as authoritative server.
    let (mut p, _, _) = tls_peer(&b, "r.test").await;
    let good = derive_key(b.engine.testing().dialback_secret(), "r.test", "b.test", "S1");
    p.send_el(&drawbridge::proto::dialback::verify_request("r.test", "b.test", "S1", &good)).await;
    p.send_el(&drawbridge::proto::dialback::verify_request("r.test", "b.test", "S2", &good)).await;
    p.send_el(&drawbridge::proto::dialback::verify_request("r.test", "nothere.test", "S1", &good)).await;
    let mut answers = Vec::new();
    while answers.len() < 3 {
        let el = p.next_el().await.expect("db:verify answer");
        let db = DbElement::parse(&el).expect("dialback");
        assert!(db.verify);
        answers.push((db.id.unwrap(), db.from, db.answer.unwrap()));
    }
    assert_eq!(answers[0], ("S1".into(), "b.test".into(), Answer::Valid));
    assert_eq!(answers[1], ("S2".into(), "b.test".into(), Answer::Invalid));
    assert!(matches!(&answers[2].2, Answer::Error { condition, .. } if condition == "item-not-found"), "{answers:?}");
    // A db:result for a domain not hosted here.
    p.send_el(&db_result("r.test", "nothere.test", "00")).await;
    let ans = expect_db_result(&mut p).await;
    assert!(matches!(ans.answer, Some(Answer::Error { ref condition, .. }) if condition == "item-not-found"), "{ans:?}");
}

/// RS side against a hand-played authoritative server: one db:verify for two db:result of the
/// same pair; the AS's valid answer authorises the pair and stanzas flow; an AS that never
/// answers ends in remote-server-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiving_server_asks_once_and_honours_the_answer() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let as_listener = publish_listener(&dns, "o.test").await;

    let (mut o, h, _) = tls_peer(&b, "o.test").await;
    let sid = h.id.clone().unwrap();
    o.send_el(&db_result("o.test", "b.test", "k1")).await;
    o.send_el(&db_result("o.test", "b.test", "k1")).await;
    // b connects to o.test's authoritative server (us) and asks.
    let (mut auth, _) = accept_as_server(&as_listener, "o.test").await;
    let mut verify = None;
    let mut results = 0;
    // b sends its own db:result (authenticating itself) and exactly one db:verify.
    while verify.is_none() || results == 0 {
        let el = auth.next_el().await.expect("b's dialback requests");
        let db = DbElement::parse(&el).expect("dialback element");
        if db.verify {
            assert!(verify.is_none(), "a second db:verify for a pair already being verified");
            verify = Some(db);
        } else {
            results += 1;
        }
    }
    let v = verify.unwrap();
    assert_eq!((v.from.as_str(), v.to.as_str(), v.id.as_deref(), v.key.as_str()), ("b.test", "o.test", Some(sid.as_str()), "k1"));
    auth.send_el(&drawbridge::proto::dialback::verify_answer("o.test", "b.test", &sid, &Answer::Valid)).await;
    let ans = expect_db_result(&mut o).await;
    assert_eq!(ans.answer, Some(Answer::Valid));
    // Now a ping from o.test is routed, and b answers it on its stream to o.test.
    o.send("<iq type='get' id='ping1' from='o.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    // b's outbound stream is waiting for our answer to its own db:result; give it.
    auth.send_el(&drawbridge::proto::dialback::result_answer("o.test", "b.test", &Answer::Valid)).await;
    let pong = loop {
        let el = auth.next_el().await.expect("the pong");
        if el.name == "iq" {
            break el;
        }
    };
    assert_eq!(pong.get_attr("type"), Some("result"));
    assert_eq!(pong.get_attr("id"), Some("ping1"));
    assert_eq!(pong.get_attr("to"), Some("o.test"));
    // A stanza from a domain not authenticated on this stream.
    o.send("<message from='x@evil.test' to='y@b.test'><body>hi</body></message>").await;
    o.expect_condition(C::InvalidFrom).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_error_paths() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[timeouts]\ndialback = \"1s\"\n").await;
    let silent = publish_listener(&dns, "silent.test").await;

    // The claimed domain does not exist in DNS and has no address: remote-connection-failed.
    let (mut p, _, _) = tls_peer(&b, "ghost.test").await;
    p.send_el(&db_result("ghost.test", "b.test", "k")).await;
    let ans = expect_db_result(&mut p).await;
    match ans.answer {
        Some(Answer::Error { condition, text }) => {
            assert_eq!(condition, "remote-connection-failed");
            assert!(text.unwrap_or_default().contains("ghost.test"));
        }
        other => panic!("expected a dialback error, got {other:?}"),
    }

    // The authoritative server accepts TCP and then says nothing: remote-server-timeout.
    let (mut p, _, _) = tls_peer(&b, "silent.test").await;
    p.send_el(&db_result("silent.test", "b.test", "k")).await;
    let _held = within("b's connection to the silent AS", silent.accept()).await.unwrap();
    let ans = expect_db_result(&mut p).await;
    assert!(matches!(ans.answer, Some(Answer::Error { ref condition, .. }) if condition == "remote-server-timeout"), "{ans:?}");
    let outcomes = b.engine.outcomes();
    assert!(outcomes.iter().any(|o| o.remote == "ghost.test" && o.result == VerificationResult::Error));
    assert!(
        outcomes
            .iter()
            .any(|o| o.remote == "silent.test" && o.result == VerificationResult::Timeout && o.reason.contains("timeouts.dialback"))
    );
}

/// Piggybacking (XEP-0220 §2.5 / multiplexing): a second domain authenticates on the same
/// stream; both pairs are valid and stanzas of both are routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_domain_pairs_on_one_stream() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let mut o = hand_played(&b, &dns, "o.test").await;
    let p_listener = publish_listener(&dns, "p.test").await;
    let sid = {
        let conns = b.engine.connections(false);
        conns
            .iter()
            .find(|c| c.direction == Direction::In && c.pairs.iter().any(|p| p.remote == "o.test"))
            .unwrap()
            .stream_id
            .clone()
            .unwrap()
    };
    o.to_server.send_el(&db_result("p.test", "b.test", "kp")).await;
    let (mut p_from_b, _) = accept_as_server(&p_listener, "p.test").await;
    let (mut verified, mut answered) = (false, false);
    while !(verified && answered) {
        let db = DbElement::parse(&p_from_b.next_el().await.unwrap()).unwrap();
        if db.verify {
            assert_eq!(db.id.as_deref(), Some(sid.as_str()), "the same stream id: the same stream");
            p_from_b.send_el(&drawbridge::proto::dialback::verify_answer("p.test", "b.test", &sid, &Answer::Valid)).await;
            verified = true;
        } else {
            p_from_b.send_el(&drawbridge::proto::dialback::result_answer("p.test", "b.test", &Answer::Valid)).await;
            answered = true;
        }
    }
    let ans = expect_db_result(&mut o.to_server).await;
    assert_eq!((ans.from.as_str(), ans.to.as_str(), ans.answer), ("b.test", "p.test", Some(Answer::Valid)));
    o.to_server.send("<iq type='get' id='from-p' from='p.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    o.to_server.send("<iq type='get' id='from-o' from='o.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let pong_p = loop {
        let el = p_from_b.next_el().await.unwrap();
        if el.name == "iq" {
            break el;
        }
    };
    assert_eq!((pong_p.get_attr("id"), pong_p.get_attr("type")), (Some("from-p"), Some("result")));
    let pong_o = o.next_stanza().await;
    assert_eq!((pong_o.get_attr("id"), pong_o.get_attr("type")), (Some("from-o"), Some("result")));
    let conns = b.engine.connections(false);
    let inbound = conns.iter().find(|c| c.stream_id.as_deref() == Some(sid.as_str())).unwrap();
    let mut pairs: Vec<_> = inbound.pairs.iter().map(|p| (p.remote.as_str(), p.status)).collect();
    pairs.sort_by_key(|p| p.0);
    assert_eq!(pairs, vec![("o.test", PairStatus::Valid), ("p.test", PairStatus::Valid)]);
}

/// limits.max_outbound bounds the outbound streams a peer can make us open (dialback for
/// made-up domains); limits.max_unauthenticated_per_address bounds its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_bounds_inbound_and_dialback_callbacks() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[limits]\nmax_outbound = 1\nmax_unauthenticated_per_address = 1\n").await;
    // The one outbound slot is taken.
    let _taken = b.engine.testing().hold_outbound_slot();
    let (mut p, _, _) = tls_peer(&b, "x.test").await;
    p.send_el(&db_result("x.test", "b.test", "k")).await;
    let ans = expect_db_result(&mut p).await;
    assert!(matches!(ans.answer, Some(Answer::Error { ref condition, .. }) if condition == "resource-constraint"), "{ans:?}");
    // A second connection is refused while the first is open.
    let mut q = RawPeer::connect(b.addr).await;
    q.send(&header("y.test", "b.test")).await;
    assert!(q.next().await.is_none(), "connection over the limit is closed");
}
