//! Certificate expiry forecast end to end: servers whose certificates expire in 10 days and in
//! 400 days federate with a third over real TLS; it keeps each peer's certificate (not-after,
//! issuer, how it authenticated) with the domain, lists them soonest first (`ctl certs`, also
//! through the real binary), filters them (`--expiring`), counts the expiring one in the
//! metric, and still has them after a restart. The server whose own certificate is near its
//! end says so in `ctl status`, the metric and the log.

mod common;

use common::*;
use drawbridge::engine::events::{AuthMethod, CertExpiry, Direction};
use drawbridge::engine::{CertsReport, Reply, Request};
use rcgen::{CertificateParams, DnType, KeyPair};

const DAY: i64 = 86_400;

/// `[tls]` for `domain` with a certificate from `ca` valid until `not_after` (unix seconds),
/// trusting `trust`.
fn tls_until(dir: &std::path::Path, ca: &Ca, domain: &str, trust: &Ca, not_after: i64) -> String {
    tls_config_with(dir, ca, domain, trust, |params| {
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    })
}

async fn certs(engine: &drawbridge::engine::EngineHandle, expiring_s: Option<u64>) -> CertsReport {
    match ask(engine, Request::Certs { expiring_s }).await {
        Reply::Certs(r) => *r,
        other => panic!("not a certificate report: {other:?}"),
    }
}

async fn metrics(engine: &drawbridge::engine::EngineHandle) -> String {
    match ask(engine, Request::Metrics).await {
        Reply::Text(t) => t,
        other => panic!("not the exposition: {other:?}"),
    }
}

fn ctl(sock: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("ctl").arg("--socket").arg(sock).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_certificates_are_forecast_soonest_first_and_kept() {
    capture_logs();
    let dns = Dns::start().await;
    let ca = ca("Peer CA");
    let certdir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (soon, far) = (now + 10 * DAY, now + 400 * DAY);
    let b_tls = tls_until(certdir.path(), &ca, "b.test", &ca, now + 800 * DAY);
    let mut b = start_published("b.test", &dns, &b_tls).await;
    let a = start_published("a.test", &dns, &tls_until(certdir.path(), &ca, "a.test", &ca, soon)).await;
    let c = start_published("c.test", &dns, &tls_until(certdir.path(), &ca, "c.test", &ca, far)).await;
    // Before any peer authenticated: nothing to forecast, both series at zero.
    assert!(certs(&b.engine, None).await.domains.is_empty());
    let m = metrics(&b.engine).await;
    assert!(m.contains("drawbridge_remote_certificates_expiring{state=\"expiring\"} 0"), "{m}");

    for (peer, name) in [(&c, "c.test"), (&a, "a.test")] {
        let r = within(&format!("probe {name}→b"), peer.engine.probe("b.test", None)).await;
        assert!(r.ok, "{name}: {:?}", r.error);
        assert_eq!(r.auth.as_deref(), Some("sasl-external (valid)"));
    }

    // b: its peers' certificates, soonest first, as they were issued. Each peer authenticated
    // by SASL EXTERNAL on its stream to b, then by its server certificate on b's stream back
    // to it (the pong's): the last is what is kept.
    let r = certs(&b.engine, None).await;
    assert_eq!(r.warn_before_s, 14 * DAY as u64);
    let rows: Vec<(&str, i64, &str, AuthMethod, Direction, CertExpiry)> = r
        .domains
        .iter()
        .map(|d| (d.domain.as_str(), d.cert.not_after_s, d.cert.issuer.as_str(), d.cert.method, d.cert.direction, d.expiry))
        .collect();
    assert_eq!(
        rows,
        [
            ("a.test", soon, "CN=Peer CA", AuthMethod::Certificate, Direction::Out, CertExpiry::Expiring),
            ("c.test", far, "CN=Peer CA", AuthMethod::Certificate, Direction::Out, CertExpiry::Ok),
        ]
    );
    assert_eq!(r.domains[0].cert.subject, "CN=a.test");
    assert!(r.domains[0].cert.seen_ms > 0 && r.domains[0].last_seen_ms.is_some());
    // --expiring 30d: only the one that expires within it.
    let r = certs(&b.engine, Some(30 * DAY as u64)).await;
    assert_eq!(r.domains.iter().map(|d| d.domain.as_str()).collect::<Vec<_>>(), ["a.test"]);
    let m = metrics(&b.engine).await;
    assert!(m.contains("drawbridge_remote_certificates_expiring{state=\"expiring\"} 1"), "{m}");
    assert!(m.contains("drawbridge_remote_certificates_expiring{state=\"expired\"} 0"), "{m}");
    assert!(
        m.contains(&format!("drawbridge_local_certificate_expiry_timestamp_seconds{{certificate=\"tls\"}} {}", now + 800 * DAY)),
        "{m}"
    );

    // a: b's certificate, judged on a's stream to it, then by SASL EXTERNAL on b's stream
    // back (the pong's); a's own certificate near its end.
    let r = certs(&a.engine, None).await;
    assert_eq!(r.domains.len(), 1, "{r:?}");
    let d = &r.domains[0];
    assert_eq!(
        (d.domain.as_str(), d.cert.not_after_s, d.cert.method, d.cert.direction),
        ("b.test", now + 800 * DAY, AuthMethod::SaslExternal, Direction::In)
    );
    let st = a.engine.status();
    let ours = &st.certificates[0];
    assert_eq!((ours.certificate.as_str(), ours.not_after_s, ours.expiry), ("tls", Some(soon), Some(CertExpiry::Expiring)));
    assert_eq!(st.certs_warn_before_s, 14 * DAY as u64);
    assert_eq!(c.engine.status().certificates[0].expiry, Some(CertExpiry::Ok));
    let m = metrics(&a.engine).await;
    assert!(m.contains(&format!("drawbridge_local_certificate_expiry_timestamp_seconds{{certificate=\"tls\"}} {soon}")), "{m}");
    let logs = captured_logs();
    let warned: Vec<&str> = logs.lines().filter(|l| l.contains("WARN") && l.contains("our certificate tls")).collect();
    assert!(warned.iter().any(|l| l.contains("a.test.crt") && l.contains("within certs.warn_before")), "{logs}");
    assert!(!warned.iter().any(|l| l.contains("c.test.crt") || l.contains("b.test.crt")), "only the one near its end: {logs}");

    // The real binary, over the control socket.
    drawbridge::control::start(&mut b.engine).unwrap();
    let sock = b.engine.settings().control_socket.clone();
    let (json, human, status) = tokio::task::spawn_blocking(move || {
        (ctl(&sock, &["certs", "--json"]), ctl(&sock, &["certs", "--expiring", "30d"]), ctl(&sock, &["status"]))
    })
    .await
    .unwrap();
    let (ok, out, err) = json;
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let domains = v["domains"].as_array().unwrap();
    assert_eq!(domains.iter().map(|d| d["domain"].as_str().unwrap()).collect::<Vec<_>>(), ["a.test", "c.test"]);
    assert_eq!((domains[0]["not_after_s"].as_i64(), domains[0]["issuer"].as_str()), (Some(soon), Some("CN=Peer CA")));
    assert_eq!((domains[0]["expiry"].as_str(), domains[0]["method"].as_str()), (Some("expiring"), Some("certificate")));
    let (ok, out, err) = human;
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(out.contains("1 remote domain(s) whose certificate expires within 30 days or has expired:"), "{out}");
    let a_line = lines.iter().find(|l| l.starts_with("a.test ")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        (a_line.contains("in 9 days EXPIRING") || a_line.contains("in 10 days EXPIRING"))
            && a_line.contains("certificate (out)")
            && a_line.ends_with("CN=Peer CA"),
        "{out}"
    );
    assert!(!out.contains("c.test"), "{out}");
    let (ok, out, err) = status;
    assert!(ok, "{out}{err}");
    assert!(out.contains("certificate: tls expires ") && out.contains("b.test.crt"), "{out}");

    // A restart: the forecast was kept with the domains.
    let before = certs(&b.engine, None).await.domains;
    let settings =
        drawbridge::config::Settings::parse(&config_text("b.test", b.dir.path(), dns.addr, &b_tls), &b.dir.path().join("drawbridge.toml"))
            .unwrap();
    let TestServer { engine, dir: _dir, .. } = b;
    engine.shutdown().await;
    let again = drawbridge::engine::Engine::start(settings).await.unwrap();
    let after = certs(&again, None).await.domains;
    assert_eq!(after.iter().map(|d| &d.cert).collect::<Vec<_>>(), before.iter().map(|d| &d.cert).collect::<Vec<_>>());
    assert_eq!(after.len(), 2);
    let m = metrics(&again).await;
    assert!(m.contains("drawbridge_remote_certificates_expiring{state=\"expiring\"} 1"), "{m}");
    again.shutdown().await;
}

/// A peer that proves nothing leaves nothing: a self-signed certificate claiming a domain
/// authenticates no one, and no certificate is kept for it. One that authenticates by SASL
/// EXTERNAL on its stream in (and is never dialled back) has its certificate kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_inbound_keeps_the_certificate_and_a_mere_claim_nothing() {
    let dns = Dns::start().await;
    let ca = ca("Peer CA");
    let certdir = tempfile::tempdir().unwrap();
    let b = start_published("b.test", &dns, &tls_config(certdir.path(), &ca, "b.test", &ca)).await;
    let (mut p, _, _) = tls_peer(&b, "x.test").await;
    p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>").await;
    let fail = p.next_el().await.unwrap();
    assert!(fail.is("failure", drawbridge::proto::ns::SASL), "{}", fail.to_xml());
    assert!(certs(&b.engine, None).await.domains.is_empty());
    assert!(record(&b.engine, "x.test").await.is_none_or(|r| r.cert.is_none()));

    let not_after = time::OffsetDateTime::now_utc().unix_timestamp() - 3 * DAY + 400 * DAY;
    let mut params = CertificateParams::new(vec!["nodns.test".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "nodns.test");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key)).unwrap();
    let ctx = drawbridge::net::tls::TlsContext::from_parts(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        &[drawbridge::domain::Domain::parse("nodns.test").unwrap()],
    )
    .unwrap();
    let mut events = b.engine.subscribe();
    let mut p = RawPeer::connect(b.addr).await;
    p.open("nodns.test", "b.test").await;
    p.starttls_with("nodns.test", "b.test", &ctx).await;
    p.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>").await;
    let ok = p.next_el().await.unwrap();
    assert!(ok.is("success", drawbridge::proto::ns::SASL), "{}", ok.to_xml());
    let r = certs(&b.engine, None).await;
    let rows: Vec<_> =
        r.domains.iter().map(|d| (d.domain.as_str(), d.cert.not_after_s, d.cert.method, d.cert.direction, d.expiry)).collect();
    assert_eq!(rows, [("nodns.test", not_after, AuthMethod::SaslExternal, Direction::In, CertExpiry::Ok)]);
    assert_eq!((r.domains[0].cert.issuer.as_str(), r.domains[0].cert.subject.as_str()), ("CN=Peer CA", "CN=nodns.test"));
    // The views are told (the dashboard marks it without a reload).
    wait_event(&mut events, "the domain's record with its certificate", |e| {
        matches!(e, drawbridge::engine::events::Event::DomainChanged { record } if record.domain == "nodns.test" && record.cert.as_ref().is_some_and(|c| c.not_after_s == not_after))
    })
    .await;
}
