//! Keys → intents. Pure, so every binding is unit-tested; the app decides what an intent
//! does in the current view.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::state::View;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    Quit,
    NextView,
    PrevView,
    Show(View),
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Filter,
    Approve,
    Block,
    Blacklist,
    Keep,
    Clear,
    Probe,
    CloseStream,
    Open,
    Explain,
    CycleMode,
    Sort,
    /// A shared store: every node's streams, or this node's only.
    Nodes,
    Help,
    Follow,
    Reveal,
    WriteTranscript,
    // While a prompt is open:
    Input(char),
    Backspace,
    Submit,
    Cancel,
    Nothing,
}

/// Every key and what it does, for the help overlay and README.
pub const KEYS: &[(&str, &str)] = &[
    ("Tab / Shift-Tab, 1-5", "switch view (5: real-time blocklists)"),
    ("↑ ↓ PgUp PgDn g G", "move"),
    ("/", "filter (domain, id, state, internal, component) / search the transcript; Esc clears"),
    ("s", "connections: sort by age, remote, state or traffic"),
    ("n", "connections: every node's streams / this node's (a shared store)"),
    ("Enter", "open: a stream's transcript / a domain's history"),
    ("e", "explain: why the selected domain or stream's remote is treated so, rule by rule"),
    ("a", "approve the selected domain (shows what it would do, asks y/n)"),
    ("b", "block it (asks for duration and reason, shows what it would do, asks y/n)"),
    ("B", "blacklist it with its subdomains (asks for a reason, then y/n)"),
    ("u", "clear block or blacklist (shows what it would do, asks y/n)"),
    ("K", "keep a listed domain's block as yours (asks for a reason)"),
    ("p", "probe: ping over federation"),
    ("k", "close the selected stream (asks first)"),
    ("m", "next federation mode (shows what it would do, asks y/n)"),
    ("f", "transcript: follow / pause"),
    ("r", "transcript: reveal / hide dialback keys"),
    ("w", "transcript: write to a file"),
    ("?", "this help"),
    ("q, Ctrl-C", "quit (the server keeps running when attached)"),
];

pub fn intent(key: KeyEvent, prompt_open: bool) -> Intent {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return if prompt_open { Intent::Cancel } else { Intent::Quit };
    }
    if prompt_open {
        return match key.code {
            KeyCode::Enter => Intent::Submit,
            KeyCode::Esc => Intent::Cancel,
            KeyCode::Backspace => Intent::Backspace,
            KeyCode::Char(c) => Intent::Input(c),
            // A long dry run scrolls.
            KeyCode::Up => Intent::Up,
            KeyCode::Down => Intent::Down,
            KeyCode::PageUp => Intent::PageUp,
            KeyCode::PageDown => Intent::PageDown,
            _ => Intent::Nothing,
        };
    }
    match key.code {
        KeyCode::Char('q') => Intent::Quit,
        KeyCode::Tab => Intent::NextView,
        KeyCode::BackTab => Intent::PrevView,
        KeyCode::Char('1') => Intent::Show(View::Connections),
        KeyCode::Char('2') => Intent::Show(View::Domains),
        KeyCode::Char('3') => Intent::Show(View::Verifications),
        KeyCode::Char('4') => Intent::Show(View::Transcript),
        KeyCode::Char('5') => Intent::Show(View::Rtbl),
        KeyCode::Up => Intent::Up,
        KeyCode::Down => Intent::Down,
        KeyCode::PageUp => Intent::PageUp,
        KeyCode::PageDown => Intent::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Intent::Top,
        KeyCode::End | KeyCode::Char('G') => Intent::Bottom,
        KeyCode::Char('/') => Intent::Filter,
        KeyCode::Char('a') => Intent::Approve,
        KeyCode::Char('b') => Intent::Block,
        KeyCode::Char('B') => Intent::Blacklist,
        KeyCode::Char('u') => Intent::Clear,
        KeyCode::Char('K') => Intent::Keep,
        KeyCode::Char('p') => Intent::Probe,
        KeyCode::Char('k') => Intent::CloseStream,
        KeyCode::Enter => Intent::Open,
        KeyCode::Char('e') => Intent::Explain,
        KeyCode::Char('m') => Intent::CycleMode,
        KeyCode::Char('s') => Intent::Sort,
        KeyCode::Char('n') => Intent::Nodes,
        KeyCode::Char('?') => Intent::Help,
        KeyCode::Char('f') => Intent::Follow,
        KeyCode::Char('r') => Intent::Reveal,
        KeyCode::Char('w') => Intent::WriteTranscript,
        KeyCode::Esc => Intent::Cancel,
        _ => Intent::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn bindings() {
        assert_eq!(intent(k(KeyCode::Char('q')), false), Intent::Quit);
        assert_eq!(intent(k(KeyCode::Tab), false), Intent::NextView);
        assert_eq!(intent(k(KeyCode::Char('2')), false), Intent::Show(View::Domains));
        assert_eq!(intent(k(KeyCode::Char('5')), false), Intent::Show(View::Rtbl));
        assert_eq!(intent(k(KeyCode::Char('e')), false), Intent::Explain);
        assert_eq!(intent(k(KeyCode::Char('K')), false), Intent::Keep);
        assert_eq!(intent(k(KeyCode::Char('a')), false), Intent::Approve);
        assert_eq!(intent(k(KeyCode::Char('b')), false), Intent::Block);
        assert_eq!(intent(k(KeyCode::Char('B')), false), Intent::Blacklist);
        assert_eq!(intent(k(KeyCode::Char('k')), false), Intent::CloseStream);
        assert_eq!(intent(k(KeyCode::Char('/')), false), Intent::Filter);
        assert_eq!(intent(k(KeyCode::Char('n')), false), Intent::Nodes);
        assert_eq!(intent(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), false), Intent::Quit);
    }

    #[test]
    fn prompt_takes_text() {
        assert_eq!(intent(k(KeyCode::Char('q')), true), Intent::Input('q'));
        assert_eq!(intent(k(KeyCode::Char('b')), true), Intent::Input('b'));
        assert_eq!(intent(k(KeyCode::Enter), true), Intent::Submit);
        assert_eq!(intent(k(KeyCode::Esc), true), Intent::Cancel);
        assert_eq!(intent(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), true), Intent::Cancel);
        assert_eq!(intent(k(KeyCode::Down), true), Intent::Down, "a long dry run scrolls");
        assert_eq!(intent(k(KeyCode::PageUp), true), Intent::PageUp);
    }
}
