//! Pings through one verified s2s stream into a real `drawbridge serve` process: pings/s
//! on one stream, the server's CPU per ping round trip, and latency at half that load.
//!
//! The load generator is this process playing the remote server `g.bench` (the test
//! harness's raw peer): its stream into the server carries the pings (dialback-verified,
//! TLS 1.3), the server's stream back carries the pongs. The server's CPU time is read from
//! /proc, so the generator's own work is not counted.
//!
//! Run: `cargo bench --bench ping` (`DRAWBRIDGE_BIN` runs another build as the server,
//! `STORE=postgres` puts it on a PostgreSQL store started here,
//! `SECONDS` the length of each phase, default 3; `OUTSTANDING` the pings kept outstanding
//! in the saturated phase, default 2 000 — 5 000 and 50 000 are bursts the server must absorb:
//! after the phase the bench waits for every answer and says how many never came). Not a
//! test: nothing here asserts a figure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use drawbridge::control::{self, Request};
use drawbridge::proto::dialback::{Answer, DbElement, result_answer, result_request, verify_answer};

fn cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

fn ping(id: u64) -> String {
    format!("<iq type='get' id='{id}' from='g.bench' to='a.bench'><ping xmlns='urn:xmpp:ping'/></iq>")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::var("SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let bin = std::env::var_os("DRAWBRIDGE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_drawbridge")));
    let dir = tempfile::tempdir().unwrap();
    let gen_listener = tokio::net::TcpListener::bind("127.0.0.72:0").await.unwrap();
    let port_a = std::net::TcpListener::bind("127.0.0.71:0").unwrap().local_addr().unwrap().port();
    let data = dir.path().join("a");
    let cfg = dir.path().join("a.toml");
    // `STORE=postgres`: the server on a PostgreSQL store started here.
    let pg = (std::env::var("STORE").as_deref() == Ok("postgres")).then(common::postgres::Postgres::start);
    let store = pg.as_ref().map(|pg| format!("[store]\nbackend = \"postgres\"\npostgres = \"{}\"\n", pg.conninfo())).unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomains = [\"a.bench\"]\nlisten = [\"127.0.0.71:{port_a}\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
             [[dns.override]]\ndomain = \"g.bench\"\nhost = \"127.0.0.72\"\nport = {}\n[log]\nlevel = \"warn\"\n{store}",
            data.display(),
            gen_listener.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin).arg("--config").arg(&cfg).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let sock = data.join("control.sock");
    for _ in 0..400 {
        if control::request(&sock, &Request::Status).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid = child.id();
    let addr: std::net::SocketAddr = format!("127.0.0.71:{port_a}").parse().unwrap();

    // g.bench → a.bench, verified by dialback: the server calls g.bench back on its own
    // stream, which then carries the pongs.
    let mut to_a = RawPeer::connect(addr).await;
    to_a.open("g.bench", "a.bench").await;
    let (h, _) = to_a.starttls("g.bench", "a.bench").await;
    let sid = h.id.unwrap();
    to_a.send_el(&result_request("g.bench", "a.bench", "key")).await;
    let (mut from_a, _) = accept_as_server(&gen_listener, "g.bench").await;
    let (mut verified, mut answered) = (false, false);
    while !(verified && answered) {
        let el = from_a.next_el().await.expect("dialback from the server");
        let db = DbElement::parse(&el).expect("dialback");
        if db.verify {
            from_a.send_el(&verify_answer("g.bench", "a.bench", &sid, &Answer::Valid)).await;
            verified = true;
        } else {
            from_a.send_el(&result_answer("g.bench", "a.bench", &Answer::Valid)).await;
            answered = true;
        }
    }
    while DbElement::parse(&to_a.next_el().await.expect("db:result answer")).and_then(|d| d.answer).is_none() {}

    // Pongs are read on their own task, straight from the bytes (a full parse here would
    // make the generator, not the server, the bottleneck); each is matched to its ping's
    // send time by its id.
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (sent, latencies, received) = (sent.clone(), latencies.clone(), received.clone());
        let mut carry = from_a.framer.read_buf(0).split_off(0);
        let mut io = from_a.io;
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                // Scan whole pongs (`…id='N'…/>`); keep a partial one for the next read.
                let mut ids = Vec::new();
                let mut start = 0;
                while let Some(end) = carry[start..].windows(2).position(|w| w == b"/>").map(|p| start + p + 2) {
                    let el = &carry[start..end];
                    if let Some(i) = el.windows(4).position(|w| w == b"id='") {
                        let digits = &el[i + 4..];
                        let n = digits.iter().take_while(|c| c.is_ascii_digit()).fold(0u64, |a, c| a * 10 + u64::from(c - b'0'));
                        ids.push(n);
                    }
                    start = end;
                }
                carry.drain(..start);
                if !ids.is_empty() {
                    let now = Instant::now();
                    let mut s = sent.lock().unwrap();
                    if !s.is_empty() {
                        let mut l = latencies.lock().unwrap();
                        for id in &ids {
                            if let Some(t) = s.remove(id) {
                                l.push(now - t);
                            }
                        }
                    }
                    received.fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => carry.extend_from_slice(&buf[..n]),
                }
            }
        });
    }
    let mut next_id = 0u64;

    // Phase 1: as fast as the stream goes, a bounded window of pings outstanding.
    let window: u64 = std::env::var("OUTSTANDING").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let (cpu0, got0, t0) = (cpu_s(pid), received.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
    while t0.elapsed() < Duration::from_secs(secs) {
        let outstanding = next_id - received.load(std::sync::atomic::Ordering::Relaxed);
        if outstanding >= window {
            tokio::task::yield_now().await;
            continue;
        }
        let mut batch = String::new();
        for _ in 0..(window - outstanding).min(200) {
            batch.push_str(&ping(next_id));
            next_id += 1;
        }
        to_a.send(&batch).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let pongs = received.load(std::sync::atomic::Ordering::Relaxed) - got0;
    let cpu = cpu_s(pid) - cpu0;
    let rate = pongs as f64 / elapsed;
    println!(
        "one stream, saturated ({window} outstanding): {rate:.0} pings/s; server CPU {:.2} µs per ping round trip",
        cpu * 1e6 / pongs.max(1) as f64
    );
    // Every ping of the phase answered (a burst must be absorbed, not dropped): wait until
    // the answers stop coming for 5 s.
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let now = received.load(std::sync::atomic::Ordering::Relaxed);
        if now >= next_id || since.elapsed() > Duration::from_secs(5) {
            break;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pongs = received.load(std::sync::atomic::Ordering::Relaxed);
    if pongs < next_id {
        println!("  LOST: {} of {next_id} pings never answered", next_id - pongs);
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    println!("  all {next_id} pings answered");

    // Phase 2: half that rate, in 1 ms steps; latency from send to pong.
    tokio::time::sleep(Duration::from_millis(500)).await;
    latencies.lock().unwrap().clear();
    let per_ms = (rate / 2.0 / 1000.0).max(1.0) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let mut batch = String::new();
        {
            let mut s = sent.lock().unwrap();
            let now = Instant::now();
            for _ in 0..per_ms {
                s.insert(next_id, now);
                batch.push_str(&ping(next_id));
                next_id += 1;
            }
        }
        to_a.send(&batch).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    if !l.is_empty() {
        let p = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)].as_secs_f64() * 1e3;
        println!("at half load ({} pings/s): latency p50 {:.3} ms, p99 {:.3} ms ({} pongs)", per_ms * 1000, p(0.5), p(0.99), l.len());
    }
    let _ = child.kill();
    let _ = child.wait();
}
