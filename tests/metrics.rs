//! The OpenMetrics endpoint of a running server: scraped over real HTTP on loopback,
//! parsed, the counters seen rising after a federation; an address outside
//! `metrics.allow` refused; `ctl metrics` the same text without HTTP.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::*;
use drawbridge::xml::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET from `from`: the status line, the headers (lower-case names), the body.
async fn get(addr: SocketAddr, from: &str, path: &str) -> (String, HashMap<String, String>, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = within("the metrics listener", sock.connect(addr)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within("the whole answer", s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let headers = lines.filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned())).collect();
    (status, headers, body.to_owned())
}

/// The samples of an exposition by `name{labels}` (labels as written), checking its form:
/// every sample's family declared by a `# TYPE` line before it, `# EOF` last.
fn parse(body: &str) -> HashMap<String, f64> {
    assert!(body.ends_with("# EOF\n"), "no # EOF at the end: {body}");
    let mut typed: Vec<String> = Vec::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            typed.push(t.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let name = key.split('{').next().unwrap();
        assert!(typed.iter().any(|t| name.starts_with(t.as_str())), "{name} before its # TYPE");
        samples.insert(key.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line}")));
    }
    samples
}

fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_a_federation_and_refuses_strangers() {
    let dns = Dns::start().await;
    let server = start_server("home.test", &dns, "[metrics]\nlisten = [\"127.0.0.1:0\"]\nallow = [\"127.0.0.1/32\"]\n").await;
    let addr = server.engine.listening().metrics[0];

    let (status, headers, body) = get(addr, "127.0.0.1", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let before = parse(&body);
    assert_eq!(value(&before, "drawbridge_connections_total{direction=\"in\",kind=\"federation\"}"), 0.0);
    assert!(body.contains(&format!("drawbridge_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{body}");
    assert!(value(&before, "process_resident_memory_bytes") > 1e6, "{body}");
    assert!(value(&before, "process_open_fds") > 3.0, "{body}");

    // A federation both ways, by dialback, and a ping answered.
    let mut peer = hand_played(&server, &dns, "peer.test").await;
    let ping = Element::new("iq", drawbridge::proto::ns::SERVER)
        .attr("type", "get")
        .attr("id", "p1")
        .attr("from", "peer.test")
        .attr("to", "home.test")
        .child(Element::new("ping", drawbridge::proto::ns::PING));
    peer.to_server.send_el(&ping).await;
    assert_eq!(peer.next_stanza().await.get_attr("id"), Some("p1"));

    // A message to a user this server does not have: bounced, counted by its condition.
    let lost =
        Element::new("message", drawbridge::proto::ns::SERVER).attr("id", "m1").attr("from", "a@peer.test").attr("to", "nobody@home.test");
    peer.to_server.send_el(&lost).await;
    let bounce = peer.next_stanza().await;
    assert_eq!((bounce.get_attr("id"), bounce.get_attr("type")), (Some("m1"), Some("error")));

    let after = parse(&get(addr, "127.0.0.1", "/metrics").await.2);
    for key in [
        "drawbridge_connections_total{direction=\"in\",kind=\"federation\"}",
        "drawbridge_connections_total{direction=\"out\",kind=\"federation\"}",
        "drawbridge_authenticated_total{direction=\"in\",mechanism=\"dialback\"}",
        "drawbridge_authenticated_total{direction=\"out\",mechanism=\"dialback\"}",
        "drawbridge_stanzas_total{direction=\"in\"}",
        "drawbridge_stanzas_total{direction=\"out\"}",
        "drawbridge_stream_bytes_total{direction=\"in\"}",
        "drawbridge_stream_setup_seconds_count",
        "drawbridge_policy_decisions_total{decision=\"allow\",reason=\"federation mode\"}",
        "drawbridge_stanza_errors_total{condition=\"service-unavailable\"}",
        "drawbridge_streams{direction=\"in\",kind=\"federation\",auth=\"dialback\"}",
        // The ping's answer, routed to the stream back to the peer; the callback that
        // verified the peer; the lookups that found it.
        "drawbridge_stanza_routing_seconds_count",
        "drawbridge_stanza_routing_seconds_bucket{le=\"+Inf\"}",
        "drawbridge_dialback_verification_seconds_count{outcome=\"valid\"}",
        "drawbridge_dns_lookup_seconds_count{query=\"srv\"}",
    ] {
        assert!(value(&after, key) > value(&before, key), "{key}: {} then {}", value(&before, key), value(&after, key));
    }
    assert!(after.keys().any(|k| k.starts_with("drawbridge_tls_sessions_total{protocol=\"TLS")), "{after:?}");

    // The peer closes its stream: counted as closed, its stanzas still in the totals.
    let stanzas_in = value(&after, "drawbridge_stanzas_total{direction=\"in\"}");
    let mut events = server.engine.subscribe().into_events();
    peer.to_server.send("</stream:stream>").await;
    wait_event(&mut events, "the peer's stream closed", |e| {
        matches!(e, drawbridge::engine::events::Event::StreamClosed { stream } if stream.direction == drawbridge::events::Direction::In)
    })
    .await;
    let now = parse(&get(addr, "127.0.0.1", "/metrics").await.2);
    assert_eq!(value(&now, "drawbridge_streams_closed_total{direction=\"in\",condition=\"none\"}"), 1.0, "{now:?}");
    assert!(value(&now, "drawbridge_stanzas_total{direction=\"in\"}") >= stanzas_in, "the closed stream's stanzas are kept");

    // Only /metrics, only GET, only from metrics.allow.
    assert_eq!(get(addr, "127.0.0.2", "/metrics").await.0, "HTTP/1.1 403 Forbidden");
    assert_eq!(get(addr, "127.0.0.1", "/").await.0, "HTTP/1.1 404 Not Found");

    // ctl metrics: the same exposition, over the engine's door.
    match ask(&server.engine, drawbridge::engine::Request::Metrics).await {
        drawbridge::engine::Reply::Text(t) => {
            let s = parse(&t);
            assert!(value(&s, "drawbridge_authenticated_total{direction=\"in\",mechanism=\"dialback\"}") >= 1.0);
        }
        other => panic!("not the exposition: {other:?}"),
    }
}

/// A connection refused by a limit is counted under the limit's config key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_a_limit_are_counted_by_its_key() {
    let dns = Dns::start().await;
    let server =
        start_server("home.test", &dns, "[metrics]\nlisten = [\"127.0.0.1:0\"]\n[limits]\nmax_unauthenticated_per_address = 1\n").await;
    let addr = server.engine.listening().metrics[0];
    let key = "drawbridge_limit_refusals_total{limit=\"limits.max_unauthenticated_per_address\"}";
    let before = value(&parse(&get(addr, "127.0.0.1", "/metrics").await.2), key);
    let _first = RawPeer::connect(server.addr).await;
    // The listener accepts in order: the first holds the address's one slot.
    let mut second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    within("the refused connection closed", second.read_to_end(&mut buf)).await.ok();
    let after = value(&parse(&get(addr, "127.0.0.1", "/metrics").await.2), key);
    assert_eq!(after, before + 1.0);
}

/// README's "Metrics" table names every family a scrape can hold, with its labels: a scrape
/// of a server with every optional family on (a feed, a domain of `per_domain`) is checked
/// against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_lists_every_metric_and_its_labels() {
    let dns = Dns::start().await;
    let extra = "[metrics]\nper_domain = [\"friend.test\"]\n[[rtbl]]\nservice = \"xmppbl.test\"\n";
    let server = start_server("home.test", &dns, extra).await;
    let body = match ask(&server.engine, drawbridge::engine::Request::Metrics).await {
        drawbridge::engine::Reply::Text(t) => t,
        other => panic!("not the exposition: {other:?}"),
    };
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    let mut families: Vec<(String, String)> = Vec::new();
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split(' ');
        families.push((parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned()));
    }
    assert!(families.iter().any(|(f, _)| f == "drawbridge_remote_certificates_expiring"), "{body}");
    for (family, kind) in families {
        // Listed as scraped: counters with their `_total` suffix, infos with `_info`.
        let shown = match kind.as_str() {
            "counter" => format!("{family}_total"),
            "info" => format!("{family}_info"),
            _ => family.clone(),
        };
        let row = table.iter().find(|l| l.contains(&format!("`{shown}`"))).unwrap_or_else(|| panic!("README has no row for {shown}"));
        // A histogram's labels are on its `_count` samples (beside `le` on its buckets).
        let heads = [format!("{shown}{{"), format!("{family}{{"), format!("{family}_count{{")];
        for sample in body.lines().filter(|l| heads.iter().any(|h| l.starts_with(h.as_str()))) {
            let labels = &sample[sample.find('{').unwrap() + 1..sample.find('}').unwrap()];
            for label in labels.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, _)| k) {
                assert!(row.contains(&format!("`{label}`")), "README's row for {shown} does not name its label {label}: {row}");
            }
        }
    }
    server.engine.shutdown().await;
}
