//! Configuration: the TOML file (every key documented in `config.example.toml`) turned into
//! typed [`Settings`]. Unknown keys are rejected; every error names the file and the key.
//!
//! One submodule per section, each with the section as written and its one validator;
//! this module reads the file and puts the sections together.

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

mod certs;
mod components;
mod dns;
mod duration;
mod gateway;
mod limits;
mod log;
mod metrics;
mod outbound;
mod policy;
mod rtbl;
mod security;
mod server;
#[cfg(test)]
mod tests;
mod timeouts;
mod tls;

pub use certs::CertsSettings;
pub use components::{ComponentDef, ComponentSettings};
pub use duration::parse_duration;
pub use gateway::{GatewayAuth, GatewaySettings};
pub use limits::Limits;
pub use log::LogFormat;
pub use metrics::MetricsSettings;
pub use timeouts::Timeouts;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read it: {err}")]
    Read { file: String, err: std::io::Error },
    #[error("config {file}: line {line}: {msg}")]
    Syntax { file: String, line: usize, msg: String },
    #[error("config {file}: key `{key}`: {msg}")]
    Invalid { file: String, key: String, msg: String },
}

/// The file, as written: each section's own type, read by serde.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    server: server::ServerFile,
    tls: tls::TlsFile,
    dns: dns::DnsFile,
    limits: Limits,
    timeouts: timeouts::TimeoutsFile,
    policy: policy::PolicyFile,
    store: policy::StoreFile,
    cluster: policy::ClusterFile,
    auth: security::AuthFile,
    #[serde(rename = "domain")]
    domains: Vec<security::DomainFile>,
    log: log::LogFile,
    outbound: outbound::OutboundFile,
    gateway: Option<gateway::GatewayFile>,
    components: components::ComponentsFile,
    #[serde(rename = "component")]
    component: Vec<components::ComponentFile>,
    rtbl: Vec<rtbl::RtblFile>,
    strangers: rtbl::StrangersFile,
    metrics: metrics::MetricsFile,
    certs: certs::CertsFile,
}

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
    /// `log.format`: text or JSON lines.
    pub log_format: LogFormat,
    pub outbound: OutboundSettings,
    /// `[gateway]`: drawbridge in front of an internal XMPP server (the gateway module).
    pub gateway: Option<GatewaySettings>,
    /// `[components]` and `[[component]]`: external components (XEP-0114).
    pub components: ComponentSettings,
    /// `[[rtbl]]`: the real-time blocklists followed.
    pub rtbl: Vec<crate::rtbl::FeedSettings>,
    /// `[strangers]`: the familiarity set of the `strangers` action.
    pub strangers: crate::rtbl::familiar::FamiliarSettings,
    /// `[metrics]`: the OpenMetrics endpoint.
    pub metrics: metrics::MetricsSettings,
    /// `[certs]`: when a certificate's expiry is warned about.
    pub certs: CertsSettings,
    /// The RTBL subscriber's request timeout, re-sync period and back-off: not
    /// configurable (XEP-0060 services answer in seconds; the hourly re-sync is the issue's);
    /// tests shorten them.
    #[doc(hidden)]
    pub rtbl_timing: crate::rtbl::Timing,
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

/// What every section's validator is given: the file to name in errors, the directory that
/// relative paths are relative to.
struct Ctx<'a> {
    file: String,
    path: Option<&'a Path>,
}

impl Ctx<'_> {
    /// The error for `key`, naming the file; `msg` says what is wrong and how to fix it.
    fn bad(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.clone(), key: key.to_owned(), msg: msg.into() }
    }

    /// A path from the file: relative ones are relative to the file's directory (the
    /// built-in default's to the working directory).
    fn resolve(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        match self.path.and_then(Path::parent) {
            Some(base) if !p.is_absolute() => base.join(p),
            _ => p,
        }
    }

    /// `key`'s duration (see [`parse_duration`]), `default` if unset; zero is refused.
    fn duration(&self, key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
        let Some(s) = v else { return Ok(default) };
        let d = parse_duration(s).map_err(|m| self.bad(key, m))?;
        if d.is_zero() {
            return Err(self.bad(key, "must be greater than zero"));
        }
        Ok(d)
    }

    /// Every address of `list` (the key `key[i]`), or the first that is not one; `example`
    /// shows the form.
    fn addresses(&self, key: &str, list: &[String], example: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, a)| a.parse().map_err(|_| self.bad(&format!("{key}[{i}]"), format!("{a:?} is not an address like {example}"))))
            .collect()
    }
}

/// Each section through its validator, in an order where the later ones can check
/// themselves against the earlier (listeners of their own, component domains apart from
/// the hosted ones).
fn build(f: File, path: Option<&Path>) -> Result<Settings, ConfigError> {
    let cx = Ctx { file: path.map_or("(built-in default)".to_owned(), |p| p.display().to_string()), path };
    let server = f.server.validate(&cx)?;
    let tls = f.tls.validate(&cx)?;
    let dns = f.dns.validate(&cx)?;
    f.limits.validate(&cx)?;
    let outbound = f.outbound.validate(&cx)?;
    let timeouts = f.timeouts.validate(&cx)?;
    let policy = f.policy.validate(&cx)?;
    let store = f.store.validate(&cx, f.cluster.validate(&cx)?)?;
    let security = security::validate(&cx, &f.auth, &f.domains, tls.require_encryption)?;
    let gateway = f.gateway.as_ref().map(|g| g.validate(&cx, &server.public_listeners())).transpose()?;
    let log = f.log.validate(&cx)?;
    let mut taken = server.public_listeners();
    taken.extend(gateway.iter().flat_map(|g| g.listen.iter().copied()));
    let components = components::validate(&cx, &f.components, &f.component, &server.domains, &taken)?;
    let rtbl = rtbl::validate(&cx, &f.rtbl)?;
    let strangers = f.strangers.validate(&cx)?;
    taken.extend(components.listen.iter().copied());
    let metrics = f.metrics.validate(&cx, &taken)?;
    let certs = f.certs.validate(&cx)?;
    Ok(Settings {
        source: path.map(Path::to_path_buf),
        domains: server.domains,
        listen: server.listen,
        direct_tls: server.direct_tls,
        data_dir: server.data_dir,
        control_socket: server.control_socket,
        tls,
        dns,
        limits: f.limits,
        timeouts,
        policy,
        store,
        security,
        log_level: log.level,
        log_file: log.file,
        log_format: log.format,
        outbound,
        gateway,
        components,
        rtbl,
        strangers,
        metrics,
        certs,
        rtbl_timing: crate::rtbl::Timing::default(),
    })
}
