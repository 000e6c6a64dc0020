//! Policy dry runs (`Request::Preview`): a proposed change judged by the policy's own
//! decision against the live streams and the recorded history, and nothing changed.
//!
//! The change is turned into the policy's [`Proposal`] by [`proposal`], the function the
//! real command uses too; [`Policy::what_if`](crate::policy::Policy::what_if) plans it with the
//! code that applies it and judges every domain before and after with the decision streams
//! get. Which live streams would close is [`refused_on`], the test [`super::commands::enforce`]
//! applies after a real change. What the history says of each domain is tallied by the pure
//! [`tally`].
//!
//! A dry run reads much (every domain seen in the window, the history of closed streams):
//! it runs on a blocking thread, one at a time, and holds the policy's lock only to copy the
//! facts it judges by, a chunk at a time ([`Policy::what_if`](crate::policy::Policy::what_if)),
//! never while judging: streams' verdicts and the recorder's writes are not held up.

use std::collections::HashMap;
use std::sync::Arc;

use super::Shared;
use super::api::*;
use crate::domain::Domain;
use crate::events::{ConnSnapshot, PairStatus, StreamKind};
use crate::policy::{BadLine, Change, Mode, Proposal, Rule, Verdict, WhatIf};
use crate::table::ConnEntry;

const DAY_MS: u64 = 86_400_000;

/// A policy-changing request as the policy's change, checked as the command checks it (a
/// valid remote domain, a blacklist's reason, a known mode); an import's lines that are not
/// domains come back beside it. `now` dates a timed block's end.
pub(super) fn proposal(shared: &Shared, change: &PolicyChange, now: u64) -> Result<(Proposal, Vec<BadLine>), EngineError> {
    let one = |domain: &str, change: Change, reason: Option<String>| -> Result<(Proposal, Vec<BadLine>), EngineError> {
        let d = Domain::parse(domain).map_err(|e| EngineError::InvalidDomain { domain: domain.to_owned(), reason: e.to_string() })?;
        if shared.is_server_domain(&d) {
            return Err(EngineError::Hosted(d.to_string()));
        }
        Ok((Proposal::Domain { domain: d, change, reason }, Vec::new()))
    };
    match change {
        PolicyChange::Approve { domain, reason } => one(domain, Change::Approve, reason.clone()),
        PolicyChange::Block { domain, for_secs, reason } => {
            let expires_ms = for_secs.map(|s| now.saturating_add(s.saturating_mul(1000)));
            one(domain, Change::Block { expires_ms }, reason.clone())
        }
        PolicyChange::Blacklist { domain, reason } => {
            if reason.trim().is_empty() {
                return Err(EngineError::ReasonRequired);
            }
            one(domain, Change::Blacklist { source: "operator".into() }, Some(reason.clone()))
        }
        PolicyChange::Unblock { domain } => one(domain, Change::Unblock, None),
        PolicyChange::Mode { mode } => {
            Ok((Proposal::Mode(Mode::parse(mode).ok_or_else(|| EngineError::NotAMode(mode.clone()))?), Vec::new()))
        }
        PolicyChange::BlacklistImport { text, source } => {
            let (entries, invalid) = crate::policy::parse_list(text);
            // Hosted domains are never judged: an entry naming one is left out.
            let entries = entries.into_iter().filter(|(d, _)| !shared.is_server_domain(d)).collect();
            Ok((Proposal::Import { entries, source: source.clone().unwrap_or_else(|| "import".into()) }, invalid))
        }
    }
}

/// Whose standing a live stream depends on: a federation stream's remote domains (claimed
/// or verified); on the internal link, the world domain drawbridge stands in for (its local
/// side, the internal server's domains being ours); a component is ours.
pub(super) fn judged(e: &ConnEntry) -> Vec<String> {
    match e.kind {
        StreamKind::Federation => e.remotes(),
        StreamKind::Internal => e.snapshot().local.into_iter().collect(),
        StreamKind::Component => Vec::new(),
    }
}

/// The first of a stream's [`judged`] domains that `verdict` refuses, and the refusal: why
/// the stream closes after a change ([`super::commands::enforce`]), or would (a dry run).
pub(super) fn refused_among(judged: &[String], verdict: impl Fn(&Domain) -> Verdict) -> Option<(String, String)> {
    judged.iter().find_map(|remote| {
        let d = Domain::parse(remote).ok()?;
        match verdict(&d) {
            Verdict::Refuse(why) => Some((remote.clone(), why)),
            _ => None,
        }
    })
}

/// What the history says of one domain within the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub last_seen_ms: Option<u64>,
    pub streams: u64,
    pub stanzas_in: u64,
    pub stanzas_out: u64,
    pub live_streams: u64,
}

impl Seen {
    fn saw(&mut self, at: u64) {
        self.last_seen_ms = Some(self.last_seen_ms.map_or(at, |t| t.max(at)));
    }
}

/// The domains seen since `since_ms`, with their last-seen time and stream and stanza
/// counts: records last seen in the window (`records`: each domain's last sighting), closed
/// streams active in it and the live streams. A stream counts for the domains authenticated
/// on it (verified or held for approval), never for a mere claim; the internal link and
/// components are not remote domains. Pure: the caller reads the policy, the store and the table.
pub fn tally<'r>(
    records: impl IntoIterator<Item = (&'r str, Option<u64>)>,
    closed: &[ConnSnapshot],
    live: &[ConnSnapshot],
    since_ms: u64,
) -> HashMap<String, Seen> {
    let mut seen: HashMap<String, Seen> = HashMap::new();
    for (domain, last_seen) in records {
        if let Some(t) = last_seen.filter(|t| *t >= since_ms) {
            seen.entry(domain.to_owned()).or_default().saw(t);
        }
    }
    let authenticated = |s: &ConnSnapshot| {
        let mut v: Vec<String> = if s.kind == StreamKind::Federation {
            s.pairs.iter().filter(|p| matches!(p.status, PairStatus::Valid | PairStatus::Held)).map(|p| p.remote.clone()).collect()
        } else {
            Vec::new()
        };
        v.sort_unstable();
        v.dedup();
        v
    };
    for (s, is_live) in closed.iter().map(|s| (s, false)).chain(live.iter().map(|s| (s, true))) {
        let at = s.last_activity_ms.max(s.opened_ms);
        if !is_live && at < since_ms {
            continue;
        }
        for d in authenticated(s) {
            let e = seen.entry(d).or_default();
            e.saw(at);
            e.streams += 1;
            e.stanzas_in += s.stanzas_in;
            e.stanzas_out += s.stanzas_out;
            e.live_streams += u64::from(is_live);
        }
    }
    seen
}

fn judgement((verdict, rule): (Verdict, Rule)) -> Judgement {
    let (verdict, reason) = match verdict {
        Verdict::Allow => (ExplainVerdict::Allow, None),
        Verdict::Hold => (ExplainVerdict::Hold, None),
        Verdict::Refuse(r) => (ExplainVerdict::Refuse, Some(r)),
    };
    Judgement { verdict, reason, decided_by: rule }
}

fn impact(w: &WhatIf<'_>, domain: &str, seen: Seen) -> DomainImpact {
    DomainImpact {
        domain: domain.to_owned(),
        before: judgement(w.before(domain)),
        after: judgement(w.after(domain)),
        last_seen_ms: seen.last_seen_ms,
        streams: seen.streams,
        stanzas_in: seen.stanzas_in,
        stanzas_out: seen.stanzas_out,
        live_streams: seen.live_streams,
    }
}

/// `Request::Preview`: the change planned and judged, nothing written, logged, announced
/// or closed. One at a time ([`EngineError::PreviewBusy`] while another runs), on a blocking
/// thread (it reads the store and judges every domain seen in the window).
pub(super) async fn preview(
    shared: &Arc<Shared>,
    change: PolicyChange,
    days: Option<u32>,
    who: &str,
) -> Result<PreviewReport, EngineError> {
    let one = shared.previews.clone().try_acquire_owned().map_err(|_| EngineError::PreviewBusy)?;
    let (shared, who) = (shared.clone(), who.to_owned());
    let tasks = shared.tasks.clone();
    let run = tasks.spawn_blocking(move || {
        let _one = one;
        compute(&shared, &change, days, &who)
    });
    match run.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(EngineError::PreviewCancelled),
    }
}

/// The preview itself (blocking: the store, the table, the judging).
fn compute(shared: &Shared, change: &PolicyChange, days: Option<u32>, who: &str) -> Result<PreviewReport, EngineError> {
    let days = days.unwrap_or(PREVIEW_DAYS);
    if days == 0 || days > PREVIEW_MAX_DAYS {
        return Err(EngineError::Days(days));
    }
    let now = crate::types::now_ms();
    let (proposal, invalid) = proposal(shared, change, now)?;
    let since = now.saturating_sub(u64::from(days) * DAY_MS);
    // Read before the policy's facts are copied: the store and the table (no row is locked
    // under the policy's lock); of the records, only the sightings in the window.
    let live: Vec<(ConnSnapshot, Vec<String>)> = shared.table.live().iter().map(|e| (e.snapshot(), judged(e))).collect();
    let live_snaps: Vec<ConnSnapshot> = live.iter().map(|(s, _)| s.clone()).collect();
    // The names into one buffer: no allocation per record while the read lock is held.
    let (mut names, mut sightings) = (String::new(), Vec::new());
    shared.policy.for_each_record(|r| {
        if let Some(t) = r.last_seen_ms.filter(|t| *t >= since) {
            let start = names.len();
            names.push_str(&r.domain);
            sightings.push((start..names.len(), t));
        }
    });
    let sightings = sightings.into_iter().map(|(at, t)| (&names[at], Some(t)));
    // A blocking thread of the runtime: the store's read may wait on its database.
    let history = tokio::runtime::Handle::current().block_on(shared.store.history_since(since))?;
    let seen = tally(sightings, &history, &live_snaps, since);
    // Every domain judged: those seen, and those the live streams depend on.
    let parsed: Vec<String> = live.iter().flat_map(|(_, j)| j.iter().filter_map(|d| Some(Domain::parse(d).ok()?.to_string()))).collect();
    let mut asked: Vec<&str> = seen.keys().map(String::as_str).collect();
    asked.extend(parsed.iter().map(String::as_str));
    let mut report = shared.policy.what_if(&proposal, who, now, &asked, |w| {
        let plan = w.plan();
        let closing = live
            .iter()
            .filter_map(|(s, judged)| {
                let (domain, reason) = refused_among(judged, |d| w.after(d.as_str()).0)?;
                Some(ClosingStream {
                    id: s.id.clone(),
                    direction: s.direction,
                    local: s.local.clone(),
                    domain,
                    reason,
                    stanzas_in: s.stanzas_in,
                    stanzas_out: s.stanzas_out,
                })
            })
            .collect();
        let (mut refused, mut held, mut allowed) = (Vec::new(), Vec::new(), Vec::new());
        for (d, s) in &seen {
            let i = impact(w, d, *s);
            if i.before.verdict == i.after.verdict {
                continue;
            }
            match i.after.verdict {
                ExplainVerdict::Refuse => refused.push(i),
                ExplainVerdict::Hold => held.push(i),
                ExplainVerdict::Allow => allowed.push(i),
            }
        }
        let target = match &proposal {
            Proposal::Domain { domain, .. } => Some(impact(w, domain.as_str(), seen.get(domain.as_str()).copied().unwrap_or_default())),
            _ => None,
        };
        PreviewReport {
            change: change.describe(),
            changes: plan.changes(),
            days,
            history_days: shared.settings.store.max_age.as_secs() / 86_400,
            mode: plan.mode.map(|(from, to)| ModeChange { from: from.as_str().into(), to: to.as_str().into() }),
            records: plan
                .records
                .iter()
                .map(|p| StandingChange {
                    domain: p.after.domain.clone(),
                    from: p.before.as_ref().map(|b| b.state).unwrap_or_default(),
                    to: p.after.state,
                    expires_ms: p.after.expires_ms,
                    reason: p.after.reason.clone(),
                })
                .collect(),
            unchanged: plan.unchanged.iter().map(|r| r.domain.clone()).collect(),
            invalid,
            target,
            closing,
            newly_refused: refused,
            newly_held: held,
            newly_allowed: allowed,
            seen: seen.len(),
            source: match &proposal {
                Proposal::Import { source, .. } => Some(source.clone()),
                _ => None,
            },
            generation: w.generation(),
        }
    });
    // The most recently seen first, then by name.
    for v in [&mut report.newly_refused, &mut report.newly_held, &mut report.newly_allowed] {
        v.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then_with(|| a.domain.cmp(&b.domain)));
    }
    report.closing.sort_by(|a, b| a.domain.cmp(&b.domain).then_with(|| a.id.cmp(&b.id)));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AuthMethod, ConnState, Direction, PairInfo};
    use crate::policy::DomainRecord;

    fn snap(remote: &str, status: PairStatus, dir: Direction, last: u64, stanzas: (u64, u64)) -> ConnSnapshot {
        ConnSnapshot {
            id: format!("s-{remote}-{last}"),
            direction: dir,
            kind: StreamKind::Federation,
            local: Some("home.test".into()),
            remote: Some(remote.into()),
            peer_addr: None,
            state: ConnState::Closed,
            stream_id: None,
            tls: None,
            pairs: vec![PairInfo { local: "home.test".into(), remote: remote.into(), status, method: AuthMethod::Dialback }],
            opened_ms: last.saturating_sub(10),
            last_activity_ms: last,
            stanzas_in: stanzas.0,
            stanzas_out: stanzas.1,
            bytes_in: 0,
            bytes_out: 0,
            close_reason: None,
            limits: None,
        }
    }

    fn rec(domain: &str, last_seen: Option<u64>) -> DomainRecord {
        DomainRecord { domain: domain.into(), last_seen_ms: last_seen, ..Default::default() }
    }

    /// Only what was seen in the window counts; a claim is not a sighting; live streams
    /// always count and are counted apart.
    #[test]
    fn the_window_holds_what_was_seen_in_it() {
        let since = 1_000;
        let records = [rec("old.test", Some(999)), rec("recent.test", Some(5_000)), rec("never.test", None)];
        let closed = [
            snap("recent.test", PairStatus::Valid, Direction::In, 4_000, (7, 0)),
            snap("recent.test", PairStatus::Valid, Direction::Out, 3_000, (0, 2)),
            snap("old.test", PairStatus::Valid, Direction::In, 500, (9, 9)),
            snap("claimed.test", PairStatus::Pending, Direction::In, 4_000, (1, 1)),
            snap("held.test", PairStatus::Held, Direction::In, 2_000, (3, 0)),
        ];
        let live = [snap("old.test", PairStatus::Valid, Direction::Out, 900, (0, 4))];
        let seen = tally(records.iter().map(|r| (r.domain.as_str(), r.last_seen_ms)), &closed, &live, since);
        let mut names: Vec<&str> = seen.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["held.test", "old.test", "recent.test"]);
        assert_eq!(
            seen["recent.test"],
            Seen { last_seen_ms: Some(5_000), streams: 2, stanzas_in: 7, stanzas_out: 2, live_streams: 0 },
            "the record's last sighting is the newest; the streams in the window are counted"
        );
        assert_eq!(
            seen["old.test"],
            Seen { last_seen_ms: Some(900), streams: 1, stanzas_in: 0, stanzas_out: 4, live_streams: 1 },
            "seen now through its live stream; its closed stream before the window does not count"
        );
        assert_eq!(seen["held.test"].stanzas_in, 3);
    }
}
