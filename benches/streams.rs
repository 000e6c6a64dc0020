//! Memory and CPU per dialback-verified stream, measured on a real `drawbridge serve`
//! process ("A", a.bench) federating with a second one ("B", hosting b0…bN.bench), both on
//! loopback. Each `ctl probe a.bench --from bI.bench` on B makes one verified pair: B's
//! outbound stream to A, verified by dialback (A calls B back on its own outbound stream,
//! which then carries the pong). A's resident memory and CPU time are read from /proc
//! before and after; the figures are per pair, i.e. one inbound and one outbound stream.
//!
//! B stands for N peer servers: its certificate has one wildcard name (`*.peers.bench`: RFC 6125 §6.4.3 allows no wildcard right under a top-level label), as each
//! of N real peers would carry a certificate of ordinary size — not one naming all N.
//!
//! Run: `cargo bench --bench streams` (N=500; `STREAMS=N` to change). `AUTH=sasl` gives both
//! servers certificates from a CA made here, so every stream authenticates by SASL EXTERNAL
//! instead of dialback. `DRAWBRIDGE_BIN` runs another build of the binary as A and B (to
//! compare commits); `EXTRA_CONFIG` adds TOML to both configurations (`\n` for new lines).
//! `HOLD_SECS=S` keeps both servers running S seconds after the figures (for a profiler).
//! `STORE=postgres` puts A on a PostgreSQL store started here (Debian's, as the tests start
//! it) and adds what A wrote to it per pair (rows inserted and updated, bytes the tables grew).
//! Not a test: nothing here asserts a figure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drawbridge::control::{self, Request};

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

struct Server {
    child: Child,
    sock: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[tls]` with a certificate for `names` from a CA made here, trusting that CA.
fn tls_section(dir: &Path, name: &str, names: &[String], ca: &(rcgen::CertificateParams, rcgen::KeyPair, String)) -> String {
    let mut params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, names[0].clone());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca.0, &ca.1)).unwrap();
    let (c, k, t) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")), dir.join("ca.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&t, &ca.2).unwrap();
    format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\nca_file = \"{}\"\n", c.display(), k.display(), t.display())
}

fn start(bin: &Path, dir: &Path, name: &str, domains: &[String], listen: &str, overrides: &[(String, String, u16)], tls: &str) -> Server {
    let data = dir.join(name);
    let mut cfg = format!(
        "[server]\ndomains = [{}]\nlisten = [\"{listen}\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[log]\nlevel = \"warn\"\n",
        domains.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", "),
        data.display()
    );
    cfg.push_str(tls);
    // More configuration for both servers (TOML), e.g. to compare with transcripts off.
    cfg.push_str(&std::env::var("EXTRA_CONFIG").unwrap_or_default().replace("\\n", "\n"));
    cfg.push('\n');
    for (d, host, port) in overrides {
        cfg.push_str(&format!("[[dns.override]]\ndomain = \"{d}\"\nhost = \"{host}\"\nport = {port}\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(bin).arg("--config").arg(&path).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    Server { child, sock: data.join("control.sock") }
}

async fn ready(s: &Server) {
    for _ in 0..400 {
        if control::request(&s.sock, &Request::Status).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never answered", s.sock.display());
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// User + system CPU time of a process, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// What the store's tables hold and took so far: rows inserted, rows updated, bytes.
fn written(pg: &common::postgres::Postgres) -> (i64, i64, i64) {
    // The statistics collector reports what committed transactions did, a moment later.
    pg.psql("SELECT pg_stat_force_next_flush()");
    std::thread::sleep(Duration::from_millis(600));
    let row = pg.psql(
        "SELECT coalesce(sum(n_tup_ins), 0) || ' ' || coalesce(sum(n_tup_upd), 0) || ' ' || coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_stat_user_tables",
    );
    let v: Vec<i64> = row.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1], v[2])
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("STREAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let bin = std::env::var_os("DRAWBRIDGE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_drawbridge")));
    let dir = tempfile::tempdir().unwrap();
    let (ip_a, ip_b) = ("127.0.0.61", "127.0.0.62");
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    // One domain more than measured: b0 warms up.
    let b_domains: Vec<String> = (0..=n).map(|i| format!("b{i}.peers.bench")).collect();
    let a_overrides: Vec<(String, String, u16)> = b_domains.iter().map(|d| (d.clone(), ip_b.to_owned(), port_b)).collect();
    let sasl = std::env::var("AUTH").is_ok_and(|a| a == "sasl");
    let (tls_a, tls_b) = if sasl {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "bench CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let ca = (params, key, pem);
        (tls_section(dir.path(), "a", &["a.bench".to_owned()], &ca), tls_section(dir.path(), "b", &["*.peers.bench".to_owned()], &ca))
    } else {
        // B stands for N servers, each with a certificate of ordinary size: one wildcard
        // name, self-signed so that A authenticates every pair by dialback.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["*.peers.bench".to_owned()]).unwrap().self_signed(&key).unwrap();
        let (c, k) = (dir.path().join("b.crt"), dir.path().join("b.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (String::new(), format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", c.display(), k.display()))
    };
    let pg = (std::env::var("STORE").as_deref() == Ok("postgres")).then(common::postgres::Postgres::start);
    let tls_a = match &pg {
        Some(pg) => format!("{tls_a}\n[store]\nbackend = \"postgres\"\npostgres = \"{}\"\n", pg.conninfo()),
        None => tls_a,
    };
    let a = start(&bin, dir.path(), "a", &["a.bench".to_owned()], &format!("{ip_a}:{port_a}"), &a_overrides, &tls_a);
    let b =
        start(&bin, dir.path(), "b", &b_domains, &format!("{ip_b}:{port_b}"), &[("a.bench".to_owned(), ip_a.to_owned(), port_a)], &tls_b);
    ready(&a).await;
    ready(&b).await;
    // Warm up: one pair, so one-off costs (TLS contexts, first allocations) are not counted.
    let warm = control::request(&b.sock, &Request::Probe { domain: "a.bench".into(), from: Some("b0.peers.bench".into()) }).await.unwrap();
    assert!(warm.ok, "{:?}", warm.error);
    let pid = a.child.id();
    let written0 = pg.as_ref().map(written);
    let (rss0, cpu0) = (rss_kib(pid), cpu_s(pid));
    let t0 = Instant::now();
    // A few at a time (B's probes are concurrent; A's per-address limit is 16 by default).
    let mut ok = 0;
    for chunk in b_domains[1..].chunks(8) {
        let mut set = tokio::task::JoinSet::new();
        for d in chunk {
            let (sock, d) = (b.sock.clone(), d.clone());
            set.spawn(async move { control::request(&sock, &Request::Probe { domain: "a.bench".into(), from: Some(d) }).await });
        }
        while let Some(r) = set.join_next().await {
            if r.unwrap().is_ok_and(|r| r.ok && r.data.as_ref().and_then(|d| d.get("ok")).and_then(|v| v.as_bool()) == Some(true)) {
                ok += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_s(pid);
    // Idle: the streams give their buffers back after a quiet spell, and the server hands
    // freed memory back to the system on its next release (drawbridge::engine::RELEASE_INTERVAL).
    tokio::time::sleep(drawbridge::engine::RELEASE_INTERVAL + Duration::from_secs(3)).await;
    let rss1 = rss_kib(pid);
    let pairs = ok.max(1) as f64;
    let how = if sasl { "SASL EXTERNAL" } else { "dialback" };
    println!("{ok} of {n} verified pairs ({how}, TLS 1.3) in {secs:.1} s");
    println!(
        "A: {:.1} KiB resident per pair (one inbound + one outbound stream, idle), {:.2} ms CPU per pair set-up (both streams, TLS, authentication, one ping)",
        (rss1.saturating_sub(rss0)) as f64 / pairs,
        (cpu1 - cpu0) * 1000.0 / pairs
    );
    if let (Some(pg), Some((ins0, upd0, bytes0))) = (&pg, written0) {
        let (ins1, upd1, bytes1) = written(pg);
        println!(
            "A's PostgreSQL store: {:.1} rows inserted, {:.1} updated, {:.1} KiB of tables and indexes per pair",
            (ins1 - ins0) as f64 / pairs,
            (upd1 - upd0) as f64 / pairs,
            (bytes1 - bytes0) as f64 / 1024.0 / pairs
        );
    }
    // For profiling the idle streams from outside (e.g. a heap profiler's snapshot).
    if let Some(secs) = std::env::var("HOLD_SECS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_secs(secs));
    }
}
