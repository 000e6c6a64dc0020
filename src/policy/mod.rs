//! Federation policy: what the operator decided per domain, and the federation mode.
//! [`decide`] is the pure decision ([`explain`] the same decision with its trace, see
//! [`decision`]); [`Policy`] holds the live state (loaded from the store, written through to
//! it before an operator's change is acknowledged).

pub mod decision;
pub mod live;

use serde::{Deserialize, Serialize};

pub use crate::types::Verdict;
pub use decision::{BlacklistHit, Facts, Inbound, Listed, Rule, Step, Trace, decide, explain};
pub use live::{Change, ChangeError, Plan, Planned, Policy, Proposal, WhatIf, next_record};

/// `[policy] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every verified domain that is not blocked or blacklisted federates.
    #[default]
    Open,
    /// A verified domain never decided before becomes pending and waits for the operator.
    Approval,
    /// Only approved domains federate.
    Allowlist,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "open" => Some(Mode::Open),
            "approval" => Some(Mode::Approval),
            "allowlist" => Some(Mode::Allowlist),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Approval => "approval",
            Mode::Allowlist => "allowlist",
        }
    }
}

/// What is known about a domain's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    #[default]
    Unknown,
    Pending,
    Approved,
    Blocked,
    Blacklisted,
}

impl DomainState {
    pub fn parse(s: &str) -> Option<DomainState> {
        match s {
            "unknown" => Some(DomainState::Unknown),
            "pending" => Some(DomainState::Pending),
            "approved" => Some(DomainState::Approved),
            "blocked" => Some(DomainState::Blocked),
            "blacklisted" => Some(DomainState::Blacklisted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Unknown => "unknown",
            DomainState::Pending => "pending",
            DomainState::Approved => "approved",
            DomainState::Blocked => "blocked",
            DomainState::Blacklisted => "blacklisted",
        }
    }
}

/// The operator's decision about one domain, as far as policy needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Standing {
    pub state: DomainState,
    pub reason: Option<String>,
    /// A block's end (unix ms); after it the domain is back in `previous`.
    pub expires_ms: Option<u64>,
    pub previous: DomainState,
}

impl Standing {
    /// The state in force at `now` (an expired block has lifted by itself).
    pub fn effective(&self, now_ms: u64) -> DomainState {
        match (self.state, self.expires_ms) {
            (DomainState::Blocked, Some(t)) if t <= now_ms => self.previous,
            (s, _) => s,
        }
    }
}

/// The suffixes of a domain by label, longest first: `a.b.c` → `a.b.c`, `b.c`, `c`.
pub fn suffixes(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |d| d.find('.').map(|i| &d[i + 1..]))
}

/// One line of a blacklist file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
    pub error: String,
}

/// Parse the plain format community blacklists use: one domain per line, `#` starts a
/// comment (a comment after a domain is kept as its reason), blank lines ignored.
pub fn parse_list(text: &str) -> (Vec<(crate::domain::Domain, Option<String>)>, Vec<BadLine>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let (entry, comment) = match raw.find('#') {
            Some(p) => (&raw[..p], Some(raw[p + 1..].trim()).filter(|c| !c.is_empty())),
            None => (raw, None),
        };
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        match crate::domain::Domain::parse(entry) {
            Ok(d) if d.as_str().contains('.') || d.as_str() == "localhost" => {
                if !ok.iter().any(|(x, _): &(crate::domain::Domain, _)| *x == d) {
                    ok.push((d, comment.map(str::to_owned)));
                }
            }
            Ok(_) => {
                bad.push(BadLine { line: i + 1, text: raw.to_owned(), error: "a single label is a top-level domain, not a server".into() })
            }
            Err(e) => bad.push(BadLine { line: i + 1, text: raw.to_owned(), error: e.to_string() }),
        }
    }
    (ok, bad)
}

/// The blacklist in the same format, each entry's reason and source as a comment.
pub fn export_blacklist(records: &[DomainRecord]) -> String {
    let mut out = String::from("# drawbridge blacklist: one domain per line; it covers its subdomains too\n");
    for r in records.iter().filter(|r| r.state == DomainState::Blacklisted) {
        out.push_str(&r.domain);
        let mut notes = Vec::new();
        if let Some(reason) = &r.reason {
            notes.push(reason.replace('\n', " "));
        }
        if let Some(src) = &r.source {
            notes.push(format!("source: {src}"));
        }
        if !notes.is_empty() {
            out.push_str("  # ");
            out.push_str(&notes.join("; "));
        }
        out.push('\n');
    }
    out
}

/// A domain's standing and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DomainRecord {
    pub domain: String,
    pub state: DomainState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub who: Option<String>,
    #[serde(default)]
    pub when_ms: Option<u64>,
    /// A block's end (unix ms).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// The state a block returns to when it expires.
    #[serde(default)]
    pub previous: DomainState,
    /// A blacklist entry's source: `operator` or an imported list's name.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub first_seen_ms: Option<u64>,
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    #[serde(default)]
    pub streams_in: u64,
    #[serde(default)]
    pub streams_out: u64,
    #[serde(default)]
    pub stanzas_in: u64,
    #[serde(default)]
    pub stanzas_out: u64,
    #[serde(default)]
    pub last_verification: Option<String>,
    /// The domain has authenticated by certificate before.
    #[serde(default)]
    pub cert_auth_seen: bool,
    /// Set when a domain that used certificates authenticates by dialback only (a downgrade).
    #[serde(default)]
    pub downgrade: Option<String>,
    /// The last certificate it authenticated by: its expiry and issuer (`ctl certs`, the
    /// dashboard's marks, the expiring-certificates metric). Absent in records written
    /// before it was kept, and for domains that never authenticated by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<crate::types::RemoteCert>,
}

impl DomainRecord {
    /// Take `other`'s decision (state, reason, who, when, expiry, the state a block returns
    /// to, source), keeping this record's counters and sightings: a decision made elsewhere
    /// (another node) over what this node counted.
    pub fn take_decision(&mut self, other: &DomainRecord) {
        self.state = other.state;
        self.reason.clone_from(&other.reason);
        self.who.clone_from(&other.who);
        self.when_ms = other.when_ms;
        self.expires_ms = other.expires_ms;
        self.previous = other.previous;
        self.source.clone_from(&other.source);
    }
}

/// One operator action (the policy log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAction {
    pub time_ms: u64,
    pub who: String,
    pub action: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `[policy]`: the federation mode at first start (an operator's live change, persisted,
/// wins afterwards) and how long a pending domain's streams are held.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub mode: Mode,
    pub approval_wait: std::time::Duration,
}

/// A storage failure, in words (the backend's own error says which file and what to do).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// One operator change as it is written: the mode, the records and their log entries,
/// together. With several nodes it is also what the others are told.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyWrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<PolicyAction>,
}

/// Where the policy keeps what operators decided; written before a change is applied.
/// The store implements it; the policy itself knows no database.
pub trait PolicyStore: Send + Sync {
    fn mode(&self) -> Result<Option<Mode>, StorageError>;
    fn domains(&self) -> Result<Vec<DomainRecord>, StorageError>;
    /// A record drawbridge changed by itself, written behind: its counters (`from: None`: the
    /// decision is not drawbridge's to write), or also its decision, changed from the state
    /// `from` (a pending mark, a lifted hold, an expired block) — written only if the stored
    /// decision is still that one (on a shared store another node's operator may have decided
    /// meanwhile, and an operator's decision is never overwritten by one derived from an older
    /// state).
    fn put_domain(&self, rec: &DomainRecord, from: Option<DomainState>) -> Result<(), StorageError>;
    /// An entry of the policy log drawbridge writes by itself, written behind.
    fn log_action(&self, action: &PolicyAction) -> Result<(), StorageError>;
    /// An operator's change: durable when it returns, and not written at all when it fails.
    fn commit<'a>(
        &'a self,
        w: &'a PolicyWrite,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'a>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parsing_reports_bad_lines() {
        let (ok, bad) = parse_list("# community list\n\nevil.example\nspam.example # sends spam\nbad domain\ncom\nEVIL.example.\n");
        let names: Vec<_> = ok.iter().map(|(d, r)| (d.as_str(), r.as_deref())).collect();
        assert_eq!(names, vec![("evil.example", None), ("spam.example", Some("sends spam"))]);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn export_round_trips() {
        let recs = vec![DomainRecord {
            domain: "evil.example".into(),
            state: DomainState::Blacklisted,
            reason: Some("spam".into()),
            source: Some("operator".into()),
            ..Default::default()
        }];
        let text = export_blacklist(&recs);
        let (ok, bad) = parse_list(&text);
        assert!(bad.is_empty());
        assert_eq!(ok[0].0.as_str(), "evil.example");
        assert_eq!(ok[0].1.as_deref(), Some("spam; source: operator"));
    }

    fn st(state: DomainState) -> Standing {
        Standing { state, ..Default::default() }
    }

    /// The decision as it was called before it had a trace (no listings, no security).
    fn decide(mode: Mode, domain: &str, own: Option<&Standing>, bl: Option<(&str, Option<&str>)>, now_ms: u64) -> Verdict {
        let blacklisted_by = bl.map(|(entry, reason)| BlacklistHit { entry, reason, source: None });
        let f = Facts { mode, domain, own, blacklisted_by, listings: &[], security: None, now_ms };
        let v = super::decide(&f);
        assert_eq!(explain(&f).verdict, v);
        v
    }

    #[test]
    fn modes() {
        for (mode, unknown) in [(Mode::Open, Verdict::Allow), (Mode::Approval, Verdict::Hold)] {
            assert_eq!(decide(mode, "x", None, None, 0), unknown);
            assert_eq!(decide(mode, "x", Some(&st(DomainState::Pending)), None, 0), unknown);
        }
        assert!(matches!(decide(Mode::Allowlist, "x", None, None, 0), Verdict::Refuse(r) if r.contains("allowlist")));
        for mode in [Mode::Open, Mode::Approval, Mode::Allowlist] {
            assert_eq!(decide(mode, "x", Some(&st(DomainState::Approved)), None, 0), Verdict::Allow);
            assert!(matches!(decide(mode, "x", Some(&st(DomainState::Blocked)), None, 0), Verdict::Refuse(_)));
        }
    }

    #[test]
    fn blacklist_wins_and_names_the_entry() {
        let approved = st(DomainState::Approved);
        let v = decide(Mode::Open, "chat.evil.example", Some(&approved), Some(("evil.example", Some("spam"))), 0);
        assert_eq!(v, Verdict::Refuse("chat.evil.example is blacklisted through evil.example: spam".into()));
    }

    #[test]
    fn block_expires_to_previous_state() {
        let s =
            Standing { state: DomainState::Blocked, reason: Some("flood".into()), expires_ms: Some(1000), previous: DomainState::Approved };
        assert!(matches!(decide(Mode::Allowlist, "x", Some(&s), None, 999), Verdict::Refuse(r) if r == "x is blocked: flood"));
        assert_eq!(decide(Mode::Allowlist, "x", Some(&s), None, 1000), Verdict::Allow);
        let s = Standing { previous: DomainState::Unknown, ..s };
        assert_eq!(decide(Mode::Approval, "x", Some(&s), None, 5000), Verdict::Hold);
    }

    #[test]
    fn suffix_walk() {
        assert_eq!(suffixes("a.b.c").collect::<Vec<_>>(), vec!["a.b.c", "b.c", "c"]);
        assert_eq!(suffixes("c").collect::<Vec<_>>(), vec!["c"]);
    }
}
