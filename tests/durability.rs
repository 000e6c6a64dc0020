//! What the operator was told is saved survives `kill -9`: a stream of acknowledged policy
//! changes, the server killed at random points, restarted, checked — several rounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drawbridge::control::{self, Request, Response};

fn start(cfg: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("--config")
        .arg(cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Wait (bounded) until the control socket answers.
async fn ready(sock: &Path, child: &mut Child) {
    for _ in 0..400 {
        if let Ok(r) = control::request(sock, &Request::Status).await {
            assert!(r.ok);
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("drawbridge exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("control socket {} never answered", sock.display());
}

fn rand_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sock: PathBuf = data.join("control.sock");
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!("[server]\ndomains = [\"island.test\"]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n", data.display()),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..8 {
        let mut child = start(&cfg, &log);
        ready(&sock, &mut child).await;
        // Everything acknowledged in earlier rounds is there.
        let r = control::request(&sock, &Request::Domains { state: Some("blocked".into()) }).await.unwrap();
        let blocked: Vec<drawbridge::store::DomainRecord> = serde_json::from_value(r.data.unwrap()).unwrap();
        for d in acked.lock().unwrap().iter() {
            assert!(blocked.iter().any(|r| &r.domain == d), "round {round}: acknowledged block of {d} was lost");
        }
        // A second drawbridge on the same data dir is refused, naming the first.
        if round == 0 {
            let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("--config").arg(&cfg).arg("serve").output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(err.contains(&format!("in use by another drawbridge (pid {})", child.id())), "{err}");
        }
        // Changes as fast as they are acknowledged, until the kill.
        let writer = {
            let (sock, acked) = (sock.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let domain = format!("r{round}-{i}.test");
                    let req = Request::Block { domain: domain.clone(), for_secs: None, reason: Some("durability".into()) };
                    match control::request(&sock, &req).await {
                        Ok(Response { ok: true, .. }) => acked.lock().unwrap().push(domain),
                        _ => break,
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20 + rand_below(150))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        writer.await.unwrap();
    }
    let n = acked.lock().unwrap().len();
    assert!(n > 8, "the test made too few changes to mean anything ({n})");
    let mut child = start(&cfg, &log);
    ready(&sock, &mut child).await;
    let r = control::request(&sock, &Request::Domains { state: Some("blocked".into()) }).await.unwrap();
    let blocked: Vec<drawbridge::store::DomainRecord> = serde_json::from_value(r.data.unwrap()).unwrap();
    for d in acked.lock().unwrap().iter() {
        assert!(blocked.iter().any(|r| &r.domain == d), "acknowledged block of {d} was lost");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
