//! Gateway mode end to end, in process: three drawbridge instances on loopback.
//!
//! - **A**, the gateway: hosts `h.test` for the world, `[gateway]` pointing at C;
//! - **C**, playing the internal server that really hosts `h.test` (its resolver — a DNS
//!   server of its own — points every world domain at A's `gateway.listen`, as Prosody's
//!   redirected libunbound does);
//! - **B**, the world: hosts `w.test`, finds `h.test` at A through the world's DNS.
//!
//! A ping from B to `h.test` is answered by C (world → internal → world), a ping from C to
//! `w.test` by B (internal → world → internal); both auth modes of the internal link; the
//! policy applied both ways; strangers refused on `gateway.listen`.

mod common;

use common::*;
use drawbridge::domain::Domain;
use drawbridge::engine::events::{AuthMethod, Direction, Event, PairStatus};
use drawbridge::proto::stream::StreamErrorCondition;

struct Gateway {
    a: TestServer,
    b: TestServer,
    c: TestServer,
    _dirs: Vec<tempfile::TempDir>,
    _dns: (Dns, Dns),
}

/// The three servers, the internal link authenticating by `auth` ("pki" or "dialback").
async fn gateway(auth: &str) -> Gateway {
    gateway_with(auth, "").await
}

/// The same with `extra` keys in A's `[gateway]` (under pki, `internal_ca` is the test CA
/// unless `extra` names another).
async fn gateway_with(auth: &str, extra: &str) -> Gateway {
    let world = Dns::start().await;
    let internal_dns = Dns::start().await;
    let test_ca = ca("test CA");
    let gw_ca = ca("gateway CA");
    let (dir_a, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (gw_pem, gw_key) = (dir_a.path().join("gw-ca.pem"), dir_a.path().join("gw-ca.key"));
    std::fs::write(&gw_pem, &gw_ca.pem).unwrap();
    std::fs::write(&gw_key, gw_ca.key.serialize_pem()).unwrap();

    // C: the internal server. Under pki it trusts the gateway CA (the certificates A presents
    // as world domains) and the test CA; under dialback it trusts neither.
    let c_tls = tls_config(dir_c.path(), &test_ca, "h.test", &test_ca);
    if auth == "pki" {
        std::fs::write(dir_c.path().join("h.test-trust.pem"), format!("{}{}", test_ca.pem, gw_ca.pem)).unwrap();
    } else {
        std::fs::write(dir_c.path().join("h.test-trust.pem"), ca("someone else").pem).unwrap();
    }
    let c = start_server("h.test", &internal_dns, &c_tls).await;

    // A: the gateway, its certificate for h.test from the test CA, which it trusts for the
    // world under pki (as a public CA would be). The internal server's certificate is judged
    // against gateway.internal_ca (the test CA, under pki); under dialback there is none, so
    // both directions of the internal link use dialback.
    let someone_else = ca("someone else");
    let a_tls = tls_config(dir_a.path(), &test_ca, "h.test", if auth == "pki" { &test_ca } else { &someone_else });
    let test_ca_pem = dir_a.path().join("test-ca.pem");
    std::fs::write(&test_ca_pem, &test_ca.pem).unwrap();
    let internal_ca = if auth == "pki" && !extra.contains("internal_ca") {
        format!("internal_ca = \"{}\"\n", test_ca_pem.display())
    } else {
        String::new()
    };
    let a_cfg = format!(
        "{}\n[gateway]\ninternal = \"{}\"\nlisten = [\"127.0.0.1:0\"]\nauth = \"{auth}\"\nca_cert = \"{}\"\nca_key = \"{}\"\n{internal_ca}{extra}",
        a_tls,
        c.addr,
        gw_pem.display(),
        gw_key.display()
    );
    let a = start_published("h.test", &world, &a_cfg).await;
    let listen = a.engine.listening().gateway[0];
    internal_dns.add_a("xmpp.w.test", std::net::Ipv4Addr::LOCALHOST).await;
    internal_dns.add_srv("w.test", 0, 5, "xmpp.w.test", listen.port()).await;

    // B: the world.
    let b = start_published("w.test", &world, "").await;
    Gateway { a, b, c, _dirs: vec![dir_a, dir_c], _dns: (world, internal_dns) }
}

fn internal_streams(s: &TestServer) -> Vec<drawbridge::engine::events::ConnSnapshot> {
    s.engine.connections(false).into_iter().filter(|c| c.internal()).collect()
}

async fn both_directions(g: &Gateway, method: AuthMethod) {
    // World → internal → world: B's ping to h.test is answered by C.
    let r = within("probe w.test → h.test", g.b.engine.probe("h.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let on_c = g.c.engine.connections(false);
    assert!(
        on_c.iter().any(|s| s.direction == Direction::In && s.remote.as_deref() == Some("w.test")),
        "C heard from w.test (A speaking as it): {on_c:#?}"
    );
    // Internal → world → internal: C's ping to w.test is answered by B.
    let r = within("probe h.test → w.test", g.c.engine.probe("w.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.peer_addr, Some(g.a.engine.listening().gateway[0].to_string()), "C reached the world through A");

    // A shows both internal streams as such, authenticated by the internal link's method.
    let internal = internal_streams(&g.a);
    let out = internal.iter().find(|s| s.direction == Direction::Out).expect("A's stream to the internal server");
    assert_eq!((out.local.as_deref(), out.remote.as_deref()), (Some("w.test"), Some("h.test")), "as the world domain");
    assert_eq!(out.peer_addr, Some(g.c.addr.to_string()), "at gateway.internal, not through DNS");
    assert!(out.pairs.iter().any(|p| p.status == PairStatus::Valid && p.method == method), "{out:#?}");
    let t = g.a.engine.transcript(&out.id).unwrap();
    assert!(t[0].dir == "note" && t[0].text.starts_with("internal link (gateway mode)"), "the transcript says so: {t:#?}");
    let inn = internal.iter().find(|s| s.direction == Direction::In).expect("the internal server's stream to A");
    assert_eq!(inn.remote.as_deref(), Some("h.test"));
    assert!(inn.pairs.iter().any(|p| p.status == PairStatus::Valid && p.method == method), "{inn:#?}");
    // The world-facing streams are not marked.
    let world: Vec<_> = g.a.engine.connections(false).into_iter().filter(|c| !c.internal()).collect();
    assert!(world.iter().all(|s| s.remote.as_deref() == Some("w.test")), "{world:#?}");
    // Outcomes on the internal link say so, and no domain record was made for h.test.
    let outcomes = g.a.engine.outcomes();
    assert!(outcomes.iter().any(|o| o.remote == "h.test" && o.reason.starts_with("internal link: ")), "{outcomes:#?}");
    assert!(record(&g.a.engine, "h.test").await.is_none(), "the internal server is not a federation peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_both_directions_with_minted_certificates() {
    let g = gateway("pki").await;
    both_directions(&g, AuthMethod::SaslExternal).await;
    // C saw A as w.test by a certificate from the gateway CA (minted and kept on disk).
    let on_c = g.c.engine.connections(false);
    let from_a = on_c.iter().find(|s| s.direction == Direction::In && s.remote.as_deref() == Some("w.test")).unwrap();
    let cert = from_a.tls.as_ref().unwrap();
    assert!(cert.cert_verdict.as_ref().is_some_and(|v| v.is_valid()), "{cert:#?}");
    assert!(g.a.dir.path().join("data/gateway/minted/w.test.pem").exists(), "the minted certificate is kept");
    assert!(!g.a.engine.outcomes().iter().any(|o| o.remote == "h.test" && o.method == AuthMethod::Dialback));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_both_directions_called_back_through_the_gateway() {
    let g = gateway("dialback").await;
    both_directions(&g, AuthMethod::Dialback).await;
    // The callbacks stayed inside: C asked A (as w.test's authoritative server) on A's
    // gateway listener, and A asked C over the internal link; B never heard of them.
    let b_outcomes = g.b.engine.outcomes();
    assert!(!b_outcomes.iter().any(|o| o.remote == "w.test"), "{b_outcomes:#?}");
}

/// Blacklisting the world domain at the gateway cuts both directions; the internal server
/// hears why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_cuts_both_directions() {
    let g = gateway("pki").await;
    assert!(within("probe before", g.c.engine.probe("w.test", None)).await.ok);
    let mut events = g.a.engine.subscribe();
    change(&g.a.engine, Request::Blacklist { domain: "w.test".into(), reason: "spam source".into() }).await;
    // Every stream of A's that depends on w.test closes: its federation streams, and the
    // internal link's streams as w.test.
    while !g.a.engine.connections(false).is_empty() {
        wait_event(&mut events, "w.test's streams to close", |e| matches!(e, Event::StreamClosed { .. })).await;
    }
    let r = within("probe h.test → w.test, blacklisted", g.c.engine.probe("w.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("policy-violation") && err.contains("w.test is blacklisted"), "the internal server hears why: {err}");
    let r = within("probe w.test → h.test, blacklisted", g.b.engine.probe("h.test", None)).await;
    let err = r.error.unwrap_or_default();
    assert!(
        !r.ok && err.contains("stream error <policy-violation/> (w.test is blacklisted: spam source)"),
        "the world domain cannot reach the internal server either, and hears why: {err}"
    );
}

/// Only the internal server's domains may use `gateway.listen`; and under pki, a peer
/// claiming one of them must prove it by certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_on_the_gateway_listener() {
    let g = gateway("pki").await;
    let listen = g.a.engine.listening().gateway[0];
    let mut p = RawPeer::connect(listen).await;
    p.send(&header("stranger.test", "w.test")).await;
    let e = p.expect_condition(StreamErrorCondition::PolicyViolation).await;
    assert!(e.text.contains("gateway.listen"), "{e:?}");
    // Claiming the internal server's domain with a certificate nobody trusts: no SASL
    // EXTERNAL offered, and dialback is refused under pki.
    let mut p = RawPeer::connect(listen).await;
    p.open("h.test", "w.test").await;
    let (_, features) = p.starttls("h.test", "w.test").await;
    assert!(!features.has_child("mechanisms", drawbridge::proto::ns::SASL), "{}", features.to_xml());
    assert!(!features.has_child("dialback", drawbridge::proto::ns::DIALBACK_FEATURE), "{}", features.to_xml());
    p.send("<db:result from='h.test' to='w.test'>0123456789abcdef</db:result>").await;
    let e = p.expect_condition(StreamErrorCondition::NotAuthorized).await;
    assert!(e.text.contains("dialback is not accepted for h.test ([auth] mode = \"cert-only\")"), "{e:?}");
    // What strangers failed stays in memory: the store has nothing from them.
    let stored = g.a.engine.testing().stored_outcomes(None, 1000);
    assert!(!stored.iter().any(|o| o.result != drawbridge::engine::events::VerificationResult::Valid), "{stored:#?}");
}

/// An internal server that is down: the world gets a neutral bounce (nothing about the
/// internal network), the operator the reason in `ctl status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_internal_server_is_reported_to_the_operator_only() {
    let Gateway { a, b, c, _dirs, _dns } = gateway("pki").await;
    assert_eq!(a.engine.status().gateway.unwrap().reachable, None, "not contacted yet");
    assert!(within("probe through", b.engine.probe("h.test", None)).await.ok);
    let g = a.engine.status().gateway.unwrap();
    assert_eq!((g.reachable, g.streams_out, g.streams_in), (Some(true), 1, 1), "{g:?}");
    assert_eq!((g.internal, g.auth.as_str()), (c.addr.to_string(), "pki"));
    assert!(g.ca_cert.ends_with("gw-ca.pem"), "{}", g.ca_cert);
    // The gateway CA's expiry beside our own certificate's (ctl status, the metric).
    let certs = a.engine.status().certificates;
    assert_eq!(certs.iter().map(|c| c.certificate.as_str()).collect::<Vec<_>>(), ["tls", "gateway-ca"]);
    assert!(certs[1].path.ends_with("gw-ca.pem") && certs[1].not_after_s.is_some(), "{certs:?}");
    let internal_addr = c.addr.to_string();
    within("C stops", c.engine.shutdown()).await;
    let mut events = a.engine.subscribe();
    while a.engine.connections(false).iter().any(|s| s.internal()) {
        wait_event(&mut events, "the internal streams to end", |e| matches!(e, Event::StreamClosed { .. })).await;
    }
    let r = within("probe to a stopped internal server", b.engine.probe("h.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("h.test cannot be reached right now") && !err.contains(&internal_addr), "neutral for the world: {err}");
    let g = a.engine.status().gateway.unwrap();
    assert_eq!(g.reachable, Some(false), "{g:?}");
    let why = g.last_error.unwrap();
    assert!(why.contains(&internal_addr) && why.contains("gateway.internal"), "the operator sees why: {why}");
}

/// In allowlist mode the internal link depends on the world domain's standing, not on the
/// internal server's domains (which no allowlist names): a policy change leaves the internal
/// streams of an allowed domain open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_mode_judges_the_world_domain_not_the_internal_server() {
    let g = gateway("pki").await;
    change(&g.a.engine, Request::Approve { domain: "w.test".into(), reason: None }).await;
    ask(&g.a.engine, Request::Mode { mode: "allowlist".into() }).await;
    assert!(within("probe in allowlist mode", g.b.engine.probe("h.test", None)).await.ok);
    let before: Vec<String> = internal_streams(&g.a).into_iter().map(|s| s.id).collect();
    assert_eq!(before.len(), 2, "both internal streams up");
    // Another policy change enforces the policy on every live stream.
    let closed = change(&g.a.engine, Request::Block { domain: "x.test".into(), for_secs: None, reason: None }).await.closed_streams;
    assert!(closed.iter().all(|id| !before.contains(id)), "internal streams closed by a policy change: {closed:?}");
    assert!(within("probe after", g.b.engine.probe("h.test", None)).await.ok);
}

/// Approval mode holds what the internal server sends to a domain nobody decided on, until
/// the operator approves it; then it goes. The world domain is played by hand, so the test
/// sees what reaches it before approval (nothing) and after (the ping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_mode_holds_the_internal_servers_stanzas_until_approved() {
    use drawbridge::proto::dialback::{Answer, DbElement, result_answer, verify_answer};
    let g = gateway("pki").await;
    ask(&g.a.engine, Request::Mode { mode: "approval".into() }).await;
    let listener = publish_listener(&g._dns.0, "x.test").await;
    // The internal server finds x.test, as every world domain, at the gateway listener.
    let gl = g.a.engine.listening().gateway[0];
    g._dns.1.add_a("xmpp.x.test", std::net::Ipv4Addr::LOCALHOST).await;
    g._dns.1.add_srv("x.test", 0, 5, "xmpp.x.test", gl.port()).await;
    let mut events = g.a.engine.subscribe();
    let c = &g.c.engine;
    let probe = c.probe("x.test", None);
    let far = async {
        let (mut from_a, _) = accept_as_server(&listener, "x.test").await;
        let el = from_a.next_el().await.expect("A's db:result");
        let db = DbElement::parse(&el).expect("a dialback element");
        assert!(!db.verify && db.answer.is_none() && db.from == "h.test", "{el:?}");
        from_a.send_el(&result_answer("x.test", "h.test", &Answer::Valid)).await;
        wait_event(
            &mut events,
            "x.test to be pending",
            |e| matches!(e, Event::DomainChanged { record } if record.domain == "x.test" && record.state == drawbridge::policy::DomainState::Pending),
        )
        .await;
        // Held: nothing reached x.test (the internal server's ping waits at A).
        let (before, mut to_a, verify) = stanzas_before_a_verify(&mut from_a, &g.a, "x.test").await;
        assert!(before.is_empty(), "nothing sent to x.test before approval: {before:?}");
        let sid = verify.get_attr("id").unwrap().to_owned();
        from_a.send_el(&verify_answer("x.test", "h.test", &sid, &Answer::Valid)).await;
        let (answer, _) = until_db_answer(&mut to_a, "result").await;
        assert_eq!(answer.get_attr("type"), Some("valid"));
        change(&g.a.engine, Request::Approve { domain: "x.test".into(), reason: None }).await;
        let ping = loop {
            let el = from_a.next_el().await.expect("the ping, once approved");
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
        to_a.send(&pong).await;
    };
    let (r, ()) = within("the probe and the far side", async { tokio::join!(probe, far) }).await;
    assert!(r.ok, "delivered once approved: {:?}", r.error);
}

/// A TCP forwarder on loopback, as a port forward or NAT would be: every connection to it is
/// carried to `to` (at most 20, so a loop through it stays bounded). Counts connections.
async fn forwarder(to: std::net::SocketAddr) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut inc, _)) = l.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) >= 20 {
                break;
            }
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inc, &mut out).await;
                }
            });
        }
    });
    (port, n)
}

/// What drawbridge must not have kept of `domain`: a minted certificate, a domain record,
/// a stored outcome.
async fn assert_no_trace(s: &TestServer, domain: &str) {
    let minted = s.dir.path().join("data/gateway/minted").join(format!("{domain}.pem"));
    assert!(!minted.exists(), "nothing minted for {domain}");
    assert!(record(&s.engine, domain).await.is_none(), "no domain record for {domain}");
    let stored = s.engine.testing().stored_outcomes(Some(domain), 100);
    assert!(stored.is_empty(), "no stored outcome for {domain}: {stored:#?}");
}

/// Issue 16, the self-loop: a world domain whose DNS points at drawbridge's own listeners
/// (`gateway.listen`, or the public one) is never dialled — before this, a ping to it looped
/// for ever through the gateway listener. `ctl probe` says why; nothing is minted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_pointing_at_drawbridge_itself_is_never_dialled() {
    let g = gateway("pki").await;
    let world = &g._dns.0;
    let gl = g.a.engine.listening().gateway[0];
    world.add_a("xmpp.loop.test", std::net::Ipv4Addr::LOCALHOST).await;
    world.add_srv("loop.test", 0, 5, "xmpp.loop.test", gl.port()).await;
    world.add_srv("loop2.test", 0, 5, "xmpp.loop.test", g.a.addr.port()).await;
    for (domain, key) in [("loop.test", "gateway.listen"), ("loop2.test", "server.listen")] {
        let r = within("probe of a domain that is drawbridge itself", g.a.engine.probe(domain, None)).await;
        assert!(!r.ok, "{r:?}");
        let err = r.error.unwrap();
        assert!(err.contains("drawbridge itself listens there") && err.contains(key) && err.contains("loop"), "{err}");
        assert_no_trace(&g.a, domain).await;
    }
    // Not one stream reached a listener of A.
    let inbound = g.a.engine.connections(true).into_iter().filter(|c| c.direction == Direction::In).count();
    assert_eq!(inbound, 0, "{:#?}", g.a.engine.connections(true));
    // Another port of the same address is someone else: the world still federates.
    assert!(within("probe of the world", g.a.engine.probe("w.test", None)).await.ok);
}

/// The same loop behind a forwarder (NAT, a port forward): the addresses say nothing, the
/// stream id drawbridge's receiving side issued comes back in the header its outbound side
/// reads, and the outbound side refuses. One connection each, nothing minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_comes_back_through_a_forwarder_is_recognised_and_refused() {
    // Under both auth modes of the internal link (the loop of issue 16 happened under both).
    for auth in ["pki", "dialback"] {
        comes_back_through_a_forwarder(auth).await;
    }
}

async fn comes_back_through_a_forwarder(auth: &str) {
    let g = gateway(auth).await;
    let world = &g._dns.0;
    let (to_gateway, n_gateway) = forwarder(g.a.engine.listening().gateway[0]).await;
    let (to_public, n_public) = forwarder(g.a.addr).await;
    world.add_a("xmpp.fwd.test", std::net::Ipv4Addr::LOCALHOST).await;
    world.add_srv("fwd.test", 0, 5, "xmpp.fwd.test", to_gateway).await;
    world.add_srv("fwd2.test", 0, 5, "xmpp.fwd.test", to_public).await;
    for domain in ["fwd.test", "fwd2.test"] {
        let r = within("probe of a domain forwarded to drawbridge", g.a.engine.probe(domain, None)).await;
        assert!(!r.ok, "{r:?}");
        let err = r.error.unwrap();
        assert!(err.contains("leads back to this server") && err.contains("a loop"), "{auth}: {err}");
        assert_no_trace(&g.a, domain).await;
    }
    let n = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((n(&n_gateway), n(&n_public)), (1, 1), "{auth}: one connection each, no loop");
}

/// The remote path of issue 16: a stranger's dialback claim for a made-up domain whose
/// callback name resolves to `gateway.listen` (directly or through a forwarder). drawbridge
/// never reaches itself, so nothing is minted and nothing reaches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialback_claim_whose_callback_leads_to_the_gateway_leaves_nothing_on_disk() {
    let g = gateway("pki").await;
    let world = &g._dns.0;
    let gl = g.a.engine.listening().gateway[0];
    let (to_gateway, _) = forwarder(gl).await;
    world.add_a("xmpp.claim.test", std::net::Ipv4Addr::LOCALHOST).await;
    world.add_srv("claim.test", 0, 5, "xmpp.claim.test", gl.port()).await;
    world.add_srv("claim2.test", 0, 5, "xmpp.claim.test", to_gateway).await;
    for domain in ["claim.test", "claim2.test"] {
        let (mut p, _, features) = tls_peer(&g.a, domain).await;
        assert!(features.has_child("dialback", drawbridge::proto::ns::DIALBACK_FEATURE), "{}", features.to_xml());
        p.send_el(&drawbridge::proto::dialback::result_request(domain, "h.test", &"ab".repeat(32))).await;
        let answer = loop {
            let el = within("the dialback answer", p.next_el()).await.expect("an answer");
            if el.is("result", drawbridge::proto::ns::DIALBACK) {
                break el;
            }
        };
        assert_ne!(answer.get_attr("type"), Some("valid"), "{}", answer.to_xml());
        assert_no_trace(&g.a, domain).await;
    }
}

/// `gateway.listen` accepts the internal server's address only (`gateway.allow`, by default
/// `gateway.internal`'s): anyone else is dropped before a byte is read or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_listener_accepts_only_the_internal_servers_address() {
    let g = gateway_with("pki", "allow = [\"127.0.0.2\"]\n").await;
    let listen = g.a.engine.listening().gateway[0];
    // From 127.0.0.1: closed at once, nothing said.
    let mut tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.write_all(header("h.test", "m.test").as_bytes()).await;
    let mut buf = [0u8; 64];
    let n = within("the refusal", tcp.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "not a byte for a stranger: {:?}", String::from_utf8_lossy(&buf[..n]));
    // From 127.0.0.2 (the allowed address): a stream.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut p = RawPeer::from_tcp(sock.connect(listen).await.unwrap());
    let (_, features) = p.open("h.test", "m.test").await;
    assert!(features.has_child("starttls", drawbridge::proto::ns::TLS), "{}", features.to_xml());
    // The internal server itself (127.0.0.1) is now a stranger: its ping to the world fails.
    let r = within("C's probe", g.c.engine.probe("w.test", None)).await;
    let err = r.error.clone().unwrap_or_default();
    // Dropped before a byte: a close or a reset, as the kernel saw it.
    let dropped = ["connection closed by the peer", "Connection reset by peer"].iter().any(|why| err.contains(why));
    assert!(!r.ok && err.contains("w.test: reading the stream header: ") && dropped, "{r:?}");
    assert_no_trace(&g.a, "m.test").await;
}

/// Under pki the internal server is authenticated against `gateway.internal_ca` only: here
/// A trusts the test CA for the world ([tls] ca_file) and C's certificate chains to it, but
/// gateway.internal_ca is another CA, so C is no internal server for A — neither way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_server_is_judged_against_gateway_internal_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, ca("another CA").pem).unwrap();
    let g = gateway_with("pki", &format!("internal_ca = \"{}\"\n", other.display())).await;
    let r = within("C's probe of the world", g.c.engine.probe("w.test", None)).await;
    let err = r.error.clone().unwrap_or_default();
    assert!(!r.ok && err.contains("stream error <not-authorized/> (dialback is not accepted for h.test"), "{r:?}");
    let r = within("the world's probe of C", g.b.engine.probe("h.test", None)).await;
    let err = r.error.clone().unwrap_or_default();
    assert!(!r.ok && err.contains("stanza error <policy-violation/>: h.test cannot be reached right now"), "{r:?}");
    let outcomes = g.a.engine.outcomes();
    assert!(
        !outcomes.iter().any(|o| o.remote == "h.test" && o.result == drawbridge::engine::events::VerificationResult::Valid),
        "{outcomes:#?}"
    );
}

/// Minting only for the internal server (issue 16): on `gateway.listen`, a header without
/// `from`, with a `from` that is not a hosted domain, or with an IP address as `to` ends
/// before STARTTLS — nothing is minted, the budget (here 2 a minute) is untouched, and the
/// internal server's next new world domain still gets its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_are_not_the_internal_servers_mint_nothing() {
    let g = gateway_with("pki", "mints_per_minute = 2\n").await;
    let listen = g.a.engine.listening().gateway[0];
    use StreamErrorCondition::{HostUnknown, PolicyViolation};
    let headers = [
        (
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' to='m1.test'>".to_owned(),
            PolicyViolation,
            "must name the internal server's domain in 'from'",
        ),
        (header("stranger.test", "m2.test"), PolicyViolation, "stranger.test is not one"),
        (header("h.test", "10.0.0.1"), HostUnknown, "an IP address is not a domain"),
        (header("h.test", "[::1]"), HostUnknown, "an IP address is not a domain"),
    ];
    for _ in 0..3 {
        for (h, condition, text) in &headers {
            let mut p = RawPeer::connect(listen).await;
            p.send(h).await;
            p.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
            let e = p.expect_condition(*condition).await;
            assert!(e.text.contains(text), "{h}: {e:?}");
        }
    }
    let minted = g.a.dir.path().join("data/gateway/minted");
    let files: Vec<_> = std::fs::read_dir(&minted).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(files.is_empty(), "nothing minted: {files:?}");
    // The internal server's own streams mint as before, within the budget.
    assert!(within("C's probe of the world", g.c.engine.probe("w.test", None)).await.ok);
    assert!(minted.join("w.test.pem").exists());
}

/// A stanza from the internal server to a hosted domain stays home: on the gateway listener
/// only world domains are served, so it ends that stream (`<host-unknown/>`) and is never
/// sent out into the world (where a DNS answer leading back to drawbridge would make a loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_servers_stanzas_to_hosted_domains_never_go_out() {
    let g = gateway("pki").await;
    let listen = g.a.engine.listening().gateway[0];
    // Playing the internal server: its certificate for h.test (from the test CA).
    let dir_c = g._dirs[1].path();
    let pem = |f: &str| std::fs::read(dir_c.join(f)).unwrap();
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem("h.test.crt")).map(|c| c.unwrap()).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem("h.test.key")).unwrap();
    let ctx = drawbridge::net::tls::TlsContext::from_parts(chain, key, &[Domain::parse("h.test").unwrap()]).unwrap();
    let mut p = RawPeer::connect(listen).await;
    p.open("h.test", "w.test").await;
    let (_, features) = p.starttls_with("h.test", "w.test", &ctx).await;
    assert!(features.has_child("mechanisms", drawbridge::proto::ns::SASL), "{}", features.to_xml());
    p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>").await;
    let ok = p.next_el().await.unwrap();
    assert!(ok.is("success", drawbridge::proto::ns::SASL), "{}", ok.to_xml());
    p.framer = drawbridge::xml::Framer::new(1 << 20, 64);
    p.open("h.test", "w.test").await;
    p.send("<iq xmlns='jabber:server' type='get' id='home' from='alice@h.test/r' to='bob@h.test/r'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let e = p.expect_condition(StreamErrorCondition::HostUnknown).await;
    assert!(e.text.contains("h.test is not served here"), "{e:?}");
    // Nothing left A for the world, and B never heard of it.
    let out: Vec<_> = g.a.engine.connections(true).into_iter().filter(|c| !c.internal() && c.direction == Direction::Out).collect();
    assert!(out.is_empty(), "{out:#?}");
    assert!(g.b.engine.connections(true).is_empty());
}

/// NOT FIXED, by design of `gateway.allow` (the internal server's address): under pki a
/// certificate must be minted for the header's `to` before the internal server's own
/// certificate is seen (TLS sends the server's first), so any process that shares the
/// internal server's address — every local user when it runs on the same machine and
/// connects over 127.0.0.1 — mints with a self-asserted `from` of a hosted domain and spends
/// the minute's budget: here 2 made-up domains and the internal server's next new domain
/// gets no certificate for the rest of the minute. Ignored: it shows the limit of an
/// address-based door; the README says to give the internal server an address of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "shows what gateway.allow cannot tell apart: processes sharing the internal server's address"]
async fn a_local_process_at_the_internal_servers_address_cannot_spend_the_mint_budget() {
    let g = gateway_with("pki", "mints_per_minute = 2\n").await;
    let listen = g.a.engine.listening().gateway[0];
    for world in ["m1.test", "m2.test"] {
        let mut p = RawPeer::connect(listen).await;
        let (_, f) = p.open("h.test", world).await;
        assert!(f.has_child("starttls", drawbridge::proto::ns::TLS), "{}", f.to_xml());
        // The TLS handshake fails on our side (we trust no gateway CA): the mint is done.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), p.starttls("h.test", world)).await;
    }
    let minted = g.a.dir.path().join("data/gateway/minted");
    let files: Vec<_> = std::fs::read_dir(&minted).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    eprintln!("minted for a stranger at the internal server's address: {files:?}");
    assert!(within("C's probe of the world", g.c.engine.probe("w.test", None)).await.ok, "the internal server's next domain");
}
