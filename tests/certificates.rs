//! Certificate authentication end to end: SASL EXTERNAL both ways with certificates from a
//! CA made in the test, and the fallback to dialback when a certificate is not trusted.

mod common;

use common::*;
use drawbridge::engine::events::{AuthMethod, Direction, PairStatus, VerificationResult};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_both_ways_with_trusted_certificates() {
    let dns = Dns::start().await;
    let ca = ca("drawbridge test CA");
    let dir = tempfile::tempdir().unwrap();
    let a = start_published("a.test", &dns, &tls_config(dir.path(), &ca, "a.test", &ca)).await;
    let b = start_published("b.test", &dns, &tls_config(dir.path(), &ca, "b.test", &ca)).await;
    let r = within("probe a→b", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.auth.as_deref(), Some("sasl-external (valid)"));
    let r = within("probe b→a", b.engine.probe("a.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.auth.as_deref(), Some("sasl-external (valid)"));
    // b's side: the inbound stream from a authenticated by SASL EXTERNAL, certificate valid.
    let conns = b.engine.connections(false);
    let inbound = conns.iter().find(|c| c.direction == Direction::In && c.remote.as_deref() == Some("a.test")).unwrap();
    assert_eq!(inbound.pairs[0].method, AuthMethod::SaslExternal);
    assert_eq!(inbound.state, drawbridge::engine::events::ConnState::Established, "established after the SASL restart");
    assert_eq!(inbound.pairs[0].status, PairStatus::Valid);
    assert!(inbound.tls.as_ref().unwrap().cert_verdict.as_ref().unwrap().is_valid());
    let outcomes = b.engine.outcomes();
    assert!(outcomes.iter().any(|o| o.method == AuthMethod::SaslExternal && o.result == VerificationResult::Valid && o.remote == "a.test"));
    assert!(!outcomes.iter().any(|o| o.method == AuthMethod::Dialback), "no dialback needed: {outcomes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_falls_back_to_dialback() {
    let dns = Dns::start().await;
    let (ca_a, ca_b) = (ca("CA of a"), ca("CA of b"));
    let dir = tempfile::tempdir().unwrap();
    // a trusts b's CA, b does not trust a's: a→b cannot use EXTERNAL (b offers it only to
    // a peer whose certificate it trusts), so dialback authenticates a; b→a uses EXTERNAL.
    let a = start_published("a.test", &dns, &tls_config(dir.path(), &ca_a, "a.test", &ca_b)).await;
    let b = start_published("b.test", &dns, &tls_config(dir.path(), &ca_b, "b.test", &ca_b)).await;
    let r = within("probe a→b", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.auth.as_deref(), Some("dialback (valid)"));
    let verdicts: Vec<String> =
        b.engine.outcomes().into_iter().filter(|o| o.method == AuthMethod::Certificate && o.remote == "a.test").map(|o| o.reason).collect();
    assert!(verdicts.iter().any(|v| v == "certificate for a.test: untrusted issuer (CN=CA of a)"), "{verdicts:?}");
    let r = within("probe b→a", b.engine.probe("a.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.auth.as_deref(), Some("sasl-external (valid)"));
}

/// A peer whose certificate is valid may still ask for an authorization identity that is not
/// its own: `<invalid-authzid/>`; EXTERNAL is not offered at all to an untrusted peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_failures_name_the_reason() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    // A raw peer with a self-signed certificate: EXTERNAL not offered; asking anyway fails.
    let (mut p, _, f) = tls_peer(&b, "x.test").await;
    assert!(!f.has_child("mechanisms", drawbridge::proto::ns::SASL), "no EXTERNAL for an untrusted certificate");
    p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>").await;
    let fail = p.next_el().await.unwrap();
    assert!(fail.is("failure", drawbridge::proto::ns::SASL));
    assert!(fail.has_child("not-authorized", drawbridge::proto::ns::SASL), "{}", fail.to_xml());
    let text = fail.get_child("text", drawbridge::proto::ns::SASL).unwrap().text_content();
    assert!(text.contains("not valid for x.test: self-signed") && text.contains("use dialback"), "{text}");
    p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGZvbwBiYXI=</auth>").await;
    let fail = p.next_el().await.unwrap();
    assert!(fail.has_child("invalid-mechanism", drawbridge::proto::ns::SASL), "{}", fail.to_xml());
    p.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").await;
    let fail = p.next_el().await.unwrap();
    assert!(fail.has_child("aborted", drawbridge::proto::ns::SASL), "{}", fail.to_xml());
}

/// XEP-0344 §2.2: a peer that claims by dialback the very domain its valid certificate names is
/// accepted without the callback (the claimed domain has no DNS at all here, so a callback
/// could not have succeeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_with_a_valid_certificate_needs_no_callback() {
    let dns = Dns::start().await;
    let ca = ca("drawbridge test CA");
    let dir = tempfile::tempdir().unwrap();
    let b = start_published("b.test", &dns, &tls_config(dir.path(), &ca, "b.test", &ca)).await;
    let mut params = CertificateParams::new(vec!["nodns.test".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key)).unwrap();
    let ctx = drawbridge::net::tls::TlsContext::from_parts(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        &[drawbridge::domain::Domain::parse("nodns.test").unwrap()],
    )
    .unwrap();
    let mut p = RawPeer::connect(b.addr).await;
    p.open("nodns.test", "b.test").await;
    let (_, features) = p.starttls_with("nodns.test", "b.test", &ctx).await;
    assert!(features.has_child("mechanisms", drawbridge::proto::ns::SASL), "EXTERNAL offered to a valid certificate");
    // An authorization identity other than the certificate's domain: invalid-authzid.
    let authzid = drawbridge::proto::sasl::base64_encode(b"other.test");
    p.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")).await;
    let fail = p.next_el().await.unwrap();
    assert!(fail.has_child("invalid-authzid", drawbridge::proto::ns::SASL), "{}", fail.to_xml());
    p.send_el(&drawbridge::proto::dialback::result_request("nodns.test", "b.test", "whatever")).await;
    let answer = loop {
        let el = p.next_el().await.unwrap();
        if let Some(db) = drawbridge::proto::dialback::DbElement::parse(&el) {
            break db;
        }
    };
    assert_eq!(answer.answer, Some(drawbridge::proto::dialback::Answer::Valid));
    let o = b.engine.outcomes().into_iter().find(|o| o.remote == "nodns.test" && o.method == AuthMethod::DialbackWithValidCert);
    assert!(o.is_some_and(|o| o.result == VerificationResult::Valid && o.reason.contains("without the callback")));
    // A pair whose certificate is not valid for it still goes through the callback (and
    // fails here: other.test has no DNS).
    p.send_el(&drawbridge::proto::dialback::result_request("other.test", "b.test", "whatever")).await;
    let answer = loop {
        let el = p.next_el().await.unwrap();
        if let Some(db) = drawbridge::proto::dialback::DbElement::parse(&el) {
            break db;
        }
    };
    assert!(
        matches!(&answer.answer, Some(drawbridge::proto::dialback::Answer::Error { condition, text })
            if condition == "remote-connection-failed" && text.as_deref() == Some("other.test's authoritative server could not be reached")),
        "{answer:?}"
    );
}

/// Reload (SIGHUP / `ctl reload`): new handshakes get the renewed certificate, established
/// streams stay, and a broken new certificate keeps the old one with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_without_dropping_streams() {
    let dns = Dns::start().await;
    let ca = ca("drawbridge test CA");
    let dir = tempfile::tempdir().unwrap();
    let a = start_published("a.test", &dns, &tls_config(dir.path(), &ca, "a.test", &ca)).await;
    let b = start_published("b.test", &dns, &tls_config(dir.path(), &ca, "b.test", &ca)).await;
    let r = within("probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let old_fp = b.engine.testing().certificate_sha256();
    let stream = r.stream.unwrap();

    // Renewal outside drawbridge: new key and certificate in the same files.
    tls_config(dir.path(), &ca, "b.test", &ca);
    let Reply::Text(msg) = ask(&b.engine, Request::Reload).await else { panic!("reload answers in words") };
    let new_fp = b.engine.testing().certificate_sha256();
    assert_ne!(old_fp, new_fp);
    assert!(msg.contains(&new_fp), "{msg}");
    // The established stream is still there and still carries traffic.
    let r = within("probe on the old stream", a.engine.probe("b.test", None)).await;
    assert!(r.ok && r.stream.as_deref() == Some(stream.as_str()), "{r:?}");
    // A new peer's handshake sees the new certificate.
    let c = start_published("c.test", &dns, &tls_config(dir.path(), &ca, "c.test", &ca)).await;
    let r = within("probe from a new peer", c.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let conn = c.engine.connections(false).into_iter().find(|x| x.id == r.stream.clone().unwrap()).unwrap();
    assert_eq!(conn.tls.unwrap().peer_cert.unwrap().fingerprint_sha256, new_fp);

    // A broken certificate: the old one stays, and the error says why and which key to check.
    std::fs::write(dir.path().join("b.test.crt"), "not a certificate").unwrap();
    let err = b.engine.execute(Request::Reload).await.unwrap_err().to_string();
    assert!(err.contains("keeping the current certificate") && err.contains("tls.cert"), "{err}");
    assert_eq!(b.engine.testing().certificate_sha256(), new_fp);
}

/// `[auth] mode = "cert-only"`: a peer without a trusted certificate cannot use dialback; the
/// error names the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_only_refuses_a_dialback_only_peer_naming_the_rule() {
    let dns = Dns::start().await;
    let (ca_a, ca_b) = (ca("CA of a"), ca("CA of b"));
    let dir = tempfile::tempdir().unwrap();
    let a = start_published("a.test", &dns, &tls_config(dir.path(), &ca_a, "a.test", &ca_b)).await;
    let b =
        start_published("b.test", &dns, &format!("{}[auth]\nmode = \"cert-only\"\n", tls_config(dir.path(), &ca_b, "b.test", &ca_b))).await;
    let r = within("probe a→b", a.engine.probe("b.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("not-authorized") && err.contains("[auth] mode = \"cert-only\""), "{err}");
    let refused = b.engine.outcomes();
    assert!(refused.iter().any(|o| o.remote == "a.test" && o.reason.contains("untrusted issuer (CN=CA of a)")), "{refused:#?}");
    // A raw peer is offered neither EXTERNAL (untrusted) nor dialback.
    let (_, _, features) = tls_peer(&b, "x.test").await;
    assert!(!features.has_child("dialback", drawbridge::proto::ns::DIALBACK_FEATURE), "{}", features.to_xml());
}

/// A domain that authenticated by certificate before and now uses dialback only is flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_from_certificate_to_dialback_is_flagged() {
    use drawbridge::engine::events::{Event, VerificationOutcome};
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let mut events = b.engine.subscribe();
    let outcome_dir = |method, direction| VerificationOutcome {
        time_ms: drawbridge::engine::events::now_ms(),
        stream: "s".into(),
        direction,
        local: "b.test".into(),
        remote: "x.test".into(),
        method,
        result: VerificationResult::Valid,
        reason: "test".into(),
        peer_addr: None,
    };
    let outcome = |method| outcome_dir(method, Direction::In);
    // Our stream to y.test authenticated by EXTERNAL proves our domain, not y.test: its
    // dialback to us later is no downgrade.
    b.engine.testing().record_outcome(outcome_dir(AuthMethod::SaslExternal, Direction::Out));
    b.engine
        .testing()
        .record_outcome(VerificationOutcome { remote: "y.test".into(), ..outcome_dir(AuthMethod::SaslExternal, Direction::Out) });
    b.engine.testing().record_outcome(VerificationOutcome { remote: "y.test".into(), ..outcome(AuthMethod::Dialback) });
    let y = record(&b.engine, "y.test").await.unwrap();
    assert!(!y.cert_auth_seen && y.downgrade.is_none(), "{y:?}");
    b.engine.testing().record_outcome(outcome(AuthMethod::SaslExternal));
    assert!(record(&b.engine, "x.test").await.unwrap().downgrade.is_none());
    b.engine.testing().record_outcome(outcome(AuthMethod::Dialback));
    let rec = record(&b.engine, "x.test").await.unwrap();
    assert!(rec.downgrade.as_deref().is_some_and(|d| d.contains("by certificate before, now by dialback only")), "{rec:?}");
    wait_event(&mut events, "the downgrade event", |e| matches!(e, Event::DomainChanged { record } if record.downgrade.is_some())).await;
}

/// Direct TLS (XEP-0368): b listens for TLS from the first byte and publishes
/// `_xmpps-server._tcp`; a finds it, prefers it on equal priority, and authenticates with
/// SASL EXTERNAL over it — no STARTTLS on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_in_and_out() {
    let dns = Dns::start().await;
    let ca = ca("drawbridge test CA");
    let dir = tempfile::tempdir().unwrap();
    let a = start_published("a.test", &dns, &tls_config(dir.path(), &ca, "a.test", &ca)).await;
    let b_cfg = format!("{}[server]\ndirect_tls = [\"127.0.0.1:0\"]\n", tls_config(dir.path(), &ca, "b.test", &ca));
    let b = start_published("b.test", &dns, &b_cfg).await;
    let direct = b.engine.listening().direct_tls[0];
    dns.add_srv_direct("b.test", 0, "xmpp.b.test", direct.port()).await;
    let r = within("probe over direct TLS", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.peer_addr, Some(direct.to_string()), "direct TLS first on equal priority");
    assert_eq!(r.auth.as_deref(), Some("sasl-external (valid)"));
    let t = a.engine.transcript(r.stream.as_deref().unwrap()).unwrap();
    assert!(!t.iter().any(|l| l.text.contains("<starttls")), "no STARTTLS over direct TLS");
    assert!(t.iter().any(|l| l.dir == "note" && l.text.contains("direct TLS (XEP-0368) established")));
    let inbound =
        b.engine.connections(false).into_iter().find(|c| c.direction == Direction::In && c.remote.as_deref() == Some("a.test")).unwrap();
    let bt = b.engine.transcript(&inbound.id).unwrap();
    assert!(bt.first().is_some_and(|l| l.text.contains("direct TLS (XEP-0368) established")), "{bt:#?}");
    assert!(inbound.tls.unwrap().cert_verdict.unwrap().is_valid());
}

/// Outbound under `cert-only`: a peer whose certificate is not valid for its domain (anyone
/// answering DNS for it could be there) gets nothing: the stream closes after TLS, before
/// any stanza, and the bounce says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_only_outbound_sends_nothing_to_a_peer_without_a_valid_certificate() {
    let dns = Dns::start().await;
    let (ca_a, ca_b) = (ca("CA of a"), ca("CA of b"));
    let dir = tempfile::tempdir().unwrap();
    let a = start_published("a.test", &dns, &tls_config(dir.path(), &ca_a, "a.test", &ca_a)).await;
    let b =
        start_published("b.test", &dns, &format!("{}[auth]\nmode = \"cert-only\"\n", tls_config(dir.path(), &ca_b, "b.test", &ca_b))).await;
    let r = within("probe b→a", b.engine.probe("a.test", None)).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("policy-violation") && err.contains("untrusted issuer") && err.contains("[auth] mode = \"cert-only\""), "{err}");
    // a saw b's stream, and no stanza on it.
    let seen: Vec<_> = a.engine.connections(true).into_iter().filter(|c| c.direction == Direction::In).collect();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|c| c.stanzas_in == 0), "{seen:#?}");
}

/// `[[domain]] require_encryption = false` exempts that domain only: a peer naming it in
/// its header cannot run dialback for another domain without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_exemption_holds_only_for_the_exempt_domain() {
    let dns = Dns::start().await;
    let b = start_server("b.test", &dns, "[[domain]]\nname = \"plain.test\"\nrequire_encryption = false\n").await;
    let mut p = RawPeer::connect(b.addr).await;
    let (_, features) = p.open("plain.test", "b.test").await;
    assert!(features.has_child("dialback", drawbridge::proto::ns::DIALBACK_FEATURE), "{}", features.to_xml());
    p.send_el(&drawbridge::proto::dialback::result_request("other.test", "b.test", "k")).await;
    let e = p.expect_condition(drawbridge::proto::stream::StreamErrorCondition::PolicyViolation).await;
    assert!(e.text.contains("dialback before TLS"), "{e}");
}

/// IDNA: a server hosting `bücher.test`, published in DNS under its A-label and holding a
/// certificate for the A-label, authenticates to a peer and gets its answers, both ways;
/// both forms of the name are one domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internationalised_domain_authenticates_by_its_a_label_certificate() {
    let dns = Dns::start().await;
    let ca = ca("IDN CA");
    let dir = tempfile::tempdir().unwrap();
    let a = start_published("bücher.test", &dns, &tls_config(dir.path(), &ca, "xn--bcher-kva.test", &ca)).await;
    let b = start_published("b.test", &dns, &tls_config(dir.path(), &ca, "b.test", &ca)).await;
    let r = within("probe bücher → b", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    // Asked by its A-label, answered: one domain.
    let r = within("probe b → xn--bcher-kva", b.engine.probe("xn--bcher-kva.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let outcomes = b.engine.outcomes();
    assert!(
        outcomes.iter().any(|o| o.remote == "bücher.test" && o.method == AuthMethod::SaslExternal && o.result == VerificationResult::Valid),
        "{outcomes:#?}"
    );
}
