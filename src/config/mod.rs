//! Configuration: the TOML file (every key documented in `config.example.toml`) turned into
//! typed [`Settings`]. Unknown keys are rejected; every error names the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::Domain;
pub use crate::net::dial::OutboundSettings;
pub use crate::net::resolve::{DnsOverride, DnsSettings};
pub use crate::net::tls::TlsSettings;
pub use crate::policy::PolicySettings;
pub use crate::store::StoreSettings;
pub use crate::types::{AuthMode, DomainRule, Security};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read it: {err}")]
    Read { file: String, err: std::io::Error },
    #[error("config {file}: line {line}: {msg}")]
    Syntax { file: String, line: usize, msg: String },
    #[error("config {file}: key `{key}`: {msg}")]
    Invalid { file: String, key: String, msg: String },
}

// ---- the file, as written ------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    server: ServerFile,
    tls: TlsFile,
    dns: DnsFile,
    limits: Limits,
    timeouts: TimeoutsFile,
    policy: PolicyFile,
    store: StoreFile,
    auth: AuthFile,
    #[serde(rename = "domain")]
    domains: Vec<DomainFile>,
    log: LogFile,
    outbound: OutboundFile,
    gateway: Option<GatewayFile>,
    components: ComponentsFile,
    #[serde(rename = "component")]
    component: Vec<ComponentFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ComponentsFile {
    listen: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentFile {
    domain: String,
    #[serde(default)]
    secret: Option<String>,
    /// A file holding the secret (so it need not live in the config).
    #[serde(default)]
    secret_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    internal: String,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    ca_cert: Option<String>,
    #[serde(default)]
    ca_key: Option<String>,
    #[serde(default)]
    mints_per_minute: Option<u32>,
    #[serde(default)]
    internal_ca: Option<String>,
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    max_minted: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OutboundFile {
    deny: Vec<String>,
    max_dials: usize,
    max_targets: usize,
    max_addresses: usize,
}

/// The defaults of `[outbound]`.
impl Default for OutboundFile {
    fn default() -> Self {
        OutboundFile {
            deny: crate::net::dial::DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
            max_dials: 64,
            max_targets: 6,
            max_addresses: 4,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthFile {
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    name: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    require_encryption: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PolicyFile {
    mode: Option<String>,
    approval_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StoreFile {
    max_records: Option<usize>,
    max_age: Option<String>,
    flush_interval: Option<String>,
    snapshot_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerFile {
    domains: Vec<String>,
    listen: Vec<String>,
    direct_tls: Vec<String>,
    data_dir: String,
    control_socket: Option<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            domains: vec!["localhost".into()],
            listen: vec!["127.0.0.1:5269".into()],
            direct_tls: Vec::new(),
            data_dir: "./drawbridge-data".into(),
            control_socket: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    ca_file: Option<String>,
    require_encryption: bool,
}

impl Default for TlsFile {
    fn default() -> Self {
        TlsFile { cert: None, key: None, ca_file: None, require_encryption: true }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DnsFile {
    nameservers: Vec<String>,
    timeout: Option<String>,
    #[serde(rename = "override")]
    overrides: Vec<OverrideFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    domain: String,
    host: String,
    #[serde(default = "default_port")]
    port: u16,
}

fn default_port() -> u16 {
    5269
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TimeoutsFile {
    negotiation: Option<String>,
    connect: Option<String>,
    dialback: Option<String>,
    close: Option<String>,
    idle_outbound: Option<String>,
    keepalive: Option<String>,
    probe: Option<String>,
    write: Option<String>,
    idle_inbound: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LogFile {
    level: String,
    file: Option<String>,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile { level: "info".into(), file: None }
    }
}

// ---- typed settings ----------------------------------------------------------------------

/// Everything the engine needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the settings came from (for messages); `None` for the built-in default.
    pub source: Option<PathBuf>,
    pub domains: Vec<Domain>,
    pub listen: Vec<SocketAddr>,
    /// Direct TLS listeners (XEP-0368, ALPN `xmpp-server`).
    pub direct_tls: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
    pub tls: TlsSettings,
    pub dns: DnsSettings,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub policy: PolicySettings,
    pub store: StoreSettings,
    pub security: Security,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    pub outbound: OutboundSettings,
    /// `[gateway]`: drawbridge in front of an internal XMPP server (the gateway module).
    pub gateway: Option<GatewaySettings>,
    /// `[components]` and `[[component]]`: external components (XEP-0114).
    pub components: ComponentSettings,
}

/// External components (XEP-0114): where they connect, and each one's domain and secret.
#[derive(Debug, Clone, Default)]
pub struct ComponentSettings {
    pub listen: Vec<SocketAddr>,
    pub list: Vec<ComponentDef>,
}

#[derive(Clone)]
pub struct ComponentDef {
    pub domain: Domain,
    /// The shared secret of the `jabber:component:accept` handshake.
    pub secret: String,
    /// Where the secret was read from (`secret_file`); `None`: from the config file itself.
    pub secret_file: Option<PathBuf>,
}

/// The secret stays out of logs and debug output.
impl std::fmt::Debug for ComponentDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentDef")
            .field("domain", &self.domain)
            .field("secret", &"(hidden)")
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

impl ComponentSettings {
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.list.iter().map(|c| &c.domain)
    }
}

/// `[gateway]`: the internal server that really hosts `server.domains`, and how drawbridge
/// speaks to it.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The internal server's s2s listener: world → internal streams go here (never DNS).
    pub internal: SocketAddr,
    /// Where drawbridge accepts the internal server's streams to the world.
    pub listen: Vec<SocketAddr>,
    pub auth: GatewayAuth,
    /// The operator's CA for the certificates drawbridge presents as remote domains
    /// (both or neither; neither: one is created in `DATA_DIR/gateway/`).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    /// New certificates minted per minute at most (spent only on the internal server's
    /// streams and on authenticated world domains).
    pub mints_per_minute: u32,
    /// The trust anchor for the internal server's certificate (PEM), and the only one: not
    /// the system roots, not `[tls] ca_file`. Required under `pki`.
    pub internal_ca: Option<PathBuf>,
    /// Who may connect to `gateway.listen`: these addresses/ranges (by default the address of
    /// `gateway.internal`); anyone else is dropped before anything is read.
    pub allow: Vec<crate::net::dial::IpRange>,
    /// Minted certificates kept on disk at most (the oldest go first; expired ones always).
    pub max_minted: usize,
}

/// How the internal link authenticates, both ways (`gateway.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayAuth {
    /// Certificates: minted ones for the remote domains, the internal server's own for its
    /// domains; SASL EXTERNAL (XEP-0178). Dialback is refused on the internal link.
    Pki,
    /// Server Dialback (XEP-0220) answered by drawbridge for the remote domains and by the
    /// internal server for its own; never a callback into the world.
    Dialback,
}

impl GatewayAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayAuth::Pki => "pki",
            GatewayAuth::Dialback => "dialback",
        }
    }
}

/// `[limits]`: read from the file as is (every key optional, defaults below).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest top-level element accepted (RFC 6120 §13.12 resource exhaustion), advertised
    /// to peers as XEP-0478 `max-bytes`. 512 KiB: what Prosody sends by default
    /// (`s2s_stanza_size_limit`), so its avatars and vCards fit.
    pub max_stanza_size: usize,
    /// Deepest element nesting accepted.
    pub max_depth: usize,
    /// Stanzas queued per outbound domain pair before senders wait (backpressure): far
    /// above any burst; the bytes bind.
    pub outbound_queue: usize,
    /// Bytes of stanzas queued per outbound domain pair (and held per inbound stream while
    /// a domain awaits approval) before senders wait (at most `timeouts.write`).
    pub outbound_queue_bytes: usize,
    /// Inbound connections not authenticated yet (all sources together).
    pub max_inbound_unauthenticated: usize,
    /// Inbound connections not authenticated yet from one address.
    pub max_unauthenticated_per_address: usize,
    /// Connections on `gateway.listen` not authenticated yet: the internal server's door,
    /// apart from the public listener's limits.
    pub max_unauthenticated_gateway: usize,
    /// Connections on the components listener not authenticated yet (their own door).
    pub max_unauthenticated_components: usize,
    /// Authenticated inbound streams.
    pub max_inbound: usize,
    /// Outbound streams (their own room: no inbound flood can take it).
    pub max_outbound: usize,
    /// Dialback verifications under way on one inbound stream.
    pub max_verifications_in_flight: usize,
    /// Dialback verifications one inbound stream may start per minute.
    pub verifications_per_minute: usize,
    /// Domain pairs one inbound stream may authorise (dialback piggybacking).
    pub max_pairs_per_stream: usize,
    /// Recently closed streams kept in the connection table.
    pub closed_streams: usize,
    /// Transcript lines kept per stream (the dashboard's transcript view).
    pub transcript_lines: usize,
    /// Transcript bytes kept per stream (as received/sent; oldest lines dropped first).
    pub transcript_bytes: usize,
    /// Transcript bytes kept for all streams together, closed ones included (their
    /// transcripts are dropped first, oldest first).
    pub transcript_total_bytes: usize,
    /// Events waiting for one control subscriber (`ctl subscribe`, `attach`): past either
    /// limit its oldest are dropped and it is told so (it resynchronises from a snapshot).
    pub event_backlog: usize,
    pub event_backlog_bytes: usize,
    /// Bytes of recently closed streams' rows kept (with `closed_streams` entries).
    pub closed_streams_bytes: usize,
    /// Bytes of failed unauthenticated verifications kept in memory (the outcome ring).
    pub unauthenticated_outcomes_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 512 * 1024,
            max_depth: 32,
            outbound_queue: 100_000,
            outbound_queue_bytes: 4 * 1024 * 1024,
            max_inbound_unauthenticated: 1000,
            max_unauthenticated_per_address: 16,
            max_unauthenticated_gateway: 256,
            max_unauthenticated_components: 64,
            max_inbound: 10_000,
            max_outbound: 10_000,
            max_verifications_in_flight: 8,
            verifications_per_minute: 60,
            max_pairs_per_stream: 64,
            closed_streams: 200,
            transcript_lines: 500,
            transcript_bytes: 256 * 1024,
            transcript_total_bytes: 64 * 1024 * 1024,
            event_backlog: 4096,
            event_backlog_bytes: 8 * 1024 * 1024,
            closed_streams_bytes: 4 * 1024 * 1024,
            unauthenticated_outcomes_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From TCP accept/connect until the stream is authenticated → `<connection-timeout/>`.
    pub negotiation: Duration,
    /// Per connection attempt (TCP connect to one SRV target).
    pub connect: Duration,
    /// Receiving server waiting for the authoritative server's `db:verify` answer.
    pub dialback: Duration,
    /// Waiting for the peer's `</stream:stream>` after ours.
    pub close: Duration,
    /// Outbound streams with no stanza for this long are closed.
    pub idle_outbound: Duration,
    /// Whitespace keepalive interval on idle outbound streams.
    pub keepalive: Duration,
    /// `ctl probe` waiting for the pong.
    pub probe: Duration,
    /// Longest one write may wait for the peer to read (a peer with a closed receive window
    /// holds nothing beyond it).
    pub write: Duration,
    /// Established inbound streams that carried no byte (not even a keepalive) for this
    /// long are closed with `<connection-timeout/>`.
    pub idle_inbound: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            negotiation: Duration::from_secs(30),
            connect: Duration::from_secs(10),
            dialback: Duration::from_secs(30),
            close: Duration::from_secs(5),
            idle_outbound: Duration::from_secs(600),
            keepalive: Duration::from_secs(60),
            probe: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle_inbound: Duration::from_secs(1200),
        }
    }
}

impl Settings {
    /// The built-in default: domain `localhost`, 127.0.0.1:5269, data in ./drawbridge-data.
    pub fn builtin() -> Settings {
        build(File::default(), None).expect("the built-in default is valid")
    }

    /// Load and validate a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { file: file.clone(), err })?;
        Self::parse(&text, path)
    }

    /// Parse config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        let de = toml::de::Deserializer::parse(text).map_err(|e| syntax(&file, text, &e))?;
        let parsed: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_owned();
            let line = inner.span().map(|s| line_of(text, s.start));
            let key = if key == "." || key.is_empty() { "(top level)".into() } else { key };
            match line {
                Some(l) => ConfigError::Invalid { file: file.clone(), key, msg: format!("{msg} (line {l})") },
                None => ConfigError::Invalid { file: file.clone(), key, msg },
            }
        })?;
        build(parsed, Some(path))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

fn syntax(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
    ConfigError::Syntax { file: file.to_owned(), line, msg: e.message().trim().replace('\n', " ") }
}

/// Parse "30s", "5m", "2h", "250ms" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (use e.g. \"30s\", \"5m\", \"250ms\")"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use ms, s, m, h or d)")),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Why nested component domains are refused (see [`build`]).
const NESTED: &str =
    "a component answers for its whole subtree, so one would take the other's traffic; give each component a domain outside the others'";

/// `inner` is a proper subdomain of `outer` (`sub.c.test` under `c.test`; not `xc.test`).
fn is_under(inner: &Domain, outer: &Domain) -> bool {
    inner.as_str().strip_suffix(outer.as_str()).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
}

fn build(f: File, path: Option<&Path>) -> Result<Settings, ConfigError> {
    let file = path.map_or("(built-in default)".to_owned(), |p| p.display().to_string());
    let bad = |key: &str, msg: String| ConfigError::Invalid { file: file.clone(), key: key.to_owned(), msg };
    let base = path.and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() || path.is_none() { p } else { base.join(p) }
    };

    if f.server.domains.is_empty() {
        return Err(bad("server.domains", "at least one hosted domain is required".into()));
    }
    let mut domains = Vec::new();
    for (i, d) in f.server.domains.iter().enumerate() {
        let dom = Domain::parse(d).map_err(|e| bad(&format!("server.domains[{i}]"), format!("{d:?}: {e}")))?;
        if domains.contains(&dom) {
            return Err(bad(&format!("server.domains[{i}]"), format!("{d:?} is listed twice")));
        }
        domains.push(dom);
    }
    let mut listen = Vec::new();
    for (i, a) in f.server.listen.iter().enumerate() {
        let addr: SocketAddr = a.parse().map_err(|_| {
            bad(&format!("server.listen[{i}]"), format!("{a:?} is not an address like \"127.0.0.1:5269\" or \"[::]:5269\""))
        })?;
        listen.push(addr);
    }
    let mut direct_tls = Vec::new();
    for (i, a) in f.server.direct_tls.iter().enumerate() {
        let addr: SocketAddr =
            a.parse().map_err(|_| bad(&format!("server.direct_tls[{i}]"), format!("{a:?} is not an address like \"0.0.0.0:5270\"")))?;
        direct_tls.push(addr);
    }
    if f.server.data_dir.trim().is_empty() {
        return Err(bad("server.data_dir", "must not be empty".into()));
    }
    let data_dir = resolve(&f.server.data_dir);
    let control_socket = match &f.server.control_socket {
        Some(s) if s.trim().is_empty() => return Err(bad("server.control_socket", "must not be empty".into())),
        Some(s) => resolve(s),
        None => data_dir.join("control.sock"),
    };

    let tls = TlsSettings {
        cert: f.tls.cert.as_deref().map(resolve),
        key: f.tls.key.as_deref().map(resolve),
        ca_file: f.tls.ca_file.as_deref().map(resolve),
        require_encryption: f.tls.require_encryption,
    };
    match (&tls.cert, &tls.key) {
        (Some(_), None) => return Err(bad("tls.key", "tls.cert is set, so tls.key (the PEM private key) is required".into())),
        (None, Some(_)) => return Err(bad("tls.cert", "tls.key is set, so tls.cert (the PEM certificate chain) is required".into())),
        _ => {}
    }

    let mut nameservers = Vec::new();
    for (i, n) in f.dns.nameservers.iter().enumerate() {
        let addr = n
            .parse::<SocketAddr>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| bad(&format!("dns.nameservers[{i}]"), format!("{n:?} is not an IP address (optionally with :port)")))?;
        nameservers.push(addr);
    }
    let mut overrides = Vec::new();
    for (i, o) in f.dns.overrides.iter().enumerate() {
        let domain = Domain::parse(&o.domain).map_err(|e| bad(&format!("dns.override[{i}].domain"), format!("{:?}: {e}", o.domain)))?;
        if o.host.trim().is_empty() {
            return Err(bad(&format!("dns.override[{i}].host"), "must name a host or IP address".into()));
        }
        if o.port == 0 {
            return Err(bad(&format!("dns.override[{i}].port"), "must be 1-65535".into()));
        }
        overrides.push(DnsOverride { domain, host: o.host.clone(), port: o.port });
    }
    let dur = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = parse_duration(s).map_err(|m| bad(key, m))?;
                if d.is_zero() {
                    return Err(bad(key, "must be greater than zero".into()));
                }
                Ok(d)
            }
        }
    };
    let dns = DnsSettings { nameservers, timeout: dur("dns.timeout", &f.dns.timeout, Duration::from_secs(5))?, overrides };

    let l = &f.limits;
    for (key, v, min) in [
        ("limits.max_stanza_size", l.max_stanza_size, 4096),
        ("limits.max_depth", l.max_depth, 4),
        ("limits.outbound_queue", l.outbound_queue, 1),
        ("limits.outbound_queue_bytes", l.outbound_queue_bytes, 4096),
        ("limits.max_inbound_unauthenticated", l.max_inbound_unauthenticated, 1),
        ("limits.max_unauthenticated_per_address", l.max_unauthenticated_per_address, 1),
        ("limits.max_unauthenticated_gateway", l.max_unauthenticated_gateway, 1),
        ("limits.max_unauthenticated_components", l.max_unauthenticated_components, 1),
        ("limits.max_inbound", l.max_inbound, 1),
        ("limits.max_outbound", l.max_outbound, 1),
        ("limits.max_verifications_in_flight", l.max_verifications_in_flight, 1),
        ("limits.verifications_per_minute", l.verifications_per_minute, 1),
        ("limits.max_pairs_per_stream", l.max_pairs_per_stream, 1),
        ("limits.closed_streams", l.closed_streams, 0),
        ("limits.transcript_lines", l.transcript_lines, 0),
        ("limits.transcript_bytes", l.transcript_bytes, 0),
        ("limits.transcript_total_bytes", l.transcript_total_bytes, 0),
        ("limits.event_backlog", l.event_backlog, 16),
        ("limits.event_backlog_bytes", l.event_backlog_bytes, 64 * 1024),
        ("limits.closed_streams_bytes", l.closed_streams_bytes, 0),
        ("limits.unauthenticated_outcomes_bytes", l.unauthenticated_outcomes_bytes, 0),
    ] {
        if v < min {
            return Err(bad(key, format!("{v} is too small (at least {min})")));
        }
    }
    let limits = l.clone();
    let o = &f.outbound;
    let mut deny = Vec::new();
    for (i, r) in o.deny.iter().enumerate() {
        deny.push(crate::net::dial::IpRange::parse(r).map_err(|e| bad(&format!("outbound.deny[{i}]"), e))?);
    }
    for (key, v) in
        [("outbound.max_dials", o.max_dials), ("outbound.max_targets", o.max_targets), ("outbound.max_addresses", o.max_addresses)]
    {
        if v == 0 {
            return Err(bad(key, "must be at least 1".into()));
        }
    }
    let outbound = OutboundSettings {
        deny,
        max_dials: o.max_dials,
        max_targets: o.max_targets,
        max_addresses: o.max_addresses,
        own: Default::default(),
    };
    let d = Timeouts::default();
    let t = &f.timeouts;
    let timeouts = Timeouts {
        negotiation: dur("timeouts.negotiation", &t.negotiation, d.negotiation)?,
        connect: dur("timeouts.connect", &t.connect, d.connect)?,
        dialback: dur("timeouts.dialback", &t.dialback, d.dialback)?,
        close: dur("timeouts.close", &t.close, d.close)?,
        idle_outbound: dur("timeouts.idle_outbound", &t.idle_outbound, d.idle_outbound)?,
        keepalive: dur("timeouts.keepalive", &t.keepalive, d.keepalive)?,
        probe: dur("timeouts.probe", &t.probe, d.probe)?,
        write: dur("timeouts.write", &t.write, d.write)?,
        idle_inbound: dur("timeouts.idle_inbound", &t.idle_inbound, d.idle_inbound)?,
    };
    let mode = match &f.policy.mode {
        None => crate::policy::Mode::Open,
        Some(m) => {
            crate::policy::Mode::parse(m).ok_or_else(|| bad("policy.mode", format!("{m:?} is not one of open, approval, allowlist")))?
        }
    };
    let policy = PolicySettings { mode, approval_wait: dur("policy.approval_wait", &f.policy.approval_wait, Duration::from_secs(60))? };
    let max_records = f.store.max_records.unwrap_or(100_000);
    if max_records < 100 {
        return Err(bad("store.max_records", format!("{max_records} is too small (at least 100)")));
    }
    let store = StoreSettings {
        max_records,
        max_age: dur("store.max_age", &f.store.max_age, Duration::from_secs(90 * 86400))?,
        flush_interval: dur("store.flush_interval", &f.store.flush_interval, Duration::from_secs(1))?,
        snapshot_interval: dur("store.snapshot_interval", &f.store.snapshot_interval, Duration::from_secs(30))?,
    };
    let auth = match &f.auth.mode {
        None => AuthMode::CertOrDialback,
        Some(m) => AuthMode::parse(m).ok_or_else(|| bad("auth.mode", format!("{m:?} is not one of cert-or-dialback, cert-only")))?,
    };
    let mut rules: Vec<DomainRule> = Vec::new();
    for (i, d) in f.domains.iter().enumerate() {
        let name = Domain::parse(&d.name).map_err(|e| bad(&format!("domain[{i}].name"), format!("{:?}: {e}", d.name)))?;
        if rules.iter().any(|r| r.name == name) {
            return Err(bad(&format!("domain[{i}].name"), format!("{name} has two [[domain]] blocks")));
        }
        let auth = match &d.auth {
            None => None,
            Some(a) => Some(
                AuthMode::parse(a)
                    .ok_or_else(|| bad(&format!("domain[{i}].auth"), format!("{a:?} is not one of cert-or-dialback, cert-only")))?,
            ),
        };
        rules.push(DomainRule { name, auth, require_encryption: d.require_encryption });
    }
    let security = Security { auth, require_encryption: tls.require_encryption, rules };
    let gateway = match &f.gateway {
        None => None,
        Some(g) => {
            let internal: SocketAddr = g.internal.parse().map_err(|_| {
                bad(
                    "gateway.internal",
                    format!("{:?} is not an address like \"10.0.0.4:5269\" (the internal server's s2s port)", g.internal),
                )
            })?;
            if g.listen.is_empty() {
                return Err(bad(
                    "gateway.listen",
                    "at least one address is required: where the internal server's s2s streams arrive".into(),
                ));
            }
            let mut gl = Vec::new();
            for (i, a) in g.listen.iter().enumerate() {
                let key = format!("gateway.listen[{i}]");
                let addr: SocketAddr = a.parse().map_err(|_| bad(&key, format!("{a:?} is not an address like \"10.0.0.5:5269\"")))?;
                if addr.port() != 0 && (listen.contains(&addr) || direct_tls.contains(&addr)) {
                    return Err(bad(
                        &key,
                        format!("{addr} is also in server.listen or server.direct_tls; the gateway listener must be an address of its own"),
                    ));
                }
                gl.push(addr);
            }
            if gl.contains(&internal) {
                return Err(bad("gateway.internal", format!("{internal} is also in gateway.listen: drawbridge would talk to itself")));
            }
            let auth = match g.auth.as_deref() {
                None | Some("pki") => GatewayAuth::Pki,
                Some("dialback") => GatewayAuth::Dialback,
                Some(a) => return Err(bad("gateway.auth", format!("{a:?} is not one of pki, dialback"))),
            };
            let (ca_cert, ca_key) = (g.ca_cert.as_deref().map(resolve), g.ca_key.as_deref().map(resolve));
            match (&ca_cert, &ca_key) {
                (Some(_), None) => {
                    return Err(bad("gateway.ca_key", "gateway.ca_cert is set, so gateway.ca_key (its PEM key) is required".into()));
                }
                (None, Some(_)) => {
                    return Err(bad(
                        "gateway.ca_cert",
                        "gateway.ca_key is set, so gateway.ca_cert (the CA's PEM certificate) is required".into(),
                    ));
                }
                _ => {}
            }
            let mints_per_minute = g.mints_per_minute.unwrap_or(60);
            if mints_per_minute == 0 {
                return Err(bad("gateway.mints_per_minute", "must be at least 1".into()));
            }
            let internal_ca = g.internal_ca.as_deref().map(resolve);
            if auth == GatewayAuth::Pki && internal_ca.is_none() {
                return Err(bad(
                    "gateway.internal_ca",
                    "required under auth = \"pki\": the CA (PEM) the internal server's certificate chains to — trusted for the internal server only, instead of the system roots and [tls] ca_file".into(),
                ));
            }
            let allow = match &g.allow {
                None => vec![crate::net::dial::IpRange::parse(&internal.ip().to_string()).map_err(|e| bad("gateway.internal", e))?],
                Some(list) if list.is_empty() => {
                    return Err(bad(
                        "gateway.allow",
                        "empty: nobody could connect to gateway.listen (leave it out to allow gateway.internal's address)".into(),
                    ));
                }
                Some(list) => list
                    .iter()
                    .enumerate()
                    .map(|(i, r)| crate::net::dial::IpRange::parse(r).map_err(|e| bad(&format!("gateway.allow[{i}]"), e)))
                    .collect::<Result<_, _>>()?,
            };
            let max_minted = g.max_minted.unwrap_or(10_000);
            if max_minted < 10 {
                return Err(bad("gateway.max_minted", format!("{max_minted} is too small (at least 10)")));
            }
            Some(GatewaySettings { internal, listen: gl, auth, ca_cert, ca_key, mints_per_minute, internal_ca, allow, max_minted })
        }
    };
    if !matches!(f.log.level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
        return Err(bad("log.level", format!("{:?} is not one of error, warn, info, debug, trace", f.log.level)));
    }
    let mut components = ComponentSettings::default();
    for (i, a) in f.components.listen.iter().enumerate() {
        let key = format!("components.listen[{i}]");
        let addr: SocketAddr = a.parse().map_err(|_| bad(&key, format!("{a:?} is not an address like \"127.0.0.1:5347\"")))?;
        let taken = listen.contains(&addr) || direct_tls.contains(&addr) || gateway.as_ref().is_some_and(|g| g.listen.contains(&addr));
        if addr.port() != 0 && taken {
            return Err(bad(&key, format!("{addr} is already a listener of another kind; components need an address of their own")));
        }
        components.listen.push(addr);
    }
    for (i, c) in f.component.iter().enumerate() {
        let key = format!("component[{i}].domain");
        let domain = Domain::parse(&c.domain).map_err(|e| bad(&key, format!("{:?}: {e}", c.domain)))?;
        if domains.contains(&domain) {
            return Err(bad(&key, format!("{domain} is in server.domains; a component needs a domain of its own (e.g. a subdomain)")));
        }
        // A component owns its domain and every subdomain of it (the router and what the
        // component may send from). Nested with another component, one of them would answer
        // for the other; around a hosted domain, it would take that domain's traffic. A
        // component *under* a hosted domain (pubsub.example.org) is the usual layout and no
        // overlap: a hosted domain is only itself.
        for (j, other) in components.list.iter().enumerate() {
            let other_key = format!("component[{j}].domain");
            if domain == other.domain {
                return Err(bad(&key, format!("{domain} has two [[component]] blocks")));
            } else if is_under(&domain, &other.domain) {
                return Err(bad(&key, format!("{:?} lies under {other_key} {:?}: {}", domain.as_str(), other.domain.as_str(), NESTED)));
            } else if is_under(&other.domain, &domain) {
                return Err(bad(&key, format!("{:?} lies around {other_key} {:?}: {}", domain.as_str(), other.domain.as_str(), NESTED)));
            }
        }
        if let Some((j, hosted)) = domains.iter().enumerate().find(|(_, h)| is_under(h, &domain)) {
            return Err(bad(
                &key,
                format!(
                    "{:?} lies around server.domains[{j}] {:?}: the component would take that hosted domain's traffic; give the component a name of its own (e.g. a subdomain of a hosted domain)",
                    domain.as_str(),
                    hosted.as_str()
                ),
            ));
        }
        let (secret, secret_file) = match (&c.secret, &c.secret_file) {
            (Some(_), Some(_)) => {
                return Err(bad(&format!("component[{i}].secret_file"), "set either secret or secret_file, not both".into()));
            }
            (None, None) => {
                return Err(bad(
                    &format!("component[{i}].secret"),
                    "required (or secret_file: a file holding it): the shared secret of the component's handshake".into(),
                ));
            }
            (Some(s), None) => (s.clone(), None),
            (None, Some(sf)) => {
                let p = resolve(sf);
                let key = format!("component[{i}].secret_file");
                // A secret is a line: a device, a FIFO or a huge file named by mistake is
                // refused, not read. Judged on the opened file (no window for the path to
                // change between the look and the read), opened without blocking (a FIFO
                // with no writer would hold start-up), read 4096 bytes at most whatever its
                // size said.
                use std::io::Read;
                use std::os::unix::fs::OpenOptionsExt;
                let cannot = |e: std::io::Error| bad(&key, format!("{}: cannot read it: {e}", p.display()));
                let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&p).map_err(cannot)?;
                let m = f.metadata().map_err(cannot)?;
                if !m.is_file() {
                    return Err(bad(&key, format!("{}: not a regular file", p.display())));
                }
                let mut bytes = Vec::new();
                f.take(4097).read_to_end(&mut bytes).map_err(cannot)?;
                if m.len() > 4096 || bytes.len() > 4096 {
                    return Err(bad(
                        &key,
                        format!(
                            "{}: {} bytes; a secret file holds one line (4096 bytes at most)",
                            p.display(),
                            m.len().max(bytes.len() as u64)
                        ),
                    ));
                }
                let text = String::from_utf8(bytes).map_err(|_| bad(&key, format!("{}: cannot read it: not UTF-8", p.display())))?;
                // A file written by `echo` or an editor ends with a line break; it is no part of the secret.
                (text.trim_end_matches(['\n', '\r']).to_owned(), Some(p))
            }
        };
        if secret.chars().count() < 16 {
            let (key, whose) = match &secret_file {
                Some(p) => (format!("component[{i}].secret_file"), format!("the secret in {}", p.display())),
                None => (format!("component[{i}].secret"), "it".to_owned()),
            };
            return Err(bad(&key, format!("{whose} must be at least 16 characters (it is all that authenticates the component)")));
        }
        components.list.push(ComponentDef { domain, secret, secret_file });
    }
    if !components.list.is_empty() && components.listen.is_empty() {
        return Err(bad(
            "components.listen",
            "[[component]] blocks are configured, so an address for them to connect to is required".into(),
        ));
    }
    Ok(Settings {
        source: path.map(Path::to_path_buf),
        domains,
        listen,
        direct_tls,
        data_dir,
        control_socket,
        tls,
        dns,
        limits,
        timeouts,
        policy,
        store,
        security,
        log_level: f.log.level,
        log_file: f.log.file.as_deref().map(resolve),
        outbound,
        gateway,
        components,
    })
}

#[cfg(test)]
mod tests {
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
        let ok =
            "[components]\nlisten = [\"127.0.0.1:5347\"]\n[[component]]\ndomain = \"pubsub.localhost\"\nsecret = \"0123456789abcdef\"\n";
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
        assert_eq!(
            sec.auth_for("legacy.example"),
            (AuthMode::CertOrDialback, "[[domain]] legacy.example: auth = \"cert-or-dialback\"".into())
        );
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
        assert!(parse_duration("3y").is_err());
    }
}
