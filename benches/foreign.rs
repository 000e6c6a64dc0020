//! `cargo bench --bench foreign`: drawbridge as a foreign peer sees it. The peer is
//! benches/foreign/peer.py — Python's asyncio and OpenSSL, a stack that shares nothing with
//! drawbridge's (the other benches' peers are rustls) — run here against this build's
//! binary. Its docstring says what it measures and which variables it takes (`STREAMS`,
//! `AUTH`, `SECONDS`, `OUTSTANDING`, `LOG`); `PYTHON` picks the interpreter (default
//! Debian's /usr/bin/python3: the peer needs only its standard library). An argument
//! (`ping`, `streams`) runs one phase: `cargo bench --bench foreign -- ping`.

use std::process::Command;

fn main() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/foreign/peer.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned());
    // cargo passes `--bench`; the peer takes only a phase name.
    let phase: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).take(1).collect();
    let mut cmd = Command::new(&python);
    cmd.arg(script).args(&phase);
    if std::env::var_os("DRAWBRIDGE_BIN").is_none() {
        cmd.env("DRAWBRIDGE_BIN", env!("CARGO_BIN_EXE_drawbridge"));
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("{python}: {e}"));
    std::process::exit(status.code().unwrap_or(1));
}
