//! `ctl`'s human output: one printer per kind of [`Reply`], writing to any `Write` (a
//! terminal in the binary, a buffer in the tests). The strings in a reply are already
//! escaped by the caller ([`super::ctl`]); the blacklist export is escaped here, line by line.

use std::io::{self, Write};

use super::{BlacklistCommand, CtlCommand};
use crate::engine::{
    CertsReport, ChangeReport, ClusterConnections, DomainReport, DomainRow, ExplainReport, ImportReport, KeepReport, LocalCert, ModeReport,
    PreviewReport, ProbeReport, Reply, RtblReport, Status,
};
use crate::events::{CertExpiry, ConnSnapshot, VerificationOutcome, expiry_in_words, fmt_utc, fmt_utc_s};
use crate::text::escape;

/// Print the answer to `cmd` for a human. False when the answer reports a failure (a probe
/// that got no pong): the exit status.
pub fn reply(cmd: &CtlCommand, reply: &Reply, out: &mut impl Write) -> io::Result<bool> {
    match reply {
        Reply::Status(s) if matches!(cmd, CtlCommand::Mode { mode: None, .. }) => writeln!(out, "{}", s.mode)?,
        Reply::Status(s) => status(s, out)?,
        Reply::Streams(v) => connections(v, out)?,
        Reply::Cluster(r) => cluster_connections(r, out)?,
        Reply::Text(t) if matches!(cmd, CtlCommand::Blacklist { list: Some(BlacklistCommand::Export), .. }) => {
            for line in t.lines() {
                writeln!(out, "{}", escape(line))?;
            }
        }
        // The exposition as it is: it ends in its own newline.
        Reply::Text(t) if matches!(cmd, CtlCommand::Metrics) => write!(out, "{t}")?,
        Reply::Text(t) => writeln!(out, "{t}")?,
        Reply::Probe(r) => return probe(r, out),
        Reply::Outcomes(v) => outcomes(v, out)?,
        Reply::Change(r) => change(r, out)?,
        Reply::Mode(r) => mode(r, out)?,
        Reply::Domains(v) => domains(v, out)?,
        Reply::Domain(r) => domain(r, out)?,
        Reply::Explain(r) => explain(r, out)?,
        Reply::Rtbl(r) => rtbl(r, out)?,
        Reply::Keep(r) => keep(r, out)?,
        Reply::Import(r) => import(r, out)?,
        Reply::Certs(r) => certs(r, out)?,
        Reply::Preview(r) => preview(r, out)?,
        // Not asked for by any ctl command.
        Reply::Snapshot(_) | Reply::Transcript(_) => writeln!(out, "{reply:?}")?,
    }
    Ok(true)
}

pub fn status(s: &Status, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "drawbridge {}  up {}", s.version, human_duration(s.uptime_s * 1000))?;
    writeln!(out, "domains:     {}", s.domains.join(", "))?;
    writeln!(out, "listening:   {}", s.listen.join(", "))?;
    writeln!(out, "streams:     {} in, {} out, {} established", s.streams_in, s.streams_out, s.established)?;
    writeln!(out, "encryption:  {}", if s.require_encryption { "required" } else { "optional" })?;
    writeln!(out, "policy:      mode {}, {} pending, {} blocked, {} blacklisted", s.mode, s.pending, s.blocked, s.blacklisted)?;
    store(&s.store, out)?;
    let now = crate::events::now_s();
    for c in &s.certificates {
        writeln!(out, "certificate: {}", local_cert(c, now))?;
    }
    if let Some(g) = &s.gateway {
        let reach = match (g.reachable, &g.last_error) {
            (Some(true), _) => "reachable".to_owned(),
            (Some(false), Some(e)) => format!("UNREACHABLE: {e}"),
            (Some(false), None) => "UNREACHABLE".to_owned(),
            (None, _) => "not contacted yet".to_owned(),
        };
        writeln!(out, "gateway:     internal server {} ({reach}), auth {}", g.internal, g.auth)?;
        writeln!(out, "             its streams arrive on {}; {} out, {} in now", g.listen.join(", "), g.streams_out, g.streams_in)?;
        writeln!(out, "             CA it must trust: {}", g.ca_cert)?;
    }
    if s.overflows != Default::default() {
        writeln!(
            out,
            "overflow:    {} stanzas bounced, {} results/errors dropped: links that made no room within timeouts.write",
            s.overflows.bounced, s.overflows.dropped
        )?;
    }
    writeln!(out, "limits:")?;
    for l in &s.limits {
        writeln!(out, "  {:<40} {:>10} / {}", l.key, l.used, l.max)?;
    }
    Ok(())
}

/// The store's line(s) of `ctl status`.
fn store(s: &crate::store::StoreStatus, out: &mut impl Write) -> io::Result<()> {
    let node = s.node.as_deref().map(|n| format!(", node {}", escape(n))).unwrap_or_default();
    writeln!(out, "store:       {} {}{node}", s.backend, escape(&s.place))?;
    if let Some(since) = s.down_since_ms {
        writeln!(
            out,
            "             UNREACHABLE since {} ({}): federating under the last known policy; policy changes are refused",
            crate::types::fmt_utc(since),
            escape(s.error.as_deref().unwrap_or("?"))
        )?;
    }
    if s.backend == "postgres" && (s.backlog > 0 || s.dropped > 0 || s.down_since_ms.is_some()) {
        writeln!(out, "             {} records waiting (store.buffer {}), {} dropped", s.backlog, s.buffer, s.dropped)?;
    }
    nodes(s, out)
}

/// The nodes of a shared store, a line each: alive, stopped or silent, the last heartbeat.
fn nodes(s: &crate::store::StoreStatus, out: &mut impl Write) -> io::Result<()> {
    if s.backend != "postgres" {
        return Ok(());
    }
    if s.nodes.is_empty() {
        return writeln!(out, "nodes:       none read yet (each node publishes its heartbeat every cluster.heartbeat)");
    }
    let alive = s.nodes.iter().filter(|n| n.alive).count();
    let timeout = human_duration_ms(s.node_timeout_ms);
    writeln!(out, "nodes:       {alive} of {} alive (a heartbeat within cluster.node_timeout {timeout})", s.nodes.len())?;
    let width = s.nodes.iter().map(|n| escape(&n.node).chars().count()).max().unwrap_or(0);
    for n in &s.nodes {
        let name = escape(&n.node);
        let this = if s.node.as_deref() == Some(n.node.as_str()) { " (this node)" } else { "" };
        let beat = format!("last heartbeat {} ({} ago)", fmt_utc(n.heartbeat_ms), human_duration_ms(n.age_ms));
        let state = match n.stopped_ms {
            Some(t) => format!("stopped at {}", fmt_utc(t)),
            None if n.alive => format!("alive, {beat}, {} live stream(s)", n.streams),
            None => format!("SILENT, {beat}: taken for gone, its {} stream(s) are not shown", n.streams),
        };
        let version = if n.version.is_empty() { String::new() } else { format!("; drawbridge {}", escape(&n.version)) };
        let listen = if n.listen.is_empty() { String::new() } else { format!(" on {}", escape(&n.listen.join(", "))) };
        writeln!(out, "  {name:<width$}{this}  {state}{version}{listen}")?;
    }
    Ok(())
}

/// `1.2s`, `45s`, `3m05s`: a heartbeat's age is short.
fn human_duration_ms(ms: u64) -> String {
    if ms < 10_000 { format!("{:.1}s", ms as f64 / 1000.0) } else { human_duration(ms) }
}

/// A probe's outcome; false when it failed.
pub fn probe(r: &ProbeReport, out: &mut impl Write) -> io::Result<bool> {
    if r.ok {
        writeln!(out, "pong from {} to {} in {:.1} ms", r.to, r.from, r.rtt_ms.unwrap_or(0.0))?;
    } else {
        writeln!(out, "probe {} → {} FAILED: {}", r.from, r.to, r.error.as_deref().unwrap_or("unknown error"))?;
    }
    if let Some(s) = &r.stream {
        writeln!(out, "stream:  {s}{}", r.peer_addr.as_deref().map(|a| format!(" to {a}")).unwrap_or_default())?;
    }
    if let Some(t) = &r.tls {
        writeln!(out, "tls:     {t}")?;
    }
    if let Some(a) = &r.auth {
        writeln!(out, "auth:    {a}")?;
    }
    Ok(r.ok)
}

pub fn outcomes(v: &[VerificationOutcome], out: &mut impl Write) -> io::Result<()> {
    if v.is_empty() {
        writeln!(out, "no verification outcomes yet")?;
    }
    for o in v {
        outcome(o, out)?;
    }
    Ok(())
}

/// The answer to a policy change (approve, block, blacklist, unblock).
pub fn change(r: &ChangeReport, out: &mut impl Write) -> io::Result<()> {
    let rec = &r.record;
    let mut line = format!("{}: {}", rec.domain, rec.state.as_str());
    if let Some(t) = rec.expires_ms {
        line.push_str(&format!(" until {}", fmt_utc(t)));
    }
    if let Some(reason) = &rec.reason {
        line.push_str(&format!(" ({reason})"));
    }
    if !r.changed {
        line.push_str(" — unchanged");
    }
    writeln!(out, "{line}")?;
    if !r.closed_streams.is_empty() {
        writeln!(out, "closed {} live stream(s): {}", r.closed_streams.len(), r.closed_streams.join(", "))?;
    }
    Ok(())
}

pub fn mode(r: &ModeReport, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "mode {}{}", r.mode, if r.changed { "" } else { " — unchanged" })?;
    if !r.closed_streams.is_empty() {
        writeln!(out, "closed {} live stream(s)", r.closed_streams.len())?;
    }
    Ok(())
}

pub fn import(r: &ImportReport, out: &mut impl Write) -> io::Result<()> {
    let verb = if r.dry_run { "would add" } else { "added" };
    writeln!(out, "{verb} {} domain(s) from {}{}", r.added.len(), r.source, list_suffix(&r.added))?;
    writeln!(out, "already blacklisted: {}{}", r.already.len(), list_suffix(&r.already))?;
    for b in &r.invalid {
        writeln!(out, "skipped line {}: {:?}: {}", b.line, b.text, b.error)?;
    }
    let verb = if r.dry_run { "would close" } else { "closed" };
    writeln!(out, "{verb} {} live stream(s){}", r.closed_streams.len(), list_suffix(&r.closed_streams))?;
    Ok(())
}

/// A dry run (`--dry-run`): what the change would do, in the engine's words.
pub fn preview(r: &PreviewReport, out: &mut impl Write) -> io::Result<()> {
    for (_, line) in r.lines() {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Everything known about one domain.
pub fn domain(r: &DomainReport, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}: {}", r.domain, r.verdict)?;
    if let Some(e) = &r.store_error {
        writeln!(out, "(history and log unavailable: {})", escape(e))?;
    }
    writeln!(out, "live:         {} in, {} out (streams open now)", r.live.inbound, r.live.outbound)?;
    match &r.record {
        None => writeln!(out, "never seen or decided")?,
        Some(rec) => {
            writeln!(
                out,
                "state:        {}{}",
                rec.state.as_str(),
                rec.expires_ms.map(|t| format!(" until {}", fmt_utc(t))).unwrap_or_default()
            )?;
            if let Some(reason) = &rec.reason {
                writeln!(out, "reason:       {reason}")?;
            }
            if let (Some(who), Some(when)) = (&rec.who, rec.when_ms) {
                writeln!(out, "decided:      by {who} at {}", fmt_utc(when))?;
            }
            if let Some(src) = &rec.source {
                writeln!(out, "source:       {src}")?;
            }
            if let (Some(f), Some(l)) = (rec.first_seen_ms, rec.last_seen_ms) {
                writeln!(out, "seen:         first {}, last {}", fmt_utc(f), fmt_utc(l))?;
            }
            writeln!(
                out,
                "closed:       {} in, {} out (streams that ended since records began; their stanzas {} in, {} out)",
                rec.streams_in, rec.streams_out, rec.stanzas_in, rec.stanzas_out
            )?;
            if let Some(v) = &rec.last_verification {
                writeln!(out, "verification: {v}")?;
            }
            if let Some(c) = &rec.cert {
                writeln!(
                    out,
                    "certificate:  expires {} ({}), issuer {}; last authenticated by it {} ({}, {})",
                    fmt_utc_s(c.not_after_s),
                    expiry_in_words(c.not_after_s, crate::events::now_s()),
                    c.issuer,
                    fmt_utc(c.seen_ms),
                    c.method.as_str(),
                    fmt_dir(c.direction)
                )?;
            }
        }
    }
    if !r.listings.is_empty() {
        writeln!(out, "\nreal-time blocklists:")?;
        for l in &r.listings {
            listing(l, out)?;
        }
    }
    if !r.outcomes.is_empty() {
        writeln!(out, "\nrecent verifications:")?;
        for o in &r.outcomes {
            outcome(o, out)?;
        }
    }
    if !r.streams.is_empty() {
        writeln!(out, "\nrecent streams:")?;
        connections(&r.streams, out)?;
    }
    if !r.policy_log.is_empty() {
        writeln!(out, "\npolicy log:")?;
        for a in &r.policy_log {
            writeln!(
                out,
                "{} {} by {}{}",
                fmt_utc(a.time_ms),
                a.action,
                a.who,
                a.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

/// `ctl explain`: the verdict and the rule that gave it, every rule in order (`*` marks the
/// deciding one), then each direction, the last verification and certificate, live streams.
pub fn explain(r: &ExplainReport, out: &mut impl Write) -> io::Result<()> {
    use crate::engine::ExplainVerdict as V;
    let verdict = match r.verdict {
        V::Allow => "allowed to federate",
        V::Hold => "held until the operator decides",
        V::Refuse => "refused",
    };
    let why = r.reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
    writeln!(out, "{}: {verdict}{why}", r.domain)?;
    writeln!(out, "decided by:   {}", r.decided_by.as_str())?;
    for m in &r.marks {
        writeln!(out, "mark:         {m}")?;
    }
    writeln!(out, "\nrules, in the order applied (* decided):")?;
    for s in &r.steps {
        writeln!(
            out,
            "{} {:<19} {:<11} {}",
            if s.decided { "*" } else { " " },
            s.rule.as_str(),
            if s.matched { "matched" } else { "not matched" },
            s.found
        )?;
        writeln!(out, "  {:<19} {:<11} → {}", "", "", s.effect)?;
    }
    for d in &r.directions {
        let (title, arrow) = match d.direction {
            crate::events::Direction::In => ("\na stream from", "from"),
            crate::events::Direction::Out => ("\na stream to", "to"),
        };
        writeln!(out, "{title} {}: {}", r.domain, d.outcome)?;
        for q in &d.requirements {
            writeln!(out, "  requires ({arrow}): {q}")?;
        }
    }
    writeln!(out)?;
    match &r.last_verification {
        Some(o) => {
            write!(out, "last verification: ")?;
            outcome(o, out)?;
        }
        None => writeln!(out, "last verification: none recorded")?,
    }
    match &r.certificate {
        Some(c) => writeln!(
            out,
            "certificate:       {} (stream {}, {}, opened {})",
            c.verdict,
            c.stream,
            if c.live { "live" } else { "closed" },
            fmt_utc(c.at_ms)
        )?,
        None => writeln!(out, "certificate:       none seen")?,
    }
    writeln!(out, "certificate auth:  {}", if r.cert_auth_seen { "seen before" } else { "never seen" })?;
    if let Some(d) = &r.downgrade {
        writeln!(out, "downgrade:         {d}")?;
    }
    writeln!(out, "\nlive streams:")?;
    connections(&r.streams, out)
}

/// `ctl rtbl`: per feed, its state and counters, then its entries in force and those
/// retracted.
pub fn rtbl(r: &RtblReport, out: &mut impl Write) -> io::Result<()> {
    if r.feeds.is_empty() {
        return writeln!(out, "no real-time blocklists followed (add an [[rtbl]] block to the config; see config.example.toml)");
    }
    for (i, f) in r.feeds.iter().enumerate() {
        let s = &f.status;
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "{} node {}: {}, action {}", s.service, s.node, feed_state(&s.state), s.action.as_str())?;
        let never = || "never".to_owned();
        writeln!(
            out,
            "  entries {} (max {}); last sync {}; last change {}",
            s.entries,
            f.max_entries,
            s.last_sync_ms.map(fmt_utc).unwrap_or_else(never),
            s.last_change_ms.map(fmt_utc).unwrap_or_else(never)
        )?;
        writeln!(
            out,
            "  ignored: {} stanza(s) from another JID, {} item id(s) not a domain, {} naming a domain served here or a service's, {} item(s) beyond max_entries",
            s.ignored_foreign, s.ignored_invalid, s.ignored_protected, s.ignored_over_limit
        )?;
        let (listed, retracted): (Vec<_>, Vec<_>) = f.entries.iter().partition(|e| e.retracted_ms.is_none());
        writeln!(out, "  listed ({}):", listed.len())?;
        for e in listed {
            entry(e, out)?;
        }
        if !retracted.is_empty() {
            writeln!(out, "  retracted ({}):", retracted.len())?;
            for e in retracted {
                entry(e, out)?;
            }
        }
    }
    if r.inbox != Default::default() {
        writeln!(
            out,
            "\nstanzas to the subscriber's JID dropped since start: {} from no service's domain, {} while the driver was behind",
            r.inbox.foreign, r.inbox.dropped
        )?;
    }
    Ok(())
}

fn feed_state(s: &crate::rtbl::FeedState) -> String {
    use crate::rtbl::FeedState as S;
    match s {
        S::Subscribing => "subscribing".to_owned(),
        S::Subscribed => "subscribed".to_owned(),
        S::Stale(why) => format!("stale ({why})"),
        S::Error(why) => format!("error ({why})"),
    }
}

/// One entry of a feed: the domain, its report's reason, when seen, then the report's text.
fn entry(e: &crate::store::RtblRecord, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "    {:<32} {:<26} first seen {}, last seen {}{}{}",
        e.domain,
        e.reason.as_deref().unwrap_or("-"),
        fmt_utc(e.first_seen_ms),
        fmt_utc(e.last_seen_ms),
        if e.block_strangers { ", block-strangers" } else { "" },
        e.retracted_ms.map(|t| format!(", RETRACTED {}", fmt_utc(t))).unwrap_or_default()
    )?;
    if let Some(t) = &e.text {
        writeln!(out, "      report: {t}")?;
    }
    Ok(())
}

/// One listing of a domain (`ctl domain`): the feed, whether it is in force, the report.
fn listing(l: &crate::store::RtblRecord, out: &mut impl Write) -> io::Result<()> {
    let standing = match l.retracted_ms {
        Some(t) => format!("retracted {}", fmt_utc(t)),
        None => "listed now".to_owned(),
    };
    writeln!(out, "{} node {}: {standing}", l.service, l.node)?;
    writeln!(
        out,
        "  reason {}; first seen {}, last seen {}{}",
        l.reason.as_deref().unwrap_or("none given"),
        fmt_utc(l.first_seen_ms),
        fmt_utc(l.last_seen_ms),
        if l.block_strangers { "; block-strangers recommended" } else { "" }
    )?;
    if let Some(t) = &l.text {
        writeln!(out, "  report: {t}")?;
    }
    Ok(())
}

/// `ctl keep`: the domain's standing now, and the listing kept as its provenance.
pub fn keep(r: &KeepReport, out: &mut impl Write) -> io::Result<()> {
    change(&ChangeReport { record: r.record.clone(), changed: r.changed, closed_streams: r.closed_streams.clone() }, out)?;
    write!(out, "kept: ")?;
    listing(&r.listing, out)
}

fn list_suffix(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else if v.len() <= 10 {
        format!(": {}", v.join(", "))
    } else {
        format!(": {}, … ({} more)", v[..10].join(", "), v.len() - 10)
    }
}

/// One of our certificates on a line: which, its expiry, time left (marked when within
/// `certs.warn_before` or past), subject and file.
fn local_cert(c: &LocalCert, now_s: i64) -> String {
    let when = match c.not_after_s {
        Some(t) => format!("expires {} ({}){}", fmt_utc_s(t), expiry_in_words(t, now_s), expiry_mark(c.expiry.unwrap_or(CertExpiry::Ok))),
        None => "expiry unreadable".to_owned(),
    };
    format!("{} {when}, {}, {}", c.certificate, c.subject, c.path)
}

/// What stands out of a certificate's expiry: nothing while it is ok.
fn expiry_mark(e: CertExpiry) -> &'static str {
    match e {
        CertExpiry::Ok => "",
        CertExpiry::Expiring => " EXPIRING",
        CertExpiry::Expired => " EXPIRED",
    }
}

/// `ctl certs`: our certificates, then each remote domain's last certificate, soonest expiry
/// first: not-after, time left (marked as it nears), how and when it last authenticated by
/// it, the issuer.
pub fn certs(r: &CertsReport, out: &mut impl Write) -> io::Result<()> {
    let days = |s: u64| crate::events::span_in_words(std::time::Duration::from_secs(s));
    for c in &r.local {
        writeln!(out, "ours: {}", local_cert(c, r.now_s))?;
    }
    let marked = r.domains.iter().filter(|d| d.expiry != CertExpiry::Ok).count();
    match r.expiring_within_s {
        Some(w) if r.domains.is_empty() => return writeln!(out, "no remote domain's certificate expires within {}", days(w)),
        None if r.domains.is_empty() => return writeln!(out, "no remote domain has authenticated by certificate yet"),
        Some(w) => writeln!(out, "{} remote domain(s) whose certificate expires within {} or has expired:", r.domains.len(), days(w))?,
        None => writeln!(
            out,
            "{} remote domain(s) authenticated by certificate; {marked} expiring within certs.warn_before ({}) or expired:",
            r.domains.len(),
            days(r.warn_before_s)
        )?,
    }
    writeln!(out, "{:<32} {:<23} {:<28} {:<24} {:<19}  ISSUER", "DOMAIN", "NOT AFTER", "LEFT", "METHOD", "AUTHENTICATED")?;
    for d in &r.domains {
        let c = &d.cert;
        let method = format!("{} ({})", c.method.as_str(), fmt_dir(c.direction));
        writeln!(
            out,
            "{:<32} {:<23} {:<28} {:<24} {:<19}  {}",
            d.domain,
            fmt_utc_s(c.not_after_s),
            format!("{}{}", expiry_in_words(c.not_after_s, r.now_s), expiry_mark(d.expiry)),
            method,
            &fmt_utc(c.seen_ms)[..19],
            c.issuer
        )?;
    }
    Ok(())
}

/// One outcome; the arrow points the way the stream went (remote → local inbound).
pub fn outcome(o: &VerificationOutcome, out: &mut impl Write) -> io::Result<()> {
    let (from, to) = match o.direction {
        crate::events::Direction::In => (&o.remote, &o.local),
        crate::events::Direction::Out => (&o.local, &o.remote),
    };
    writeln!(
        out,
        "{} {:>3} {:<8} {from} → {to}  {}: {}",
        fmt_utc(o.time_ms),
        fmt_dir(o.direction),
        o.result.as_str(),
        o.method.as_str(),
        o.reason
    )
}

/// Every domain: its standing, its streams open now (`LIVE`) and those that ended since
/// records began (`CLOSED`), each way.
pub fn domains(v: &[DomainRow], out: &mut impl Write) -> io::Result<()> {
    if v.is_empty() {
        return writeln!(out, "no domains");
    }
    writeln!(out, "{:<32} {:<12} {:<20} {:>8} {:>10}  WHY", "DOMAIN", "STATE", "LAST SEEN", "LIVE I/O", "CLOSED I/O")?;
    for DomainRow { record: r, live } in v {
        let why = match (&r.reason, &r.who) {
            (Some(reason), Some(who)) => format!("{reason} (by {who})"),
            (Some(reason), None) => reason.clone(),
            (None, Some(who)) => format!("by {who}"),
            (None, None) => r.last_verification.clone().unwrap_or_default(),
        };
        let state = match r.expires_ms {
            Some(t) => format!("{} ({})", r.state.as_str(), human_duration(t.saturating_sub(crate::events::now_ms()))),
            None => r.state.as_str().to_owned(),
        };
        writeln!(
            out,
            "{:<32} {:<12} {:<20} {:>8} {:>10}  {}",
            r.domain,
            state,
            r.last_seen_ms.map(|t| fmt_utc(t)[..19].to_owned()).unwrap_or_else(|| "-".into()),
            format!("{}/{}", live.inbound, live.outbound),
            format!("{}/{}", r.streams_in, r.streams_out),
            why
        )?;
    }
    Ok(())
}

fn fmt_dir(d: crate::events::Direction) -> &'static str {
    match d {
        crate::events::Direction::In => "in",
        crate::events::Direction::Out => "out",
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    }
}

pub fn connections(v: &[ConnSnapshot], out: &mut impl Write) -> io::Result<()> {
    let rows: Vec<(Option<&str>, &ConnSnapshot)> = v.iter().map(|c| (None, c)).collect();
    stream_rows(&rows, out)
}

/// `ctl connections --cluster`: every node's streams, with a NODE column (this node's marked
/// `*`); what of the other nodes could not be read is said first.
pub fn cluster_connections(r: &ClusterConnections, out: &mut impl Write) -> io::Result<()> {
    if let Some(e) = &r.store_error {
        writeln!(out, "(only this node's streams: the other nodes' could not be read: {})", escape(e))?;
    }
    // This node's first, then the others' as the engine lists them (by node).
    let mut streams: Vec<&crate::store::NodeStream> = r.streams.iter().collect();
    streams.sort_by_key(|s| s.node != r.node);
    let rows: Vec<(Option<String>, &ConnSnapshot)> = streams
        .iter()
        .map(|s| (Some(if s.node == r.node { format!("{}*", escape(&s.node)) } else { escape(&s.node).into_owned() }), &s.stream))
        .collect();
    let rows: Vec<(Option<&str>, &ConnSnapshot)> = rows.iter().map(|(n, c)| (n.as_deref(), *c)).collect();
    stream_rows(&rows, out)?;
    if !rows.is_empty() {
        writeln!(out, "(* this node, {}: the others' streams as they last published them)", escape(&r.node))?;
    }
    Ok(())
}

/// The streams table; with a node per row, a NODE column first.
fn stream_rows(v: &[(Option<&str>, &ConnSnapshot)], out: &mut impl Write) -> io::Result<()> {
    if v.is_empty() {
        return writeln!(out, "no streams");
    }
    let now = crate::events::now_ms();
    let width = v.iter().filter_map(|(n, _)| n.map(|n| n.chars().count())).max().map(|w| w.max(4));
    let node_cell = |n: Option<&str>| match width {
        Some(w) => format!("{:<w$} ", n.unwrap_or("-")),
        None => String::new(),
    };
    let indent = " ".repeat(width.map_or(0, |w| w + 1) + 32);
    writeln!(
        out,
        "{}{:<32} {:<3} {:<24} {:<24} {:<14} {:<21} {:<8} {:>6} {:>6} {:>7}",
        node_cell(Some("NODE")),
        "ID",
        "DIR",
        "LOCAL",
        "REMOTE",
        "STATE",
        "PEER",
        "TLS",
        "IN",
        "OUT",
        "AGE"
    )?;
    for (node, c) in v {
        let remote = if c.pairs.is_empty() {
            c.remote.clone().unwrap_or_default()
        } else {
            c.pairs
                .iter()
                .map(|p| format!("{}{}", p.remote, if p.status == crate::events::PairStatus::Valid { "" } else { "?" }))
                .collect::<Vec<_>>()
                .join(",")
        };
        writeln!(
            out,
            "{}{:<32} {:<3} {:<24} {:<24} {:<14} {:<21} {:<8} {:>6} {:>6} {:>7}",
            node_cell(*node),
            c.id,
            fmt_dir(c.direction),
            c.local.as_deref().unwrap_or("-"),
            remote,
            c.state.as_str(),
            c.peer_addr.as_deref().unwrap_or("-"),
            c.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
            c.stanzas_in,
            c.stanzas_out,
            human_duration(now.saturating_sub(c.opened_ms)),
        )?;
        match c.kind {
            crate::events::StreamKind::Internal => {
                writeln!(out, "{indent}     internal link (gateway): with the internal server, as {}", c.local.as_deref().unwrap_or("-"))?
            }
            crate::events::StreamKind::Component => writeln!(out, "{indent}     external component (XEP-0114)")?,
            crate::events::StreamKind::Federation => {}
        }
        if !c.pairs.is_empty() {
            let auth: Vec<String> = c.pairs.iter().map(|p| format!("{} by {}", p.remote, p.method.as_str())).collect();
            writeln!(out, "{indent}     authenticated: {}", auth.join(", "))?;
        }
        if let Some(v) = c.tls.as_ref().and_then(|t| t.cert_verdict.as_ref()) {
            writeln!(out, "{indent}     certificate: {v}")?;
        }
        if let Some(r) = &c.close_reason {
            writeln!(out, "{indent}     closed: {r}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DomainState;
    use crate::store::DomainRecord;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_policy_change_says_what_changed_and_what_it_closed() {
        let record =
            DomainRecord { domain: "x.test".into(), state: DomainState::Approved, reason: Some("partner".into()), ..Default::default() };
        let r = ChangeReport { record, changed: false, closed_streams: vec![] };
        assert_eq!(text(|o| change(&r, o)), "x.test: approved (partner) — unchanged\n");
        let record = DomainRecord { domain: "x.test".into(), state: DomainState::Blocked, expires_ms: Some(0), ..Default::default() };
        let r = ChangeReport { record, changed: true, closed_streams: vec!["s1".into(), "s2".into()] };
        assert_eq!(text(|o| change(&r, o)), "x.test: blocked until 1970-01-01 00:00:00 UTC\nclosed 2 live stream(s): s1, s2\n");
    }

    fn stream(id: &str, remote: &str) -> ConnSnapshot {
        ConnSnapshot {
            id: id.into(),
            direction: crate::events::Direction::In,
            kind: Default::default(),
            local: Some("home.test".into()),
            remote: Some(remote.into()),
            peer_addr: None,
            state: crate::events::ConnState::Established,
            stream_id: None,
            tls: None,
            pairs: vec![],
            opened_ms: crate::events::now_ms(),
            last_activity_ms: crate::events::now_ms(),
            stanzas_in: 0,
            stanzas_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            close_reason: None,
            limits: None,
        }
    }

    #[test]
    fn the_cluster_view_has_a_node_column_this_node_first_and_marked() {
        use crate::store::NodeStream;
        let r = ClusterConnections {
            node: "edge-1".into(),
            streams: vec![
                NodeStream { node: "edge-2".into(), stream: stream("s2", "far.test") },
                NodeStream { node: "edge-1".into(), stream: stream("s1", "near.test") },
            ],
            store_error: None,
        };
        let out = text(|o| cluster_connections(&r, o));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NODE    ID "), "{out}");
        assert!(lines[1].starts_with("edge-1* s1 ") && lines[1].contains("near.test"), "{out}");
        assert!(lines[2].starts_with("edge-2  s2 ") && lines[2].contains("far.test"), "{out}");
        assert!(lines[3].contains("* this node, edge-1"), "{out}");
        // What could not be read is said first; this node's streams follow.
        let r = ClusterConnections { store_error: Some("unreachable".into()), streams: r.streams[1..].to_vec(), ..r };
        let out = text(|o| cluster_connections(&r, o));
        assert!(out.starts_with("(only this node's streams: the other nodes' could not be read: unreachable)\nNODE"), "{out}");
        // Without a node, the table is as before.
        assert!(text(|o| connections(&[stream("s1", "near.test")], o)).starts_with("ID "));
    }

    #[test]
    fn status_lists_the_nodes_alive_stopped_and_silent() {
        use crate::store::{NodeStatus, StoreStatus};
        let n = |name: &str, alive: bool, stopped_ms: Option<u64>| NodeStatus {
            node: name.into(),
            heartbeat_ms: 0,
            started_ms: 0,
            stopped_ms,
            alive,
            streams: 3,
            version: "0.1.0".into(),
            listen: vec!["10.0.0.1:5269".into()],
            age_ms: if alive { 400 } else { 45_000 },
        };
        let s = StoreStatus {
            backend: "postgres".into(),
            place: "PostgreSQL database drawbridge on db (store.postgres)".into(),
            node: Some("edge-1".into()),
            reachable: true,
            nodes: vec![n("edge-1", true, None), n("edge-2", false, None), n("edge-3", false, Some(0))],
            node_timeout_ms: 10_000,
            heartbeat_ms: 2_000,
            ..Default::default()
        };
        let out = text(|o| store(&s, o));
        assert!(out.contains("nodes:       1 of 3 alive (a heartbeat within cluster.node_timeout 10s)"), "{out}");
        assert!(out.contains("  edge-1 (this node)  alive, last heartbeat 1970-01-01 00:00:00 UTC (0.4s ago), 3 live stream(s); drawbridge 0.1.0 on 10.0.0.1:5269"), "{out}");
        assert!(
            out.contains(
                "  edge-2  SILENT, last heartbeat 1970-01-01 00:00:00 UTC (45s ago): taken for gone, its 3 stream(s) are not shown"
            ),
            "{out}"
        );
        assert!(out.contains("  edge-3  stopped at 1970-01-01 00:00:00 UTC"), "{out}");
        let sled = StoreStatus { backend: "sled".into(), place: "/var/lib/drawbridge/db".into(), reachable: true, ..Default::default() };
        assert!(!text(|o| store(&sled, o)).contains("nodes"));
    }

    #[test]
    fn empty_lists_say_so() {
        assert_eq!(text(|o| domains(&[], o)), "no domains\n");
        assert_eq!(text(|o| connections(&[], o)), "no streams\n");
        assert_eq!(text(|o| outcomes(&[], o)), "no verification outcomes yet\n");
    }

    #[test]
    fn mode_alone_prints_the_mode_and_a_change_counts_closed_streams() {
        let r = ModeReport { mode: "allowlist".into(), changed: true, closed_streams: vec!["s1".into()] };
        assert_eq!(text(|o| mode(&r, o)), "mode allowlist\nclosed 1 live stream(s)\n");
        let r = ModeReport { mode: "open".into(), changed: true, closed_streams: vec![] };
        assert_eq!(text(|o| mode(&r, o)), "mode open\n");
        let r = ModeReport { mode: "open".into(), changed: false, closed_streams: vec![] };
        assert_eq!(text(|o| mode(&r, o)), "mode open — unchanged\n");
    }

    #[test]
    fn long_import_lists_are_cut_at_ten() {
        let many: Vec<String> = (0..12).map(|i| format!("d{i}.test")).collect();
        let r =
            ImportReport { dry_run: true, source: "list".into(), added: many, already: vec![], invalid: vec![], closed_streams: vec![] };
        let out = text(|o| import(&r, o));
        assert!(out.starts_with("would add 12 domain(s) from list: d0.test, "), "{out}");
        assert!(out.contains("d9.test, … (2 more)") && !out.contains("d10.test"), "{out}");
        assert!(out.ends_with("would close 0 live stream(s)\n"), "{out}");
    }

    #[test]
    fn a_feed_says_why_it_is_stale_or_failing() {
        use crate::rtbl::{Action, FeedState, FeedStatus};
        let status = |state| FeedStatus {
            service: "xmppbl.test".into(),
            node: "n".into(),
            action: Action::Strangers,
            state,
            entries: 0,
            last_sync_ms: None,
            last_change_ms: None,
            ignored_foreign: 0,
            ignored_invalid: 0,
            ignored_over_limit: 0,
            ignored_protected: 0,
        };
        let report = |state| RtblReport {
            feeds: vec![crate::engine::FeedReport { status: status(state), max_entries: 5, entries: vec![] }],
            inbox: Default::default(),
        };
        let out = text(|o| rtbl(&report(FeedState::Stale("the node was deleted".into())), o));
        assert!(out.starts_with("xmppbl.test node n: stale (the node was deleted), action strangers\n"), "{out}");
        assert!(out.contains("entries 0 (max 5); last sync never; last change never"), "{out}");
        let out = text(|o| rtbl(&report(FeedState::Error("no answer within 30s".into())), o));
        assert!(out.starts_with("xmppbl.test node n: error (no answer within 30s), action strangers\n"), "{out}");
        assert!(!out.contains("retracted ("), "no retracted section when none is: {out}");
        assert_eq!(text(|o| rtbl(&RtblReport::default(), o)).lines().count(), 1);
    }

    /// friend.test with one stream open each way and three in, two out that ended: both
    /// counts, each under its own name.
    #[test]
    fn domains_show_live_and_closed_streams_apart() {
        use crate::events::LiveStreams;
        let record = DomainRecord {
            domain: "friend.test".into(),
            state: DomainState::Approved,
            streams_in: 3,
            streams_out: 2,
            stanzas_in: 40,
            stanzas_out: 7,
            ..Default::default()
        };
        let row = DomainRow { record: record.clone(), live: LiveStreams { inbound: 1, outbound: 1 } };
        let out = text(|o| domains(std::slice::from_ref(&row), o));
        let lines: Vec<&str> = out.lines().collect();
        let (head, line) = (lines[0], lines[1]);
        assert!(head.contains("LIVE I/O") && head.contains("CLOSED I/O"), "{out}");
        // Each count under its header's end (right-aligned).
        assert_eq!(&line[..head.find("LIVE I/O").unwrap() + 8].trim_end().rsplit(' ').next().unwrap(), &"1/1", "{out}");
        assert_eq!(&line[..head.find("CLOSED I/O").unwrap() + 10].trim_end().rsplit(' ').next().unwrap(), &"3/2", "{out}");
        // --json: the record's fields as before, the live counts beside them.
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!((json["streams_in"].as_u64(), json["streams_out"].as_u64()), (Some(3), Some(2)));
        assert_eq!((json["live_streams_in"].as_u64(), json["live_streams_out"].as_u64()), (Some(1), Some(1)));
        assert_eq!(serde_json::from_value::<DomainRow>(json).unwrap(), row);
        // An older server's answer (no live counts) still reads.
        let old: DomainRow = serde_json::from_value(serde_json::to_value(&record).unwrap()).unwrap();
        assert_eq!(old.live, LiveStreams::default());

        let report = DomainReport {
            domain: "friend.test".into(),
            record: Some(record),
            verdict: "allowed to federate".into(),
            outcomes: vec![],
            streams: vec![],
            policy_log: vec![],
            listings: vec![],
            live: LiveStreams { inbound: 1, outbound: 1 },
            store_error: None,
        };
        let out = text(|o| domain(&report, o));
        assert!(out.contains("\nlive:         1 in, 1 out (streams open now)\n"), "{out}");
        assert!(
            out.contains("\nclosed:       3 in, 2 out (streams that ended since records began; their stanzas 40 in, 7 out)\n"),
            "{out}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!((json["live_streams_in"].as_u64(), json["record"]["streams_in"].as_u64()), (Some(1), Some(3)), "{json}");
    }

    /// A dry run reads top-down: what it would record, the domain's verdict before and after,
    /// the streams it would close, then the domains of the history it would turn.
    #[test]
    fn a_dry_run_says_what_it_would_do_and_that_it_did_nothing() {
        use crate::engine::{ClosingStream, DomainImpact, ExplainVerdict, Judgement, StandingChange};
        use crate::policy::Rule;
        let allowed = Judgement { verdict: ExplainVerdict::Allow, reason: None, decided_by: Rule::FederationMode };
        let refused = |r: &str| Judgement { verdict: ExplainVerdict::Refuse, reason: Some(r.into()), decided_by: Rule::OperatorDecision };
        let impact = |d: &str, seen: Option<u64>| DomainImpact {
            domain: d.into(),
            before: allowed.clone(),
            after: refused(&format!("{d} is blocked: flood")),
            last_seen_ms: seen,
            streams: 3,
            stanzas_in: 40,
            stanzas_out: 7,
            live_streams: 1,
        };
        let r = PreviewReport {
            change: "block x.test".into(),
            changes: true,
            days: 120,
            history_days: 90,
            mode: None,
            records: vec![StandingChange {
                domain: "x.test".into(),
                from: DomainState::Unknown,
                to: DomainState::Blocked,
                expires_ms: None,
                reason: Some("flood".into()),
            }],
            unchanged: vec![],
            invalid: vec![],
            target: Some(impact("x.test", Some(0))),
            closing: vec![ClosingStream {
                id: "s1".into(),
                direction: crate::events::Direction::In,
                local: Some("home.test".into()),
                domain: "x.test".into(),
                reason: "x.test is blocked: flood".into(),
                stanzas_in: 5,
                stanzas_out: 0,
            }],
            newly_refused: vec![impact("x.test", Some(0))],
            newly_held: vec![],
            newly_allowed: vec![],
            seen: 4,
            source: None,
            generation: 0,
        };
        assert_eq!(
            text(|o| preview(&r, o)),
            "dry run: block x.test — nothing has been changed
would record x.test: unknown → blocked (flood)
x.test: allowed → refused (operator decision): x.test is blocked: flood
  last seen 1970-01-01 00:00:00 UTC; 3 stream(s), 1 live; stanzas 40 in, 7 out
would close 1 live stream(s):
  in  s1 home.test ← x.test (5 stanzas in, 0 out): x.test is blocked: flood
domains seen in the last 120 days: 4, of which 1 would be judged otherwise
newly refused (1):
  x.test: allowed → refused (operator decision): x.test is blocked: flood
    last seen 1970-01-01 00:00:00 UTC; 3 stream(s), 1 live; stanzas 40 in, 7 out
note: the history of closed streams is kept 90 days (store.max_age): nothing older is known
"
        );
        let nothing = PreviewReport {
            changes: false,
            days: 30,
            records: vec![],
            unchanged: vec!["x.test".into()],
            target: Some(DomainImpact { after: allowed.clone(), last_seen_ms: None, ..impact("x.test", None) }),
            closing: vec![],
            newly_refused: vec![],
            ..r
        };
        let out = text(|o| preview(&nothing, o));
        assert!(out.starts_with("dry run: block x.test — nothing has been changed; it would change nothing\n"), "{out}");
        assert!(out.contains("\nx.test: stays allowed (federation mode)\n  not seen in the last 30 days\n"), "{out}");
        assert!(out.contains("\nwould close no live stream\ndomains seen in the last 30 days: 4, of which 0 would"), "{out}");
        assert!(!out.contains("note:"), "{out}");
    }

    #[test]
    fn certificates_soonest_first_with_time_left_and_marks() {
        use crate::engine::RemoteCertRow;
        use crate::events::{AuthMethod, Direction, RemoteCert};
        let now = 1_800_000_000;
        let row = |domain: &str, left: i64, expiry| RemoteCertRow {
            domain: domain.into(),
            expiry,
            cert: RemoteCert {
                not_after_s: now + left,
                issuer: "CN=Peer CA".into(),
                subject: format!("CN={domain}"),
                fingerprint_sha256: "AB".into(),
                method: AuthMethod::SaslExternal,
                direction: Direction::In,
                seen_ms: 1_799_990_000_000,
            },
            last_seen_ms: Some(1_799_990_000_000),
        };
        let local = LocalCert {
            certificate: "tls".into(),
            path: "/etc/drawbridge/cert.pem".into(),
            subject: "CN=a.test".into(),
            issuer: "CN=CA".into(),
            not_after_s: Some(now + 5 * 86_400),
            expiry: Some(CertExpiry::Expiring),
        };
        let r = CertsReport {
            now_s: now,
            warn_before_s: 14 * 86_400,
            expiring_within_s: None,
            local: vec![local],
            domains: vec![row("gone.test", -3 * 86_400, CertExpiry::Expired), row("far.test", 300 * 86_400, CertExpiry::Ok)],
        };
        let out = text(|o| certs(&r, o));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0], "ours: tls expires 2027-01-20 08:00:00 UTC (in 5 days) EXPIRING, CN=a.test, /etc/drawbridge/cert.pem",
            "{out}"
        );
        assert_eq!(lines[1], "2 remote domain(s) authenticated by certificate; 1 expiring within certs.warn_before (14 days) or expired:");
        assert!(lines[2].starts_with("DOMAIN") && lines[2].ends_with("ISSUER"), "{out}");
        assert!(lines[3].starts_with("gone.test ") && lines[3].contains("2027-01-12 08:00:00 UTC expired 3 days ago EXPIRED"), "{out}");
        assert!(lines[3].contains("sasl-external (in)") && lines[3].contains("2027-01-15 05:13:20") && lines[3].ends_with("CN=Peer CA"));
        assert!(lines[4].starts_with("far.test ") && lines[4].contains("in 300 days ") && !lines[4].contains("EXPIR"), "{out}");
        // `ctl domain`: its certificate on a line.
        let report = DomainReport {
            domain: "gone.test".into(),
            record: Some(DomainRecord { domain: "gone.test".into(), cert: Some(r.domains[0].cert.clone()), ..Default::default() }),
            verdict: "allowed to federate".into(),
            outcomes: vec![],
            streams: vec![],
            policy_log: vec![],
            listings: vec![],
            live: Default::default(),
            store_error: None,
        };
        let out = text(|o| domain(&report, o));
        assert!(out.contains("\ncertificate:  expires 2027-01-12 08:00:00 UTC ("), "{out}");
        assert!(out.contains(", issuer CN=Peer CA; last authenticated by it 2027-01-15 05:13:20 UTC (sasl-external, in)\n"), "{out}");
        let none = CertsReport { domains: vec![], local: vec![], expiring_within_s: Some(30 * 86_400), ..r.clone() };
        assert_eq!(text(|o| certs(&none, o)), "no remote domain's certificate expires within 30 days\n");
        let none = CertsReport { expiring_within_s: None, ..none };
        assert_eq!(text(|o| certs(&none, o)), "no remote domain has authenticated by certificate yet\n");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(59_999), "59s");
        assert_eq!(human_duration(61_000), "1m01s");
        assert_eq!(human_duration(3_600_000 * 2 + 60_000 * 5), "2h05m");
    }
}
