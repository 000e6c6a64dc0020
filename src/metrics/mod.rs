//! OpenMetrics for Prometheus: what the engine counts, and the exposition.
//!
//! Two kinds of numbers, so that the stanza path pays nothing for them:
//! - Events that happen a few times per stream (opened, TLS up, certificate judged, a pair
//!   authenticated, closed) are counted as they happen, in [`StreamMetrics`], by the
//!   connection table that folds every stream's observations anyway.
//! - Everything else is read when Prometheus scrapes ([`Scrape`]): the live streams and
//!   their per-stream atomic counters (plus what the closed ones had), queue depths, feed
//!   sizes, the process. A stanza costs only the per-stream counter it always had.
//!
//! Built with `prometheus-client` (the Prometheus project's crate), one registry per
//! engine (no global one: several engines may share a process, as the tests do).

pub mod http;

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::events::Direction;

/// The OpenMetrics text format's content type (OpenMetrics 1.0 §"Protocol Negotiation").
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionKind {
    pub direction: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionMechanism {
    pub direction: String,
    pub mechanism: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionCondition {
    pub direction: String,
    pub condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolCipher {
    pub protocol: String,
    pub cipher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionOnly {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamsLabels {
    direction: String,
    kind: String,
    auth: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Condition {
    condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Decision {
    decision: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabels {
    service: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertState {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Certificate {
    certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainDirection {
    domain: String,
    direction: String,
}

fn dir(d: Direction) -> String {
    match d {
        Direction::In => "in".into(),
        Direction::Out => "out".into(),
    }
}

/// What the connection table counts as streams go (a few times per stream, never per
/// stanza).
#[derive(Debug)]
pub struct StreamMetrics {
    pub connections: Family<DirectionKind, Counter>,
    pub authenticated: Family<DirectionMechanism, Counter>,
    pub closed: Family<DirectionCondition, Counter>,
    pub tls: Family<ProtocolCipher, Counter>,
    pub certificates: Family<Outcome, Counter>,
    /// From the stream's opening (the dial, for outbound streams) to its first
    /// authenticated pair.
    pub setup: Histogram,
    /// What the closed streams had counted: stanzas and bytes, in and out.
    closed_stanzas: [AtomicU64; 2],
    closed_bytes: [AtomicU64; 2],
}

impl Default for StreamMetrics {
    fn default() -> Self {
        StreamMetrics {
            connections: Family::default(),
            authenticated: Family::default(),
            closed: Family::default(),
            tls: Family::default(),
            certificates: Family::default(),
            setup: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            closed_stanzas: Default::default(),
            closed_bytes: Default::default(),
        }
    }
}

impl StreamMetrics {
    pub fn opened(&self, d: Direction, kind: crate::events::StreamKind) {
        self.connections.get_or_create(&DirectionKind { direction: dir(d), kind: kind_str(kind).into() }).inc();
    }

    pub fn authenticated(&self, d: Direction, method: crate::types::AuthMethod) {
        self.authenticated.get_or_create(&DirectionMechanism { direction: dir(d), mechanism: method.as_str().into() }).inc();
    }

    pub fn tls(&self, protocol: &str, cipher: &str) {
        self.tls.get_or_create(&ProtocolCipher { protocol: protocol.into(), cipher: cipher.into() }).inc();
    }

    pub fn certificate(&self, v: &crate::types::CertVerdict) {
        self.certificates.get_or_create(&Outcome { outcome: cert_outcome(v).into() }).inc();
    }

    /// A stream closed: its reason's condition, and what it counted.
    pub fn closed(&self, d: Direction, reason: &str, stanzas: (u64, u64), bytes: (u64, u64)) {
        self.closed.get_or_create(&DirectionCondition { direction: dir(d), condition: condition_of(reason).into() }).inc();
        self.closed_stanzas[0].fetch_add(stanzas.0, Ordering::Relaxed);
        self.closed_stanzas[1].fetch_add(stanzas.1, Ordering::Relaxed);
        self.closed_bytes[0].fetch_add(bytes.0, Ordering::Relaxed);
        self.closed_bytes[1].fetch_add(bytes.1, Ordering::Relaxed);
    }
}

fn kind_str(k: crate::events::StreamKind) -> &'static str {
    match k {
        crate::events::StreamKind::Federation => "federation",
        crate::events::StreamKind::Internal => "internal",
        crate::events::StreamKind::Component => "component",
    }
}

/// A bounded label for a certificate check.
fn cert_outcome(v: &crate::types::CertVerdict) -> &'static str {
    use crate::types::CertVerdict as V;
    match v {
        V::Valid => "valid",
        V::NoCertificate => "none",
        V::SelfSigned => "self-signed",
        V::UntrustedIssuer(_) => "untrusted-issuer",
        V::Expired(_) => "expired",
        V::NotYetValid(_) => "not-yet-valid",
        V::NameMismatch(_) => "name-mismatch",
        V::Invalid(_) => "invalid",
    }
}

/// The stream error condition (RFC 6120 §4.9.3) a close reason names, or `none` for a
/// stream closed without one: a bounded label, whatever a peer's text says.
pub fn condition_of(reason: &str) -> &'static str {
    use crate::proto::stream::StreamErrorCondition as C;
    C::ALL.into_iter().find(|c| reason.contains(c.as_str())).map_or("none", C::as_str)
}

/// What a scrape reads from the running engine.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Live streams by (direction, kind, how the first pair authenticated or `none`).
    pub streams: Vec<((Direction, crate::events::StreamKind, String), u64)>,
    /// The live streams' counters: stanzas and bytes, (in, out).
    pub live_stanzas: (u64, u64),
    pub live_bytes: (u64, u64),
    /// Stanzas queued towards remote domains (all links), and the longest queue.
    pub queued: u64,
    pub queued_max: u64,
    /// Entries listed by each RTBL feed (service, node).
    pub rtbl: Vec<((String, String), u64)>,
    /// `metrics.per_domain`: stanzas (in, out) per listed domain, recorded and live.
    pub per_domain: Vec<(String, (u64, u64))>,
    /// Refusals by each limit (its config key) since the process started.
    pub limit_refusals: Vec<(&'static str, u64)>,
    /// Stanza errors built here (bounces, refusals), by condition, since the process started.
    pub stanza_errors: Vec<(&'static str, u64)>,
    /// Policy decisions streams asked for: (decision, the rule that made it, how many).
    pub decisions: Vec<(&'static str, &'static str, u64)>,
    /// Remote domains whose last certificate expires within `certs.warn_before`, and those
    /// whose certificate expired: (expiring, expired).
    pub remote_certs: (u64, u64),
    /// Our certificates' notAfter (unix seconds), by which: `tls`, `gateway-ca`.
    pub local_certs: Vec<(String, i64)>,
    /// The store: reachable, records waiting to be written, records dropped since start.
    pub store: (bool, u64, u64),
    pub process: Process,
}

/// The process's own figures (`/proc/self`), named as Prometheus' process collector does.
#[derive(Debug, Default, Clone, Copy)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

impl Process {
    /// Read `/proc/self` (Linux); zero where it cannot be read.
    pub fn read() -> Process {
        let tick = clock_ticks();
        let page = page_size();
        let mut p = Process::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            // The fields after the command (which may hold spaces) in parentheses.
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
            let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            p.cpu_seconds = (num(14) + num(15)) as f64 / tick;
            p.resident_bytes = num(24) * page;
            let boot = boot_time();
            p.start_time_seconds = boot + num(22) as f64 / tick;
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        p
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

fn boot_time() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
        .unwrap_or(0.0)
}

/// The exposition: every metric, in the OpenMetrics text format, ending in `# EOF`.
pub fn encode(m: &StreamMetrics, s: &Scrape) -> String {
    let mut r = Registry::with_prefix("drawbridge");
    let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
    r.register("build", "The running build", info);

    r.register_collector(Box::new(Gauges {
        name: "streams",
        help: "Live streams by direction, kind (federation, internal link, component) and how their first pair authenticated (none before)",
        rows: s
            .streams
            .iter()
            .map(|((d, k, auth), n)| (StreamsLabels { direction: dir(*d), kind: kind_str(*k).into(), auth: auth.clone() }, *n as i64))
            .collect(),
    }));

    r.register("connections", "Streams opened: accepted (in) and initiated (out), by kind", m.connections.clone());
    r.register("authenticated", "Domain pairs authenticated, by direction and mechanism", m.authenticated.clone());
    r.register(
        "streams_closed",
        "Streams closed, by direction and the stream error condition (none: closed without one)",
        m.closed.clone(),
    );
    r.register("tls_sessions", "TLS sessions set up, by protocol version and cipher suite", m.tls.clone());
    r.register("certificate_checks", "Peer certificates judged, by outcome", m.certificates.clone());
    r.register_with_unit("stream_setup", "From a stream's opening to its first authenticated pair", Unit::Seconds, m.setup.clone());
    r.register_collector(Box::new(Timings {
        name: "stanza_routing",
        help: "From a stanza's read off a stream to its link's stream taking it to write: the router, the queue, any wait for room (process-wide)",
        label: None,
        rows: vec![("", crate::latency::ROUTING.snapshot())],
    }));
    r.register_collector(Box::new(Timings {
        name: "dialback_verification",
        help: "From asking a domain's authoritative server (DNS, dial and callback stream included) to its answer, by outcome (process-wide)",
        label: Some("outcome"),
        rows: crate::latency::DIALBACK.iter().map(|(n, t)| (*n, t.snapshot())).collect(),
    }));
    r.register_collector(Box::new(Timings {
        name: "dns_lookup",
        help: "DNS lookups for dialling out: a domain's SRV records (both services) or a target's addresses, answered or not (process-wide)",
        label: Some("query"),
        rows: crate::latency::DNS.iter().map(|(n, t)| (*n, t.snapshot())).collect(),
    }));

    let total = |live: (u64, u64), closed: &[AtomicU64; 2]| {
        [("in", live.0 + closed[0].load(Ordering::Relaxed)), ("out", live.1 + closed[1].load(Ordering::Relaxed))]
    };
    let stanzas: Family<DirectionOnly, Counter> = Family::default();
    for (d, n) in total(s.live_stanzas, &m.closed_stanzas) {
        stanzas.get_or_create(&DirectionOnly { direction: d.into() }).inc_by(n);
    }
    r.register("stanzas", "Stanzas read (in) and written (out) on every stream", stanzas);
    let bytes: Family<DirectionOnly, Counter> = Family::default();
    for (d, n) in total(s.live_bytes, &m.closed_bytes) {
        bytes.get_or_create(&DirectionOnly { direction: d.into() }).inc_by(n);
    }
    r.register_with_unit("stream", "Bytes read (in) and written (out) on every stream, after TLS", Unit::Bytes, bytes);

    r.register("outbound_queue_stanzas", "Stanzas queued towards remote domains, all links", ConstGauge::new(s.queued as i64));
    r.register("outbound_queue_longest_stanzas", "Stanzas queued on the longest link", ConstGauge::new(s.queued_max as i64));

    let refusals: Family<Limit, Counter> = Family::default();
    for (limit, n) in &s.limit_refusals {
        refusals.get_or_create(&Limit { limit: (*limit).to_owned() }).inc_by(*n);
    }
    let errors: Family<Condition, Counter> = Family::default();
    for (condition, n) in &s.stanza_errors {
        errors.get_or_create(&Condition { condition: (*condition).into() }).inc_by(*n);
    }
    r.register(
        "stanza_errors",
        "Stanza errors built here — bounces of what could not be delivered, refusals, answers — by condition (process-wide)",
        errors,
    );
    let decisions: Family<Decision, Counter> = Family::default();
    for (decision, rule, n) in &s.decisions {
        decisions.get_or_create(&Decision { decision: (*decision).into(), reason: (*rule).into() }).inc_by(*n);
    }
    r.register(
        "policy_decisions",
        "Policy decisions on remote domains as streams asked for them, by decision and the rule that made it",
        decisions,
    );
    r.register("limit_refusals", "Connections, streams and stanzas refused by a limit, by its config key", refusals);

    // Both states always, so an alert on either has a series to watch.
    r.register_collector(Box::new(Gauges {
        name: "remote_certificates_expiring",
        help: "Remote domains whose last certificate expires within certs.warn_before (state expiring) or has expired (state expired)",
        rows: vec![
            (CertState { state: "expiring".into() }, s.remote_certs.0 as i64),
            (CertState { state: "expired".into() }, s.remote_certs.1 as i64),
        ],
    }));
    let local: Family<Certificate, prometheus_client::metrics::gauge::Gauge> = Family::default();
    for (which, t) in &s.local_certs {
        local.get_or_create(&Certificate { certificate: which.clone() }).set(*t);
    }
    r.register_with_unit(
        "local_certificate_expiry_timestamp",
        "When our certificate expires (notAfter) since the Unix epoch: tls (presented to peers), gateway-ca (gateway mode)",
        Unit::Seconds,
        local,
    );

    r.register_collector(Box::new(Gauges {
        name: "store_up",
        help: "Whether the store is reachable (1) or not (0: a shared PostgreSQL store out of reach; the node federates on)",
        rows: vec![(NoLabels {}, i64::from(s.store.0))],
    }));
    r.register_collector(Box::new(Gauges {
        name: "store_backlog",
        help: "Records (outcomes, history, counters) waiting to be written to a shared store, of at most store.buffer",
        rows: vec![(NoLabels {}, s.store.1 as i64)],
    }));
    let dropped: Counter = Counter::default();
    dropped.inc_by(s.store.2);
    r.register("store_dropped", "Records dropped because store.buffer was full while a shared store was out of reach", dropped);

    if !s.rtbl.is_empty() {
        r.register_collector(Box::new(Gauges {
            name: "rtbl_entries",
            help: "Domains listed by each real-time blocklist feed",
            rows: s
                .rtbl
                .iter()
                .map(|((service, node), n)| (FeedLabels { service: service.clone(), node: node.clone() }, *n as i64))
                .collect(),
        }));
    }
    if !s.per_domain.is_empty() {
        let per: Family<DomainDirection, Counter> = Family::default();
        for (domain, (i, o)) in &s.per_domain {
            per.get_or_create(&DomainDirection { domain: domain.clone(), direction: "in".into() }).inc_by(*i);
            per.get_or_create(&DomainDirection { domain: domain.clone(), direction: "out".into() }).inc_by(*o);
        }
        r.register("domain_stanzas", "Stanzas exchanged with each domain of metrics.per_domain", per);
    }

    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &r).expect("writing to a String");
    // Prometheus' process collector's names, unprefixed, as every exporter has them.
    let p = &s.process;
    let mut pr = Registry::default();
    pr.register_with_unit("process_cpu", "User and system CPU time spent", Unit::Seconds, ConstCounter::new(p.cpu_seconds));
    pr.register_with_unit("process_resident_memory", "Resident memory size", Unit::Bytes, ConstGauge::new(p.resident_bytes as i64));
    pr.register("process_open_fds", "Open file descriptors", ConstGauge::new(p.open_fds as i64));
    pr.register_with_unit(
        "process_start_time",
        "Start time of the process since the Unix epoch",
        Unit::Seconds,
        ConstGauge::new(p.start_time_seconds),
    );
    prometheus_client::encoding::text::encode_registry(&mut text, &pr).expect("writing to a String");
    prometheus_client::encoding::text::encode_eof(&mut text).expect("writing to a String");
    text
}

/// A gauge family whose values are known at scrape time.
#[derive(Debug)]
struct Gauges<L> {
    name: &'static str,
    help: &'static str,
    rows: Vec<(L, i64)>,
}

impl<L: EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> prometheus_client::collector::Collector for Gauges<L> {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(0i64);
        let mut me = encoder.encode_descriptor(self.name, self.help, None, g.metric_type())?;
        for (labels, v) in &self.rows {
            let fe = me.encode_family(labels)?;
            ConstGauge::new(*v).encode(fe)?;
        }
        Ok(())
    }
}

/// Histograms of seconds from the lock-free [`crate::latency`] counts, with at most one
/// label.
#[derive(Debug)]
struct Timings {
    name: &'static str,
    help: &'static str,
    label: Option<&'static str>,
    rows: Vec<(&'static str, crate::latency::Snapshot)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

impl prometheus_client::collector::Collector for Timings {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let mut me = encoder.encode_descriptor(self.name, self.help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (value, s) in &self.rows {
            let labels = [(self.label.unwrap_or_default(), *value)];
            let mut fe = match self.label {
                Some(_) => me.encode_family(&labels)?,
                None => me.encode_family(&NoLabels {})?,
            };
            fe.encode_histogram::<NoLabels>(s.sum_seconds, s.count, &s.buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_reason_gives_a_bounded_condition() {
        assert_eq!(condition_of("sent policy-violation (example.org is blocked)"), "policy-violation");
        assert_eq!(condition_of("the peer closed the stream"), "none");
        assert_eq!(condition_of("received host-unknown"), "host-unknown");
    }

    #[test]
    fn the_exposition_is_openmetrics_and_ends_in_eof() {
        let m = StreamMetrics::default();
        m.opened(Direction::In, crate::events::StreamKind::Federation);
        m.closed(Direction::In, "sent policy-violation", (3, 4), (100, 200));
        let s = Scrape {
            live_stanzas: (1, 2),
            live_bytes: (10, 20),
            remote_certs: (2, 1),
            local_certs: vec![("tls".into(), 1_800_000_000)],
            ..Scrape::default()
        };
        let text = encode(&m, &s);
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "drawbridge_connections_total{direction=\"in\",kind=\"federation\"} 1",
            "drawbridge_streams_closed_total{direction=\"in\",condition=\"policy-violation\"} 1",
            "drawbridge_stanzas_total{direction=\"in\"} 4",
            "drawbridge_stanzas_total{direction=\"out\"} 6",
            "drawbridge_stream_bytes_total{direction=\"out\"} 220",
            "drawbridge_build_info{version=\"",
            "# TYPE drawbridge_remote_certificates_expiring gauge",
            "drawbridge_remote_certificates_expiring{state=\"expiring\"} 2",
            "drawbridge_remote_certificates_expiring{state=\"expired\"} 1",
            "# TYPE drawbridge_local_certificate_expiry_timestamp_seconds gauge",
            "# UNIT drawbridge_local_certificate_expiry_timestamp_seconds seconds",
            "drawbridge_local_certificate_expiry_timestamp_seconds{certificate=\"tls\"} 1800000000",
            "# TYPE process_cpu_seconds counter",
            "process_open_fds ",
            "# TYPE drawbridge_stanza_routing_seconds histogram",
            "# UNIT drawbridge_stanza_routing_seconds seconds",
            "drawbridge_stanza_routing_seconds_bucket{le=\"0.00001\"} ",
            "drawbridge_dialback_verification_seconds_bucket{le=\"+Inf\",outcome=\"timeout\"} ",
            "drawbridge_dns_lookup_seconds_count{query=\"address\"} ",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
