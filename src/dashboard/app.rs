//! The dashboard loop: terminal events, engine events and a frame timer; redraws at most 20
//! times a second and only when something changed.

use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;

use super::client::{Client, Incoming};
use super::input::{Intent, intent};
use super::state::{Model, Prompt, View};
use crate::engine::{PolicyChange, Reply, Request};
use crate::events::TranscriptLine;

const FRAME: Duration = Duration::from_millis(50);

/// The last panic seen while the dashboard is up (shown in the footer).
static PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Run the dashboard until the operator quits (or the engine goes away).
pub async fn run(client: Client, stop: tokio_util::sync::CancellationToken) -> Result<(), String> {
    let client = Arc::new(client);
    let mut model = Model::new(!crate::text::colour_allowed_here());
    model.load(client.snapshot().await?);
    let mut incoming = client.events().await?;
    let mut terminal = ratatui::init();
    // ratatui's hook restores the terminal on any panic, which would leave this UI drawing
    // into a restored terminal if a background task panicked. Instead: log it and show it in
    // the footer; a panic of the UI itself is caught below and the terminal restored then.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("a task panicked: {info}");
        tracing::error!("{msg}");
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }));
    let result = {
        use futures_util::FutureExt;
        std::panic::AssertUnwindSafe(event_loop(&mut terminal, &client, &mut model, &mut incoming, stop)).catch_unwind().await
    };
    ratatui::restore();
    std::panic::set_hook(previous);
    let result = match result {
        Ok(r) => r,
        Err(_) => Err(PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "the dashboard panicked".into())),
    };
    if let Some(id) = model.transcript_id.take() {
        let _ = client.request(Request::Watch { id, on: false }).await;
    }
    result
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    client: &Arc<Client>,
    model: &mut Model,
    incoming: &mut tokio::sync::mpsc::Receiver<Incoming>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let mut keys = EventStream::new();
    // Results of slow actions (probes) come back here.
    let (notes_tx, mut notes_rx) = tokio::sync::mpsc::channel::<String>(16);
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The header's uptime and counts; the only wake-up of an idle dashboard.
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    // When the feeds' entries were last read: at most once a second while they change (a
    // sync changes many at once), the status tick picking up the last change.
    let mut rtbl_read = tokio::time::Instant::now();
    // A shared store: the other nodes' streams, read as often as they publish them.
    let heartbeat = model.status.as_ref().map_or(0, |s| s.store.heartbeat_ms);
    let mut cluster_tick = tokio::time::interval(Duration::from_millis(heartbeat.max(500)));
    cluster_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Read in a task of its own (a database out of reach must not freeze the screen), one
    // read at a time; the answers come back here.
    let (cluster_tx, mut cluster_rx) = tokio::sync::mpsc::channel::<Result<Reply, String>>(1);
    let mut cluster_reading = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            // Only armed when something changed: an idle dashboard does not wake up.
            _ = frame.tick(), if model.dirty => {
                if let Some(p) = PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                    model.message = Some(format!("{p} — see the log file"));
                }
                terminal.draw(|f| super::ui::draw(f, model)).map_err(|e| e.to_string())?;
                model.dirty = false;
            }
            _ = cluster_tick.tick(), if model.clustered() && model.all_nodes && !cluster_reading => {
                cluster_reading = true;
                let (client, tx) = (client.clone(), cluster_tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(client.request(Request::Connections { closed: false, cluster: true }).await).await;
                });
            }
            r = cluster_rx.recv() => if let Some(r) = r {
                cluster_reading = false;
                set_cluster(model, r);
            },
            _ = status_tick.tick() => {
                // Uptime and counts in the header.
                if let Ok(Reply::Status(s)) = client.request(Request::Status).await {
                    model.status = Some(*s);
                    model.dirty = true;
                }
                refresh_rtbl(client, model, &mut rtbl_read).await;
            }
            ev = incoming.recv() => match ev {
                Some(Incoming::Event(e)) => {
                    model.apply(*e);
                    refresh_rtbl(client, model, &mut rtbl_read).await;
                }
                Some(Incoming::Resync) => {
                    if let Ok(s) = client.snapshot().await {
                        model.load(s);
                    }
                }
                Some(Incoming::Gone(why)) => return Err(format!("lost the engine: {why}")),
                None => return Err("lost the engine".into()),
            },
            msg = notes_rx.recv() => if let Some(msg) = msg {
                model.message = Some(msg);
                model.dirty = true;
            },
            k = keys.next() => match k {
                Some(Ok(TermEvent::Key(key))) if key.kind == KeyEventKind::Press => {
                    if model.show_help || model.domain_report.is_some() || model.explain.is_some() {
                        model.show_help = false;
                        model.domain_report = None;
                        model.explain = None;
                        model.dirty = true;
                        continue;
                    }
                    let i = intent(key, model.prompt.is_some());
                    if i == Intent::Quit {
                        return Ok(());
                    }
                    act(client, model, i, &notes_tx).await;
                    model.dirty = true;
                }
                Some(Ok(TermEvent::Resize(_, _))) => model.dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("terminal: {e}")),
                None => return Ok(()),
            },
        }
    }
}

/// The other nodes' streams again (a shared store, while every node's are shown).
pub async fn refresh_cluster(client: &Arc<Client>, model: &mut Model) {
    if !model.clustered() || !model.all_nodes {
        return;
    }
    let r = client.request(Request::Connections { closed: false, cluster: true }).await;
    set_cluster(model, r);
}

/// The answer to `Request::Connections { cluster: true }` into the model (only while every
/// node's streams are shown).
fn set_cluster(model: &mut Model, r: Result<Reply, String>) {
    if !model.all_nodes {
        return;
    }
    match r {
        Ok(Reply::Cluster(r)) => model.set_cluster(*r),
        Ok(other) => model.cluster_failed(format!("unexpected answer {other:?}")),
        Err(e) => model.cluster_failed(e),
    }
}

/// The feeds' entries again (`Request::Rtbl`) when an event said they changed, at most once
/// a second (`last` is when they were last read).
async fn refresh_rtbl(client: &Arc<Client>, model: &mut Model, last: &mut tokio::time::Instant) {
    if !model.rtbl_stale || last.elapsed() < Duration::from_secs(1) {
        return;
    }
    *last = tokio::time::Instant::now();
    match client.request(Request::Rtbl).await {
        Ok(Reply::Rtbl(r)) => model.set_rtbl(*r),
        Ok(other) => model.message = Some(format!("rtbl: unexpected answer {other:?}")),
        Err(e) => model.message = Some(format!("rtbl: {e}")),
    }
}

fn describe_change(r: Result<Reply, String>) -> String {
    match r {
        Ok(Reply::Change(c)) => {
            let mut m = format!("{}: {}", c.record.domain, c.record.state.as_str());
            if let Some(reason) = &c.record.reason {
                m.push_str(&format!(" ({reason})"));
            }
            if !c.changed {
                m.push_str(" — unchanged");
            }
            if !c.closed_streams.is_empty() {
                m.push_str(&format!("; closed {} stream(s)", c.closed_streams.len()));
            }
            m
        }
        Ok(other) => format!("unexpected answer: {other:?}"),
        Err(e) => format!("failed: {e}"),
    }
}

/// A kept listing, in the footer: the domain's standing now, the listing kept, the streams
/// closed, then the reason (long: it carries the report).
fn describe_keep(k: &crate::engine::KeepReport) -> String {
    let kept = match k.listing.retracted_ms {
        Some(_) => "a retracted listing",
        None => "a listing in force",
    };
    let mut m = format!("{}: {}, keeping {kept} by {}", k.record.domain, k.record.state.as_str(), k.listing.service);
    if !k.changed {
        m.push_str(" — unchanged");
    }
    if !k.closed_streams.is_empty() {
        m.push_str(&format!("; closed {} stream(s)", k.closed_streams.len()));
    }
    if let Some(reason) = &k.record.reason {
        m.push_str(&format!(" — {reason}"));
    }
    // The reason carries the service's report: escaped for the footer.
    crate::text::escape(&m).into_owned()
}

/// What an intent does in the current view.
pub async fn act(client: &Arc<Client>, m: &mut Model, i: Intent, notes: &tokio::sync::mpsc::Sender<String>) {
    if let Some(prompt) = m.prompt.clone() {
        return prompt_key(client, m, prompt, i).await;
    }
    let page = 10;
    match i {
        Intent::NextView => m.view = View::ALL[(m.view.index() + 1) % View::ALL.len()],
        Intent::PrevView => m.view = View::ALL[(m.view.index() + View::ALL.len() - 1) % View::ALL.len()],
        Intent::Show(v) => m.view = v,
        Intent::Up => m.move_selection(-1),
        Intent::Down => m.move_selection(1),
        Intent::PageUp => m.move_selection(-page),
        Intent::PageDown => m.move_selection(page),
        Intent::Top => {
            let n = m.row_count() as isize;
            m.move_selection(-n)
        }
        Intent::Bottom => {
            let n = m.row_count() as isize;
            m.move_selection(n)
        }
        Intent::Filter => m.prompt = Some(Prompt::Filter { input: m.filter.clone() }),
        Intent::Help => m.show_help = true,
        Intent::Sort => {
            m.cycle_sort();
            m.message = Some(format!("connections sorted by {}", m.sort.label()));
        }
        Intent::Nodes => {
            if m.clustered() {
                m.toggle_nodes();
                if m.all_nodes {
                    refresh_cluster(client, m).await;
                }
                m.message = Some(if m.all_nodes { "every node's streams".into() } else { "this node's streams only".into() });
            } else {
                m.message = Some("one node: this node keeps its own store (store.backend = \"sled\"), there are no other nodes".into());
            }
        }
        Intent::Follow => m.follow = !m.follow,
        Intent::Reveal => {
            m.reveal = !m.reveal;
            m.message = Some(if m.reveal { "dialback keys revealed".into() } else { "dialback keys hidden".into() });
        }
        Intent::Cancel => {
            m.message = None;
            if !m.filter.is_empty() {
                m.set_filter(String::new());
            }
        }
        Intent::Approve | Intent::Clear | Intent::Block | Intent::Blacklist | Intent::Keep | Intent::Probe => {
            act_on_domain(client, m, i, notes).await
        }
        Intent::CloseStream => match (m.selected_conn(), m.selected_node()) {
            (Some(_), Some(node)) if m.view == View::Connections => {
                m.message = Some(format!(
                    "on node {}: close it there (its dashboard, or drawbridge ctl close on that node)",
                    crate::text::escape(&node)
                ))
            }
            (Some(c), None) if m.view == View::Connections && c.state != crate::events::ConnState::Closed => {
                m.prompt = Some(Prompt::ConfirmClose { id: c.id })
            }
            _ => m.message = Some("select a live stream in Connections first".into()),
        },
        Intent::Open => open_selected(client, m).await,
        Intent::Explain => explain_selected(client, m).await,
        Intent::CycleMode => cycle_mode(client, m).await,
        Intent::WriteTranscript => write_transcript(m),
        Intent::Quit | Intent::Input(_) | Intent::Backspace | Intent::Submit | Intent::Nothing => {}
    }
}

/// An operator decision about the selected domain: approve and clear shown as a dry run to
/// confirm, block and blacklist after a prompt for the reason too, probe in the background
/// (its answer a note).
async fn act_on_domain(client: &Arc<Client>, m: &mut Model, i: Intent, notes: &tokio::sync::mpsc::Sender<String>) {
    let Some(domain) = m.selected_domain() else {
        m.message = Some("select a stream or a domain first".into());
        return;
    };
    match i {
        Intent::Approve => preview(client, m, PolicyChange::Approve { domain, reason: None }).await,
        Intent::Clear => preview(client, m, PolicyChange::Unblock { domain }).await,
        Intent::Block => m.prompt = Some(Prompt::Block { domain, input: String::new() }),
        Intent::Blacklist => m.prompt = Some(Prompt::Blacklist { domain, input: String::new() }),
        Intent::Keep => m.prompt = Some(Prompt::Keep { domain, input: String::new() }),
        _ => {
            m.message = Some(format!("probing {domain}…"));
            let (client, notes) = (client.clone(), notes.clone());
            tokio::spawn(async move {
                let msg = match client.request(Request::Probe { domain: domain.clone(), from: None }).await {
                    Ok(Reply::Probe(p)) if p.ok => {
                        format!("pong from {} in {:.1} ms ({})", p.to, p.rtt_ms.unwrap_or(0.0), p.auth.unwrap_or_default())
                    }
                    Ok(Reply::Probe(p)) => format!("probe {} failed: {}", p.to, p.error.unwrap_or_default()),
                    Ok(other) => format!("probe: unexpected answer {other:?}"),
                    Err(e) => format!("probe failed: {e}"),
                };
                let _ = notes.send(msg).await;
            });
        }
    }
}

/// Enter: the selected stream's transcript, or the selected domain's report.
async fn open_selected(client: &Arc<Client>, m: &mut Model) {
    match m.view {
        View::Connections => {
            // Another node's stream: its transcript is that node's.
            if let Some(node) = m.selected_node() {
                m.message = Some(super::ui::elsewhere_note(&node));
            } else if let Some(c) = m.selected_conn() {
                open_transcript(client, m, c.id).await;
            }
        }
        View::Domains => {
            if let Some(d) = m.selected_domain() {
                match client.request(Request::Domain { domain: d.clone() }).await {
                    Ok(Reply::Domain(report)) => m.domain_report = Some(*report),
                    Ok(other) => m.message = Some(format!("{d}: unexpected answer {other:?}")),
                    Err(e) => m.message = Some(format!("{d}: {e}")),
                }
            }
        }
        _ => {}
    }
}

/// `e`: why the selected domain (a stream's remote, a listed domain) is treated as it is,
/// shown over the view.
async fn explain_selected(client: &Arc<Client>, m: &mut Model) {
    let Some(d) = m.selected_domain() else {
        m.message = Some("select a stream or a domain first".into());
        return;
    };
    match client.request(Request::Explain { domain: d.clone() }).await {
        Ok(Reply::Explain(r)) => m.explain = Some(*r),
        Ok(other) => m.message = Some(format!("{d}: unexpected answer {other:?}")),
        Err(e) => m.message = Some(format!("{d}: {e}")),
    }
}

/// The next policy mode (open → approval → allowlist → open), as a dry run to confirm.
async fn cycle_mode(client: &Arc<Client>, m: &mut Model) {
    let next = match m.status.as_ref().map(|s| s.mode.as_str()) {
        Some("open") => "approval",
        Some("approval") => "allowlist",
        _ => "open",
    };
    preview(client, m, PolicyChange::Mode { mode: next.into() }).await;
}

/// What `change` would do, asked of the engine (`Request::Preview`: the policy's own
/// decision over the live streams and the history) and shown; the operator then applies it
/// (y) or not. A change the engine refuses says why at once.
async fn preview(client: &Arc<Client>, m: &mut Model, change: PolicyChange) {
    match client.request(Request::Preview { change: change.clone(), days: None }).await {
        Ok(Reply::Preview(preview)) => m.prompt = Some(Prompt::confirm(change, preview)),
        Ok(other) => m.message = Some(format!("{}: unexpected answer {other:?}", change.describe())),
        Err(e) => m.message = Some(format!("{}: {e}", change.describe())),
    }
}

/// The confirmed change, made: the same change the preview judged, on the policy it judged
/// (the preview's generation: if the policy changed since, the engine refuses, and says so —
/// the operator opens the preview again).
async fn apply(client: &Arc<Client>, m: &mut Model, change: PolicyChange, generation: u64) {
    let what = change.describe();
    let r = client.request(Request::Change { change, expect_generation: Some(generation) }).await;
    m.message = Some(match r {
        Ok(Reply::Mode(r)) => {
            if let Some(s) = m.status.as_mut() {
                s.mode = r.mode.clone();
            }
            let closed = if r.closed_streams.is_empty() { String::new() } else { format!("; closed {} stream(s)", r.closed_streams.len()) };
            format!("mode {}{}{closed}", r.mode, if r.changed { "" } else { " — unchanged" })
        }
        Ok(Reply::Import(r)) => format!("added {} domain(s) from {}; closed {} stream(s)", r.added.len(), r.source, r.closed_streams.len()),
        Err(e) => format!("{what} failed: {e}"),
        r => describe_change(r),
    });
}

/// The open transcript to a file in the working directory, keys as shown on screen.
fn write_transcript(m: &mut Model) {
    let Some(id) = m.transcript_id.clone() else {
        m.message = Some("open a transcript first (Enter on a stream)".into());
        return;
    };
    let path = format!("drawbridge-transcript-{}.txt", &id[..id.len().min(12)]);
    let text: String = m
        .transcript
        .iter()
        .map(|l| {
            format!(
                "{} {} {}\n",
                crate::events::fmt_utc(l.time_ms),
                l.dir,
                if m.reveal { l.text.replace(crate::xml::writer::KEY_MARKER, l.key.as_deref().unwrap_or("")) } else { l.text.clone() }
            )
        })
        .collect();
    m.message = Some(match std::fs::write(&path, text) {
        Ok(()) => format!("wrote {} lines to {path}", m.transcript.len()),
        Err(e) => format!("cannot write {path}: {e}"),
    });
}

async fn open_transcript(client: &Arc<Client>, m: &mut Model, id: String) {
    if let Some(old) = m.transcript_id.take() {
        let _ = client.request(Request::Watch { id: old, on: false }).await;
    }
    let _ = client.request(Request::Watch { id: id.clone(), on: true }).await;
    let lines: Vec<TranscriptLine> = match client.request(Request::Transcript { id: id.clone() }).await {
        Ok(Reply::Transcript(lines)) => lines,
        _ => Vec::new(),
    };
    m.transcript.clear();
    for l in lines {
        m.push_transcript(l);
    }
    m.transcript_id = Some(id);
    m.follow = true;
    m.transcript_scroll = 0;
    m.view = View::Transcript;
}

async fn prompt_key(client: &Arc<Client>, m: &mut Model, prompt: Prompt, i: Intent) {
    let edit = |input: &mut String| match &i {
        Intent::Input(c) => input.push(*c),
        Intent::Backspace => {
            input.pop();
        }
        _ => {}
    };
    match (prompt, &i) {
        (_, Intent::Cancel) => m.prompt = None,
        (Prompt::ConfirmClose { id }, Intent::Input('y') | Intent::Submit) => {
            m.prompt = None;
            m.message = Some(match client.request(Request::Close { id }).await {
                Ok(Reply::Text(t)) => t,
                Ok(other) => format!("unexpected answer: {other:?}"),
                Err(e) => format!("failed: {e}"),
            });
        }
        (Prompt::ConfirmClose { .. }, _) => m.prompt = None,
        (Prompt::Confirm { change, preview, .. }, Intent::Input('y' | 'Y')) => {
            m.prompt = None;
            apply(client, m, change, preview.generation).await;
        }
        (Prompt::Confirm { change, preview, lines, scroll }, Intent::Up | Intent::Down | Intent::PageUp | Intent::PageDown) => {
            let step: isize = match i {
                Intent::Up => -1,
                Intent::Down => 1,
                Intent::PageUp => -10,
                _ => 10,
            };
            let last = lines.len().saturating_sub(1);
            let scroll = scroll.saturating_add_signed(step).min(last);
            m.prompt = Some(Prompt::Confirm { change, preview, lines, scroll });
        }
        (Prompt::Confirm { change, .. }, _) => {
            m.prompt = None;
            m.message = Some(format!("{}: not applied", change.describe()));
        }
        (Prompt::Filter { input }, Intent::Submit) => {
            m.prompt = None;
            m.set_filter(input.trim().to_lowercase());
        }
        (Prompt::Block { domain, input }, Intent::Submit) => {
            m.prompt = None;
            let (for_secs, reason) = parse_block_input(&input);
            preview(client, m, PolicyChange::Block { domain, for_secs, reason }).await;
        }
        (Prompt::Blacklist { domain, input }, Intent::Submit) => {
            if input.trim().is_empty() {
                m.message = Some("a blacklist entry needs a reason".into());
                return;
            }
            m.prompt = None;
            preview(client, m, PolicyChange::Blacklist { domain, reason: input.trim().to_owned() }).await;
        }
        (Prompt::Keep { domain, input }, Intent::Submit) => {
            m.prompt = None;
            let reason = Some(input.trim().to_owned()).filter(|r| !r.is_empty());
            m.message = Some(match client.request(Request::Keep { domain, reason }).await {
                Ok(Reply::Keep(k)) => describe_keep(&k),
                Ok(other) => format!("unexpected answer: {other:?}"),
                Err(e) => format!("failed: {e}"),
            });
        }
        (Prompt::Keep { domain, mut input }, _) => {
            edit(&mut input);
            m.prompt = Some(Prompt::Keep { domain, input });
        }
        (Prompt::Filter { mut input }, _) => {
            edit(&mut input);
            m.prompt = Some(Prompt::Filter { input });
        }
        (Prompt::Block { domain, mut input }, _) => {
            edit(&mut input);
            m.prompt = Some(Prompt::Block { domain, input });
        }
        (Prompt::Blacklist { domain, mut input }, _) => {
            edit(&mut input);
            m.prompt = Some(Prompt::Blacklist { domain, input });
        }
    }
}

/// "2h flooding us" → (7200 s, "flooding us"); "spam" → (none, "spam").
pub fn parse_block_input(input: &str) -> (Option<u64>, Option<String>) {
    let input = input.trim();
    let (first, rest) = input.split_once(' ').unwrap_or((input, ""));
    match crate::config::parse_duration(first) {
        Ok(d) if !first.is_empty() && first.chars().next().is_some_and(|c| c.is_ascii_digit()) && !d.is_zero() => {
            (Some(d.as_secs().max(1)), Some(rest.trim().to_owned()).filter(|r| !r.is_empty()))
        }
        _ => (None, Some(input.to_owned()).filter(|r| !r.is_empty())),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_block_input;

    #[test]
    fn block_prompt_parsing() {
        assert_eq!(parse_block_input("2h flooding us"), (Some(7200), Some("flooding us".into())));
        assert_eq!(parse_block_input("spam"), (None, Some("spam".into())));
        assert_eq!(parse_block_input(""), (None, None));
        assert_eq!(parse_block_input("30m"), (Some(1800), None));
    }
}
