//! Peer-controlled text on its way to a log line, the store, an event or a terminal.
//!
//! Anything a peer chose — header attributes, names in stanzas, stream error texts,
//! certificate names, SNI — goes through [`clip`] (or [`Untrusted`]) before it is written
//! anywhere a human reads: control characters become visible escapes (`\n`, `\x1b`, `\u{202e}`),
//! so a peer can neither forge a log line nor drive the operator's terminal, and the text is
//! cut at a byte budget, so it cannot fill a log or a screen either.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Whether `c` must not reach a log or a terminal as it is: C0 and C1 controls, DEL, and
/// the Unicode format characters that reorder or hide text (bidi marks, overrides and
/// isolates, the Arabic letter mark, zero width marks, the Mongolian vowel separator,
/// interlinear annotations, tags, the soft hyphen) and the line and paragraph separators.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// Write `c` as it is, or escaped when it is unsafe.
fn push_escaped(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    if !is_unsafe(c) {
        return out.write_char(c);
    }
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

/// `s` with its unsafe characters escaped and at most about `max` bytes of it (cut on a
/// character boundary, marked with how much was left out): what may be logged, stored,
/// sent as an event or printed of a peer's text. Borrowed when nothing had to change.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max) + 16);
    let _ = write_clipped(&mut Counted { out: &mut out, written: 0 }, s, max);
    Cow::Owned(out)
}

/// A writer that counts what went through it (the budget of [`write_clipped`]).
struct Counted<'a, W: ?Sized> {
    out: &'a mut W,
    written: usize,
}

impl<W: fmt::Write + ?Sized> fmt::Write for Counted<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.written += s.len();
        self.out.write_str(s)
    }
}

/// The one loop behind [`clip`] and [`Untrusted`]: escaped characters until `max` bytes
/// were written, then how much was left out.
fn write_clipped<W: fmt::Write + ?Sized>(out: &mut Counted<'_, W>, s: &str, max: usize) -> fmt::Result {
    for (i, c) in s.char_indices() {
        if out.written >= max {
            return write!(out, "…(+{} bytes)", s.len() - i);
        }
        push_escaped(out, c)?;
    }
    Ok(())
}

/// `s` with its unsafe characters escaped, whatever its length: for text already bounded
/// (a stored line, a value the engine sent) that is about to reach a terminal.
pub fn escape(s: &str) -> Cow<'_, str> {
    clip(s, usize::MAX)
}

/// Displays a peer's text escaped and clipped (see [`clip`]), without allocating: for
/// `tracing` fields and `format!` arguments.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str, pub usize);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_clipped(&mut Counted { out: f, written: 0 }, self.0, self.1)
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Whether colours may be used, given `NO_COLOR`'s value: not when it is set to anything
/// non-empty (<https://no-color.org>). Logs, the dashboard and every other coloured output
/// ask this.
pub fn colour_allowed(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_none_or(|v| v.is_empty())
}

/// [`colour_allowed`] for this process's environment.
pub fn colour_allowed_here() -> bool {
    colour_allowed(std::env::var_os("NO_COLOR").as_deref())
}

/// The log's last line of defence: a writer that keeps every event on one line and keeps
/// anything [`is_unsafe`] from reaching a terminal raw (a `tail -f`, a `journalctl` or a
/// `cat` of the file). The `fmt` subscriber writes one event per `write_all`, ending in
/// `\n`; an unsafe character before that end can only come from a value someone forgot to
/// escape, and is written escaped in the line's own syntax ([`LineSyntax`]), so no text —
/// whatever call site it took — can start a line that looks like drawbridge's own, move the
/// cursor or reorder what the operator reads.
pub struct OneLineWriter<M> {
    make: M,
    syntax: LineSyntax,
}

/// What a log line is, for [`OneLineWriter`]: how it escapes what must not stay raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineSyntax {
    /// Plain text: `\n`, `\x1b`, `\u{202e}` (as [`escape`]). With `colours`, ESC is left
    /// alone: the subscriber writes its colour codes with it, and escapes it in values itself.
    Text { colours: bool },
    /// A JSON object: `\u000a`, `\u202e` — the same JSON value, on one line with nothing
    /// raw. (serde_json escapes C0 controls itself, not DEL, C1 controls or bidi marks; outside
    /// strings a JSON line is ASCII.)
    Json,
}

impl<M> OneLineWriter<M> {
    pub fn new(make: M, syntax: LineSyntax) -> Self {
        OneLineWriter { make, syntax }
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a> for OneLineWriter<M> {
    type Writer = OneLine<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        OneLine(self.make.make_writer(), self.syntax)
    }
}

/// See [`OneLineWriter`].
pub struct OneLine<W>(pub W, pub LineSyntax);

impl<W> OneLine<W> {
    /// Whether `b` may pass as it is: printable ASCII (and ESC for coloured text).
    fn plain(&self, b: u8) -> bool {
        (0x20..0x7f).contains(&b) || (b == 0x1b && self.1 == LineSyntax::Text { colours: true })
    }
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if body.iter().all(|&b| self.plain(b)) {
            return self.0.write(buf);
        }
        let text = String::from_utf8_lossy(body);
        let mut out = String::with_capacity(buf.len() + 16);
        for c in text.chars() {
            if !is_unsafe(c) || (c == '\x1b' && self.plain(0x1b)) {
                out.push(c);
            } else if self.1 == LineSyntax::Json {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            } else {
                let _ = push_escaped(&mut out, c);
            }
        }
        if body.len() < buf.len() {
            out.push('\n');
        }
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_untouched() {
        assert!(matches!(clip("example.org", 64), Cow::Borrowed("example.org")));
        assert!(matches!(clip("ünïcödé.example", 64), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_and_reordering_marks_become_visible() {
        let forged = "a.example\n2026-12-04T00:00:00Z  INFO drawbridge: valid\x1b[2J\x07\u{202e}\u{85}";
        let out = clip(forged, 1024);
        assert!(!out.chars().any(is_unsafe), "{out}");
        assert_eq!(out, "a.example\\n2026-12-04T00:00:00Z  INFO drawbridge: valid\\x1b[2J\\x07\\u{202e}\\x85");
        assert_eq!(Untrusted(forged, 1024).to_string(), out);
        assert_eq!(escape("tab\there"), "tab\\there");
        for hidden in ['\u{ad}', '\u{61c}', '\u{180e}', '\u{2066}', '\u{206f}', '\u{fff9}', '\u{fffb}', '\u{e0001}', '\u{e007f}'] {
            assert!(is_unsafe(hidden), "{:x}", hidden as u32);
            assert!(!escape(&format!("a{hidden}b")).contains(hidden));
        }
        assert!(!is_unsafe('é') && !is_unsafe('\u{2070}'));
    }

    #[test]
    fn clipped_at_the_budget_on_a_character_boundary() {
        let s = "é".repeat(100);
        let out = clip(&s, 11);
        assert!(out.starts_with("éééééé…(+188 bytes)"), "{out}");
        assert_eq!(Untrusted(&s, 11).to_string(), out);
        // Escapes count against the budget: a line of controls cannot grow past it by much.
        let bell = "\x07".repeat(10_000);
        assert!(clip(&bell, 64).len() < 64 + 4 + 20);
    }

    #[test]
    fn a_log_event_stays_on_one_line() {
        use std::io::Write as _;
        let mut w = OneLine(Vec::new(), LineSyntax::Text { colours: false });
        w.write_all(b"2026-12-04T00:00:00Z  INFO drawbridge: plain\n").unwrap();
        w.write_all(b"2026-12-04T00:00:00Z  WARN drawbridge: a.example\n2026-12-04T00:00:01Z  INFO drawbridge: forged\r\n").unwrap();
        let text = String::from_utf8(w.0).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with("a.example\\n2026-12-04T00:00:01Z  INFO drawbridge: forged\\r\n"), "{text}");
    }

    /// Whatever reaches the writer raw — a forgotten call site — leaves it escaped, in the
    /// line's own syntax.
    #[test]
    fn nothing_unsafe_leaves_the_writer_raw() {
        use std::io::Write as _;
        let hostile = "a.example\u{202e}\u{85}\u{7f}\u{2028}\u{e0041}\x1b[2J\t";
        let text = |colours| {
            let mut w = OneLine(Vec::new(), LineSyntax::Text { colours });
            w.write_all(format!("\x1b[2m2026\x1b[0m INFO drawbridge: {hostile}\n").as_bytes()).unwrap();
            String::from_utf8(w.0).unwrap()
        };
        assert_eq!(text(false), "\\x1b[2m2026\\x1b[0m INFO drawbridge: a.example\\u{202e}\\x85\\x7f\\u{2028}\\u{e0041}\\x1b[2J\\t\n");
        // Colours stay colours (the subscriber escapes ESC in values before this).
        assert_eq!(text(true), "\x1b[2m2026\x1b[0m INFO drawbridge: a.example\\u{202e}\\x85\\x7f\\u{2028}\\u{e0041}\x1b[2J\\t\n");

        // JSON: the same value, escaped as JSON escapes it, on one line.
        let line = serde_json::to_string(&serde_json::json!({ "fields": { "message": hostile } })).unwrap();
        let mut w = OneLine(Vec::new(), LineSyntax::Json);
        w.write_all(format!("{line}\n").as_bytes()).unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.trim_end().chars().all(|c| !is_unsafe(c)), "{out:?}");
        assert!(out.contains("\\u202e") && out.contains("\\udb40\\udc41"), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["fields"]["message"], hostile);
    }
}
