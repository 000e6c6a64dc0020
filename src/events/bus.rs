//! The engine's events on their way to subscribers (`ctl subscribe`, `attach`, the
//! dashboard, tests): lossy, never waiting — and each subscriber's backlog bounded in bytes
//! as well as in entries (`[limits] event_backlog`, `event_backlog_bytes`).
//!
//! A broadcast ring counts entries only, and an event can be large (a stream's snapshot
//! carries its certificate's names): one subscriber that stopped reading (a suspended
//! `attach`) held 4 096 of them, +104 MB. Here every subscriber has its own queue of shared
//! events, each charged its size; past either limit the oldest go and the subscriber is told
//! how many it missed ([`RecvError::Lagged`]) so it can resynchronise from a snapshot. The
//! others carry on; the engine never waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Event;

/// How much one subscriber may have waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub entries: usize,
    pub bytes: usize,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog { entries: 4096, bytes: 8 * 1024 * 1024 }
    }
}

/// Why [`Receiver::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// This many events were dropped because the subscriber fell behind its budget.
    #[error("{0} events dropped: the subscriber fell behind its backlog budget")]
    Lagged(u64),
    /// The engine is gone.
    #[error("the engine stopped")]
    Closed,
}

/// The engine's end: cheap to clone, never waits.
pub struct Sender {
    shared: Arc<Shared>,
}

struct Shared {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    /// Subscribers now (read without the lock: no event is built for nobody).
    count: AtomicUsize,
    senders: AtomicUsize,
    budget: Backlog,
}

struct Subscriber {
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
    missed: u64,
}

/// A subscriber's end.
pub struct Receiver {
    me: Arc<Subscriber>,
    shared: Arc<Shared>,
}

/// A sender with no subscriber yet.
pub fn channel(budget: Backlog) -> Sender {
    Sender {
        shared: Arc::new(Shared { subscribers: Mutex::new(Vec::new()), count: AtomicUsize::new(0), senders: AtomicUsize::new(1), budget }),
    }
}

/// What an event is charged: its in-memory size plus its text as sent (JSON, counted
/// without being written) — its strings, names and numbers, with some slack.
pub fn weight(ev: &Event) -> usize {
    std::mem::size_of::<Event>() + json_size(ev)
}

/// Bytes of `v` as JSON, counted without being written: what the byte budgets charge for
/// the text a value holds (its strings, names and numbers, with some slack).
pub fn json_size<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

impl Sender {
    /// Hand `ev` to every subscriber (the number that got it). A subscriber over its budget
    /// loses its oldest events, not the engine its time.
    pub fn send(&self, ev: Event) -> usize {
        if self.shared.count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let size = weight(&ev);
        let ev = Arc::new(ev);
        let subs = self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let budget = self.shared.budget;
        for s in subs.iter() {
            {
                let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.events.push_back((ev.clone(), size));
                q.bytes += size;
                while q.events.len() > budget.entries || q.bytes > budget.bytes {
                    let Some((_, n)) = q.events.pop_front() else { break };
                    q.bytes -= n;
                    q.missed += 1;
                }
            }
            s.wake.notify_one();
        }
        subs.len()
    }

    pub fn subscribe(&self) -> Receiver {
        let me = Arc::new(Subscriber { queue: Mutex::new(Queue::default()), wake: Notify::new() });
        let mut subs = self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.push(me.clone());
        self.shared.count.store(subs.len(), Ordering::Release);
        Receiver { me, shared: self.shared.clone() }
    }

    pub fn receiver_count(&self) -> usize {
        self.shared.count.load(Ordering::Acquire)
    }

    /// Bytes waiting for the subscriber furthest behind (`ctl status`).
    pub fn largest_backlog(&self) -> usize {
        let subs = self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.iter().map(|s| s.queue.lock().unwrap_or_else(|e| e.into_inner()).bytes).max().unwrap_or(0)
    }

    /// Events and bytes waiting for subscribers now, summed.
    pub fn backlog(&self) -> (usize, usize) {
        let subs = self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.iter().fold((0, 0), |(n, b), s| {
            let q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            (n + q.events.len(), b + q.bytes)
        })
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("subscribers", &self.receiver_count()).field("budget", &self.shared.budget).finish()
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Sender { shared: self.shared.clone() }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            for s in self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                s.wake.notify_one();
            }
        }
    }
}

impl Receiver {
    /// The next event if one is waiting (`None` when none is; lags are skipped).
    pub fn try_recv(&mut self) -> Option<Event> {
        let mut q = self.me.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.missed = 0;
        let (ev, n) = q.events.pop_front()?;
        q.bytes -= n;
        drop(q);
        Some(Arc::unwrap_or_clone(ev))
    }

    /// The next event; first, if events were dropped for this subscriber, how many.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        loop {
            {
                let mut q = self.me.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.missed > 0 {
                    return Err(RecvError::Lagged(std::mem::take(&mut q.missed)));
                }
                if let Some((ev, n)) = q.events.pop_front() {
                    q.bytes -= n;
                    drop(q);
                    return Ok(Arc::unwrap_or_clone(ev));
                }
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return Err(RecvError::Closed);
            }
            // A send in between left a permit: no wake-up is lost.
            self.me.wake.notified().await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut subs = self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !Arc::ptr_eq(s, &self.me));
        self.shared.count.store(subs.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(s: &str) -> Event {
        Event::ModeChanged { mode: s.into() }
    }

    #[tokio::test]
    async fn a_subscriber_past_its_byte_budget_lags_and_the_others_carry_on() {
        let big = mode(&"x".repeat(10_000));
        let per = weight(&big);
        let tx = channel(Backlog { entries: 1000, bytes: 5 * per });
        let mut stalled = tx.subscribe();
        let mut reader = tx.subscribe();
        for _ in 0..100 {
            assert_eq!(tx.send(big.clone()), 2);
            assert_eq!(reader.recv().await, Ok(big.clone()), "a reading subscriber gets every event");
        }
        // The stalled one holds its budget's worth, no more.
        let (n, bytes) = tx.backlog();
        assert_eq!((n, bytes), (5, 5 * per));
        assert_eq!(tx.largest_backlog(), 5 * per);
        // When it reads again: a note of what it missed, then the newest it kept.
        assert_eq!(stalled.recv().await, Err(RecvError::Lagged(95)));
        for _ in 0..5 {
            assert_eq!(stalled.recv().await, Ok(big.clone()));
        }
        // An event bigger than the whole budget is dropped for everyone's backlog, noted.
        let tx2 = channel(Backlog { entries: 10, bytes: per / 2 });
        let mut r = tx2.subscribe();
        tx2.send(big.clone());
        tx2.send(mode("small"));
        assert_eq!(r.recv().await, Err(RecvError::Lagged(1)));
        assert_eq!(r.recv().await, Ok(mode("small")));
    }

    #[tokio::test]
    async fn entries_bound_too_and_closing_and_leaving_are_seen() {
        let tx = channel(Backlog { entries: 3, bytes: usize::MAX });
        let mut r = tx.subscribe();
        for i in 0..10 {
            tx.send(mode(&i.to_string()));
        }
        assert_eq!(r.recv().await, Err(RecvError::Lagged(7)));
        assert_eq!(r.recv().await, Ok(mode("7")));
        // Nobody subscribed: nothing kept.
        let r2 = tx.subscribe();
        assert_eq!(tx.receiver_count(), 2);
        drop(r2);
        assert_eq!(tx.receiver_count(), 1);
        // A waiting receiver wakes for a send from another task, and sees the end.
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                match r.recv().await {
                    Ok(e) => got.push(e),
                    Err(RecvError::Closed) => return got,
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        tokio::task::yield_now().await;
        tx2.send(mode("late"));
        drop((tx, tx2));
        let got = waiter.await.unwrap();
        assert_eq!(got, vec![mode("8"), mode("9"), mode("late")]);
    }
}
