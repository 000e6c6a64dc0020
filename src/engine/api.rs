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
        /// Every node's streams on a shared store (`ctl connections --cluster`): answered
        /// with [`Reply::Cluster`].
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cluster: bool,
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
    /// A policy change's dry run (`ctl … --dry-run`, the dashboard before it asks): what the
    /// change would do, judged by the policy's own decision, and nothing changed.
    Preview {
        change: PolicyChange,
        /// How far back the recorded history is read, in days (default 30).
        #[serde(default)]
        days: Option<u32>,
    },
    /// A policy change made as previewed (the dashboard, once the operator confirms): the
    /// command's own request as `change`, refused with [`EngineError::Stale`] if the policy's
    /// generation is no longer `expect_generation` (the preview's
    /// [`PreviewReport::generation`]); without one it is the command itself.
    Change {
        change: PolicyChange,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_generation: Option<u64>,
    },
}

/// The history a dry run reads by default, in days.
pub const PREVIEW_DAYS: u32 = 30;
/// The longest history a dry run reads, in days (ten years).
pub const PREVIEW_MAX_DAYS: u32 = 3650;

/// A policy-changing request, as both the command and its dry run ([`Request::Preview`])
/// take it: on the wire the same object as the request itself (`{"cmd":"block",…}`), and
/// turned into the policy's change by one function in the engine, so a preview cannot
/// judge a different change than the command would make.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum PolicyChange {
    Approve {
        domain: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Block {
        domain: String,
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
    BlacklistImport {
        text: String,
        #[serde(default)]
        source: Option<String>,
    },
}

impl Request {
    /// The policy change this request makes, if it makes one (a blacklist import's dry-run
    /// flag aside).
    pub fn policy_change(&self) -> Option<PolicyChange> {
        Some(match self.clone() {
            Request::Approve { domain, reason } => PolicyChange::Approve { domain, reason },
            Request::Block { domain, for_secs, reason } => PolicyChange::Block { domain, for_secs, reason },
            Request::Blacklist { domain, reason } => PolicyChange::Blacklist { domain, reason },
            Request::Unblock { domain } => PolicyChange::Unblock { domain },
            Request::Mode { mode } => PolicyChange::Mode { mode },
            Request::BlacklistImport { text, source, .. } => PolicyChange::BlacklistImport { text, source },
            _ => return None,
        })
    }
}

impl From<PolicyChange> for Request {
    /// The request that makes the change for real (what the dashboard sends once the
    /// operator confirms a preview).
    fn from(c: PolicyChange) -> Request {
        match c {
            PolicyChange::Approve { domain, reason } => Request::Approve { domain, reason },
            PolicyChange::Block { domain, for_secs, reason } => Request::Block { domain, for_secs, reason },
            PolicyChange::Blacklist { domain, reason } => Request::Blacklist { domain, reason },
            PolicyChange::Unblock { domain } => Request::Unblock { domain },
            PolicyChange::Mode { mode } => Request::Mode { mode },
            PolicyChange::BlacklistImport { text, source } => Request::BlacklistImport { text, source, dry_run: false },
        }
    }
}

impl PolicyChange {
    /// The command in words, as an operator would type it (`block x.test for 2h`).
    pub fn describe(&self) -> String {
        match self {
            PolicyChange::Approve { domain, .. } => format!("approve {domain}"),
            PolicyChange::Block { domain, for_secs: Some(s), .. } => {
                format!("block {domain} for {}", humantime::format_duration(std::time::Duration::from_secs(*s)))
            }
            PolicyChange::Block { domain, for_secs: None, .. } => format!("block {domain}"),
            PolicyChange::Blacklist { domain, .. } => format!("blacklist {domain}"),
            PolicyChange::Unblock { domain } => format!("unblock {domain}"),
            PolicyChange::Mode { mode } => format!("mode {mode}"),
            PolicyChange::BlacklistImport { source, .. } => format!("blacklist import ({})", source.as_deref().unwrap_or("import")),
        }
    }
}

/// `Request::Preview`: what a policy change would do, nothing changed. Every verdict is the
/// policy's decision function's, on the policy as it is and as it would be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreviewReport {
    /// The command previewed, in words.
    pub change: String,
    /// Whether the command would change anything at all.
    pub changes: bool,
    /// The history read: domains seen in the last `days` days.
    pub days: u32,
    /// How long the history is kept (`store.max_age`), in days: a longer `days` finds nothing older.
    pub history_days: u64,
    /// A mode change: the mode now and the one proposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeChange>,
    /// The records the command would write: each domain's standing before and after.
    pub records: Vec<StandingChange>,
    /// Domains named whose standing would stay as it is (an import's entries already
    /// blacklisted, the same block again).
    pub unchanged: Vec<String>,
    /// An import's lines that are not domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<crate::policy::BadLine>,
    /// A command about one domain: how that domain is judged before and after, seen or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<DomainImpact>,
    /// The live streams it would close (with `<policy-violation/>`).
    pub closing: Vec<ClosingStream>,
    /// Domains seen in the last `days` days that would be refused (allowed or held now).
    pub newly_refused: Vec<DomainImpact>,
    /// Seen domains that would be held for the operator's approval (allowed or refused now).
    pub newly_held: Vec<DomainImpact>,
    /// Seen domains that would be allowed (refused or held now).
    pub newly_allowed: Vec<DomainImpact>,
    /// How many domains seen in the window were judged.
    pub seen: usize,
    /// An import's list name (each entry's source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The policy's generation the preview judged: a change sent with it
    /// ([`Request::Change`]'s `expect_generation`) is refused if the policy changed since.
    #[serde(default)]
    pub generation: u64,
}

/// What a line of a preview is about (the dashboard colours by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewLine {
    Heading,
    Refused,
    Held,
    Allowed,
    Plain,
}

impl Judgement {
    /// `refused (operator decision): x.test is blocked: flood`, `allowed (federation mode)`.
    fn words(&self) -> String {
        let v = match self.verdict {
            ExplainVerdict::Allow => "allowed",
            ExplainVerdict::Hold => "held for approval",
            ExplainVerdict::Refuse => "refused",
        };
        let why = self.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        format!("{v} ({}){why}", self.decided_by.as_str())
    }

    fn short(&self) -> &'static str {
        match self.verdict {
            ExplainVerdict::Allow => "allowed",
            ExplainVerdict::Hold => "held",
            ExplainVerdict::Refuse => "refused",
        }
    }
}

impl DomainImpact {
    /// `last seen …; 3 stream(s), 1 live; stanzas 40 in, 7 out`, or that it was not seen.
    pub fn history(&self, days: u32) -> String {
        match self.last_seen_ms {
            None => format!("not seen in the last {days} days"),
            Some(t) => format!(
                "last seen {}; {} stream(s), {} live; stanzas {} in, {} out",
                crate::types::fmt_utc(t),
                self.streams,
                self.live_streams,
                self.stanzas_in,
                self.stanzas_out
            ),
        }
    }
}

impl PreviewReport {
    /// The preview in words, a line each, as `ctl … --dry-run` prints it and the dashboard
    /// shows it before it asks. The strings are the engine's: the caller escapes them.
    pub fn lines(&self) -> Vec<(PreviewLine, String)> {
        use PreviewLine as L;
        let list = |v: &[String]| {
            if v.len() <= 10 { v.join(", ") } else { format!("{}, … ({} more; --json lists all)", v[..10].join(", "), v.len() - 10) }
        };
        let mut out = vec![(
            L::Heading,
            format!("dry run: {} — nothing has been changed{}", self.change, if self.changes { "" } else { "; it would change nothing" }),
        )];
        if let Some(m) = &self.mode {
            out.push((L::Plain, format!("mode: {} → {}", m.from, m.to)));
        }
        match &self.source {
            Some(source) => {
                let added: Vec<String> = self.records.iter().map(|r| r.domain.clone()).collect();
                let sep = if added.is_empty() { "" } else { ": " };
                out.push((L::Plain, format!("would add {} domain(s) from {source}{sep}{}", added.len(), list(&added))));
                let sep = if self.unchanged.is_empty() { "" } else { ": " };
                out.push((L::Plain, format!("already blacklisted: {}{sep}{}", self.unchanged.len(), list(&self.unchanged))));
            }
            None => {
                for r in &self.records {
                    let until = r.expires_ms.map(|t| format!(" until {}", crate::types::fmt_utc(t))).unwrap_or_default();
                    let why = r.reason.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
                    out.push((L::Plain, format!("would record {}: {} → {}{until}{why}", r.domain, r.from.as_str(), r.to.as_str())));
                }
                for d in &self.unchanged {
                    out.push((L::Plain, format!("{d}: its standing would stay as it is")));
                }
            }
        }
        for b in &self.invalid {
            out.push((L::Plain, format!("skipped line {}: {:?}: {}", b.line, b.text, b.error)));
        }
        if let Some(t) = &self.target {
            let kind = if t.before.verdict == t.after.verdict {
                L::Plain
            } else {
                match t.after.verdict {
                    ExplainVerdict::Refuse => L::Refused,
                    ExplainVerdict::Hold => L::Held,
                    ExplainVerdict::Allow => L::Allowed,
                }
            };
            let head = if t.before.verdict == t.after.verdict {
                format!("{}: stays {}", t.domain, t.after.words())
            } else {
                format!("{}: {} → {}", t.domain, t.before.short(), t.after.words())
            };
            out.push((kind, head));
            out.push((L::Plain, format!("  {}", t.history(self.days))));
        }
        if self.closing.is_empty() {
            out.push((L::Heading, "would close no live stream".into()));
        } else {
            out.push((L::Heading, format!("would close {} live stream(s):", self.closing.len())));
            for c in &self.closing {
                let (dir, arrow) = match c.direction {
                    crate::events::Direction::In => ("in ", "←"),
                    crate::events::Direction::Out => ("out", "→"),
                };
                out.push((
                    L::Refused,
                    format!(
                        "  {dir} {} {} {arrow} {} ({} stanzas in, {} out): {}",
                        c.id,
                        c.local.as_deref().unwrap_or("-"),
                        c.domain,
                        c.stanzas_in,
                        c.stanzas_out,
                        c.reason
                    ),
                ));
            }
        }
        let changed = self.newly_refused.len() + self.newly_held.len() + self.newly_allowed.len();
        out.push((
            L::Heading,
            format!("domains seen in the last {} days: {}, of which {changed} would be judged otherwise", self.days, self.seen),
        ));
        for (v, kind, what) in [
            (&self.newly_refused, L::Refused, "newly refused"),
            (&self.newly_held, L::Held, "newly held for approval"),
            (&self.newly_allowed, L::Allowed, "newly allowed"),
        ] {
            if v.is_empty() {
                continue;
            }
            out.push((L::Heading, format!("{what} ({}):", v.len())));
            for i in v {
                out.push((kind, format!("  {}: {} → {}", i.domain, i.before.short(), i.after.words())));
                out.push((L::Plain, format!("    {}", i.history(self.days))));
            }
        }
        if u64::from(self.days) > self.history_days {
            out.push((
                L::Plain,
                format!("note: the history of closed streams is kept {} days (store.max_age): nothing older is known", self.history_days),
            ));
        }
        out
    }
}

/// `ctl mode --dry-run`: the mode now and the one proposed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModeChange {
    pub from: String,
    pub to: String,
}

/// A record a command would write: the domain's standing (its own, not its parents') now and after.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StandingChange {
    pub domain: String,
    pub from: crate::policy::DomainState,
    pub to: crate::policy::DomainState,
    /// A timed block's end (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How the decision judges a domain: its verdict, a refusal's text, and the rule that decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: ExplainVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub decided_by: crate::policy::Rule,
}

/// A domain whose verdict a change would turn, with what the history says of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainImpact {
    pub domain: String,
    pub before: Judgement,
    pub after: Judgement,
    /// When it was last seen: a live stream's last activity, else its record's or the
    /// history's newest (unix ms); none when never seen.
    pub last_seen_ms: Option<u64>,
    /// Its streams in the window: those in the history that were active in it, and the live ones.
    pub streams: u64,
    pub stanzas_in: u64,
    pub stanzas_out: u64,
    /// Its authenticated streams open now.
    pub live_streams: u64,
}

/// A live stream a change would close.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClosingStream {
    pub id: String,
    pub direction: crate::events::Direction,
    pub local: Option<String>,
    /// The domain refused on it.
    pub domain: String,
    /// The refusal, as the peer would get it.
    pub reason: String,
    pub stanzas_in: u64,
    pub stanzas_out: u64,
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
    /// Why outcomes, history or the policy log are missing: the store could not be read (a
    /// shared store out of reach); the rest is what this node holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
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
    /// False when it was the mode already: nothing was done.
    #[serde(default = "yes")]
    pub changed: bool,
    pub closed_streams: Vec<String>,
}

fn yes() -> bool {
    true
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
    Preview(Box<PreviewReport>),
    Snapshot(Box<Snapshot>),
    Transcript(Vec<crate::events::TranscriptLine>),
    Certs(Box<CertsReport>),
    /// `connections --cluster`: every node's streams, each with its node.
    Cluster(Box<ClusterConnections>),
}

/// `ctl connections --cluster`: the streams of every node sharing the store, each with the
/// node that has it. This node's come from its table (as `ctl connections` shows them);
/// the other nodes' as they last published them (every `cluster.heartbeat`), of the nodes
/// alive only (heartbeat younger than `cluster.node_timeout`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterConnections {
    /// The node that answered (its streams' transcripts are the ones it can show).
    pub node: String,
    pub streams: Vec<crate::store::NodeStream>,
    /// Why the other nodes' streams are missing (the shared store could not be read): the
    /// streams listed are this node's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
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
    /// The store: where, and whether it is reachable.
    #[serde(default)]
    pub store: crate::store::StoreStatus,
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
    #[error(
        "there is no cluster here: this node keeps its own store (store.backend = \"sled\"); `drawbridge ctl connections` lists its streams. Nodes share a view with store.backend = \"postgres\""
    )]
    NoCluster,
    #[error("no stream with id {0} (live or recently closed)")]
    NoStream(String),
    #[error("a blacklist entry needs a reason (--reason)")]
    ReasonRequired,
    #[error("--days {0}: give a number of days from 1 to {PREVIEW_MAX_DAYS}")]
    Days(u32),
    #[error("another dry run is being computed (one at a time); try again when it is done")]
    PreviewBusy,
    #[error("the dry run was cancelled: the engine is stopping")]
    PreviewCancelled,
    /// A change sent with the generation its preview saw, and the policy changed since.
    #[error("the policy changed since the preview; review it again")]
    Stale,
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

impl From<crate::policy::ChangeError> for EngineError {
    fn from(e: crate::policy::ChangeError) -> Self {
        match e {
            crate::policy::ChangeError::Stale { .. } => EngineError::Stale,
            crate::policy::ChangeError::Storage(e) => EngineError::NotSaved(e),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy change is on the wire what its request is, and back: a dry run cannot carry
    /// another change than the command.
    #[test]
    fn a_policy_change_is_its_request() {
        let changes = [
            PolicyChange::Approve { domain: "x.test".into(), reason: Some("partner".into()) },
            PolicyChange::Block { domain: "x.test".into(), for_secs: Some(60), reason: None },
            PolicyChange::Blacklist { domain: "x.test".into(), reason: "spam".into() },
            PolicyChange::Unblock { domain: "x.test".into() },
            PolicyChange::Mode { mode: "allowlist".into() },
            PolicyChange::BlacklistImport { text: "a.test\n".into(), source: Some("list".into()) },
        ];
        for c in changes {
            let req = Request::from(c.clone());
            assert_eq!(
                serde_json::to_value(&c).unwrap(),
                serde_json::to_value(&req)
                    .unwrap()
                    .as_object()
                    .map(|o| {
                        let mut o = o.clone();
                        o.remove("dry_run");
                        serde_json::Value::Object(o)
                    })
                    .unwrap()
            );
            assert_eq!(req.policy_change(), Some(c.clone()));
            let preview: Request =
                serde_json::from_value(serde_json::json!({"cmd": "preview", "change": serde_json::to_value(&c).unwrap()})).unwrap();
            assert_eq!(preview, Request::Preview { change: c, days: None });
        }
        assert_eq!(Request::Status.policy_change(), None);
        assert_eq!(PolicyChange::Block { domain: "x.test".into(), for_secs: Some(7200), reason: None }.describe(), "block x.test for 2h");
    }
}
