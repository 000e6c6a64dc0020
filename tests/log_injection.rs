//! What a peer can make drawbridge's log say: the real binary (`serve`, logging to stderr at
//! the default level, as an operator runs it), its stderr captured line by line. A peer's
//! `&#10;` must not start a line of its own, and a flood of frames before authentication
//! must not turn into a flood of lines.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use drawbridge::proto::ns;
use drawbridge::proto::stream::StreamErrorCondition;
use drawbridge::xml::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a forged line would start with: drawbridge's own format (timestamp, level, target).
const FORGED: &str = "2026-12-04T16:00:00Z  INFO drawbridge: forged";

/// `drawbridge serve` for b.test, its stderr collected.
struct Served {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(extra: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        // Nothing here resolves a name; the nameserver is a loopback port nobody answers on.
        let text = config_text("b.test", dir.path(), "127.0.0.1:9".parse().unwrap(), extra);
        let path = dir.path().join("drawbridge.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let collected = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("drawbridge started")
                    && let Some(rest) = line.split("127.0.0.1:").nth(1)
                {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = port_tx.send(port.parse::<u16>().unwrap());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let port = port_rx.recv_timeout(*WAIT).unwrap_or_else(|_| panic!("the server did not start: {:?}", lines.lock().unwrap()));
        Served { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), lines, reader: Some(reader), _dir: dir }
    }

    /// Stop the server (SIGTERM: it shuts down and logs that) and return every line it wrote.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: a signal to the child this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < *WAIT, "the server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reader.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// No line of the log starts with the forged text, and the peer's text is in the log,
/// escaped (so the test saw the line it is about).
fn assert_not_forged(lines: &[String]) {
    let all = lines.join("\n");
    assert!(!lines.iter().any(|l| l.starts_with("2026-12-04T16:00:00Z")), "a forged line:\n{all}");
    assert!(lines.iter().any(|l| l.contains(&format!("\\n{FORGED}"))), "the peer's text should be logged escaped:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_the_plaintext_headers_to_forges_no_log_line() {
    let served = Served::start("");
    let mut p = RawPeer::connect(served.addr).await;
    // header() writes the line feed as `&#10;`.
    p.send(&header("a.test", &format!("x.test\n{FORGED}"))).await;
    p.expect_condition(StreamErrorCondition::HostUnknown).await;
    drop(p);
    let lines = tokio::task::spawn_blocking(move || served.stop()).await.unwrap();
    assert_not_forged(&lines);
}

/// A peer past STARTTLS, not authenticated: its `db:verify` frames (the authoritative
/// server's side of dialback, XEP-0220 §2.1.2) are answered, and at most one of them is
/// logged at the default level. The first one's `from` carries a forged line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_db_verify_frames_before_authentication_write_few_log_lines() {
    const FRAMES: usize = 20_000;
    let served = Served::start("[timeouts]\nnegotiation = \"120s\"\n");
    let (p, _, _) = {
        let mut p = RawPeer::connect(served.addr).await;
        p.open("a.test", "b.test").await;
        let (h, f) = p.starttls("a.test", "b.test").await;
        (p, h, f)
    };
    let (mut rd, mut wr) = tokio::io::split(p.io);
    let mut framer = p.framer;
    let reader = tokio::spawn(async move {
        let mut answers = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Ok(Some(f)) = framer.next_frame() {
                match f {
                    Frame::Element(e) if e.is("verify", ns::DIALBACK) => answers += 1,
                    Frame::Element(e) => panic!("unexpected {e:?} after {answers} answers"),
                    other => panic!("unexpected {other:?} after {answers} answers"),
                }
            }
            if answers >= FRAMES {
                break;
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => framer.feed(&buf[..n]),
            }
        }
        answers
    });
    let mut frames = String::new();
    drawbridge::xml::writer::write_top(
        &mut frames,
        &drawbridge::proto::dialback::verify_request(&format!("b.test\n{FORGED}"), "b.test", "some-id", "k"),
    );
    let one = {
        let mut s = String::new();
        drawbridge::xml::writer::write_top(&mut s, &drawbridge::proto::dialback::verify_request("a.test", "b.test", "some-id", "k"));
        s
    };
    for _ in 1..FRAMES {
        frames.push_str(&one);
    }
    let t0 = Instant::now();
    wr.write_all(frames.as_bytes()).await.unwrap();
    wr.flush().await.unwrap();
    let answers = tokio::time::timeout(*LOADED, reader).await.expect("all answers within the bound").unwrap();
    assert_eq!(answers, FRAMES, "every db:verify is answered");
    let took = t0.elapsed();
    drop(wr);
    let lines = tokio::task::spawn_blocking(move || served.stop()).await.unwrap();
    assert_not_forged(&lines);
    assert!(lines.len() < 100, "{FRAMES} frames in {took:?} wrote {} log lines, e.g.:\n{}", lines.len(), lines[..20].join("\n"));
}
