#![no_main]
//! A hostile peer before authentication: each input is what one connection sends to a
//! running drawbridge on loopback (started once, with its data in a temp dir; DNS points at
//! a closed loopback port, so nothing is ever dialled elsewhere). `a.test` (the seeds' name)
//! may skip TLS, so dialback and stanza handling are reachable without a TLS handshake. A panic in any server
//! task aborts the process, so libFuzzer sees it; memory and time per input are bounded by
//! the run script's -rss_limit_mb and -timeout.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    _engine: drawbridge::engine::Engine,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("panic: {info}");
            std::process::abort();
        }));
        let dir = std::env::temp_dir().join(format!("drawbridge-fuzz-{}", std::process::id()));
        let text = format!(
            "[server]\ndomains = [\"island.test\"]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n\
             [timeouts]\nnegotiation = \"2s\"\nclose = \"1s\"\n\
             [[domain]]\nname = \"a.test\"\nrequire_encryption = false\n",
            dir.display()
        );
        let settings = drawbridge::config::Settings::parse(&text, std::path::Path::new("fuzz.toml")).expect("fuzz config");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let engine = rt.block_on(drawbridge::engine::Engine::start(settings)).expect("server starts");
        let addr = engine.listening().federation[0];
        Server { rt, addr, _engine: engine }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = server();
    s.rt.block_on(drawbridge::fuzzing::preauth_exchange(s.addr, data, Duration::from_secs(5)));
});
