//! A stream's transcript, beside its row: the lines recorded, when they are recorded
//! (negotiation, then only while watched) and their share of the transcript budget.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::transcript::{LINE_OVERHEAD, Transcript, TranscriptBudget, line_size};
use crate::events::*;

/// Bytes of a transcript line carried by its live event.
pub const EVENT_TEXT: usize = 8 * 1024;

#[derive(Debug)]
pub(super) struct Recording {
    pub(super) transcript: Mutex<Transcript>,
    budget: Arc<TranscriptBudget>,
    /// Everything is recorded until the stream is established (and what it wrote in the
    /// same turn: the answer that established it); afterwards only while someone watches
    /// (the stanza path then pays nothing for transcripts). A [`Capture`] as a byte.
    capture: AtomicU8,
    watchers: AtomicU32,
}

/// Where a stream's transcript capture is.
#[repr(u8)]
enum Capture {
    Negotiating,
    /// Established in the task's current turn.
    Ending,
    /// Only while watched.
    Done,
}

impl Recording {
    pub(super) fn new(budget: Arc<TranscriptBudget>) -> Self {
        Recording {
            transcript: Mutex::new(Transcript::default()),
            budget,
            capture: AtomicU8::new(Capture::Negotiating as u8),
            watchers: AtomicU32::new(0),
        }
    }

    pub(super) fn capturing(&self) -> bool {
        self.capture.load(Ordering::Relaxed) != Capture::Done as u8 || self.watchers.load(Ordering::Relaxed) > 0
    }

    /// The stream is established: the negotiation's record ends with the current turn.
    pub(super) fn established(&self) {
        let _ = self.capture.compare_exchange(Capture::Negotiating as u8, Capture::Ending as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn turn_done(&self) {
        let _ = self.capture.compare_exchange(Capture::Ending as u8, Capture::Done as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn quiet(&self) {
        if !self.capturing() {
            self.transcript.lock().unwrap().pack();
        }
    }

    pub(super) fn watch(&self, on: bool) {
        if on {
            self.watchers.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self.watchers.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| w.checked_sub(1));
        }
    }

    pub(super) fn lines(&self) -> Vec<TranscriptLine> {
        self.transcript.lock().unwrap().lines()
    }

    /// Record a line (cut to the per-stream cap; the oldest lines go first when this
    /// stream's or everyone's budget is spent) and tell the watchers (`id`'s line).
    pub(super) fn record(&self, id: &str, events: &bus::Sender, dir: &str, mut text: String, key: Option<String>) {
        let b = &self.budget;
        if b.lines == 0 || b.per_stream == 0 {
            return;
        }
        let cap = b.per_stream.saturating_sub(LINE_OVERHEAD).min(b.total.saturating_sub(LINE_OVERHEAD));
        if text.len() > cap {
            let cut = text.len() - cap;
            let mut end = cap.saturating_sub(32);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(&format!(" …(+{cut} bytes not kept)"));
        }
        let line = TranscriptLine { time_ms: now_ms(), dir: dir.to_owned(), text, key };
        let size = line_size(&line);
        {
            let mut t = self.transcript.lock().unwrap();
            let mut freed = 0;
            while !t.is_empty() && (t.len() >= b.lines || t.bytes + size > b.per_stream) {
                freed += t.pop_front();
            }
            b.release(freed);
            // Everyone's budget: closed streams' transcripts go first, then this one's oldest.
            let mut reserved = b.reserve(size);
            while !reserved {
                if !b.evict_closed() {
                    if t.is_empty() {
                        break;
                    }
                    b.release(t.pop_front());
                }
                reserved = b.reserve(size);
            }
            if reserved {
                b.release(t.push(&line));
            }
        }
        // The event channel keeps up to its capacity of events for a slow subscriber: each
        // carries at most EVENT_TEXT bytes (the whole line stays in the transcript).
        let mut line = line;
        if line.text.len() > EVENT_TEXT {
            line.text = crate::xml::element::clip(&line.text, EVENT_TEXT).into_owned();
        }
        let _ = events.send(Event::Transcript { id: id.to_owned(), line });
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // A stream closed through the table handed its transcript over; any other gives
        // its bytes back here.
        let bytes = self.transcript.get_mut().map_or(0, |t| t.bytes);
        self.budget.release(bytes);
    }
}
