//! Hostile peers against the real binary: frames built to multiply memory or CPU, sent in
//! parallel before TLS; the process's peak memory must stay within a fixed budget and every
//! connection gets its stream error.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drawbridge::control::{self, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='bomb.test' to='island.test' version='1.0'>";

/// One long namespace declared once, then `children` empty children using it.
pub fn namespace_bomb(ns_len: usize, children: usize) -> String {
    let mut s = format!("<message xmlns:p='urn:{}'>", "n".repeat(ns_len));
    for _ in 0..children {
        s.push_str("<p:c/>");
    }
    s.push_str("</message>");
    s
}

/// `attrs` prefixed attributes, all bound to one `ns_len`-byte namespace.
pub fn attribute_bomb(ns_len: usize, attrs: usize) -> String {
    let mut s = format!("<message xmlns:p='urn:{}'", "n".repeat(ns_len));
    for i in 0..attrs {
        s.push_str(&format!(" p:a{i}=''"));
    }
    s.push_str("/>");
    s
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn ready(sock: &Path, child: &mut Child) -> String {
    for _ in 0..400 {
        if let Ok(r) = control::request(sock, &Request::Status).await {
            let status: drawbridge::engine::Status = serde_json::from_value(r.data.unwrap()).unwrap();
            return status.listen[0].clone();
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("drawbridge exited early: {s}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("control socket never answered");
}

/// Send the header and `frame`, then read until the server closes; return what it sent.
async fn send_bomb(addr: &str, frame: String) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(HEADER.as_bytes()).await.unwrap();
    // The server may answer (and close) before reading everything: a failed write is fine.
    let _ = s.write_all(frame.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bomb_frames_before_tls_stay_within_a_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomains = [\"island.test\"]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n",
            data.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = ready(&data.join("control.sock"), &mut child).await;
    let pid = child.id();
    let before = proc_kib(pid, "VmRSS:");

    // The frames of the report (128 KiB namespace bomb, 25 KiB attribute frame) and the
    // same scaled ×10 (ten times the children / attributes in a frame under the 256 KiB
    // limit), each sent by ten peers at once.
    let frames =
        [namespace_bomb(120_000, 2_000), attribute_bomb(8_000, 2_000), namespace_bomb(20_000, 20_000), attribute_bomb(8_000, 19_000)];
    for f in &frames {
        assert!(f.len() < 256 * 1024, "{} bytes", f.len());
    }
    let mut tasks = Vec::new();
    for f in &frames {
        for _ in 0..10 {
            let (addr, f) = (addr.clone(), f.clone());
            tasks.push(tokio::spawn(async move { send_bomb(&addr, f).await }));
        }
    }
    for t in tasks {
        let answer = t.await.unwrap();
        // Stanzas before TLS are refused with the RFC's condition (and nothing else).
        assert!(answer.contains("<policy-violation"), "answer: {}", &answer[..answer.len().min(500)]);
    }
    let peak = proc_kib(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("peak memory growth: {growth_mib} MiB over {before} KiB");
    // Before interning namespaces, one 128 KiB frame cost over 600 MiB.
    assert!(growth_mib < 64, "peak memory grew by {growth_mib} MiB (from {before} KiB)");

    // Still serving: a fresh peer gets its features.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(HEADER.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("</stream:features>") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
