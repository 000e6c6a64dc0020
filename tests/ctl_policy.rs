//! The policy commands of the real `drawbridge ctl` binary against a running engine.

mod common;

use common::*;
use std::process::Command;

fn ctl(sock: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("ctl").arg("--socket").arg(sock).args(args).output().unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blacklist_exchange_and_domain_commands() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let mut b = start_published("b.test", &dns, "").await;
    drawbridge::control::start(&mut b.engine).unwrap();
    let sock = b.engine.settings().control_socket.clone();
    assert!(within("probe", a.engine.probe("b.test", None)).await.ok);

    let list = b.dir.path().join("community.txt");
    std::fs::write(&list, "# community list\n\nspam.test # sends spam\na.test\nnot a domain\nspam.test\n").unwrap();
    let sock2 = sock.clone();
    let list2 = list.clone();
    let (ok, out) =
        tokio::task::spawn_blocking(move || ctl(&sock2, &["blacklist", "import", list2.to_str().unwrap(), "--dry-run"])).await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("would add 2 domain(s) from community.txt: spam.test, a.test"), "{out}");
    assert!(out.contains("skipped line 5: \"not a domain\""), "{out}");
    assert!(out.contains("would close 2 live stream(s)"), "{out}");
    assert_eq!(domains(&b.engine, Some("blacklisted")).await.len(), 0, "a dry run changes nothing");

    let mut events = b.engine.subscribe();
    let (sock2, list2) = (sock.clone(), list.clone());
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&sock2, &["blacklist", "import", list2.to_str().unwrap()])).await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("added 2 domain(s)") && out.contains("closed 2 live stream(s)"), "{out}");
    wait_event(
        &mut events,
        "a.test's stream to close",
        |e| matches!(e, drawbridge::engine::events::Event::StreamClosed { stream } if stream.remote.as_deref() == Some("a.test")),
    )
    .await;
    // Re-importing is idempotent.
    let (sock2, list2) = (sock.clone(), list.clone());
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&sock2, &["blacklist", "import", list2.to_str().unwrap()])).await.unwrap();
    assert!(ok && out.contains("added 0 domain(s)") && out.contains("already blacklisted: 2"), "{out}");

    let sock2 = sock.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&sock2, &["blacklist", "export"])).await.unwrap();
    assert!(ok);
    assert!(out.contains("spam.test  # sends spam; source: community.txt"), "{out}");
    let (parsed, bad) = drawbridge::policy::parse_list(&out);
    assert!(bad.is_empty());
    assert_eq!(parsed.len(), 2);

    let sock2 = sock.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let r1 = ctl(&sock2, &["block", "flood.test", "--for", "2h", "--reason", "flooding"]);
        let r2 = ctl(&sock2, &["domain", "a.test"]);
        let r3 = ctl(&sock2, &["domains", "--state", "blocked"]);
        let r4 = ctl(&sock2, &["unblock", "a.test"]);
        let r5 = ctl(&sock2, &["blacklist", "x.test"]);
        let r6 = ctl(&sock2, &["mode", "sideways"]);
        let r7 = ctl(&sock2, &["reload"]);
        assert!(r7.0 && r7.1.contains("TLS reloaded: certificate"), "{}", r7.1);
        (r1.0 && r2.0 && r3.0 && r4.0 && !r5.0 && !r6.0, [r1.1, r2.1, r3.1, r4.1, r5.1, r6.1].join("\n---\n"))
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("flood.test: blocked until"), "{out}");
    assert!(out.contains("a.test: refused: a.test is blacklisted"), "{out}");
    assert!(out.contains("recent verifications:") && out.contains("policy log:"), "{out}");
    assert!(out.contains("blacklist (imported from community.txt) by "), "{out}");
    assert!(out.contains("flood.test") && (out.contains("blocked (1h59m") || out.contains("blocked (2h00m")), "{out}");
    assert!(out.contains("a.test: unknown"), "unblock clears the blacklist entry: {out}");
    assert!(out.contains("--reason TEXT is required"), "{out}");
    assert!(out.contains("is not a mode"), "{out}");
    // Every action is attributed to the Unix user at the socket.
    let log = domain_report(&b.engine, "flood.test").await.policy_log;
    assert!(log[0].who.contains("uid"), "{:?}", log[0]);
}
