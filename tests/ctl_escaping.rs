//! What `drawbridge ctl` prints to the operator's terminal: never a control character of a
//! peer's (ESC/BEL sequences that clear the screen, set the window title or colours), never
//! a line the peer wrote. Once against a real engine, with a client certificate whose
//! subject and issuer carry them; once against a fake engine that sends them raw in every
//! string, as a buggy engine or an old store could.

mod common;

use std::io::{BufRead, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use drawbridge::control::{DomainReport, KeepReport, Request, Response, RtblReport};
use drawbridge::domain::Domain;
use drawbridge::engine::FeedReport;
use drawbridge::engine::events::{ConnSnapshot, VerificationOutcome};
use drawbridge::net::tls::TlsContext;
use drawbridge::store::{DomainRecord, PolicyAction, RtblRecord};
use drawbridge::types::*;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};

/// Terminal escapes (clear screen, window title, bell, C1 CSI, a right-to-left override)
/// and a line break before a line that looks like `ctl verifications`' own.
const HOSTILE: &str =
    "Evil\x1b[2J\x1b]0;pwned\x07\u{9b}31m\u{202e}\nFORGED 2026-12-04 00:00:00 UTC  in valid    evil.test → b.test  sasl-external: ok";

fn ctl(sock: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("ctl").arg("--socket").arg(sock).args(args).output().unwrap();
    let mut s = String::from_utf8(out.stdout).expect("ctl prints UTF-8");
    s.push_str(&String::from_utf8(out.stderr).expect("ctl prints UTF-8"));
    s
}

/// No unsafe character (a line feed only between lines), no line of the peer's, and the
/// peer's text shown escaped (the output is about it).
fn assert_safe(what: &str, out: &str) {
    let bad: Vec<char> = out.chars().filter(|&c| c != '\n' && drawbridge::text::is_unsafe(c)).collect();
    assert!(bad.is_empty(), "`ctl {what}` printed {bad:?}:\n{out}");
    assert!(!out.lines().any(|l| l.trim_start().starts_with("FORGED")), "`ctl {what}` printed the peer's line:\n{out}");
    assert!(out.contains("\\x1b[2J") || out.contains("\\u001b[2J"), "`ctl {what}` should show the peer's text escaped:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_with_terminal_escapes_reaches_no_terminal() {
    let dns = Dns::start().await;
    let mut b = start_published("b.test", &dns, "").await;
    drawbridge::control::start(&mut b.engine).unwrap();
    let sock = b.engine.settings().control_socket.clone();
    let mut events = b.engine.subscribe();

    // An (untrusted) CA and a client certificate for evil.test, both named by the peer.
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, HOSTILE);
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["evil.test".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, format!("leaf {HOSTILE}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key)).unwrap();
    let ctx = TlsContext::from_parts(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        &[Domain::parse("evil.test").unwrap()],
    )
    .unwrap();

    let mut p = RawPeer::connect(b.addr).await;
    p.open("evil.test", "b.test").await;
    p.starttls_with("evil.test", "b.test", &ctx).await;
    p.send(drawbridge::proto::stream::CLOSE).await;
    wait_event(&mut events, "the stream closed", |e| {
        matches!(e, drawbridge::engine::events::Event::StreamClosed { stream } if stream.tls.as_ref().is_some_and(|t| t.cert_verdict.is_some()))
    })
    .await;
    drop(p);

    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("verifications", vec!["verifications"]),
        ("connections --closed", vec!["connections", "--closed"]),
        ("domain evil.test", vec!["domain", "evil.test"]),
        ("connections --closed --json", vec!["connections", "--closed", "--json"]),
    ];
    for (what, args) in runs {
        let sock = sock.clone();
        let out = tokio::task::spawn_blocking(move || ctl(&sock, &args)).await.unwrap();
        assert_safe(what, &out);
    }
}

/// A fake engine on a control socket: every answer's strings carry [`HOSTILE`] raw.
fn fake_engine(sock: &Path) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
            let req: Request = serde_json::from_str(&line).unwrap();
            let data = match req {
                Request::Verifications { .. } => serde_json::to_value(vec![outcome()]).unwrap(),
                Request::Connections { cluster: true, .. } => serde_json::to_value(drawbridge::engine::ClusterConnections {
                    node: HOSTILE.into(),
                    streams: vec![drawbridge::store::NodeStream { node: HOSTILE.into(), stream: snapshot() }],
                    store_error: Some(HOSTILE.into()),
                })
                .unwrap(),
                Request::Connections { .. } | Request::History { .. } => serde_json::to_value(vec![snapshot()]).unwrap(),
                Request::Domains { .. } | Request::Pending => serde_json::to_value(vec![record()]).unwrap(),
                Request::Domain { .. } => serde_json::to_value(DomainReport {
                    domain: HOSTILE.into(),
                    record: Some(record()),
                    verdict: HOSTILE.into(),
                    outcomes: vec![outcome()],
                    streams: vec![snapshot()],
                    policy_log: vec![PolicyAction {
                        time_ms: 0,
                        who: HOSTILE.into(),
                        action: HOSTILE.into(),
                        domain: Some(HOSTILE.into()),
                        reason: Some(HOSTILE.into()),
                    }],
                    listings: vec![listing()],
                    live: Default::default(),
                    store_error: None,
                })
                .unwrap(),
                Request::Rtbl => serde_json::to_value(RtblReport {
                    feeds: vec![FeedReport {
                        status: drawbridge::rtbl::FeedStatus {
                            service: HOSTILE.into(),
                            node: HOSTILE.into(),
                            action: drawbridge::rtbl::Action::Block,
                            state: drawbridge::rtbl::FeedState::Error(HOSTILE.into()),
                            entries: 1,
                            last_sync_ms: Some(0),
                            last_change_ms: Some(0),
                            ignored_foreign: 0,
                            ignored_invalid: 0,
                            ignored_over_limit: 0,
                            ignored_protected: 0,
                        },
                        max_entries: 1,
                        entries: vec![listing(), RtblRecord { retracted_ms: Some(0), ..listing() }],
                    }],
                    inbox: Default::default(),
                })
                .unwrap(),
                Request::Certs { .. } => serde_json::to_value(drawbridge::engine::CertsReport {
                    now_s: 0,
                    warn_before_s: 0,
                    expiring_within_s: Some(0),
                    local: vec![drawbridge::engine::LocalCert {
                        certificate: HOSTILE.into(),
                        path: HOSTILE.into(),
                        subject: HOSTILE.into(),
                        issuer: HOSTILE.into(),
                        not_after_s: Some(0),
                        expiry: Some(CertExpiry::Expiring),
                    }],
                    domains: vec![drawbridge::engine::RemoteCertRow {
                        domain: HOSTILE.into(),
                        expiry: CertExpiry::Expired,
                        cert: remote_cert(),
                        last_seen_ms: Some(0),
                    }],
                })
                .unwrap(),
                Request::Keep { .. } => serde_json::to_value(KeepReport {
                    record: record(),
                    changed: true,
                    closed_streams: vec![HOSTILE.into()],
                    listing: listing(),
                })
                .unwrap(),
                // A list of lines: a line feed in it is a line (the engine writes domains);
                // the escapes are still shown escaped.
                Request::BlacklistExport => serde_json::Value::String(format!("a.test\n{}\n", HOSTILE.replace('\n', " "))),
                _ => {
                    let resp = Response { ok: false, data: None, error: Some(HOSTILE.into()) };
                    writeln!(conn, "{}", serde_json::to_string(&resp).unwrap()).unwrap();
                    continue;
                }
            };
            let resp = Response { ok: true, data: Some(data), error: None };
            writeln!(conn, "{}", serde_json::to_string(&resp).unwrap()).unwrap();
        }
    })
}

fn outcome() -> VerificationOutcome {
    VerificationOutcome {
        time_ms: 0,
        stream: HOSTILE.into(),
        direction: Direction::In,
        local: "b.test".into(),
        remote: HOSTILE.into(),
        method: AuthMethod::Certificate,
        result: VerificationResult::Invalid,
        reason: HOSTILE.into(),
        peer_addr: Some(HOSTILE.into()),
    }
}

fn snapshot() -> ConnSnapshot {
    ConnSnapshot {
        id: HOSTILE.into(),
        direction: Direction::In,
        kind: StreamKind::Federation,
        local: Some(HOSTILE.into()),
        remote: Some(HOSTILE.into()),
        peer_addr: Some(HOSTILE.into()),
        state: ConnState::Closed,
        stream_id: Some(HOSTILE.into()),
        tls: Some(TlsInfo {
            version: HOSTILE.into(),
            cipher: HOSTILE.into(),
            peer_cert: Some(Arc::new(PeerCertInfo {
                subject: HOSTILE.into(),
                issuer: HOSTILE.into(),
                names: vec![HOSTILE.into()],
                not_after: HOSTILE.into(),
                not_after_s: None,
                fingerprint_sha256: HOSTILE.into(),
            })),
            cert_verdict: Some(CertVerdict::UntrustedIssuer(HOSTILE.into())),
        }),
        pairs: vec![PairInfo {
            local: HOSTILE.into(),
            remote: HOSTILE.into(),
            status: PairStatus::Valid,
            method: AuthMethod::SaslExternal,
        }],
        opened_ms: 0,
        last_activity_ms: 0,
        stanzas_in: 0,
        stanzas_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        close_reason: Some(HOSTILE.into()),
        limits: None,
    }
}

/// A listing whose every string is the service's (or a buggy engine's).
fn listing() -> RtblRecord {
    RtblRecord {
        domain: HOSTILE.into(),
        service: HOSTILE.into(),
        node: HOSTILE.into(),
        reason: Some(HOSTILE.into()),
        text: Some(HOSTILE.into()),
        block_strangers: true,
        first_seen_ms: 0,
        last_seen_ms: 0,
        retracted_ms: None,
    }
}

fn record() -> DomainRecord {
    DomainRecord {
        domain: HOSTILE.into(),
        reason: Some(HOSTILE.into()),
        who: Some(HOSTILE.into()),
        when_ms: Some(0),
        source: Some(HOSTILE.into()),
        first_seen_ms: Some(0),
        last_seen_ms: Some(0),
        last_verification: Some(HOSTILE.into()),
        downgrade: Some(HOSTILE.into()),
        cert: Some(remote_cert()),
        ..DomainRecord::default()
    }
}

fn remote_cert() -> RemoteCert {
    RemoteCert {
        not_after_s: 0,
        issuer: HOSTILE.into(),
        subject: HOSTILE.into(),
        fingerprint_sha256: HOSTILE.into(),
        method: AuthMethod::SaslExternal,
        direction: Direction::In,
        seen_ms: 0,
    }
}

#[test]
fn ctl_escapes_whatever_the_engine_sends() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.sock");
    let _engine = fake_engine(&sock);
    let runs: &[&[&str]] = &[
        &["verifications"],
        &["verifications", "--json"],
        &["connections", "--closed"],
        &["connections", "--json"],
        &["connections", "--cluster"],
        &["connections", "--cluster", "--closed", "--json"],
        &["history"],
        &["domain", "evil.test"],
        &["domains"],
        &["pending"],
        &["blacklist", "export"],
        &["close", "some-id"],
        &["rtbl"],
        &["rtbl", "--json"],
        &["keep", "evil.test", "--reason", "kept"],
        &["certs"],
        &["certs", "--expiring", "30d", "--json"],
    ];
    for args in runs {
        let out = ctl(&sock, args);
        assert_safe(&args.join(" "), &out);
    }
}
