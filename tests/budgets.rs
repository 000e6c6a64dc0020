//! Budgets in bytes, measured: a drawbridge process (the real binary) takes 1 000
//! connections that each present a client certificate with 30 KB of names, fail SASL
//! EXTERNAL and stay open, unauthenticated, while a control subscriber (`subscribe`, as a
//! suspended `attach`) never reads. Per connection, only the certificate the TLS session
//! holds grows with the names; rows, transcript notes and events keep them clipped, and the
//! outcome ring, closed rows, transcripts and the subscriber's backlog are bounded in bytes.
//!
//! Before, the same run grew by +109 MiB (issue 16 measured +104 MB): each connection's
//! transcript note and row carried the names in full, and the subscriber's backlog counted
//! entries only. Then +77 to +89 MiB: each connection kept the 64 KiB receive buffer its
//! certificate flight had grown until it idled (now given back when the handshake ends:
//! +60 to +63 MiB).

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use drawbridge::control::{self, Request};
use drawbridge::proto::ns;
use drawbridge::xml::{Element, Frame, Framer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections presenting the big certificate.
const CONNECTIONS: usize = 1000;
/// At once.
const CONCURRENCY: usize = 64;

/// What jemalloc (the binary's allocator) takes for an allocation of `n` bytes: its size
/// classes are four to each doubling (a 40 343-byte certificate takes 40 KiB).
fn size_class(n: usize) -> usize {
    let k = usize::BITS - 1 - (n - 1).leading_zeros();
    n.next_multiple_of(1 << k.saturating_sub(2))
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

/// A certificate naming 30 KB: a 10 KB common name and two 10 KB DNS names, random letters
/// (nothing for a compressor to share).
fn big_certificate() -> (Arc<rustls::ClientConfig>, usize) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut name = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (b'a' + (seed % 26) as u8) as char
            })
            .collect::<String>()
    };
    let (cn, a, b) = (name(10_000), format!("{}.test", name(10_000)), format!("{}.test", name(10_000)));
    let mut params = rcgen::CertificateParams::new(vec![a, b]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let size = cert.der().len();
    (Arc::new(drawbridge::net::tls::client_config_with(vec![cert.der().clone()], der).unwrap()), size)
}

type Held = tokio_rustls::client::TlsStream<TcpStream>;

/// One connection: header, STARTTLS, the handshake presenting the certificate, the new
/// stream, a SASL EXTERNAL attempt that fails; then held open, unauthenticated.
async fn one(addr: std::net::SocketAddr, tls: Arc<rustls::ClientConfig>) -> Option<Held> {
    let header = header("x.test", "a.test");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(header.as_bytes()).await.unwrap();
    let mut framer = Framer::new(1 << 20, 64);
    let mut buf = vec![0u8; 16 * 1024];
    // Until the features (STARTTLS).
    let mut features = None;
    while features.is_none() {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the features");
        framer.feed(&buf[..n]);
        while let Some(f) = framer.next_frame().unwrap() {
            if let Frame::Element(e) = f {
                features = Some(e);
            }
        }
    }
    tcp.write_all(Element::new("starttls", ns::TLS).to_xml().as_bytes()).await.unwrap();
    let mut proceed = false;
    while !proceed {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before <proceed/>");
        framer.feed(&buf[..n]);
        while let Some(f) = framer.next_frame().unwrap() {
            proceed |= matches!(f, Frame::Element(e) if e.is("proceed", ns::TLS));
        }
    }
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    s.write_all(header.as_bytes()).await.unwrap();
    s.write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>eC50ZXN0</auth>").await.unwrap();
    let mut framer = Framer::new(1 << 20, 64);
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        framer.feed(&buf[..n]);
        while let Ok(Some(f)) = framer.next_frame() {
            if matches!(&f, Frame::Element(e) if e.is("failure", ns::SASL)) {
                return Some(s);
            }
        }
    }
}

async fn status(sock: &std::path::Path) -> drawbridge::engine::Status {
    let r = control::request(sock, &Request::Status).await.unwrap();
    serde_json::from_value(r.data.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_huge_certificate_names_and_a_stalled_subscriber() {
    let dns = Dns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sock = dir.path().join("control.sock");
    let cfg = dir.path().join("drawbridge.toml");
    // Defaults for every budget; only the per-address cap is lifted (all come from 127.0.0.1).
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomains = [\"a.test\"]\nlisten = [\"{addr}\"]\ndata_dir = \"{}\"\ncontrol_socket = \"{}\"\n\
             [dns]\nnameservers = [\"{}\"]\n[limits]\nmax_unauthenticated_per_address = 2000\nmax_inbound_unauthenticated = 2000\n[timeouts]\nnegotiation = \"300s\"\n",
            dir.path().join("data").display(),
            sock.display(),
            dns.addr
        ),
    )
    .unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = serve.id();
    let t0 = Instant::now();
    while control::request(&sock, &Request::Status).await.is_err() {
        assert!(t0.elapsed() < *WAIT, "serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stalled subscriber: subscribes, then never reads.
    let mut stalled = tokio::net::UnixStream::connect(&sock).await.unwrap();
    stalled.write_all(b"{\"cmd\":\"subscribe\"}\n").await.unwrap();

    let (tls, der_size) = big_certificate();
    let run = |n: usize| {
        let tls = tls.clone();
        async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let permit = gate.clone().acquire_owned().await.unwrap();
                let tls = tls.clone();
                set.spawn(async move {
                    let held = within("one connection", one(addr, tls)).await;
                    drop(permit);
                    held
                });
            }
            let mut held = Vec::new();
            while let Some(r) = set.join_next().await {
                held.extend(r.unwrap());
            }
            held
        }
    };
    // Warm up (thread stacks, the allocator's arenas, TLS tables), then the baseline.
    drop(run(50).await);
    let settle = || async {
        let t0 = Instant::now();
        while status(&sock).await.streams_in > 0 {
            assert!(t0.elapsed() < *WAIT, "streams still open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    settle().await;
    let before = rss(pid);
    let t = Instant::now();
    let held = run(CONNECTIONS).await;
    assert_eq!(held.len(), CONNECTIONS, "every connection failed SASL EXTERNAL and stays");
    assert_eq!(status(&sock).await.streams_in, CONNECTIONS);
    let after = rss(pid);
    let growth = after.saturating_sub(before);
    eprintln!(
        "{CONNECTIONS} connections with 30 KB names ({der_size}-byte certificate) in {:.1?}: RSS {} → {} MiB (+{:.1} MiB)",
        t.elapsed(),
        before >> 20,
        after >> 20,
        growth as f64 / (1 << 20) as f64
    );
    // The bound, from its measured parts. Per live connection: the certificate the TLS
    // session holds for the connection's life (its DER, the 30 KB of names, capped by TLS
    // at 64 KiB and in count by limits.max_inbound_unauthenticated), in the allocator's
    // size class; and what any connection costs besides (task, socket, TLS session, row,
    // negotiation transcript: the same run with a 350-byte certificate grows by +20 MiB,
    // some of the budgets below included; 24 KiB allowed). Nothing else per connection
    // grows with the names: the handshake's receive buffer, grown to 64 KiB for the
    // certificate flight, is given back when the handshake ends, and rows, transcript notes
    // and events keep the names clipped. Then what grows with the names in all but within
    // a budget: the stalled subscriber's backlog (8 MiB; the small run's events fill less
    // of it); and 6 MiB for the allocator (64 handshakes in flight with 64 KiB buffers,
    // pages freed but not yet reused). Measured: +60 to +63 MiB (runs of 3.5 to 6 s) against a bound of 77. It
    // catches what it is about: names kept in full (rows, certificate facts, transcript
    // notes) took +151 MiB; each connection keeping its handshake buffer, +77 to +89.
    let bound = CONNECTIONS * (size_class(der_size) + (24 << 10)) + (8 << 20) + (6 << 20);
    assert!(growth < bound, "RSS grew by {} MiB, more than {} MiB", growth >> 20, bound >> 20);
    let r = control::request(&sock, &Request::Connections { closed: false, cluster: false }).await.unwrap();
    let rows = r.data.unwrap().to_string().len();
    assert!(rows < CONNECTIONS * 4096, "live rows keep clipped names: {rows} bytes of JSON for {CONNECTIONS}");
    drop(held);
    settle().await;
    // The stalled subscriber was lagged, not the server held: when it reads again, after
    // what was already in its socket, it is told what it missed.
    let mut lines = tokio::io::BufReader::new(&mut stalled);
    let mut line = String::new();
    let mut read = 0usize;
    let lagged = within("the lagged note", async {
        loop {
            line.clear();
            let n = tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line).await.unwrap();
            assert!(n > 0, "the subscriber was dropped without a note");
            read += n;
            assert!(read < 64 << 20, "no lagged note in 64 MiB of events");
            if line.contains("\"event\":\"lagged\"") {
                return line.clone();
            }
        }
    })
    .await;
    eprintln!("{lagged:.200} after {read} bytes");
    drop(stalled);
    serve.kill().unwrap();
    serve.wait().unwrap();
}
