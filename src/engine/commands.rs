//! What each [`Request`] does: the operator's commands, run against the engine's state.
//! Only here (and in the engine's own loops) are the policy, the store and the table acted on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::api::*;
use crate::domain::Domain;
use crate::events::*;
use crate::policy::{Change, ChangeError, DomainState, Mode, Proposal, Verdict};
use crate::proto::ns;
use crate::proto::stanza::error_of;
use crate::proto::stream::{StreamError, StreamErrorCondition};
use crate::store::DomainRecord;
use crate::xml::Element;
use crate::{limits, table};

/// Run one request on behalf of `who` (attributed in the policy log).
pub(super) async fn execute(shared: &Arc<Shared>, req: Request, who: &str) -> Result<Reply, EngineError> {
    let text = |s: String| Ok(Reply::Text(s));
    // A blacklist import's dry run as the socket has long taken it: the preview, reported
    // as an import.
    if let Request::BlacklistImport { dry_run: true, .. } = &req
        && let Some(change) = req.policy_change()
    {
        let p = super::preview::preview(shared, change, None, who).await?;
        let added = p.records.into_iter().map(|r| r.domain).collect();
        let closed_streams = p.closing.into_iter().map(|c| c.id).collect();
        let (source, invalid) = (p.source.unwrap_or_default(), p.invalid);
        return Ok(Reply::Import(Box::new(ImportReport { dry_run: true, source, added, already: p.unchanged, invalid, closed_streams })));
    }
    // Every policy change goes through the one conversion its dry run uses too.
    if let Some(change) = req.policy_change() {
        return commit(shared, &change, who, None).await;
    }
    match req {
        Request::Status => Ok(Reply::Status(Box::new(status(shared)))),
        Request::Connections { closed, cluster: false } => Ok(Reply::Streams(shared.table.snapshots(closed))),
        Request::Connections { closed, cluster: true } => Ok(Reply::Cluster(Box::new(cluster_connections(shared, closed).await?))),
        Request::Close { id } => {
            if close_stream(shared, &id, "closed by the operator (ctl close)") {
                text(format!("closing stream {id}"))
            } else {
                Err(EngineError::NoLiveStream(id))
            }
        }
        Request::Probe { domain, from } => Ok(Reply::Probe(Box::new(probe(shared, &domain, from.as_deref()).await))),
        Request::Verifications { domain, limit } => Ok(Reply::Outcomes(shared.outcomes_for(domain.as_deref(), limit.unwrap_or(50)).await?)),
        Request::History { domain, limit } => Ok(Reply::Streams(shared.store.history(domain.as_deref(), limit.unwrap_or(50)).await?)),
        Request::Approve { .. }
        | Request::Block { .. }
        | Request::Blacklist { .. }
        | Request::Unblock { .. }
        | Request::Mode { .. }
        | Request::BlacklistImport { .. } => unreachable!("a policy change, committed above"),
        Request::Preview { change, days } => Ok(Reply::Preview(Box::new(super::preview::preview(shared, change, days, who).await?))),
        Request::Change { change, expect_generation } => commit(shared, &change, who, expect_generation).await,
        Request::Pending => Ok(Reply::Domains(domain_rows(shared, Some(DomainState::Pending)))),
        Request::Domains { state } => {
            let state = match state {
                Some(s) => Some(DomainState::parse(&s).ok_or(EngineError::NotAState(s))?),
                None => None,
            };
            Ok(Reply::Domains(domain_rows(shared, state)))
        }
        Request::Domain { domain } => Ok(Reply::Domain(Box::new(domain_report(shared, &parse(&domain)?).await?))),
        Request::Explain { domain } => Ok(Reply::Explain(Box::new(explain(shared, &domain).await?))),
        Request::Rtbl => Ok(Reply::Rtbl(Box::new(rtbl_report(shared)?))),
        Request::Metrics => text(super::metrics::render(shared)),
        Request::Certs { expiring_s } => Ok(Reply::Certs(Box::new(super::certs::report(shared, expiring_s.map(Duration::from_secs))))),
        Request::Keep { domain, reason } => Ok(Reply::Keep(Box::new(keep(shared, &domain, who, reason.as_deref()).await?))),
        Request::BlacklistExport => text(crate::policy::export_blacklist(&shared.policy.records(Some(DomainState::Blacklisted)))),
        Request::Snapshot => Ok(Reply::Snapshot(Box::new(snapshot(shared)))),
        Request::Reload => text(shared.reload_tls()?),
        Request::Transcript { id } => shared.table.transcript(&id).map(Reply::Transcript).ok_or(EngineError::NoStream(id)),
        Request::Watch { id, on } => match shared.table.get(&id) {
            Some(e) => {
                e.watch(on);
                text("ok".into())
            }
            None => Err(EngineError::NoLiveStream(id)),
        },
    }
}

/// Every node's streams: this node's from its table, the other nodes' from the shared store
/// (what it cannot read is named, this node's are listed all the same).
async fn cluster_connections(shared: &Shared, closed: bool) -> Result<ClusterConnections, EngineError> {
    let closed_max = shared.settings.limits.closed_streams;
    let others = shared.store.cluster_streams(closed, closed_max).await.ok_or(EngineError::NoCluster)?;
    let node = shared.settings.store.node.clone();
    let mut streams: Vec<crate::store::NodeStream> =
        shared.table.snapshots(closed).into_iter().map(|stream| crate::store::NodeStream { node: node.clone(), stream }).collect();
    let store_error = match others {
        Ok(v) => {
            streams.extend(v);
            None
        }
        Err(e) => Some(e.to_string()),
    };
    Ok(ClusterConnections { node, streams, store_error })
}

fn parse(domain: &str) -> Result<Domain, EngineError> {
    Domain::parse(domain).map_err(|e| EngineError::InvalidDomain { domain: domain.to_owned(), reason: e.to_string() })
}

/// A policy change made: turned into the policy's change by [`super::preview::proposal`]
/// (as its dry run is), applied, flushed, announced, enforced. With `expect` (the
/// generation a preview saw) it is refused, nothing changed, if the policy changed since.
async fn commit(shared: &Shared, change: &PolicyChange, who: &str, expect: Option<u64>) -> Result<Reply, EngineError> {
    match super::preview::proposal(shared, change, now_ms())? {
        (Proposal::Domain { domain, change, reason }, _) => {
            let (record, changed, closed_streams) = change_domain(shared, &domain, change, who, reason.as_deref(), expect).await?;
            Ok(Reply::Change(Box::new(ChangeReport { record, changed, closed_streams })))
        }
        (Proposal::Mode(m), _) => {
            let (changed, closed_streams) = change_mode(shared, m, who, expect).await?;
            Ok(Reply::Mode(ModeReport { mode: m.as_str().to_owned(), changed, closed_streams }))
        }
        (Proposal::Import { entries, source }, invalid) => {
            Ok(Reply::Import(Box::new(import_blacklist(shared, &entries, &source, invalid, who, expect).await?)))
        }
    }
}

/// Everything known about one domain.
/// The records (in `state`, or all), each with its live streams from the table.
fn domain_rows(shared: &Shared, state: Option<DomainState>) -> Vec<DomainRow> {
    let live = LiveStreams::by_domain(&shared.table.snapshots(false));
    let records = shared.policy.records(state);
    records.into_iter().map(|record| DomainRow { live: live.get(&record.domain).copied().unwrap_or_default(), record }).collect()
}

async fn domain_report(shared: &Shared, d: &Domain) -> Result<DomainReport, EngineError> {
    let verdict = match shared.policy.verdict(d) {
        Verdict::Allow => "allowed to federate".to_owned(),
        Verdict::Hold => "held until approved (policy mode approval)".to_owned(),
        Verdict::Refuse(why) => format!("refused: {why}"),
    };
    // What the store holds, if it can be read now: the rest stands without it.
    let mut store_error = None;
    let mut keep = |e: crate::store::StoreError| store_error = Some(e.to_string());
    let outcomes = match shared.outcomes_for(Some(d.as_str()), 10).await {
        Ok(v) => v,
        Err(e) => {
            keep(e);
            shared.recorder.recent_outcomes(Some(d.as_str()), 10)
        }
    };
    let streams = shared.store.history(Some(d.as_str()), 10).await.unwrap_or_else(|e| {
        keep(e);
        Vec::new()
    });
    let policy_log = shared.store.policy_log(Some(d.as_str()), 10).await.unwrap_or_else(|e| {
        keep(e);
        Vec::new()
    });
    Ok(DomainReport {
        domain: d.to_string(),
        record: shared.policy.record(d.as_str()),
        verdict,
        outcomes,
        streams,
        policy_log,
        listings: listings_of(shared, d.as_str())?,
        live: LiveStreams::by_domain(&shared.table.snapshots(false)).get(d.as_str()).copied().unwrap_or_default(),
        store_error,
    })
}

/// `ctl rtbl`: every configured feed, from the store (a feed whose subscriber stored no
/// status yet is subscribing, with no entries counted), with its entries.
fn rtbl_report(shared: &Shared) -> Result<RtblReport, EngineError> {
    let mut feeds = Vec::with_capacity(shared.settings.rtbl.len());
    for f in &shared.settings.rtbl {
        let key = f.key();
        let status = match shared.store.rtbl_status(&key)? {
            // What the configuration says now wins over what was stored under another.
            Some(s) => crate::rtbl::FeedStatus { action: f.action, ..s },
            None => crate::rtbl::FeedStatus::starting(f),
        };
        feeds.push(FeedReport { status, max_entries: f.max_entries, entries: shared.store.rtbl_records(&key)? });
    }
    let inbox = super::api::InboxCounts { foreign: shared.router.feed_foreign(), dropped: shared.router.feed_drops() };
    Ok(RtblReport { feeds, inbox })
}

/// A domain's listings by the configured feeds, retracted ones included, in configuration order.
fn listings_of(shared: &Shared, domain: &str) -> Result<Vec<crate::store::RtblRecord>, EngineError> {
    let mut found = Vec::new();
    for f in &shared.settings.rtbl {
        found.extend(shared.store.rtbl_record(&f.key(), domain)?);
    }
    Ok(found)
}

/// `ctl keep`: the domain's block becomes the operator's ([`Policy::keep_listing`]), its
/// reason naming the listing kept: one in force if any (the feed whose action weighs most),
/// else the one retracted last. An operator's reason is added to the listing's.
async fn keep(shared: &Shared, domain: &str, who: &str, reason: Option<&str>) -> Result<KeepReport, EngineError> {
    let d = parse(domain)?;
    if shared.is_server_domain(&d) {
        return Err(EngineError::Hosted(d.to_string()));
    }
    let feed_of = |r: &crate::store::RtblRecord| shared.settings.rtbl.iter().find(|f| f.service == r.service && f.node == r.node);
    let weight = |a: crate::rtbl::Action| match a {
        crate::rtbl::Action::Flag => 0,
        crate::rtbl::Action::Strangers => 1,
        crate::rtbl::Action::Hold => 2,
        crate::rtbl::Action::Block => 3,
    };
    let listing = listings_of(shared, d.as_str())?
        .into_iter()
        .max_by_key(|r| (r.retracted_ms.is_none(), feed_of(r).map_or(0, |f| weight(f.action)), r.retracted_ms.unwrap_or(0)))
        .ok_or_else(|| EngineError::NeverListed(d.to_string()))?;
    let action = feed_of(&listing).map(|f| f.action).unwrap_or_default();
    let summary = listing_summary(&listing);
    let listed = crate::policy::Listed {
        service: listing.service.clone(),
        node: listing.node.clone(),
        action,
        reason: match reason.map(str::trim).filter(|r| !r.is_empty()) {
            Some(r) => format!("{summary}; the operator: {r}"),
            None => summary,
        },
        block_strangers: listing.block_strangers,
    };
    let (record, changed) = shared.policy.keep_listing(&d, &listed, who).await?;
    let closed_streams = enforce(shared);
    if changed {
        let _ = shared.events.send(Event::DomainChanged { record: record.clone() });
    }
    Ok(KeepReport { record, changed, closed_streams, listing })
}

/// `ctl explain`: the policy's own evaluation with its trace ([`Policy::explain`], the code
/// [`Policy::verdict`] runs for streams), with what the engine applies around it.
async fn explain(shared: &Shared, domain: &str) -> Result<ExplainReport, EngineError> {
    let d = parse(domain)?;
    if shared.is_server_domain(&d) {
        return Err(EngineError::ExplainHosted(d.to_string()));
    }
    let security = &shared.settings.security;
    let trace = shared.policy.explain(&d, Some(security));
    let (verdict, reason) = match &trace.verdict {
        Verdict::Allow => (ExplainVerdict::Allow, None),
        Verdict::Hold => (ExplainVerdict::Hold, None),
        Verdict::Refuse(r) => (ExplainVerdict::Refuse, Some(r.clone())),
    };
    let directions = directions(shared, &d, &trace.verdict);
    let streams: Vec<ConnSnapshot> = shared.table.live().iter().filter(|e| is_of(e, d.as_str())).map(|e| e.snapshot()).collect();
    let record = shared.policy.record(d.as_str());
    Ok(ExplainReport {
        domain: d.to_string(),
        verdict,
        reason,
        decided_by: trace.decided_by,
        steps: trace
            .steps
            .iter()
            .map(|s| ExplainStep { rule: s.rule, matched: s.matched, found: s.found.clone(), effect: s.effect.clone(), decided: s.decided })
            .collect(),
        marks: trace.marks,
        directions,
        last_verification: shared.outcomes_for(Some(d.as_str()), 1).await?.into_iter().next(),
        certificate: certificate_seen(shared, d.as_str(), &streams).await?,
        cert_auth_seen: record.as_ref().is_some_and(|r| r.cert_auth_seen),
        downgrade: record.and_then(|r| r.downgrade),
        streams,
    })
}

/// Whether a live stream's standing depends on `domain` (as [`enforce`] judges it).
fn is_of(e: &table::ConnEntry, domain: &str) -> bool {
    match e.kind {
        StreamKind::Federation => e.remotes().iter().any(|r| r == domain),
        StreamKind::Internal => e.snapshot().local.as_deref() == Some(domain),
        StreamKind::Component => false,
    }
}

/// What the verdict does to a stream from the domain and to it, and the security rules as
/// the protocol machine applies them (`auth_for`, `require_encryption_for`).
fn directions(shared: &Shared, d: &Domain, verdict: &Verdict) -> Vec<DirectionExplained> {
    let sec = &shared.settings.security;
    let (auth, auth_rule) = sec.auth_for(d.as_str());
    let (tls, tls_rule) = sec.require_encryption_for(d.as_str());
    let cert_only = auth == crate::types::AuthMode::CertOnly;
    let wait = shared.settings.policy.approval_wait.as_secs();
    let inbound = match verdict {
        Verdict::Allow => "accepted once it authenticates".to_owned(),
        Verdict::Hold => format!(
            "authenticated, then held: listed as pending, its stanzas wait up to {wait}s (policy.approval_wait) for the operator, then the stream is refused"
        ),
        Verdict::Refuse(why) => format!("refused with <policy-violation/> at its stream header, before TLS: {why}"),
    };
    let outbound = match verdict {
        Verdict::Allow => "dialled and used once it authenticates".to_owned(),
        Verdict::Hold => "dialled and authenticated; stanzas wait until the operator approves it".to_owned(),
        Verdict::Refuse(why) => format!("never dialled: stanzas to it bounce with <policy-violation/>: {why}"),
    };
    let in_reqs = vec![
        if tls {
            format!("STARTTLS before dialback or stanzas ({tls_rule})")
        } else {
            format!("TLS optional: its dialback and stanzas are taken before TLS ({tls_rule})")
        },
        if cert_only {
            format!("a certificate valid for {d} (SASL EXTERNAL); dialback is not offered ({auth_rule})")
        } else {
            format!("SASL EXTERNAL when its certificate is valid for {d}, else Server Dialback ({auth_rule})")
        },
    ];
    let out_reqs = vec![
        if tls {
            format!("a server of it that offers no STARTTLS is not used ({tls_rule})")
        } else {
            format!("without STARTTLS offered, dialback in plaintext ({tls_rule})")
        },
        if cert_only {
            format!("its certificate must be valid for {d} before a stanza leaves; no dialback ({auth_rule})")
        } else {
            format!("SASL EXTERNAL when it offers it, else Server Dialback ({auth_rule})")
        },
    ];
    vec![
        DirectionExplained { direction: Direction::In, outcome: inbound, requirements: in_reqs },
        DirectionExplained { direction: Direction::Out, outcome: outbound, requirements: out_reqs },
    ]
}

/// The newest certificate judged for `domain`: its live streams', else the recently closed
/// ones' (memory), else the history's.
async fn certificate_seen(shared: &Shared, domain: &str, live: &[ConnSnapshot]) -> Result<Option<CertificateSeen>, EngineError> {
    let judged = |s: &ConnSnapshot, live: bool| {
        let of = s.remote.as_deref() == Some(domain) || s.pairs.iter().any(|p| p.remote == domain);
        let verdict = s.tls.as_ref().and_then(|t| t.cert_verdict.clone()).filter(|_| of)?;
        Some(CertificateSeen { verdict, stream: s.id.clone(), live, at_ms: s.opened_ms })
    };
    let newest = |v: Vec<CertificateSeen>| v.into_iter().max_by_key(|c| c.at_ms);
    if let Some(c) = newest(live.iter().filter_map(|s| judged(s, true)).collect()) {
        return Ok(Some(c));
    }
    let mut closed: Vec<CertificateSeen> = shared.table.closed().iter().filter_map(|s| judged(s, false)).collect();
    closed.extend(shared.store.history(Some(domain), 10).await?.iter().filter_map(|s| judged(s, false)));
    Ok(newest(closed))
}

/// Everything a dashboard needs to (re)build its model.
pub(super) fn snapshot(shared: &Shared) -> Snapshot {
    Snapshot {
        status: status(shared),
        connections: shared.table.snapshots(true),
        domains: shared.policy.records(None),
        outcomes: shared.recorder.recent_outcomes(None, 500),
        rtbl: rtbl_report(shared).unwrap_or_else(|e| {
            tracing::error!("store: the RTBL feeds could not be read for a snapshot: {e}");
            RtblReport::default()
        }),
    }
}

pub(super) fn status(shared: &Shared) -> Status {
    let snaps = shared.table.snapshots(false);
    let counts = shared.policy.counts();
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        domains: shared.settings.domains.iter().map(|d| d.to_string()).collect(),
        listen: shared.listening.federation.iter().map(|a| a.to_string()).collect(),
        uptime_s: shared.started.elapsed().as_secs(),
        streams_in: snaps.iter().filter(|s| s.direction == Direction::In).count(),
        streams_out: snaps.iter().filter(|s| s.direction == Direction::Out).count(),
        established: snaps.iter().filter(|s| s.state == ConnState::Established).count(),
        require_encryption: shared.settings.tls.require_encryption,
        mode: shared.policy.mode().as_str().to_owned(),
        approval_wait_s: shared.settings.policy.approval_wait.as_secs(),
        pending: counts.get(&crate::policy::DomainState::Pending).copied().unwrap_or(0),
        blocked: counts.get(&crate::policy::DomainState::Blocked).copied().unwrap_or(0),
        blacklisted: counts.get(&crate::policy::DomainState::Blacklisted).copied().unwrap_or(0),
        limits: {
            let mut v = shared.gauges.uses(&shared.settings.limits);
            let max_dials = shared.settings.outbound.max_dials;
            v.push(limits::LimitUse {
                key: "outbound.max_dials".into(),
                used: max_dials - shared.dials.available_permits(),
                max: max_dials,
            });
            v.push(limits::LimitUse {
                key: "limits.transcript_total_bytes".into(),
                used: shared.table.transcript_budget().used(),
                max: shared.settings.limits.transcript_total_bytes,
            });
            let l = &shared.settings.limits;
            for (key, used, max) in [
                ("limits.closed_streams_bytes", shared.table.closed_usage().1, l.closed_streams_bytes),
                ("limits.unauthenticated_outcomes_bytes", shared.recorder.ring_usage().1, l.unauthenticated_outcomes_bytes),
                // The subscriber furthest behind.
                ("limits.event_backlog_bytes", shared.events.largest_backlog(), l.event_backlog_bytes),
            ] {
                v.push(limits::LimitUse { key: key.into(), used, max });
            }
            v
        },
        gateway: gateway_status(shared, &snaps),
        overflows: shared.router.overflows(),
        certificates: super::certs::local(shared),
        certs_warn_before_s: shared.settings.certs.warn_before.as_secs(),
        store: shared.store.status(),
    }
}

/// The internal server's reachability, read off the internal link's streams: established
/// ones now, else how the latest one ended.
fn gateway_status(shared: &Shared, live: &[ConnSnapshot]) -> Option<GatewayStatus> {
    let g = shared.settings.gateway.as_ref()?;
    let internal: Vec<&ConnSnapshot> = live.iter().filter(|s| s.internal()).collect();
    let out_up = internal.iter().any(|s| s.direction == Direction::Out && s.state == ConnState::Established);
    let last = shared.table.closed().into_iter().rev().find(|s| s.internal() && s.direction == Direction::Out);
    let (reachable, last_error) = match (out_up, last) {
        (true, _) => (Some(true), None),
        // The latest ended before authenticating: the internal server failed us.
        (false, Some(s)) if !s.pairs.iter().any(|p| p.status == PairStatus::Valid) => (Some(false), s.close_reason),
        // It worked, and ended (idle).
        (false, Some(_)) => (Some(true), None),
        (false, None) => (None, None),
    };
    Some(GatewayStatus {
        internal: g.internal.to_string(),
        listen: shared.listening.gateway.iter().map(|a| a.to_string()).collect(),
        auth: g.auth.as_str().to_owned(),
        ca_cert: shared.gateway_ca.as_ref().map(|c| c.cert_path().display().to_string()).unwrap_or_default(),
        reachable,
        last_error,
        streams_out: internal.iter().filter(|s| s.direction == Direction::Out).count(),
        streams_in: internal.iter().filter(|s| s.direction == Direction::In).count(),
    })
}

/// Close a stream by id (operator action).
pub(super) fn close_stream(shared: &Shared, id: &str, reason: &str) -> bool {
    match shared.table.get(id) {
        Some(e) => {
            e.request_close(reason);
            true
        }
        None => false,
    }
}

/// Send an XEP-0199 ping from a hosted domain to `domain` and report what happened.
pub(super) async fn probe(shared: &Arc<Shared>, domain: &str, from: Option<&str>) -> ProbeReport {
    let mut report = ProbeReport {
        ok: false,
        from: String::new(),
        to: domain.to_owned(),
        rtt_ms: None,
        stream: None,
        peer_addr: None,
        auth: None,
        tls: None,
        error: None,
    };
    let to = match Domain::parse(domain) {
        Ok(d) => d,
        Err(e) => {
            report.error = Some(format!("{domain:?} is not a valid domain: {e}"));
            return report;
        }
    };
    let from = match from {
        Some(f) => match Domain::parse(f) {
            Ok(d) if shared.is_server_domain(&d) => d,
            _ => {
                report.error = Some(format!("--from {f}: not a hosted domain (server.domains)"));
                return report;
            }
        },
        None => shared.settings.domains[0].clone(),
    };
    report.from = from.to_string();
    let id = format!("probe-{}", table::random_id());
    let ping = Element::new("iq", ns::SERVER)
        .attr("type", "get")
        .attr("id", id.clone())
        .attr("from", from.to_string())
        .attr("to", to.to_string())
        .child(Element::new("ping", ns::PING));
    let rx = shared.router.local.expect_reply(&id);
    let t0 = Instant::now();
    shared.router.route_waiting(ping, shared.settings.timeouts.write).await;
    let limit = shared.settings.timeouts.probe;
    let reply = tokio::time::timeout(limit, rx).await;
    let rtt = t0.elapsed();
    shared.router.local.forget(&id);
    if let Some(snap) = shared.router.existing(&from, &to).and_then(|l| shared.table.get(&l.stream)).map(|e| e.snapshot()) {
        report.stream = Some(snap.id.clone());
        report.peer_addr = snap.peer_addr.clone();
        report.tls = snap.tls.as_ref().map(|t| format!("{} {}", t.version, t.cipher));
        report.auth = snap.pairs.iter().find(|p| p.remote == to.as_str()).map(|p| {
            format!(
                "{} ({})",
                serde_json::to_value(p.method).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                serde_json::to_value(p.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            )
        });
    }
    match reply {
        Ok(Ok(el)) => match error_of(&el) {
            None => {
                report.ok = true;
                report.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            }
            Some((cond, text)) => {
                report.error = Some(match text {
                    Some(t) => format!("stanza error <{cond}/>: {t}"),
                    None => format!("stanza error <{cond}/> from {to}"),
                });
            }
        },
        Ok(Err(_)) => report.error = Some("the probe was dropped".into()),
        Err(_) => {
            let state = report.stream.as_ref().and_then(|s| shared.table.get(s)).map(|e| e.state().as_str()).unwrap_or("none");
            report.error = Some(format!("no answer within {}s (timeouts.probe); outbound stream state: {state}", limit.as_secs()));
        }
    }
    report
}

/// After a policy change: close every live stream that carries a domain now refused, with
/// `<policy-violation/>`. Returns the ids closed.
pub(super) fn enforce(shared: &Shared) -> Vec<String> {
    let mut closed = Vec::new();
    for e in shared.table.live() {
        if let Some((remote, why)) = super::preview::refused_among(&super::preview::judged(&e), |d| shared.policy.verdict(d)) {
            tracing::info!(stream = %e.id, "closing the stream of {remote}: {why}");
            e.request_close_with(&format!("policy: {why}"), Some(StreamError::new(StreamErrorCondition::PolicyViolation, why)));
            closed.push(e.id.clone());
        }
    }
    closed
}

/// An operator's change to a domain: applied, flushed, announced, enforced.
async fn change_domain(
    shared: &Shared,
    domain: &Domain,
    change: Change,
    who: &str,
    reason: Option<&str>,
    expect: Option<u64>,
) -> Result<(DomainRecord, bool, Vec<String>), ChangeError> {
    let (rec, changed) = shared.policy.apply_expecting(domain, change, who, reason, expect).await?;
    let closed = enforce(shared);
    if changed {
        let _ = shared.events.send(Event::DomainChanged { record: rec.clone() });
    }
    Ok((rec, changed, closed))
}

/// A mode change: applied, announced, enforced; the mode in force again does nothing.
/// Returns whether it changed and the streams closed.
async fn change_mode(shared: &Shared, mode: Mode, who: &str, expect: Option<u64>) -> Result<(bool, Vec<String>), ChangeError> {
    if !shared.policy.set_mode_expecting(mode, who, expect).await? {
        return Ok((false, Vec::new()));
    }
    let _ = shared.events.send(Event::ModeChanged { mode: mode.as_str().to_owned() });
    Ok((true, enforce(shared)))
}

/// An imported list's entries blacklisted in one batch, then enforced.
async fn import_blacklist(
    shared: &Shared,
    entries: &[(Domain, Option<String>)],
    source: &str,
    invalid: Vec<crate::policy::BadLine>,
    who: &str,
    expect: Option<u64>,
) -> Result<ImportReport, ChangeError> {
    let (added, already) = shared.policy.blacklist_many_expecting(entries, source, who, expect).await?;
    for d in &added {
        if let Some(record) = shared.policy.record(d) {
            let _ = shared.events.send(Event::DomainChanged { record });
        }
    }
    let closed_streams = enforce(shared);
    Ok(ImportReport { dry_run: false, source: source.into(), added, already, invalid, closed_streams })
}
