//! Replays the fuzz targets' seed corpora and every input that once crashed them
//! (fuzz/corpus/TARGET, fuzz/regressions/TARGET) on stable, so a fixed crash stays fixed.
//! The fuzzers themselves run with `fuzz/run.sh` (nightly, cargo-fuzz).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut v = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            v.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
    v.sort();
    assert!(!v.is_empty(), "no inputs for {target}");
    v
}

#[global_allocator]
static A: drawbridge::fuzzing::HeapCounter = drawbridge::fuzzing::HeapCounter;

/// Each input parsed, written back and re-parsed, its peak heap within the budget the fuzz
/// target enforces.
#[test]
fn framer_corpus() {
    for (path, data) in inputs("framer") {
        let base = drawbridge::fuzzing::HeapCounter::start();
        drawbridge::fuzzing::framer(&data);
        let peak = drawbridge::fuzzing::HeapCounter::peak_since(base);
        let budget = drawbridge::fuzzing::heap_budget(data.len());
        assert!(peak <= budget, "{}: {peak} bytes of heap, budget {budget}", path.display());
    }
}

/// Input sequences for the stream machine (both roles): its properties hold for each.
#[test]
fn machine_corpus() {
    for (_, data) in inputs("machine") {
        drawbridge::fuzzing::machine(&data);
    }
}

#[test]
fn component_corpus() {
    for (_, data) in inputs("component") {
        drawbridge::fuzzing::component(&data);
    }
}

/// What a named seed must give (hash-named inputs from the fuzzer are checked for the
/// properties that hold for every input only).
enum Expect {
    /// Parsed; `check` looks at the result.
    Ok,
    /// Refused, the message containing this.
    Err(&'static str),
}

/// Every input gives settings or an error that names the file and the key or line at fault;
/// the named seeds give what the table says.
#[test]
fn config_corpus() {
    let named = [
        ("example.toml", Expect::Ok),
        ("minimal.toml", Expect::Ok),
        ("bad-duration.toml", Expect::Err("key `timeouts.close`")),
        ("unknown-key.toml", Expect::Err("key `server.hostname`")),
        ("bad-port.toml", Expect::Err("key `server.listen[0]`")),
        ("not-toml.toml", Expect::Err("line 1")),
        // The seed example of an earlier version (a key since renamed).
        ("old-example.toml", Expect::Err("key `limits.max_streams`")),
    ];
    let mut seen = 0;
    for (path, data) in inputs("config") {
        drawbridge::fuzzing::config(&data);
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        let got = drawbridge::config::Settings::parse(text, Path::new("fuzz.toml"));
        if let Err(e) = &got {
            let msg = e.to_string();
            assert!(msg.starts_with("config fuzz.toml: "), "{}: {msg}", path.display());
            assert!(msg.contains("key `") || msg.contains(": line "), "{}: names no key or line: {msg}", path.display());
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        match named.iter().find(|(n, _)| *n == name).map(|(_, e)| e) {
            Some(Expect::Ok) => {
                let s = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!s.domains.is_empty(), "{name}");
                seen += 1;
            }
            Some(Expect::Err(want)) => {
                let e = got.err().unwrap_or_else(|| panic!("{name} parsed, expected an error with {want}"));
                assert!(e.to_string().contains(want), "{name}: expected {want} in {e}");
                seen += 1;
            }
            None => {}
        }
    }
    assert_eq!(seen, named.len(), "every named seed is in fuzz/corpus/config");
}

/// Every input gives a request that survives its own JSON (written and read back, the same
/// request) or a JSON error; each named seed gives exactly what it says (the request written
/// back is the seed's JSON, nothing dropped or misread) or the error the table names.
#[test]
fn control_corpus() {
    let errors = [
        ("bad.json", "unknown variant `nope`"),
        ("missing-domain.json", "missing field `domain`"),
        ("not-json.json", "EOF while parsing an object"),
        // The seed of an earlier version (a command since renamed).
        ("old-import-name.json", "unknown variant `import_blacklist`"),
    ];
    let oks = ["block.json", "close.json", "import.json", "status.json", "probe.json", "connections.json"];
    let mut seen = 0;
    for (path, data) in inputs("control") {
        drawbridge::fuzzing::control(&data);
        let name = path.file_name().unwrap().to_str().unwrap();
        match drawbridge::control::parse_request(&data) {
            Ok(req) => {
                let json = serde_json::to_vec(&req).unwrap();
                let again = drawbridge::control::parse_request(&json).unwrap_or_else(|e| panic!("{name}: written back, {e}"));
                assert_eq!(again, req, "{name}");
                if oks.contains(&name) {
                    let sent: serde_json::Value = serde_json::from_slice(&data).unwrap();
                    assert_eq!(serde_json::to_value(&req).unwrap(), sent, "{name}");
                    seen += 1;
                }
                assert!(!errors.iter().any(|(n, _)| *n == name), "{name} parsed: {req:?}");
            }
            Err(e) => {
                assert!(!oks.contains(&name), "{name}: {e}");
                if let Some((_, want)) = errors.iter().find(|(n, _)| *n == name) {
                    assert!(e.to_string().contains(want), "{name}: expected {want} in {e}");
                    seen += 1;
                }
            }
        }
    }
    assert_eq!(seen, errors.len() + oks.len(), "every named seed is in fuzz/corpus/control");
}

/// Panics anywhere in this process (a server task's included: tokio would catch those and
/// the connection would just end), counted for [`preauth_corpus`].
fn count_panics() -> &'static std::sync::Mutex<Vec<String>> {
    static PANICS: std::sync::OnceLock<std::sync::Mutex<Vec<String>>> = std::sync::OnceLock::new();
    PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(p) = PANICS.get() {
                p.lock().unwrap_or_else(|e| e.into_inner()).push(info.to_string());
            }
            previous(info);
        }));
        std::sync::Mutex::new(Vec::new())
    })
}

/// Each pre-authentication input against a live server; the server answers every one and
/// ends the connection within the bound (a hang is a failure), no task of it panics, and it
/// still serves a fresh peer after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_corpus() {
    let panics = count_panics();
    let dns = Dns::start().await;
    // As the fuzz target runs it: a.test may skip TLS, so dialback is reachable in plain text.
    let server =
        start_server("island.test", &dns, "[timeouts]\nnegotiation = \"3s\"\n[[domain]]\nname = \"a.test\"\nrequire_encryption = false\n")
            .await;
    for (path, data) in inputs("preauth") {
        // The exchange's own limit is far out of reach: the server's 3 s negotiation deadline
        // must end every connection, well within the bound.
        let exchange = drawbridge::fuzzing::preauth_exchange(server.addr, &data, Duration::from_secs(3600));
        let got = tokio::time::timeout(*WAIT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{}: the server did not end the connection within {:?}", path.display(), *WAIT));
        assert!(!got.is_empty(), "{}: no answer", path.display());
    }
    let mut p = RawPeer::connect(server.addr).await;
    let (_, features) = p.open("after.test", "island.test").await;
    assert!(features.has_child("starttls", drawbridge::proto::ns::TLS));
    let seen = panics.lock().unwrap().clone();
    assert!(seen.is_empty(), "panics while serving the corpus: {seen:#?}");
}
