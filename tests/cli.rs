//! The binary's edge: config errors (one line, file and key, exit status 2) and the
//! built-in default.

mod common;

use std::process::Command;

fn run_with_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("--config").arg(&path).arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr.replace(&path.display().to_string(), "FILE"))
}

#[test]
fn config_errors_name_file_and_key_and_exit_2() {
    let cases = [
        ("[server]\ndomains = [\"a.test\"]\nlisten = [\"localhost:99999\"]\n", "key `server.listen[0]`"),
        ("[server]\nhostname = \"x\"\n", "key `server.hostname`"),
        ("[tls]\nrequire_encryption = \"yes\"\n", "key `tls.require_encryption`"),
        ("[limits]\nmax_stanza_size = 10\n", "key `limits.max_stanza_size`"),
        ("[[dns.override]]\ndomain = \"b.test\"\n", "key `dns.override[0]`"),
        ("[dns]\nnameservers = [\"not-an-ip\"]\n", "key `dns.nameservers[0]`"),
        ("[server]\ndomains = []\n", "key `server.domains`"),
        ("[timeouts]\nclose = \"0s\"\n", "key `timeouts.close`"),
        ("not toml at all [", "line 1"),
    ];
    for (text, key) in cases {
        let (code, stderr) = run_with_config(text);
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("drawbridge: config FILE: "), "{stderr}");
        assert!(stderr.contains(key), "{text:?}: expected {key} in {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).args(["--config", "/nonexistent/drawbridge.toml", "serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/drawbridge.toml"));
}

#[test]
fn example_config_is_valid_and_complete() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")).unwrap();
    drawbridge::config::Settings::parse(&text, std::path::Path::new("config.example.toml")).expect("config.example.toml parses");
    // Every key is documented there, as a key line under its own section (commented-out
    // keys show the defaults), not merely mentioned in a comment.
    let mut section = String::new();
    let mut documented = std::collections::HashSet::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if l.starts_with('[') && l.ends_with(']') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_owned();
        } else if let Some((k, _)) = l.split_once('=')
            && !k.trim().is_empty()
            && k.trim().chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            documented.insert(format!("{section}.{}", k.trim()));
        }
    }
    let expected = [
        ("server", &["domains", "listen", "direct_tls", "data_dir", "control_socket"][..]),
        ("tls", &["cert", "key", "ca_file", "require_encryption"]),
        ("dns", &["nameservers", "timeout"]),
        ("dns.override", &["domain", "host", "port"]),
        (
            "limits",
            &[
                "max_stanza_size",
                "max_depth",
                "outbound_queue",
                "outbound_queue_bytes",
                "max_inbound_unauthenticated",
                "max_unauthenticated_per_address",
                "max_inbound",
                "max_outbound",
                "max_pairs_per_stream",
                "max_verifications_in_flight",
                "verifications_per_minute",
                "closed_streams",
                "transcript_lines",
                "transcript_bytes",
                "transcript_total_bytes",
            ],
        ),
        ("timeouts", &["negotiation", "connect", "dialback", "close", "idle_outbound", "idle_inbound", "keepalive", "probe", "write"]),
        ("policy", &["mode", "approval_wait"]),
        ("store", &["max_records", "max_age", "flush_interval", "snapshot_interval", "backend", "postgres", "buffer"]),
        ("cluster", &["node", "heartbeat", "node_timeout"]),
        ("auth", &["mode"]),
        ("domain", &["name", "auth", "require_encryption"]),
        ("log", &["level", "file"]),
        ("outbound", &["deny", "max_dials", "max_targets", "max_addresses"]),
        ("gateway", &["internal", "listen", "auth", "ca_cert", "ca_key", "mints_per_minute", "internal_ca", "allow", "max_minted"]),
        ("components", &["listen"]),
        ("component", &["domain", "secret", "secret_file"]),
    ];
    for (section, keys) in expected {
        for key in keys {
            let k = format!("{section}.{key}");
            assert!(documented.contains(&k), "config.example.toml does not document {k}");
        }
    }
    // And nothing there is unknown to the parser: uncommented, the example still parses.
    // (`secret_file` is the alternative to `secret`, read at load: the example keeps `secret`.)
    let uncommented: String = text
        .lines()
        .filter(|l| !l.trim_start_matches('#').trim_start().starts_with("secret_file ="))
        .map(|l| {
            let t = l.trim_start_matches('#').trim_start();
            let is_key = t
                .split_once('=')
                .is_some_and(|(k, _)| k.trim().chars().all(|c| c.is_ascii_lowercase() || c == '_') && !k.trim().is_empty());
            if l.starts_with('#') && (is_key || (t.starts_with('[') && t.ends_with(']'))) { format!("{t}\n") } else { format!("{l}\n") }
        })
        .collect();
    drawbridge::config::Settings::parse(&uncommented, std::path::Path::new("config.example.toml (uncommented)"))
        .expect("config.example.toml with its commented keys uncommented parses");
}

#[test]
fn unreadable_trust_roots_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[tls]\nca_file = \"{}\"\n",
            dir.path().join("data").display(),
            ca.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("--config").arg(&cfg).arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("tls.ca_file") && stderr.contains("ca.pem"), "{stderr}");
}

/// `drawbridge gateway setup prosody`: the lines for the internal server, with the gateway
/// CA (created on the spot) by its absolute path; without `[gateway]`, an error saying so.
#[test]
fn gateway_setup_prints_the_internal_servers_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        "[server]\ndomains = [\"h.example\"]\ndata_dir = \"data\"\n[gateway]\ninternal = \"127.0.0.4:5269\"\nlisten = [\"127.0.0.5:5269\"]\ninternal_ca = \"internal-ca.pem\"\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("--config").arg(&cfg).args(["gateway", "setup", "prosody"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let ca = std::fs::canonicalize(dir.path().join("data/gateway/ca.pem")).unwrap();
    assert!(text.contains(&format!("s2s_ssl = {{ cafile = \"{}\"; capath = false }}", ca.display())), "{text}");
    assert!(text.contains(". 300 IN A 127.0.0.5") && text.contains("s2s_interfaces = { \"127.0.0.4\" }"), "{text}");
    assert!(text.contains("must chain to gateway.internal_ca (") && text.contains("from 127.0.0.4/32 only (gateway.allow"), "{text}");
    std::fs::write(&cfg, "[server]\ndomains = [\"h.example\"]\ndata_dir = \"data\"\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_drawbridge")).arg("--config").arg(&cfg).args(["gateway", "setup", "prosody"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [gateway] section"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 16: a config holding a component secret and the self-signed key, both mode 0644,
/// are named at start with their modes and the fix — the key at its real path,
/// `DATA_DIR/tls/key.pem` (the check looked at `DATA_DIR/key.pem` before).
#[test]
fn secret_files_open_to_other_users_are_named_at_start() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The self-signed certificate as drawbridge made it on an earlier start, then opened up.
    std::fs::create_dir_all(data.join("tls")).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(data.join("tls/cert.pem"), ck.cert.pem()).unwrap();
    let key = data.join("tls/key.pem");
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
             [components]\nlisten = [\"127.0.0.1:0\"]\n[[component]]\ndomain = \"pubsub.localhost\"\nsecret = \"0123456789abcdef\"\n",
            data.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log until the server says it is up (or stops): the warnings come before.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
        let up = line.contains("control socket ready");
        log.push(line);
        if up {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = log.join("\n");
    assert!(log.contains("control socket ready"), "the server started: {log}");
    let (cfg, key) = (cfg.display().to_string(), key.display().to_string());
    assert!(
        log.contains(&format!(
            "{cfg} is mode 0644 and holds component secrets (pubsub.localhost): readable by its group, readable by other users; fix: chmod 600 {cfg}"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{key} is mode 0644 and holds the self-signed certificate's private key"))
            && log.contains(&format!("fix: chmod 600 {key}")),
        "{log}"
    );
}
