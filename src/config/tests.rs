//! The config's tests: each section's validator, through the file as an operator writes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn err(text: &str) -> String {
    Settings::parse(text, Path::new("/etc/drawbridge.toml")).unwrap_err().to_string()
}

#[test]
fn byte_budgets_and_doors_are_validated_naming_the_key() {
    let base = "[server]\ndomains = [\"a.test\"]\n[limits]\n";
    for (line, key) in [
        ("event_backlog_bytes = 1000", "limits.event_backlog_bytes"),
        ("event_backlog = 1", "limits.event_backlog"),
        ("max_unauthenticated_gateway = 0", "limits.max_unauthenticated_gateway"),
        ("max_unauthenticated_components = 0", "limits.max_unauthenticated_components"),
    ] {
        let e = err(&format!("{base}{line}\n"));
        assert!(e.contains(key) && e.contains("too small"), "{line}: {e}");
    }
    let s = Settings::parse(
        &format!("{base}closed_streams_bytes = 0\nunauthenticated_outcomes_bytes = 0\nmax_unauthenticated_gateway = 5\n"),
        Path::new("/etc/drawbridge.toml"),
    )
    .unwrap();
    assert_eq!((s.limits.closed_streams_bytes, s.limits.max_unauthenticated_gateway), (0, 5), "0 keeps nothing");
    let d = Limits::default();
    assert_eq!((d.event_backlog, d.event_backlog_bytes, d.max_unauthenticated_components), (4096, 8 << 20, 64));
}

#[test]
fn builtin_default() {
    let s = Settings::builtin();
    assert_eq!(s.domains[0].as_str(), "localhost");
    assert_eq!(s.listen, vec!["127.0.0.1:5269".parse::<SocketAddr>().unwrap()]);
    assert_eq!(s.data_dir, PathBuf::from("./drawbridge-data"));
    assert!(s.tls.require_encryption);
    assert_eq!(s.limits.max_stanza_size, 512 * 1024);
    assert_eq!(s.timeouts.negotiation, Duration::from_secs(30));
}

#[test]
fn full_file() {
    let s = Settings::parse(
        r#"
        [server]
        domains = ["a.test", "B.test"]
        listen = ["127.0.0.1:5270"]
        data_dir = "data"
        [tls]
        require_encryption = false
        [dns]
        nameservers = ["127.0.0.1:5353"]
        [[dns.override]]
        domain = "c.test"
        host = "127.0.0.9"
        port = 5299
        [timeouts]
        dialback = "250ms"
        "#,
        Path::new("/etc/db/conf.toml"),
    )
    .unwrap();
    assert_eq!(s.domains[1].as_str(), "b.test");
    assert_eq!(s.data_dir, PathBuf::from("/etc/db/data"));
    assert_eq!(s.control_socket, PathBuf::from("/etc/db/data/control.sock"));
    assert_eq!(s.dns.overrides[0].port, 5299);
    assert_eq!(s.timeouts.dialback, Duration::from_millis(250));
    assert!(!s.tls.require_encryption);
}

#[test]
fn gateway_section() {
    let s = Settings::parse(
        "[gateway]\ninternal = \"10.0.0.4:5269\"\nlisten = [\"10.0.0.5:5269\"]\nca_cert = \"ca.pem\"\nca_key = \"ca.key\"\ninternal_ca = \"internal.pem\"\n",
        Path::new("/etc/db/conf.toml"),
    )
    .unwrap();
    let g = s.gateway.unwrap();
    assert_eq!(g.internal_ca, Some(PathBuf::from("/etc/db/internal.pem")));
    assert_eq!(g.allow.iter().map(|r| r.to_string()).collect::<Vec<_>>(), ["10.0.0.4/32"], "the internal server's address by default");
    assert_eq!(g.max_minted, 10_000);
    assert_eq!((g.internal.to_string().as_str(), g.listen.len(), g.auth), ("10.0.0.4:5269", 1, GatewayAuth::Pki));
    assert_eq!(g.ca_cert, Some(PathBuf::from("/etc/db/ca.pem")));
    assert!(Settings::builtin().gateway.is_none());
    let gw = |rest: &str| err(&format!("[gateway]\ninternal = \"10.0.0.4:5269\"\n{rest}"));
    assert!(gw("").contains("key `gateway.listen`"), "listen is required");
    assert!(gw("listen = []\n").contains("key `gateway.listen`"));
    assert!(gw("listen = [\"10.0.0.5:5269\"]\nauth = \"sasl\"\n").contains("key `gateway.auth`"));
    assert!(gw("listen = [\"10.0.0.5:5269\"]\nca_cert = \"x.pem\"\n").contains("key `gateway.ca_key`"));
    assert!(gw("listen = [\"127.0.0.1:5269\"]\n").contains("also in server.listen"), "the default listener");
    assert!(gw("listen = [\"10.0.0.4:5269\"]\n").contains("talk to itself"));
    assert!(err("[gateway]\ninternal = \"prosody\"\nlisten = [\"10.0.0.5:5269\"]\n").contains("key `gateway.internal`"));
    let e = Settings::parse(
        "[gateway]\ninternal = \"10.0.0.4:5269\"\nlisten = [\"10.0.0.5:5269\"]\nauth = \"dialback\"\n",
        Path::new("x.toml"),
    );
    let g = e.unwrap().gateway.unwrap();
    assert_eq!((g.auth, g.internal_ca), (GatewayAuth::Dialback, None), "dialback needs no internal CA");
    // Under pki the internal server's trust anchor is required; the allow list and the
    // minted cap are checked.
    let l = "listen = [\"10.0.0.5:5269\"]\n";
    assert!(gw(l).contains("key `gateway.internal_ca`"), "{}", gw(l));
    let db = format!("{l}auth = \"dialback\"\n");
    assert!(gw(&format!("{db}allow = []\n")).contains("key `gateway.allow`"));
    assert!(gw(&format!("{db}allow = [\"10.0.0.0/33\"]\n")).contains("key `gateway.allow[0]`"));
    assert!(gw(&format!("{db}max_minted = 1\n")).contains("key `gateway.max_minted`"));
    let s = Settings::parse(
        &format!("[gateway]\ninternal = \"10.0.0.4:5269\"\n{db}allow = [\"10.0.0.0/24\", \"fd00::1\"]\n"),
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(s.gateway.unwrap().allow.len(), 2);
}

#[test]
fn components_section() {
    let ok = "[components]\nlisten = [\"127.0.0.1:5347\"]\n[[component]]\ndomain = \"pubsub.localhost\"\nsecret = \"0123456789abcdef\"\n";
    let s = Settings::parse(ok, Path::new("x.toml")).unwrap();
    assert_eq!(s.components.list[0].domain.as_str(), "pubsub.localhost");
    assert!(!format!("{:?}", s.components).contains("0123456789abcdef"), "the secret stays out of debug output");
    assert!(err(&ok.replace("0123456789abcdef", "short")).contains("key `component[0].secret`"));
    assert!(err(&ok.replace("pubsub.localhost", "localhost")).contains("in server.domains"));
    assert!(err(&ok.replace("[components]\nlisten = [\"127.0.0.1:5347\"]\n", "")).contains("key `components.listen`"));
    assert!(err(&ok.replace("127.0.0.1:5347", "127.0.0.1:5269")).contains("another kind"));
    let twice = format!("{ok}[[component]]\ndomain = \"pubsub.localhost\"\nsecret = \"0123456789abcdef\"\n");
    assert!(err(&twice).contains("two [[component]] blocks"));
}

/// Issue 16: with `c.test` and `sub.c.test` configured and only `c.test` connected,
/// `c.test` received and answered `sub.c.test`'s traffic; a component around a hosted
/// domain would take that domain's. Both refused, naming both keys.
#[test]
fn nested_component_domains_are_refused_naming_both_keys() {
    let comp = |d: &str| format!("[[component]]\ndomain = \"{d}\"\nsecret = \"0123456789abcdef\"\n");
    let cfg = |hosted: &str, comps: &[&str]| {
        let blocks: String = comps.iter().map(|d| comp(d)).collect();
        format!("[server]\ndomains = [{hosted}]\n[components]\nlisten = [\"127.0.0.1:5347\"]\n{blocks}")
    };
    let e = err(&cfg("\"a.test\"", &["c.test", "sub.c.test"]));
    assert!(e.contains(r#"key `component[1].domain`: "sub.c.test" lies under component[0].domain "c.test""#), "{e}");
    let e = err(&cfg("\"a.test\"", &["x.sub.c.test", "c.test"]));
    assert!(e.contains(r#"key `component[1].domain`: "c.test" lies around component[0].domain "x.sub.c.test""#), "{e}");
    // Around a hosted domain (gateway mode's hosted domains are the same list).
    let e = err(&cfg("\"a.test\", \"chat.b.test\"", &["b.test"]));
    assert!(e.contains(r#"key `component[0].domain`: "b.test" lies around server.domains[1] "chat.b.test""#), "{e}");
    let gw = format!(
        "{}[gateway]\ninternal = \"10.0.0.4:5269\"\nlisten = [\"10.0.0.5:5269\"]\ninternal_ca = \"internal.pem\"\n",
        cfg("\"x.h.test\"", &["h.test"])
    );
    assert!(err(&gw).contains("lies around server.domains[0]"), "{}", err(&gw));
    // Not nested: siblings, a name that only ends alike, and the usual component under
    // a hosted domain.
    let ok = cfg("\"a.test\"", &["muc.a.test", "pubsub.a.test", "xc.test", "c.test"]);
    let s = Settings::parse(&ok, Path::new("x.toml")).unwrap();
    assert_eq!(s.components.list.len(), 4);
}

fn secret_file_config(dir: &Path, line: &str) -> Result<Settings, ConfigError> {
    let text = format!("[components]\nlisten = [\"127.0.0.1:5347\"]\n[[component]]\ndomain = \"pubsub.localhost\"\n{line}");
    Settings::parse(&text, &dir.join("drawbridge.toml"))
}

#[test]
fn component_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pubsub.secret"), "0123456789abcdef-from-a-file\n").unwrap();
    // Relative to the config file; the trailing line break is no part of the secret.
    let s = secret_file_config(dir.path(), "secret_file = \"pubsub.secret\"\n").unwrap();
    let c = &s.components.list[0];
    assert_eq!(c.secret, "0123456789abcdef-from-a-file");
    assert_eq!(c.secret_file.as_deref(), Some(dir.path().join("pubsub.secret").as_path()));
    // Missing: the key and the file named.
    let e = secret_file_config(dir.path(), "secret_file = \"nope.secret\"\n").unwrap_err().to_string();
    assert!(e.contains("key `component[0].secret_file`") && e.contains("nope.secret") && e.contains("cannot read it"), "{e}");
    // Both, or neither.
    let e = secret_file_config(dir.path(), "secret_file = \"pubsub.secret\"\nsecret = \"0123456789abcdef\"\n").unwrap_err().to_string();
    assert!(e.contains("key `component[0].secret_file`") && e.contains("not both"), "{e}");
    let e = secret_file_config(dir.path(), "").unwrap_err().to_string();
    assert!(e.contains("key `component[0].secret`") && e.contains("secret_file"), "{e}");
    // Not a file, or far too big for a secret.
    let e = secret_file_config(dir.path(), "secret_file = \".\"\n").unwrap_err().to_string();
    assert!(e.contains("key `component[0].secret_file`") && e.contains("not a regular file"), "{e}");
    std::fs::write(dir.path().join("big.secret"), "x".repeat(5000)).unwrap();
    let e = secret_file_config(dir.path(), "secret_file = \"big.secret\"\n").unwrap_err().to_string();
    assert!(e.contains("big.secret: 5000 bytes"), "{e}");
    // A link to a device, or a FIFO nobody writes to: refused at once, start-up not held.
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.secret")).unwrap();
    let e = secret_file_config(dir.path(), "secret_file = \"zero.secret\"\n").unwrap_err().to_string();
    assert!(e.contains("zero.secret: not a regular file"), "{e}");
    let fifo = std::ffi::CString::new(dir.path().join("fifo.secret").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let d = dir.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(secret_file_config(&d, "secret_file = \"fifo.secret\"\n").unwrap_err().to_string()));
    let e = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("a FIFO does not hold start-up");
    assert!(e.contains("fifo.secret: not a regular file"), "{e}");
    // Too short once the line break is gone (15 characters and a newline): the file named.
    std::fs::write(dir.path().join("short.secret"), "0123456789abcde\n").unwrap();
    let e = secret_file_config(dir.path(), "secret_file = \"short.secret\"\n").unwrap_err().to_string();
    assert!(e.contains("key `component[0].secret_file`") && e.contains("short.secret") && e.contains("at least 16"), "{e}");
}

#[test]
fn errors_name_file_and_key() {
    let e = err("[server]\ndomain = [\"x\"]\n");
    assert!(e.starts_with("config /etc/drawbridge.toml: key `server.domain`"), "{e}");
    assert!(e.contains("unknown field `domain`"), "{e}");
    let e = err("[server]\nlisten = [\"nope\"]\n");
    assert!(e.contains("key `server.listen[0]`") && e.contains("\"nope\""), "{e}");
    let e = err("[timeouts]\nnegotiation = \"5 parsecs\"\n");
    assert!(e.contains("key `timeouts.negotiation`"), "{e}");
    let e = err("[limits]\nmax_stanza_size = \"big\"\n");
    assert!(e.contains("key `limits.max_stanza_size`"), "{e}");
    let e = err("[server\n");
    assert!(e.contains("config /etc/drawbridge.toml: line 1"), "{e}");
    let e = err("[tls]\ncert = \"c.pem\"\n");
    assert!(e.contains("key `tls.key`"), "{e}");
    let e = err("[[dns.override]]\ndomain = \"a b\"\nhost = \"h\"\n");
    assert!(e.contains("key `dns.override[0].domain`"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn security_rules_name_themselves() {
    let s = Settings::parse(
        "[auth]\nmode = \"cert-only\"\n[[domain]]\nname = \"legacy.example\"\nauth = \"cert-or-dialback\"\nrequire_encryption = false\n",
        Path::new("/c.toml"),
    )
    .unwrap();
    let sec = &s.security;
    assert_eq!(sec.auth_for("x.example"), (AuthMode::CertOnly, "[auth] mode = \"cert-only\"".into()));
    assert_eq!(sec.auth_for("legacy.example"), (AuthMode::CertOrDialback, "[[domain]] legacy.example: auth = \"cert-or-dialback\"".into()));
    assert!(sec.require_encryption_for("x.example").0);
    assert_eq!(sec.require_encryption_for("legacy.example"), (false, "[[domain]] legacy.example: require_encryption = false".into()));
    let e = Settings::parse("[[domain]]\nname = \"a.example\"\nauth = \"maybe\"\n", Path::new("/c.toml")).unwrap_err().to_string();
    assert!(e.contains("key `domain[0].auth`"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
    assert!(parse_duration("abc").is_err());
    assert!(parse_duration("3x").is_err());
    // What the config has always accepted, and what humantime adds.
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
    assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("1.2.3").is_err());
    assert!(parse_duration("-5s").is_err());
    assert!(parse_duration("5000000d").unwrap_err().contains("out of range"));
    let e = err("[timeouts]\nnegotiation = \"0s\"\n");
    assert!(e.contains("key `timeouts.negotiation`") && e.contains("greater than zero"), "{e}");
}

#[test]
fn metrics_are_off_by_default_and_validated_naming_the_key() {
    let s = Settings::builtin();
    assert!(s.metrics.listen.is_empty(), "no endpoint unless asked for");
    assert_eq!(s.metrics.allow.len(), 2);
    let ok =
        Settings::parse("[metrics]\nlisten = [\"127.0.0.1:9269\"]\nper_domain = [\"Example.NET\"]\n", Path::new("/etc/d.toml")).unwrap();
    assert_eq!(ok.metrics.listen, ["127.0.0.1:9269".parse().unwrap()]);
    assert_eq!(ok.metrics.per_domain[0].as_str(), "example.net");
    assert!(err("[metrics]\nallow = [\"10.0.0.0/33\"]\n").contains("metrics.allow[0]"));
    assert!(err("[metrics]\nlisten = [\"localhost\"]\n").contains("metrics.listen[0]"));
    assert!(err("[metrics]\nper_domain = [\"not a domain\"]\n").contains("metrics.per_domain[0]"));
    assert!(err("[metrics]\nlisten = [\"127.0.0.1:5269\"]\n").contains("already a listener"));
}

#[test]
fn log_format_is_text_or_json() {
    assert_eq!(Settings::builtin().log_format, LogFormat::Text);
    let s = Settings::parse("[log]\nformat = \"json\"\n", Path::new("/etc/drawbridge.toml")).unwrap();
    assert_eq!(s.log_format, LogFormat::Json);
    let e = err("[log]\nformat = \"xml\"\n");
    assert_eq!(e, "config /etc/drawbridge.toml: key `log.format`: \"xml\" is not one of text, json");
    let e = err("[log]\nlevel = \"loud\"\n");
    assert!(e.contains("key `log.level`") && e.contains("error, warn, info, debug, trace"), "{e}");
}

#[test]
fn certs_warn_before_defaults_to_two_weeks_and_is_validated() {
    assert_eq!(Settings::builtin().certs.warn_before, Duration::from_secs(14 * 86_400));
    let s = Settings::parse("[certs]\nwarn_before = \"30d\"\n", Path::new("/etc/d.toml")).unwrap();
    assert_eq!(s.certs.warn_before, Duration::from_secs(30 * 86_400));
    assert!(err("[certs]\nwarn_before = \"soon\"\n").contains("key `certs.warn_before`"));
    assert!(err("[certs]\nwarn_before = \"0s\"\n").contains("certs.warn_before"));
    assert!(err("[certs]\nwarn = \"1d\"\n").contains("unknown field `warn`"));
}

/// `[store] backend` and `[cluster] node`: the shared store needs its database named; each
/// mistake names its key and the fix.
#[test]
fn store_backend_and_cluster_node_are_validated_naming_the_key() {
    let base = "[server]\ndomains = [\"a.test\"]\n";
    let ok = |extra: &str| Settings::parse(&format!("{base}{extra}"), Path::new("/etc/drawbridge.toml")).unwrap();
    assert_eq!(Settings::builtin().store.backend, crate::store::Backend::Sled);
    let s = ok(
        "[store]\nbackend = \"postgres\"\npostgres = \"host=/run/postgresql dbname=drawbridge user=drawbridge\"\nbuffer = 500\n[cluster]\nnode = \"edge-1\"\n",
    );
    assert_eq!(
        s.store.backend,
        crate::store::Backend::Postgres { conninfo: "host=/run/postgresql dbname=drawbridge user=drawbridge".into() }
    );
    assert_eq!((s.store.buffer, s.store.node.as_str()), (500, "edge-1"));
    let url = ok("[store]\nbackend = \"postgres\"\npostgres = \"postgresql://drawbridge@db.example/drawbridge\"\n");
    assert!(matches!(url.store.backend, crate::store::Backend::Postgres { .. }));
    assert_eq!(ok("").store.node, crate::store::host_name(), "the host name by default");
    for (extra, key, words) in [
        ("[store]\nbackend = \"postgres\"\n", "store.postgres", "is missing"),
        ("[store]\npostgres = \"host=/tmp dbname=x\"\n", "store.postgres", "store.backend is not"),
        ("[store]\nbackend = \"mysql\"\n", "store.backend", "not one of sled, postgres"),
        ("[store]\nbackend = \"postgres\"\npostgres = \"dbname=x\"\n", "store.postgres", "names no host"),
        ("[store]\nbackend = \"postgres\"\npostgres = \"host=/tmp\"\n", "store.postgres", "names no database"),
        (
            "[store]\nbackend = \"postgres\"\npostgres = \"host=/tmp dbname=x bogus=1\"\n",
            "store.postgres",
            "not a PostgreSQL connection string",
        ),
        ("[store]\nbuffer = 10\n", "store.buffer", "out of range"),
        ("[cluster]\nnode = \"edge 1\\n\"\n", "cluster.node", "is not a node name"),
        ("[cluster]\nnode = \"\"\n", "cluster.node", "is not a node name"),
    ] {
        let e = err(&format!("{base}{extra}"));
        assert!(e.contains(key) && e.contains(words), "{extra}: {e}");
        assert!(!e.contains('\n') || !e.contains("edge 1\n"), "no raw newline echoed: {e}");
    }
}

#[test]
fn cluster_heartbeat_and_node_timeout_are_validated() {
    let base = "[server]\ndomains = [\"a.test\"]\n[cluster]\nnode = \"edge-1\"\n";
    let parse = |extra: &str| Settings::parse(&format!("{base}{extra}"), Path::new("/etc/drawbridge.toml"));
    let s = parse("").unwrap();
    assert_eq!(
        s.store.cluster,
        crate::store::ClusterSettings { node: "edge-1".into(), heartbeat: Duration::from_secs(2), node_timeout: Duration::from_secs(10) }
    );
    let s = parse("heartbeat = \"5s\"\n").unwrap();
    assert_eq!(s.store.cluster.node_timeout, Duration::from_secs(15), "three heartbeats");
    let s = parse("heartbeat = \"200ms\"\nnode_timeout = \"1s\"\n").unwrap();
    assert_eq!((s.store.cluster.heartbeat, s.store.cluster.node_timeout), (Duration::from_millis(200), Duration::from_secs(1)));
    for (extra, key, says) in [
        ("heartbeat = \"10ms\"\n", "cluster.heartbeat", "100ms to 60s"),
        ("heartbeat = \"2m\"\n", "cluster.heartbeat", "100ms to 60s"),
        ("heartbeat = \"soon\"\n", "cluster.heartbeat", "soon"),
        ("heartbeat = \"5s\"\nnode_timeout = \"5s\"\n", "cluster.node_timeout", "longer than cluster.heartbeat (5s)"),
        ("node_timeout = \"0s\"\n", "cluster.node_timeout", "greater than zero"),
    ] {
        let e = parse(extra).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
    }
}
