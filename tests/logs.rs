//! Logs that fit where they go: the real binary (`serve`) with its stderr to a file, a pipe
//! and a pseudo-terminal. Colours only on a terminal and never with `NO_COLOR`;
//! `log.format = "json"` writes one JSON object per line with the structured fields.

mod common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use drawbridge::proto::stream::StreamErrorCondition;

/// Where the server's stderr goes.
#[derive(Clone, Copy, PartialEq)]
enum Dest {
    File,
    Pipe,
    /// A pseudo-terminal (what an operator's terminal is to the process).
    Pty,
}

/// `drawbridge serve` for b.test, its stderr collected from wherever it goes.
struct Served {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    file: Option<PathBuf>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(extra: &str, dest: Dest, no_color: Option<&str>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        // Nothing here resolves a name; the nameserver is a loopback port nobody answers on.
        let text = config_text("b.test", dir.path(), "127.0.0.1:9".parse().unwrap(), extra);
        let path = dir.path().join("drawbridge.toml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drawbridge"));
        cmd.arg("--config").arg(&path).arg("serve").env_remove("RUST_LOG").env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let out = Arc::new(Mutex::new(Vec::new()));
        let (child, file, reader) = match dest {
            Dest::File => {
                let file = dir.path().join("stderr.log");
                cmd.stderr(std::fs::File::create(&file).unwrap());
                (cmd.spawn().unwrap(), Some(file), None)
            }
            Dest::Pipe => {
                let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
                let stderr = child.stderr.take().unwrap();
                (child, None, Some(collect(stderr, out.clone())))
            }
            Dest::Pty => {
                let (mut master, mut slave) = (0, 0);
                // SAFETY: openpty writes two descriptors it opened; no name, termios or size.
                let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
                assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
                // SAFETY: both descriptors were just opened and are owned here only.
                let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
                cmd.stderr(Stdio::from(slave));
                let child = cmd.spawn().unwrap();
                // The slave end is the child's alone now (the command held our copy).
                drop(cmd);
                (child, None, Some(collect(master, out.clone())))
            }
        };
        let served = Served { child, out, file, reader, _dir: dir };
        served.wait_for("drawbridge started");
        served
    }

    /// Everything written so far.
    fn output(&self) -> Vec<u8> {
        match &self.file {
            Some(f) => std::fs::read(f).unwrap_or_default(),
            None => self.out.lock().unwrap().clone(),
        }
    }

    fn wait_for(&self, needle: &str) {
        let t0 = Instant::now();
        while !String::from_utf8_lossy(&self.output()).contains(needle) {
            assert!(t0.elapsed() < *WAIT, "no {needle:?} in {:?}", String::from_utf8_lossy(&self.output()));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The federation port, from the start line (`listen=[127.0.0.1:N]` or its JSON field).
    fn port(&self) -> u16 {
        let out = String::from_utf8_lossy(&self.output()).into_owned();
        let line = out.lines().find(|l| l.contains("drawbridge started")).unwrap();
        let rest = line.split("127.0.0.1:").nth(1).unwrap();
        rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
    }

    /// Stop the server (SIGTERM: it shuts down and logs that) and return what it wrote.
    fn stop(mut self) -> Vec<u8> {
        // SAFETY: a signal to the child this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < *WAIT, "the server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.output()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read `from` to its end (a pty's master ends with EIO once the child is gone).
fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

fn has_esc(out: &[u8]) -> bool {
    out.contains(&0x1b)
}

#[test]
fn no_escape_codes_in_a_file_or_a_pipe() {
    for dest in [Dest::File, Dest::Pipe] {
        let out = Served::start("", dest, None).stop();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("drawbridge started") && text.contains("shutting down"), "{text}");
        assert!(!has_esc(&out), "escape codes: {text:?}");
    }
}

/// A terminal gets colours — the check that this test's terminal is one — unless NO_COLOR
/// is set (to anything non-empty); JSON lines never have them.
#[test]
fn a_terminal_gets_colours_unless_no_color() {
    let out = Served::start("", Dest::Pty, None).stop();
    assert!(has_esc(&out), "a terminal without NO_COLOR gets colours: {:?}", String::from_utf8_lossy(&out));
    let out = Served::start("", Dest::Pty, Some("")).stop();
    assert!(has_esc(&out), "an empty NO_COLOR does not count: {:?}", String::from_utf8_lossy(&out));
    for (format, no_color) in [("", Some("1")), ("[log]\nformat = \"json\"\n", None)] {
        let out = Served::start(format, Dest::Pty, no_color).stop();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("drawbridge started") && text.contains("shutting down"), "{text}");
        assert!(!has_esc(&out), "{format} {no_color:?}: {text:?}");
    }
}

/// Every line one JSON object with timestamp, level, target and fields (the message among
/// them); a stream's end carries its id, the domain it named and the condition sent as
/// fields; a peer's line feed and escape codes stay inside their strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_with_structured_fields() {
    let served = Served::start("[log]\nformat = \"json\"\n", Dest::Pipe, None);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], served.port()));
    let mut p = RawPeer::connect(addr).await;
    p.send(&header("a.test", "x.test\n2026-12-04T16:00:00Z  INFO drawbridge: forged\u{202e}")).await;
    p.expect_condition(StreamErrorCondition::HostUnknown).await;
    drop(p);
    // A stream whose header was accepted names its remote domain, then breaks the XML.
    let mut p = RawPeer::connect(addr).await;
    p.open("a.test", "b.test").await;
    p.send("<message>\u{1}</message>").await;
    p.expect_condition(StreamErrorCondition::NotWellFormed).await;
    drop(p);
    let out = tokio::task::spawn_blocking(move || served.stop()).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}') && !text.contains('\r'), "{text:?}");
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))).collect();
    assert!(lines.len() >= 4, "{text}");
    for v in &lines {
        assert!(v["timestamp"].as_str().is_some_and(|t| t.starts_with("20") && t.ends_with('Z')), "{v}");
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&v["level"].as_str().unwrap_or("")), "{v}");
        assert!(v["target"].as_str().is_some_and(|t| t.starts_with("drawbridge")), "{v}");
        assert!(v["fields"]["message"].is_string(), "{v}");
    }
    let started = lines.iter().find(|v| v["fields"]["message"] == "drawbridge started").expect("the start line");
    assert_eq!(started["fields"]["domains"], "b.test", "{started}");
    let refused = lines.iter().find(|v| v["fields"]["condition"] == "host-unknown").unwrap_or_else(|| panic!("no close line: {text}"));
    assert_eq!(refused["level"], "WARN");
    assert!(refused["fields"]["stream"].as_str().is_some_and(|s| !s.is_empty()), "{refused}");
    assert!(refused["fields"].get("remote").is_none(), "no domain before the header was accepted: {refused}");
    let message = refused["fields"]["message"].as_str().unwrap();
    assert!(message.starts_with("closing inbound stream: <host-unknown/> (x.test\\n2026-12-04T16:00:00Z"), "{refused}");
    assert!(message.contains("forged\\u{202e}"), "the peer's text escaped: {refused}");
    let broken = lines.iter().find(|v| v["fields"]["condition"] == "not-well-formed").unwrap_or_else(|| panic!("no close line: {text}"));
    assert_eq!(broken["fields"]["remote"], "a.test", "{broken}");
    assert!(broken["fields"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{broken}");
    assert!(lines.iter().any(|v| v["fields"]["message"] == "shutting down"), "{text}");
}
