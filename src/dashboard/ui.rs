//! Drawing the model. Only the visible rows of a table are built; colours are the basic 16
//! and disappear with NO_COLOR.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use super::input::KEYS;
use super::state::{Model, Prompt, View};
use crate::events::{
    CertExpiry, ConnSnapshot, ConnState, Direction, PairStatus, VerificationResult, expiry_in_words, fmt_utc, fmt_utc_s, now_ms, now_s,
};
use crate::policy::DomainState;
use crate::text::escape;
use crate::xml::writer::KEY_MARKER;

struct Theme {
    no_color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.no_color { Style::default() } else { Style::default().fg(c) }
    }
    fn dim(&self) -> Style {
        if self.no_color { Style::default().add_modifier(Modifier::DIM) } else { Style::default().fg(Color::DarkGray) }
    }
    fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    fn header(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    fn state(&self, s: DomainState) -> Style {
        self.fg(match s {
            DomainState::Approved => Color::Green,
            DomainState::Pending => Color::Yellow,
            DomainState::Blocked => Color::Red,
            DomainState::Blacklisted => Color::Magenta,
            DomainState::Unknown => Color::Reset,
        })
    }
    fn result(&self, r: VerificationResult) -> Style {
        self.fg(match r {
            VerificationResult::Valid => Color::Green,
            VerificationResult::Invalid | VerificationResult::Refused => Color::Red,
            VerificationResult::Error | VerificationResult::Timeout => Color::Yellow,
        })
    }
}

pub fn draw(f: &mut Frame, m: &mut Model) {
    let t = Theme { no_color: m.no_color };
    let [header, tabs, body, footer] =
        Layout::vertical([Constraint::Length(2), Constraint::Length(1), Constraint::Min(3), Constraint::Length(2)]).areas(f.area());
    draw_header(f, m, &t, header);
    draw_tabs(f, m, &t, tabs);
    match m.view {
        View::Connections => draw_connections(f, m, &t, body),
        View::Domains => draw_domains(f, m, &t, body),
        View::Verifications => draw_verifications(f, m, &t, body),
        View::Transcript => draw_transcript(f, m, &t, body),
        View::Rtbl => draw_rtbl(f, m, &t, body),
    }
    draw_footer(f, m, &t, footer);
    if m.show_help {
        draw_help(f, &t);
    }
    if let Some(r) = &m.domain_report {
        draw_domain_report(f, r, &t);
    }
    if let Some(r) = &m.explain {
        draw_explain(f, r, &t);
    }
    if let Some(Prompt::Confirm { lines, scroll, .. }) = &m.prompt {
        draw_preview(f, lines, *scroll, &t);
    }
}

/// A policy change's dry run before the operator applies it: what it would record, the
/// streams it would close, the domains of the history it would refuse, hold or allow. The
/// lines were made (and escaped) when the prompt opened: only those on screen are drawn.
fn draw_preview(f: &mut Frame, all: &[(crate::engine::PreviewLine, String)], scroll: usize, t: &Theme) {
    use crate::engine::PreviewLine as L;
    let area = f.area();
    // Above the footer, which asks the question.
    let rect = Rect { x: area.x + 2, y: area.y + 1, width: area.width.saturating_sub(4), height: area.height.saturating_sub(4) };
    let rows = rect.height.saturating_sub(2) as usize;
    let total = all.len();
    // A line takes a row at least (wrapped, more): no more than `rows` can show.
    let lines: Vec<Line> = all
        .iter()
        .skip(scroll)
        .take(rows)
        .map(|(kind, text)| {
            let text = text.as_str();
            match kind {
                L::Heading => Line::from(Span::styled(text, t.header())),
                L::Refused => Line::from(Span::styled(text, t.fg(Color::Red))),
                L::Held => Line::from(Span::styled(text, t.fg(Color::Yellow))),
                L::Allowed => Line::from(Span::styled(text, t.fg(Color::Green))),
                L::Plain => Line::from(text),
            }
        })
        .collect();
    let more = if total > rows { format!(" ({}/{total}, ↑↓ scroll)", scroll + 1) } else { String::new() };
    let title = format!(" Dry run: nothing changed yet — apply it? y / n{more} ");
    f.render_widget(Clear, rect);
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)).wrap(Wrap { trim: false }), rect);
}

/// Why a domain is treated as it is (`e`): the verdict and the rule that gave it, the marks,
/// every rule in order (`*` the deciding one), then what each direction meets.
fn draw_explain(f: &mut Frame, r: &crate::engine::ExplainReport, t: &Theme) {
    use crate::engine::ExplainVerdict as V;
    let area = f.area();
    let rect = Rect { x: area.x + 2, y: area.y + 2, width: area.width.saturating_sub(4), height: area.height.saturating_sub(4) };
    let (verdict, style) = match r.verdict {
        V::Allow => ("allowed to federate", t.fg(Color::Green)),
        V::Hold => ("held until the operator decides", t.fg(Color::Yellow)),
        V::Refuse => ("refused", t.fg(Color::Red)),
    };
    let why = r.reason.as_deref().map(|w| format!(": {}", escape(w))).unwrap_or_default();
    let mut lines = vec![
        Line::from(vec![Span::styled(format!("{}: ", r.domain), t.header()), Span::styled(format!("{verdict}{why}"), style)]),
        Line::from(format!("decided by: {}", r.decided_by.as_str())),
    ];
    for mark in &r.marks {
        lines.push(Line::from(Span::styled(format!("mark: {}", escape(mark)), t.fg(Color::Magenta))));
    }
    lines.push(Line::from(Span::styled("rules, in the order applied (* decided)", t.header())));
    for s in &r.steps {
        let line = format!(
            "{} {:<19} {:<11} {} → {}",
            if s.decided { "*" } else { " " },
            s.rule.as_str(),
            if s.matched { "matched" } else { "not matched" },
            escape(&s.found),
            escape(&s.effect)
        );
        lines.push(Line::from(if s.decided { Span::styled(line, t.header()) } else { Span::raw(line) }));
    }
    for d in &r.directions {
        let title = if d.direction == Direction::In { "a stream from it" } else { "a stream to it" };
        lines.push(Line::from(vec![Span::styled(format!("{title}: "), t.header()), Span::raw(escape(&d.outcome).into_owned())]));
        for q in &d.requirements {
            lines.push(Line::from(format!("  requires: {}", escape(q))));
        }
    }
    lines.push(Line::from(match &r.last_verification {
        Some(o) => format!("last verification: {} {} {}", &fmt_utc(o.time_ms)[..19], o.result.as_str(), escape(&o.reason)),
        None => "last verification: none recorded".to_owned(),
    }));
    lines.push(Line::from(format!("live streams: {}", r.streams.len())));
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Explain (any key closes) ")).wrap(Wrap { trim: false }),
        rect,
    );
}

/// The real-time blocklists: each feed's state and counters, then the domains they list (in
/// force first, retracted ones dimmed), with their reports.
fn draw_rtbl(f: &mut Frame, m: &mut Model, t: &Theme, area: Rect) {
    if m.feeds.is_empty() {
        f.render_widget(
            Paragraph::new("No real-time blocklists followed: add an [[rtbl]] block to the config (see config.example.toml).")
                .block(Block::default().borders(Borders::TOP).title(" Real-time blocklists ")),
            area,
        );
        return;
    }
    let feeds_h = (m.feeds.len() as u16 + 2).min(area.height / 2).max(3);
    let [top, bottom] = Layout::vertical([Constraint::Length(feeds_h), Constraint::Min(3)]).areas(area);
    let wide = area.width >= 140;
    let mut rows = Vec::with_capacity(m.feeds.len());
    for s in &m.feeds {
        use crate::rtbl::FeedState as S;
        let (state, style) = match &s.state {
            S::Subscribing => ("subscribing".to_owned(), t.fg(Color::Yellow)),
            S::Subscribed => ("subscribed".to_owned(), t.fg(Color::Green)),
            S::Stale(why) => (format!("stale: {}", escape(why)), t.fg(Color::Red)),
            S::Error(why) => (format!("error: {}", escape(why)), t.fg(Color::Red)),
        };
        let when = |x: Option<u64>| x.map(|x| fmt_utc(x)[..19].to_owned()).unwrap_or_else(|| "never".into());
        let mut cells = vec![
            Cell::from(format!("{} {}", s.service, s.node)),
            Cell::from(s.action.as_str()),
            Cell::from(s.entries.to_string()),
            Cell::from(Span::styled(state, style)),
        ];
        if wide {
            cells.push(Cell::from(when(s.last_sync_ms)));
            cells.push(Cell::from(when(s.last_change_ms)));
            cells.push(Cell::from(format!("{}/{}/{}", s.ignored_foreign, s.ignored_invalid, s.ignored_over_limit)));
        }
        rows.push(Row::new(cells));
    }
    let mut header = vec!["feed", "action", "entries", "state"];
    let mut widths = vec![Constraint::Min(32), Constraint::Length(9), Constraint::Length(7), Constraint::Min(20)];
    if wide {
        header.extend(["last sync", "last change", "ignored foreign/invalid/over"]);
        widths.extend([Constraint::Length(19), Constraint::Length(19), Constraint::Length(28)]);
    }
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(t.header()))
            .block(Block::default().borders(Borders::TOP).title(format!(" Real-time blocklists ({}) ", m.feeds.len()))),
        top,
    );
    let sel = m.selected[View::Rtbl.index()];
    let total = m.rtbl_rows().len();
    let (start, end) = window(sel, total, bottom.height.saturating_sub(2) as usize);
    let visible = m.rtbl_rows()[start..end].to_vec();
    let mut rows = Vec::with_capacity(end - start);
    for (i, (fi, ei)) in visible.into_iter().enumerate() {
        let Some(e) = m.rtbl.feeds.get(fi).and_then(|f| f.entries.get(ei)) else { continue };
        let standing = match e.retracted_ms {
            Some(x) => format!("retracted {}", &fmt_utc(x)[..19]),
            None if e.block_strangers => "listed, block-strangers".to_owned(),
            None => "listed".to_owned(),
        };
        let reason = e.reason.as_deref().map(|r| r.strip_prefix("urn:xmpp:reporting:").unwrap_or(r)).unwrap_or("-");
        let mut cells = vec![Cell::from(e.domain.clone())];
        if wide {
            cells.push(Cell::from(e.service.clone()));
        }
        cells.push(Cell::from(standing));
        cells.push(Cell::from(escape(reason).into_owned()));
        if wide {
            cells.push(Cell::from(fmt_utc(e.first_seen_ms)[..19].to_owned()));
        }
        cells.push(Cell::from(escape(e.text.as_deref().unwrap_or("")).into_owned()));
        let mut row = Row::new(cells);
        if e.retracted_ms.is_some() {
            row = row.style(t.dim());
        }
        if start + i == sel {
            row = row.style(t.selected());
        }
        rows.push(row);
    }
    let (header, widths) = if wide {
        (
            vec!["domain", "feed", "standing", "reason", "first seen", "report"],
            vec![
                Constraint::Min(24),
                Constraint::Length(20),
                Constraint::Length(29),
                Constraint::Length(10),
                Constraint::Length(19),
                Constraint::Min(20),
            ],
        )
    } else {
        (
            vec!["domain", "standing", "reason", "report"],
            vec![Constraint::Min(18), Constraint::Length(29), Constraint::Length(8), Constraint::Min(12)],
        )
    };
    let listed = m.rtbl.feeds.iter().flat_map(|f| &f.entries).filter(|e| e.retracted_ms.is_none()).count();
    let title = format!(
        " Listed domains ({listed} listed, {} retracted kept) ",
        m.rtbl.feeds.iter().map(|f| f.entries.len()).sum::<usize>() - listed
    );
    f.render_widget(
        Table::new(rows, widths).header(Row::new(header).style(t.header())).block(Block::default().borders(Borders::TOP).title(title)),
        bottom,
    );
}

/// A domain's history: standing and why, counters, recent verifications, streams, policy log.
fn draw_domain_report(f: &mut Frame, r: &crate::engine::DomainReport, t: &Theme) {
    let area = f.area();
    let rect = Rect { x: area.x + 2, y: area.y + 2, width: area.width.saturating_sub(4), height: area.height.saturating_sub(4) };
    let mut lines = vec![Line::from(Span::styled(format!("{}: {}", r.domain, escape(&r.verdict)), t.header()))];
    if let Some(rec) = &r.record {
        let mut state = rec.state.as_str().to_owned();
        if let Some(x) = rec.expires_ms {
            state.push_str(&format!(" until {}", fmt_utc(x)));
        }
        if let Some(reason) = &rec.reason {
            state.push_str(&format!(" — {}", escape(reason)));
        }
        if let (Some(who), Some(when)) = (&rec.who, rec.when_ms) {
            state.push_str(&format!(" (by {who}, {})", fmt_utc(when)));
        }
        lines.push(Line::from(Span::styled(state, t.state(rec.state))));
        lines.push(Line::from(format!(
            "streams live now {} in / {} out; closed since records began {} in / {} out, their stanzas {} in / {} out",
            r.live.inbound, r.live.outbound, rec.streams_in, rec.streams_out, rec.stanzas_in, rec.stanzas_out
        )));
    } else {
        lines.push(Line::from(format!("streams live now {} in / {} out; none recorded", r.live.inbound, r.live.outbound)));
    }
    if !r.listings.is_empty() {
        lines.push(Line::from(Span::styled("real-time blocklists", t.header())));
        for l in &r.listings {
            let standing = match l.retracted_ms {
                Some(x) => format!("retracted {}", &fmt_utc(x)[..19]),
                None => "listed now".to_owned(),
            };
            lines.push(Line::from(Span::styled(
                format!(
                    "  {} node {}: {standing}; reason {}; first seen {}{}",
                    l.service,
                    l.node,
                    escape(l.reason.as_deref().unwrap_or("none given")),
                    &fmt_utc(l.first_seen_ms)[..19],
                    if l.block_strangers { "; block-strangers" } else { "" }
                ),
                if l.retracted_ms.is_some() { t.dim() } else { t.fg(Color::Magenta) },
            )));
            if let Some(text) = &l.text {
                lines.push(Line::from(format!("    report: {}", escape(text))));
            }
        }
    }
    lines.push(Line::from(Span::styled("verifications", t.header())));
    for o in &r.outcomes {
        lines.push(Line::from(vec![
            Span::raw(format!("  {} {:<3} ", &fmt_utc(o.time_ms)[..19], if o.direction == Direction::In { "in" } else { "out" })),
            Span::styled(format!("{:<8}", o.result.as_str()), t.result(o.result)),
            Span::raw(o.reason.clone()),
        ]));
    }
    lines.push(Line::from(Span::styled("streams", t.header())));
    for s in &r.streams {
        lines.push(Line::from(format!(
            "  {} {:<3} {}/{} stanzas  {}",
            &fmt_utc(s.opened_ms)[..19],
            if s.direction == Direction::In { "in" } else { "out" },
            s.stanzas_in,
            s.stanzas_out,
            s.close_reason.clone().unwrap_or_default()
        )));
    }
    lines.push(Line::from(Span::styled("policy log", t.header())));
    for a in &r.policy_log {
        lines.push(Line::from(format!(
            "  {} {} by {}{}",
            &fmt_utc(a.time_ms)[..19],
            a.action,
            a.who,
            a.reason.as_deref().map(|x| format!(": {}", escape(x))).unwrap_or_default()
        )));
    }
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::default().borders(Borders::ALL).title(" Domain history (any key closes) "))
            .wrap(Wrap { trim: false }),
        rect,
    );
}

fn draw_header(f: &mut Frame, m: &mut Model, t: &Theme, area: Rect) {
    let c = m.counts();
    let (live_in, live_out) = (c.live_in, c.live_out);
    let (domains, listen, mode, up) = match &m.status {
        Some(s) => (s.domains.join(" "), s.listen.join(" "), s.mode.clone(), human(s.uptime_s)),
        None => (String::new(), String::new(), "?".into(), String::new()),
    };
    let pending = c.pending;
    let line1 = Line::from(vec![
        Span::styled(" drawbridge ", t.header()),
        Span::raw(format!("{domains}  on {listen}  ")),
        Span::styled(format!("mode {mode}"), t.fg(Color::Cyan)),
        Span::raw(format!("  up {up}")),
    ]);
    // Gateway mode: the internal server's reachability, always in sight.
    let line1 = match m.status.as_ref().and_then(|s| s.gateway.as_ref()) {
        Some(g) => {
            let (text, style) = match g.reachable {
                Some(true) => (format!("  internal {} up", g.internal), t.fg(Color::Green)),
                Some(false) => (format!("  internal {} UNREACHABLE", g.internal), t.fg(Color::Red).add_modifier(Modifier::BOLD)),
                None => (format!("  internal {}", g.internal), Style::default()),
            };
            let mut spans = line1.spans;
            spans.push(Span::styled(text, style));
            Line::from(spans)
        }
        None => line1,
    };
    // Our certificate (the one peers are shown, then the gateway CA): its date at the end of
    // the first line; from certs.warn_before on, a warning at the start of the second, where
    // even a narrow terminal shows it.
    let mut line1 = line1;
    let mut spans = Vec::new();
    for c in m.status.as_ref().map_or(&[][..], |s| s.certificates.as_slice()) {
        let Some(at) = c.not_after_s else { continue };
        let which = if c.certificate == "tls" { "cert".to_owned() } else { c.certificate.clone() };
        match m.cert_expiry(at) {
            CertExpiry::Ok => line1.spans.push(Span::raw(format!("  {which} until {}", &fmt_utc_s(at)[..10]))),
            CertExpiry::Expiring => spans.push(Span::styled(
                format!(" ! {which} expires {} ({}) ", &fmt_utc_s(at)[..10], expiry_in_words(at, now_s())),
                t.fg(Color::Yellow).add_modifier(Modifier::BOLD),
            )),
            CertExpiry::Expired => spans.push(Span::styled(
                format!(" ! {which} {} ({}) ", expiry_in_words(at, now_s()).to_uppercase(), &fmt_utc_s(at)[..10]),
                t.fg(Color::Red).add_modifier(Modifier::BOLD),
            )),
        }
    }
    // A shared store: this node's name; the store out of reach, at the start of line two.
    if let Some(s) = m.status.as_ref().map(|s| &s.store) {
        if let Some(node) = &s.node {
            line1.spans.push(Span::raw(format!("  node {}", crate::text::escape(node))));
        }
        // The other nodes: how many are alive; a silent one (no heartbeat within
        // cluster.node_timeout, and not stopped) is named.
        if !s.nodes.is_empty() {
            let alive = s.nodes.iter().filter(|n| n.alive).count();
            line1.spans.push(Span::raw(format!(" ({alive}/{} nodes alive)", s.nodes.len())));
            let silent: Vec<String> =
                s.nodes.iter().filter(|n| !n.alive && n.stopped_ms.is_none()).map(|n| crate::text::escape(&n.node).into_owned()).collect();
            if !silent.is_empty() {
                spans
                    .push(Span::styled(format!(" ! node {} silent ", silent.join(", ")), t.fg(Color::Yellow).add_modifier(Modifier::BOLD)));
            }
        }
        if let Some(since) = s.down_since_ms {
            spans.push(Span::styled(
                format!(
                    " ! store UNREACHABLE since {} ({} waiting, {} dropped) ",
                    &crate::types::fmt_utc(since)[11..19],
                    s.backlog,
                    s.dropped
                ),
                t.fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        }
    }
    spans.push(Span::raw(format!(" streams {live_in} in / {live_out} out   ")));
    spans.push(Span::styled(
        format!("pending {pending}"),
        if pending > 0 { t.fg(Color::Yellow).add_modifier(Modifier::BOLD) } else { Style::default() },
    ));
    spans.push(Span::raw(format!("   blocked {}   blacklisted {}", c.blocked, c.blacklisted)));
    if pending > 0 {
        spans.push(Span::styled("   ! approvals waiting (2, a)", t.fg(Color::Yellow)));
    }
    // The limit closest to full (all of them: `drawbridge ctl status`).
    if let Some(l) = m.status.as_ref().and_then(|s| s.limits.iter().filter(|l| l.max > 0).max_by_key(|l| l.used * 1000 / l.max)) {
        let share = l.used * 100 / l.max;
        let style = match share {
            90.. => t.fg(Color::Red).add_modifier(Modifier::BOLD),
            70.. => t.fg(Color::Yellow),
            _ => Style::default(),
        };
        spans.push(Span::styled(format!("   {} {}/{}", l.key.rsplit('.').next().unwrap_or(&l.key), l.used, l.max), style));
    }
    f.render_widget(Paragraph::new(vec![line1, Line::from(spans)]), area);
}

fn draw_tabs(f: &mut Frame, m: &Model, t: &Theme, area: Rect) {
    let mut spans = Vec::new();
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, v.title());
        spans.push(if *v == m.view { Span::styled(label, t.selected()) } else { Span::raw(label) });
        spans.push(Span::raw(" "));
    }
    if !m.filter.is_empty() {
        spans.push(Span::styled(format!(" filter: {}", m.filter), t.fg(Color::Cyan)));
    }
    if let Some(node) = m.node() {
        let which = if m.all_nodes { "every node".to_owned() } else { format!("this node ({})", escape(node)) };
        spans.push(Span::styled(format!(" nodes: {which}"), t.fg(Color::Cyan)));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The first visible row so that `selected` is on screen.
fn window(selected: usize, total: usize, height: usize) -> (usize, usize) {
    if height == 0 || total == 0 {
        return (0, 0);
    }
    let start = selected.saturating_sub(height - 1).min(total.saturating_sub(height));
    (start, (start + height).min(total))
}

fn draw_connections(f: &mut Frame, m: &mut Model, t: &Theme, area: Rect) {
    let detail_h = if area.height >= 16 { 8 } else { 0 };
    let [list, detail] = Layout::vertical([Constraint::Min(3), Constraint::Length(detail_h)]).areas(area);
    let sel = m.selected[View::Connections.index()];
    let now = now_ms();
    let wide = list.width >= 160;
    let total = m.conn_rows().len();
    let (start, end) = window(sel, total, list.height.saturating_sub(2) as usize);
    let visible = m.conn_rows()[start..end].to_vec();
    // A shared store: the node that has each stream (this one's name too), first.
    let here = m.node().map(|n| escape(n).into_owned());
    let mut rows = Vec::with_capacity(end - start);
    for (i, row) in visible.iter().enumerate() {
        let Some((c, node)) = m.conn(row) else { continue };
        let mut cells = conn_cells(m, &c.id, c, now, wide);
        if let Some(here) = &here {
            let cell = match node {
                Some(n) => Cell::from(escape(n).into_owned()),
                None => Cell::from(here.clone()),
            };
            cells.insert(0, cell);
        }
        let mut row = Row::new(cells);
        if c.state == ConnState::Closed {
            row = row.style(t.dim());
        }
        if start + i == sel {
            row = row.style(t.selected());
        }
        rows.push(row);
    }
    let (mut header, mut widths) = conn_columns(wide);
    if let Some(here) = &here {
        let longest = m.others.iter().map(|o| escape(&o.node).chars().count()).chain([here.chars().count()]).max().unwrap_or(4);
        header.insert(0, "node");
        widths.insert(0, Constraint::Length(longest.clamp(4, if wide { 24 } else { 10 }) as u16));
    }
    let title = connections_title(m, total);
    let table =
        Table::new(rows, widths).header(Row::new(header).style(t.header())).block(Block::default().borders(Borders::TOP).title(title));
    f.render_widget(table, list);
    if detail_h > 0 {
        let elsewhere = m.selected_node();
        let lines = match m.selected_conn() {
            Some(c) => {
                let mut lines = conn_detail(&c);
                if let Some(n) = elsewhere {
                    lines.insert(0, Line::from(Span::styled(elsewhere_note(&n), t.fg(Color::Yellow))));
                }
                lines
            }
            None => vec![Line::from("no streams yet")],
        };
        f.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(" Stream ")).wrap(Wrap { trim: true }),
            detail,
        );
    }
}

/// One stream's cells in the connections table (`wide`: with the extra columns of
/// [`conn_columns`]).
fn conn_cells(m: &Model, id: &str, c: &ConnSnapshot, now: u64, wide: bool) -> Vec<Cell<'static>> {
    // Gateway mode's internal link and components carry a badge (and filter by "/internal",
    // "/component").
    let remote = match c.kind {
        crate::events::StreamKind::Federation => remotes(c),
        crate::events::StreamKind::Internal => format!("[internal] {}", remotes(c)),
        crate::events::StreamKind::Component => format!("[component] {}", remotes(c)),
    };
    let remote = if m.stream_listed(c) { format!("{remote} [listed]") } else { remote };
    let auth = c.pairs.iter().map(|p| format!("{}{}", method_label(p.method), pair_badge(p.status))).collect::<Vec<_>>().join(" ");
    let mut cells = vec![
        Cell::from(if c.direction == Direction::In { "in" } else { "out" }),
        Cell::from(remote),
        Cell::from(c.state.as_str()),
        Cell::from(c.tls.as_ref().map(|x| x.version.replace("TLS ", "")).unwrap_or_else(|| "-".into())),
        Cell::from(if auth.is_empty() { "-".to_owned() } else { auth }),
        Cell::from(human((now.saturating_sub(c.opened_ms)) / 1000)),
        Cell::from(format!("{}/{}", c.stanzas_in, c.stanzas_out)),
    ];
    if wide {
        cells.insert(2, Cell::from(c.local.clone().unwrap_or_default()));
        cells.insert(3, Cell::from(c.peer_addr.clone().unwrap_or_default()));
        cells.push(Cell::from(human(now.saturating_sub(c.last_activity_ms) / 1000)));
        cells.push(Cell::from(format!("{}/{}", bytes(c.bytes_in), bytes(c.bytes_out))));
        cells.push(Cell::from(spark(m.traffic.get(id).map(|v| v.iter().copied().collect::<Vec<_>>()).unwrap_or_default())));
        cells.push(Cell::from(c.close_reason.clone().unwrap_or_default()));
    }
    cells
}

/// The connections table's column names and widths, narrow or `wide` (160 columns or more).
fn conn_columns(wide: bool) -> (Vec<&'static str>, Vec<Constraint>) {
    if wide {
        (
            vec!["dir", "remote", "local", "peer", "state", "tls", "auth", "age", "stanzas", "idle", "bytes", "traffic", "close reason"],
            vec![
                Constraint::Length(3),
                Constraint::Min(18),
                Constraint::Length(16),
                Constraint::Length(21),
                Constraint::Length(14),
                Constraint::Length(4),
                Constraint::Length(11),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(5),
                Constraint::Length(12),
                Constraint::Length(12),
                Constraint::Min(10),
            ],
        )
    } else {
        (
            vec!["dir", "remote", "state", "tls", "auth", "age", "stanzas"],
            vec![
                Constraint::Length(3),
                Constraint::Min(16),
                Constraint::Length(14),
                Constraint::Length(4),
                Constraint::Length(11),
                Constraint::Length(6),
                Constraint::Length(9),
            ],
        )
    }
}

/// What the dashboard says of a stream another node has: where it is, and where its
/// transcript can be read.
pub fn elsewhere_note(node: &str) -> String {
    format!("on node {}: attach to that node's dashboard for its transcript", escape(node))
}

/// The table's title: live and recently closed counts (a shared store: this node's and the
/// other nodes'), or the matches of the filter.
fn connections_title(m: &mut Model, total: usize) -> String {
    let c = m.counts();
    let sort = m.sort.label();
    if !m.filter.is_empty() {
        return format!(" Connections ({total} matching; by {sort}) ");
    }
    let here = format!("{} live, {} recently closed", c.live_in + c.live_out, c.closed);
    match m.node() {
        None => format!(" Connections ({here}; by {sort}) "),
        Some(_) if !m.all_nodes => format!(" Connections (this node only: {here}; by {sort}; n: every node) "),
        Some(_) => {
            let nodes = m.others.iter().map(|o| o.node.as_str()).collect::<std::collections::BTreeSet<_>>().len();
            let unread = if m.cluster_error.is_some() { ", other nodes unreadable" } else { "" };
            format!(" Connections (here {here}; {} live on {nodes} other node(s){unread}; by {sort}) ", m.others.len())
        }
    }
}

fn conn_detail(c: &ConnSnapshot) -> Vec<Line<'static>> {
    let mut v = vec![Line::from(format!(
        "{} {}  {} ↔ {}  peer {}  stream id {}",
        if c.direction == Direction::In { "inbound" } else { "outbound" },
        c.id,
        c.local.clone().unwrap_or_default(),
        c.remote.clone().unwrap_or_default(),
        c.peer_addr.clone().unwrap_or_default(),
        c.stream_id.clone().unwrap_or_default()
    ))];
    match &c.tls {
        Some(tls) => {
            v.push(Line::from(format!(
                "TLS {} {}; certificate verdict: {}",
                tls.version,
                tls.cipher,
                tls.cert_verdict.as_ref().map_or("not judged".to_owned(), |v| v.to_string())
            )));
            if let Some(cert) = &tls.peer_cert {
                v.push(Line::from(format!(
                    "certificate {} issued by {}, names {}, expires {}",
                    cert.subject,
                    cert.issuer,
                    cert.names.join(","),
                    cert.not_after
                )));
                v.push(Line::from(format!("sha-256 {}", cert.fingerprint_sha256)));
            }
        }
        None => v.push(Line::from("no TLS")),
    }
    for p in &c.pairs {
        v.push(Line::from(format!(
            "pair {} → {}: {}, {}",
            p.remote,
            p.local,
            format!("{:?}", p.method).to_lowercase(),
            format!("{:?}", p.status).to_lowercase()
        )));
    }
    if let Some(l) = &c.limits {
        // XEP-0478: what we accept on it and what the peer said it accepts.
        v.push(Line::from(format!("limits (XEP-0478): {l}")));
    }
    if let Some(r) = &c.close_reason {
        v.push(Line::from(format!("closed: {r}")));
    }
    v
}

fn draw_domains(f: &mut Frame, m: &mut Model, t: &Theme, area: Rect) {
    let sel = m.selected[View::Domains.index()];
    let now = now_ms();
    let wide = area.width >= 150;
    let total = m.domain_rows().len();
    let (start, end) = window(sel, total, area.height.saturating_sub(2) as usize);
    let visible = m.domain_rows()[start..end].to_vec();
    let mut rows = Vec::with_capacity(end - start);
    for (i, name) in visible.iter().enumerate() {
        let live = m.live_streams(name);
        let Some(d) = m.domains.get(name) else { continue };
        let badge = match (d.state, d.expires_ms) {
            (DomainState::Blocked, Some(x)) => format!("blocked {}", human(x.saturating_sub(now) / 1000)),
            (DomainState::Pending, _) => {
                let wait = m.status.as_ref().map_or(0, |s| s.approval_wait_s);
                let age = d.when_ms.map_or(0, |w| now.saturating_sub(w) / 1000);
                if wait > age { format!("PENDING {} left", human(wait - age)) } else { "PENDING".to_owned() }
            }
            (s, _) => s.as_str().to_owned(),
        };
        let badge = if d.downgrade.is_some() { format!("{badge} ⚠") } else { badge };
        let listings = m.listings(&d.domain);
        let why = match (&d.downgrade, &d.reason, listings.first()) {
            (Some(dg), _, _) => escape(dg).into_owned(),
            // A kept listing's reason carries the service's report.
            (None, Some(r), _) => escape(r).into_owned(),
            (None, None, Some(l)) => escape(l).into_owned(),
            (None, None, None) => String::new(),
        };
        let name = if listings.is_empty() { d.domain.clone() } else { format!("{} [listed]", d.domain) };
        // Its last certificate: marked by the name when it expires within certs.warn_before
        // or expired; in its own column, dated, when wide.
        let cert = d.cert.as_ref().map(|c| (c.not_after_s, m.cert_expiry(c.not_after_s)));
        let mut name = vec![Span::raw(name)];
        match cert {
            Some((at, CertExpiry::Expiring)) => {
                name.push(Span::styled(format!(" [cert {}]", short_left(at - now_s())), t.fg(Color::Yellow).add_modifier(Modifier::BOLD)))
            }
            Some((_, CertExpiry::Expired)) => name.push(Span::styled(" [cert EXPIRED]", t.fg(Color::Red).add_modifier(Modifier::BOLD))),
            _ => {}
        }
        let (closed_in, closed_out) = (d.streams_in, d.streams_out);
        let mut cells = vec![
            Cell::from(Line::from(name)),
            Cell::from(Span::styled(badge, t.state(d.state))),
            Cell::from(why),
            Cell::from(format!("{}/{}", live.inbound, live.outbound)),
            Cell::from(format!("{closed_in}/{closed_out}")),
        ];
        if wide {
            cells.push(Cell::from(d.who.clone().unwrap_or_default()));
            cells.push(Cell::from(d.last_seen_ms.map(|x| fmt_utc(x)[..19].to_owned()).unwrap_or_default()));
            cells.push(Cell::from(d.last_verification.clone().unwrap_or_default()));
            cells.push(match cert {
                Some((at, e)) => {
                    let date = fmt_utc_s(at)[..10].to_owned();
                    let (text, style) = match e {
                        CertExpiry::Ok => (date, Style::default()),
                        CertExpiry::Expiring => {
                            (format!("{date} in {}", short_left(at - now_s())), t.fg(Color::Yellow).add_modifier(Modifier::BOLD))
                        }
                        CertExpiry::Expired => (format!("{date} EXPIRED"), t.fg(Color::Red).add_modifier(Modifier::BOLD)),
                    };
                    Cell::from(Span::styled(text, style))
                }
                None => Cell::from(""),
            });
        }
        let mut row = Row::new(cells);
        if start + i == sel {
            row = row.style(t.selected());
        }
        rows.push(row);
    }
    // Streams open now and those that ended since records began, in/out each.
    let mut header = vec!["domain", "state", "reason", "live in/out", "closed in/out"];
    let mut widths = vec![Constraint::Min(21), Constraint::Length(19), Constraint::Min(12), Constraint::Length(11), Constraint::Length(13)];
    if wide {
        header.extend(["who", "last seen", "last verification", "cert expires"]);
        widths.extend([Constraint::Length(20), Constraint::Length(19), Constraint::Min(20), Constraint::Length(18)]);
    }
    let title = format!(" Domains ({total}; pending first) ");
    f.render_widget(
        Table::new(rows, widths).header(Row::new(header).style(t.header())).block(Block::default().borders(Borders::TOP).title(title)),
        area,
    );
}

fn draw_verifications(f: &mut Frame, m: &mut Model, t: &Theme, area: Rect) {
    let sel = m.selected[View::Verifications.index()];
    let rows_all = m.outcome_rows();
    let (start, end) = window(sel, rows_all.len(), area.height.saturating_sub(2) as usize);
    let mut rows = Vec::with_capacity(end - start);
    for (i, o) in rows_all[start..end].iter().enumerate() {
        let mut row = Row::new(vec![
            Cell::from(fmt_utc(o.time_ms)[11..19].to_owned()),
            Cell::from(if o.direction == Direction::In { "in" } else { "out" }),
            Cell::from(o.remote.clone()),
            Cell::from(Span::styled(o.result.as_str(), t.result(o.result))),
            Cell::from(o.reason.clone()),
        ]);
        if start + i == sel {
            row = row.style(t.selected());
        }
        rows.push(row);
    }
    let widths = [Constraint::Length(8), Constraint::Length(3), Constraint::Length(24), Constraint::Length(8), Constraint::Min(20)];
    let title = format!(" Verifications ({}, newest first) ", rows_all.len());
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(vec!["time", "dir", "domain", "result", "why"]).style(t.header()))
            .block(Block::default().borders(Borders::TOP).title(title)),
        area,
    );
}

fn draw_transcript(f: &mut Frame, m: &mut Model, t: &Theme, area: Rect) {
    let Some(id) = m.transcript_id.clone() else {
        f.render_widget(
            Paragraph::new("Select a stream in Connections (1) and press Enter to read its transcript.")
                .block(Block::default().borders(Borders::TOP).title(" Transcript ")),
            area,
        );
        return;
    };
    let mut lines: Vec<Line> = Vec::new();
    let search = m.filter.to_lowercase();
    for l in m.transcript.iter().filter(|l| search.is_empty() || l.text.to_lowercase().contains(&search)) {
        let (mark, style) = match l.dir.as_str() {
            "in" => ("<<", t.fg(Color::Cyan)),
            "out" => (">>", t.fg(Color::Green)),
            _ => ("--", t.fg(Color::Yellow)),
        };
        let text = match (&l.key, m.reveal) {
            (Some(k), true) => l.text.replace(KEY_MARKER, k),
            _ => l.text.clone(),
        };
        for (j, part) in text.lines().enumerate() {
            let prefix = if j == 0 { format!("{} {} ", fmt_utc(l.time_ms)[11..19].to_owned(), mark) } else { " ".repeat(12) };
            lines.push(Line::from(vec![Span::styled(prefix, style), Span::raw(part.to_owned())]));
        }
    }
    let h = area.height.saturating_sub(1) as usize;
    let top = if m.follow { lines.len().saturating_sub(h) } else { m.transcript_scroll.min(lines.len().saturating_sub(1)) };
    let visible: Vec<Line> = lines.into_iter().skip(top).take(h).collect();
    let state = m.conns.get(&id).map(|c| c.state.as_str()).unwrap_or("?");
    let title = format!(
        " Transcript {} ({state}) — {}{}{} ",
        &id[..id.len().min(12)],
        if m.follow { "following" } else { "paused" },
        if m.reveal { ", keys revealed" } else { "" },
        if search.is_empty() { String::new() } else { format!(", lines matching {search:?}") }
    );
    f.render_widget(Paragraph::new(visible).block(Block::default().borders(Borders::TOP).title(title)), area);
}

fn draw_footer(f: &mut Frame, m: &Model, t: &Theme, area: Rect) {
    let prompt = m.prompt.as_ref().map(|p| match p {
        Prompt::Block { domain, input } => {
            format!("block {domain} — duration and reason (e.g. \"2h flooding\"; empty = until unblocked): {input}_")
        }
        Prompt::Blacklist { domain, input } => format!("blacklist {domain} and its subdomains — reason: {input}_"),
        Prompt::Keep { domain, input } => {
            format!("keep {domain}'s listing as your block (it stays after a retract) — reason (optional): {input}_")
        }
        Prompt::ConfirmClose { id } => format!("close stream {}? (y/n)", &id[..id.len().min(12)]),
        Prompt::Confirm { change, .. } => format!("{}? y applies it, n or Esc does not", escape(&change.describe())),
        Prompt::Filter { input } => format!("filter: {input}_"),
    });
    let keys = match m.view {
        View::Connections => {
            "Enter transcript  e explain  k close  a approve  b block  B blacklist  p probe  / filter  s sort  n nodes  m mode  ? help  q quit"
        }
        View::Domains => "a approve  b block  B blacklist  u clear  p probe  Enter history  e explain  / filter  m mode  ? help  q quit",
        View::Verifications => "/ filter (domain or result)  e explain  a approve  b block  ? help  q quit",
        View::Transcript => "f follow/pause  ↑↓ scroll  / search  r reveal keys  w write to file  ? help  q quit",
        View::Rtbl => "e explain  K keep  a approve  b block  B blacklist  p probe  / filter  ? help  q quit",
    };
    let first = match (&prompt, &m.message) {
        (Some(p), _) => Line::from(Span::styled(p.clone(), t.fg(Color::Yellow).add_modifier(Modifier::BOLD))),
        (None, Some(msg)) => Line::from(Span::styled(msg.clone(), t.fg(Color::Cyan))),
        (None, None) => Line::from(""),
    };
    f.render_widget(Paragraph::new(vec![first, Line::from(Span::styled(keys, t.dim()))]), area);
}

fn draw_help(f: &mut Frame, t: &Theme) {
    let area = f.area();
    let w = area.width.min(70);
    let h = area.height.min(KEYS.len() as u16 + 2);
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let lines: Vec<Line> =
        KEYS.iter().map(|(k, d)| Line::from(vec![Span::styled(format!("{k:<22}"), t.header()), Span::raw(*d)])).collect();
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Keys (any key closes) ")), r);
}

fn remotes(c: &ConnSnapshot) -> String {
    if c.pairs.is_empty() {
        c.remote.clone().unwrap_or_else(|| "?".into())
    } else {
        c.pairs.iter().map(|p| p.remote.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// Short names for the auth column.
fn method_label(m: crate::events::AuthMethod) -> &'static str {
    use crate::events::AuthMethod as M;
    match m {
        M::Dialback => "dialback ",
        M::DialbackWithValidCert => "db+cert ",
        M::SaslExternal => "sasl ",
        M::Certificate => "cert ",
        M::Policy => "policy ",
        M::ComponentHandshake => "component ",
    }
}

fn pair_badge(s: PairStatus) -> &'static str {
    match s {
        PairStatus::Valid => "✓",
        PairStatus::Pending => "…",
        PairStatus::Held => "⏸",
    }
}

/// Time left before a certificate expires, short: "5d", "7h", "12m".
fn short_left(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        86_400.. => format!("{}d", secs / 86_400),
        3600.. => format!("{}h", secs / 3600),
        _ => format!("{}m", secs / 60),
    }
}

fn human(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86400 {
        format!("{}h{:02}m", secs / 3600, (secs / 60) % 60)
    } else {
        format!("{}d{:02}h", secs / 86400, (secs / 3600) % 24)
    }
}

fn bytes(n: u64) -> String {
    if n < 10_000 {
        format!("{n}B")
    } else if n < 10_000_000 {
        format!("{}K", n / 1024)
    } else {
        format!("{}M", n / (1024 * 1024))
    }
}

fn spark(v: Vec<u64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = v.iter().copied().max().unwrap_or(0).max(1);
    v.iter().rev().take(12).rev().map(|x| if *x == 0 { ' ' } else { BARS[((x * 7) / max) as usize] }).collect()
}
