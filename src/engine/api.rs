//! The engine's one door: typed [`Request`]s in, typed [`Reply`]s or an [`EngineError`] out.
//! The control socket carries these as JSON; the dashboard, `ctl`, the demo and the tests use
//! them as they are.

use serde::{Deserialize, Serialize};

use crate::limits;

/// An operator's request. On the socket, one JSON object per line tagged by `cmd`
/// (`{"cmd":"block","domain":"x.test"}`); the wire format is README's "Operating it".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Connections {
        #[serde(default)]
        closed: bool,
    },
    Close {
        id: String,
    },
    Probe {
        domain: String,
        #[serde(default)]
        from: Option<String>,
    },
    Verifications {
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Approve {
        domain: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Block {
        domain: String,
        /// Seconds until the block lifts by itself.
        #[serde(default)]
        for_secs: Option<u64>,
        #[serde(default)]
        reason: Option<String>,
    },
    Blacklist {
        domain: String,
        reason: String,
    },
    Unblock {
        domain: String,
    },
    Mode {
        mode: String,
    },
    Pending,
    Domains {
        #[serde(default)]
        state: Option<String>,
    },
    Domain {
        domain: String,
    },
    /// `ctl explain`: what would happen now to a stream from and to the domain, rule by rule.
    Explain {
        domain: String,
    },
    /// `ctl rtbl`: each real-time blocklist feed configured, its state and its entries.
    Rtbl,
    /// `ctl metrics`: the OpenMetrics exposition, as `GET /metrics` serves it.
    Metrics,
    /// `ctl certs`: the certificates remote domains last authenticated by, soonest expiry
    /// first, and ours.
    Certs {
        /// Only those expiring within this many seconds (or expired): `--expiring 30d`.
        #[serde(default)]
        expiring_s: Option<u64>,
    },
    /// `ctl keep`: a listed domain's block made the operator's own (it outlives the
    /// listing's retract), with the listing as its provenance.
    Keep {
        domain: String,
        #[serde(default)]
        reason: Option<String>,
    },
    History {
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    BlacklistImport {
        text: String,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
    BlacklistExport,
    /// Re-read certificates and keys.
    Reload,
    /// Everything a dashboard needs to (re)build its model.
    Snapshot,
    /// A stream's transcript (live or recently closed).
    Transcript {
        id: String,
    },
    /// Start/stop recording an established stream's transcript for this client (stops when
    /// the client disconnects).
    Watch {
        id: String,
        on: bool,
    },
}

/// `Request::Snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub status: Status,
    pub connections: Vec<crate::events::ConnSnapshot>,
    pub domains: Vec<crate::store::DomainRecord>,
    pub outcomes: Vec<crate::events::VerificationOutcome>,
    /// The real-time blocklists followed and their entries (the dashboard's RTBL view and its
    /// "listed" marks).
    #[serde(default)]
    pub rtbl: RtblReport,
}

/// `ctl rtbl`: every `[[rtbl]]` feed in the configuration order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RtblReport {
    pub feeds: Vec<FeedReport>,
    /// Stanzas to the subscriber's JID dropped before any feed since start: from a domain
    /// that is no service's, or because the feeds' driver was behind.
    #[serde(default)]
    pub inbox: InboxCounts,
}

/// See [`RtblReport::inbox`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboxCounts {
    pub foreign: u64,
    pub dropped: u64,
}

/// One feed: its status (as its subscriber last stored it; `subscribing` with no entries
/// before the first) and its entries by domain, retracted ones included and marked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedReport {
    pub status: crate::rtbl::FeedStatus,
    /// `max_entries`: entries beyond it are ignored (and counted).
    pub max_entries: usize,
    pub entries: Vec<crate::store::RtblRecord>,
}

impl RtblReport {
    /// The domains listed now (not retracted), each with its listings' feed and report in
    /// words (`listed by xmppbl.org: spam`).
    pub fn listed(&self) -> std::collections::HashMap<String, Vec<String>> {
        let mut m: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        for f in &self.feeds {
            for e in f.entries.iter().filter(|e| e.retracted_ms.is_none()) {
                m.entry(e.domain.clone()).or_default().push(format!("listed by {}: {}", e.service, listing_summary(e)));
            }
        }
        m
    }
}

/// A stored listing's reason in words (as the policy words it): the report's text, else its
/// reason's short form, else "listed".
pub fn listing_summary(r: &crate::store::RtblRecord) -> String {
    crate::rtbl::report::Listing { reason: r.reason.clone(), text: r.text.clone(), block_strangers: r.block_strangers }.summary()
}

/// `ctl keep`: the change made, and the listing it keeps (its provenance).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeepReport {
    pub record: crate::store::DomainRecord,
    pub changed: bool,
    pub closed_streams: Vec<String>,
    /// The listing kept: the feed's, with its report; retracted or not.
    pub listing: crate::store::RtblRecord,
}

/// `ctl domain`: everything known about one domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainReport {
    pub domain: String,
    pub record: Option<crate::store::DomainRecord>,
    /// The verdict policy gives it now, in words.
    pub verdict: String,
    pub outcomes: Vec<crate::events::VerificationOutcome>,
    pub streams: Vec<crate::events::ConnSnapshot>,
    pub policy_log: Vec<crate::store::PolicyAction>,
    /// Its listings by the real-time blocklists followed, with their reports; retracted ones
    /// included (their provenance explains a past refusal).
    #[serde(default)]
    pub listings: Vec<crate::store::RtblRecord>,
    /// Its streams open now (`live_streams_in`, `live_streams_out`); the record counts the
    /// ended ones.
    #[serde(flatten)]
    pub live: crate::events::LiveStreams,
}

/// `ctl domains` / `ctl pending`: a domain's record (its fields as they are, `streams_in`
/// and `streams_out` counting its ended streams) and its streams open now
/// (`live_streams_in`, `live_streams_out`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainRow {
    #[serde(flatten)]
    pub record: crate::store::DomainRecord,
    #[serde(flatten)]
    pub live: crate::events::LiveStreams,
}

/// `ctl explain`: the policy's decision with its trace (the same evaluation streams get),
/// and what only the engine knows: how the security rules apply to a stream each way, the
/// last verification and certificate seen, and the live streams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainReport {
    pub domain: String,
    pub verdict: ExplainVerdict,
    /// A refusal's text, as the peer would get it.
    pub reason: Option<String>,
    /// The rule that gave the verdict.
    pub decided_by: crate::policy::Rule,
    /// Every rule in the order applied, then the authentication and encryption rules.
    pub steps: Vec<ExplainStep>,
    /// "listed by …": shown wherever the domain appears, whatever the verdict.
    pub marks: Vec<String>,
    /// What happens to a stream from the domain and to it, in that order.
    pub directions: Vec<DirectionExplained>,
    /// The newest verification outcome for the domain.
    pub last_verification: Option<crate::events::VerificationOutcome>,
    /// The newest certificate judged for the domain (a live stream's, else a closed one's).
    pub certificate: Option<CertificateSeen>,
    /// It has authenticated by certificate before.
    pub cert_auth_seen: bool,
    /// Set when it fell back from certificates to dialback (a downgrade).
    pub downgrade: Option<String>,
    /// Its live streams (which a refusal would close).
    pub streams: Vec<crate::events::ConnSnapshot>,
}

/// What the policy does with the domain's streams (`allow`, `hold`, `refuse`; a refusal's
/// text is [`ExplainReport::reason`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExplainVerdict {
    Allow,
    Hold,
    Refuse,
}

/// One rule of an [`ExplainReport`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainStep {
    pub rule: crate::policy::Rule,
    pub matched: bool,
    pub found: String,
    pub effect: String,
    pub decided: bool,
}

/// A stream from (`in`) or to (`out`) the explained domain: what happens to it and what it
/// must meet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectionExplained {
    pub direction: crate::events::Direction,
    /// The verdict's effect on such a stream, in words.
    pub outcome: String,
    /// The authentication and encryption requirements, each naming the rule that sets it.
    pub requirements: Vec<String>,
}

/// A certificate judged for the domain, and on which stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateSeen {
    pub verdict: crate::types::CertVerdict,
    pub stream: String,
    pub live: bool,
    /// When the stream opened (unix ms).
    pub at_ms: u64,
}

/// The answer to a policy change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeReport {
    pub record: crate::store::DomainRecord,
    pub changed: bool,
    pub closed_streams: Vec<String>,
}

/// `ctl mode`: the mode now and the streams it closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: String,
    pub closed_streams: Vec<String>,
}

/// The engine's typed answer to a [`Request`]. In the process (the dashboard, the demo, the
/// tests) it is used as it is; only on the control socket does it become JSON (the payload
/// alone), and `control` turns it back knowing the request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(Box<Status>),
    /// A stream list: `connections`, `history`.
    Streams(Vec<crate::events::ConnSnapshot>),
    /// Done, in words (`close`, `reload`, `watch`; the blacklist export).
    Text(String),
    Probe(Box<ProbeReport>),
    Outcomes(Vec<crate::events::VerificationOutcome>),
    Change(Box<ChangeReport>),
    Mode(ModeReport),
    Domains(Vec<DomainRow>),
    Domain(Box<DomainReport>),
    Explain(Box<ExplainReport>),
    Rtbl(Box<RtblReport>),
    Keep(Box<KeepReport>),
    Import(Box<ImportReport>),
    Snapshot(Box<Snapshot>),
    Transcript(Vec<crate::events::TranscriptLine>),
    Certs(Box<CertsReport>),
}

/// `ctl certs`: the certificate each remote domain last authenticated by (its record's),
/// soonest expiry first, and our own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertsReport {
    /// When it was made (unix seconds): what the days left are reckoned from.
    pub now_s: i64,
    /// `certs.warn_before`, seconds: what counts as expiring.
    pub warn_before_s: u64,
    /// `--expiring`, seconds: only domains whose certificate expires within it are listed.
    #[serde(default)]
    pub expiring_within_s: Option<u64>,
    pub local: Vec<LocalCert>,
    pub domains: Vec<RemoteCertRow>,
}

/// One remote domain's last certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteCertRow {
    pub domain: String,
    /// Against `certs.warn_before`.
    pub expiry: crate::types::CertExpiry,
    /// The certificate: `not_after_s`, `issuer`, `subject`, `fingerprint_sha256`, `method`,
    /// `direction`, `seen_ms` (when the domain last authenticated by it).
    #[serde(flatten)]
    pub cert: crate::types::RemoteCert,
    /// When the domain was last seen at all (unix ms).
    pub last_seen_ms: Option<u64>,
}

/// One of our certificates and its expiry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalCert {
    /// `tls` (what peers are shown) or `gateway-ca` (the CA the internal server trusts).
    pub certificate: String,
    /// Its file.
    pub path: String,
    pub subject: String,
    pub issuer: String,
    /// notAfter, unix seconds (`None`: unreadable).
    pub not_after_s: Option<i64>,
    /// Against `certs.warn_before`.
    pub expiry: Option<crate::types::CertExpiry>,
}

/// `ctl status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub domains: Vec<String>,
    pub listen: Vec<String>,
    pub uptime_s: u64,
    pub streams_in: usize,
    pub streams_out: usize,
    pub established: usize,
    pub require_encryption: bool,
    pub mode: String,
    /// `[policy] approval_wait` in seconds (the dashboard's countdown).
    #[serde(default)]
    pub approval_wait_s: u64,
    pub pending: usize,
    pub blocked: usize,
    pub blacklisted: usize,
    /// Current use against each limit.
    #[serde(default)]
    pub limits: Vec<limits::LimitUse>,
    /// Gateway mode: the internal server and how it is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// Stanzas whose link made no room within `timeouts.write`: bounced or dropped.
    #[serde(default)]
    pub overflows: crate::router::Overflows,
    /// Our certificates and their expiry (the one peers are shown first).
    #[serde(default)]
    pub certificates: Vec<LocalCert>,
    /// `certs.warn_before`, seconds: from then on a certificate is expiring.
    #[serde(default)]
    pub certs_warn_before_s: u64,
}

/// `ctl status` in gateway mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// `gateway.internal`.
    pub internal: String,
    /// `gateway.listen`, as bound.
    pub listen: Vec<String>,
    pub auth: String,
    /// The CA certificate the internal server must trust.
    pub ca_cert: String,
    /// Whether the internal server is reachable, from the internal link's streams: `Some(true)`
    /// while one of ours to it is established, `Some(false)` when the last one failed
    /// (`last_error` says why), `None` before any was opened.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    /// Streams of the internal link now (ours to it, and its to us).
    pub streams_out: usize,
    pub streams_in: usize,
}

/// `ctl probe`: the outcome of an XEP-0199 ping over federation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    pub ok: bool,
    pub from: String,
    pub to: String,
    pub rtt_ms: Option<f64>,
    pub stream: Option<String>,
    pub peer_addr: Option<String>,
    pub auth: Option<String>,
    pub tls: Option<String>,
    /// Why it failed, in words.
    pub error: Option<String>,
}

/// What a blacklist import did (or would do, for a dry run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub source: String,
    pub added: Vec<String>,
    pub already: Vec<String>,
    pub invalid: Vec<crate::policy::BadLine>,
    /// Live streams closed (or that would be).
    pub closed_streams: Vec<String>,
}

/// Why a request was refused, in words that say what was wrong and how to fix it. The
/// control socket sends the text (`{"ok":false,"error":…}`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{domain:?} is not a valid domain: {reason}")]
    InvalidDomain { domain: String, reason: String },
    #[error("{0} is hosted here; policy applies to remote domains")]
    Hosted(String),
    #[error("{0} is hosted here (server.domains): explain judges remote domains; name one of those")]
    ExplainHosted(String),
    #[error(
        "{0} is not listed by any real-time blocklist followed (see `drawbridge ctl rtbl`); there is no listing to keep — to block it anyway: `drawbridge ctl block {0}`"
    )]
    NeverListed(String),
    #[error("--from {0}: not a hosted domain (server.domains)")]
    NotHosted(String),
    #[error("no live stream with id {0} (see `drawbridge ctl connections`)")]
    NoLiveStream(String),
    #[error("no stream with id {0} (live or recently closed)")]
    NoStream(String),
    #[error("a blacklist entry needs a reason (--reason)")]
    ReasonRequired,
    #[error("{0:?} is not a mode: open, approval or allowlist")]
    NotAMode(String),
    #[error("{0:?} is not a state: unknown, pending, approved, blocked, blacklisted")]
    NotAState(String),
    /// The policy change could not be written; nothing changed.
    #[error("not saved (the previous policy stays in force): {0}")]
    NotSaved(#[from] crate::policy::StorageError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("TLS reload failed, keeping the current certificate: {0}")]
    TlsReload(#[from] crate::net::tls::TlsError),
}

/// The addresses the engine listens on, as bound (a configured port 0 resolved), by door.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    /// `server.listen`.
    pub federation: Vec<std::net::SocketAddr>,
    /// `server.direct_tls` (XEP-0368).
    pub direct_tls: Vec<std::net::SocketAddr>,
    /// Gateway mode: where the internal server's streams arrive (`gateway.listen`).
    pub gateway: Vec<std::net::SocketAddr>,
    /// Where external components connect (`[components] listen`).
    pub components: Vec<std::net::SocketAddr>,
    /// Where `GET /metrics` is served (`[metrics] listen`).
    pub metrics: Vec<std::net::SocketAddr>,
}
