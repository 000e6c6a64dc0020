//! The queue of one link, bounded in count (`limits.outbound_queue`) and in bytes
//! (`limits.outbound_queue_bytes`): a slow peer holds at most that much of our memory,
//! however large each stanza is. Sending never waits ([`QueueTx::try_send`]); a sender that
//! found the queue full may wait for room ([`QueueTx::room`], bounded by its caller) — it is
//! woken once the queue has drained to half (or empty), so a burst moves in large steps, not
//! one wake per stanza.
//!
//! An empty queue holds no buffer (an idle link costs a few dozen bytes, not a
//! preallocated block per channel), and one that drained gives its buffer back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::xml::Element;

struct Queue<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver: something queued, or the last sender left.
    notify: Notify,
    /// Wakes senders waiting for room: drained to the low-water mark, or closed.
    space: Notify,
    max_count: usize,
    max_bytes: usize,
}

impl<T> State<T> {
    fn len(&self) -> usize {
        self.items.len() + usize::from(self.head.is_some())
    }

    fn is_empty(&self) -> bool {
        self.head.is_none() && self.items.is_empty()
    }
}

struct State<T> {
    /// The oldest item, when it is the only one: a link that carries one stanza at a time
    /// (a ping's answer, a set-up's first stanza) allocates no buffer. The buffer lived until
    /// the stream went quiet, and streams set up meanwhile left it a hole between their
    /// long-lived state (jemalloc's 640-byte class: ~2 KiB per idle pair, issue 16).
    head: Option<(T, usize)>,
    /// The items after `head`, in order (`head` is `None` only when this is empty, or when
    /// the head was taken and these are older than anything queued since).
    items: VecDeque<(T, usize)>,
    bytes: usize,
    /// The receiver closed it (or is gone).
    closed: bool,
    senders: usize,
    /// Senders waiting in [`QueueTx::room`] (only then is a pop worth a wake).
    waiting: usize,
}

/// The sending side (cloned for every sender).
pub struct QueueTx<T = Element> {
    q: Arc<Queue<T>>,
}

/// The receiving side (the link's stream task).
pub struct QueueRx<T = Element> {
    q: Arc<Queue<T>>,
}

/// Why an item could not be queued; the item comes back.
#[derive(Debug)]
pub enum TrySendError<T = Element> {
    /// The queue is spent in count or bytes.
    Full(T),
    /// The stream behind it is gone.
    Closed(T),
}

/// A queue of at most `count` items and `bytes` bytes (one item larger than the whole
/// budget still goes, alone).
pub fn queue<T>(count: usize, bytes: usize) -> (QueueTx<T>, QueueRx<T>) {
    let q = Arc::new(Queue {
        state: Mutex::new(State { head: None, items: VecDeque::new(), bytes: 0, closed: false, senders: 1, waiting: 0 }),
        notify: Notify::new(),
        space: Notify::new(),
        max_count: count.max(1),
        max_bytes: bytes.max(1),
    });
    (QueueTx { q: q.clone() }, QueueRx { q })
}

impl<T> Queue<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an item of `weight` goes in now (one larger than the whole budget goes alone).
    fn fits(&self, s: &State<T>, weight: usize) -> bool {
        s.is_empty() || (s.len() < self.max_count && s.bytes + weight <= self.max_bytes)
    }

    /// Drained to half in count and bytes: room for a good step of a burst.
    fn low(&self, s: &State<T>) -> bool {
        s.bytes <= self.max_bytes / 2 && s.len() <= self.max_count / 2
    }
}

/// One sender counted as waiting for room while it is (also when its wait is cancelled).
struct Waiting<'a, T>(&'a Queue<T>);

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl<T> QueueTx<T> {
    /// Items queued now (for a scrape: takes the queue's lock).
    pub fn len(&self) -> usize {
        self.q.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue `item` weighing `weight` bytes now, or give it back.
    pub fn try_send_weighted(&self, item: T, weight: usize) -> Result<(), TrySendError<T>> {
        {
            let mut s = self.q.lock();
            if s.closed {
                return Err(TrySendError::Closed(item));
            }
            if !self.q.fits(&s, weight) {
                return Err(TrySendError::Full(item));
            }
            s.bytes += weight;
            if s.head.is_none() && s.items.is_empty() {
                s.head = Some((item, weight));
            } else {
                s.items.push_back((item, weight));
            }
        }
        self.q.notify.notify_one();
        Ok(())
    }
}

impl QueueTx<Element> {
    /// Queue a stanza now (weighed by [`Element::weight`]), or give it back.
    pub fn try_send(&self, st: Element) -> Result<(), TrySendError> {
        let w = st.weight();
        self.try_send_weighted(st, w)
    }
}

impl<T> QueueTx<T> {
    /// Whether the receiving side is gone (its stream ended).
    pub fn is_closed(&self) -> bool {
        self.q.lock().closed
    }

    /// Wait until an item of `weight` would go in, or the queue is closed (the caller bounds
    /// the wait; the item is sent with [`QueueTx::try_send_weighted`] after, which may still
    /// find it full when several senders waited: they wait again). Cancel-safe.
    pub async fn room(&self, weight: usize) {
        loop {
            let woken = self.q.space.notified();
            tokio::pin!(woken);
            // Registered before the check: a wake between the check and the wait is not lost.
            woken.as_mut().enable();
            {
                let mut s = self.q.lock();
                if s.closed || self.q.fits(&s, weight) {
                    return;
                }
                s.waiting += 1;
            }
            let _counted = Waiting(&self.q);
            woken.await;
        }
    }
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        self.q.lock().senders += 1;
        QueueTx { q: self.q.clone() }
    }
}

impl<T> Drop for QueueTx<T> {
    fn drop(&mut self) {
        let last = {
            let mut s = self.q.lock();
            s.senders -= 1;
            s.senders == 0
        };
        if last {
            self.q.notify.notify_one();
        }
    }
}

impl<T> QueueRx<T> {
    /// The next item; `None` once every sender is gone and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut s = self.q.lock();
                if let Some(item) = Self::pop(&self.q, &mut s) {
                    return Some(item);
                }
                if s.senders == 0 || s.closed {
                    return None;
                }
            }
            self.q.notify.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        Self::pop(&self.q, &mut self.q.lock())
    }

    fn pop(q: &Queue<T>, s: &mut State<T>) -> Option<T> {
        let was_low = q.low(s);
        let (item, w) = s.head.take().or_else(|| s.items.pop_front())?;
        s.bytes -= w;
        if s.waiting > 0 && ((!was_low && q.low(s)) || s.is_empty()) {
            // Senders wait for room: wake them at half (a burst moves on in large steps) or
            // empty (an item larger than half the budget goes only into an emptier queue).
            q.space.notify_waiters();
        }
        if s.items.is_empty() && s.items.capacity() > 16 {
            // Drained after a burst: give the buffer back.
            s.items = VecDeque::new();
        }
        Some(item)
    }

    /// The link is quiet: an empty queue gives its buffer back (kept between the items of a
    /// busy link).
    pub fn trim(&mut self) {
        let mut s = self.q.lock();
        if s.items.is_empty() {
            s.items = VecDeque::new();
        }
    }

    /// No more items are accepted; those queued can still be taken. Senders waiting for
    /// room hear it at once.
    pub fn close(&mut self) {
        self.q.lock().closed = true;
        self.q.space.notify_waiters();
    }
}

impl<T> Drop for QueueRx<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ns;

    fn stanza(body: usize) -> Element {
        Element::new("message", ns::SERVER).child(Element::new("body", ns::SERVER).text("x".repeat(body)))
    }

    #[test]
    fn bounded_in_count_and_bytes_and_never_waits() {
        let (tx, mut rx) = queue(2, 10_000);
        tx.try_send(stanza(6_000)).unwrap();
        assert!(matches!(tx.try_send(stanza(6_000)), Err(TrySendError::Full(_))), "bytes spent");
        tx.try_send(stanza(10)).unwrap();
        assert!(matches!(tx.try_send(stanza(10)), Err(TrySendError::Full(_))), "count spent");
        assert!(rx.try_recv().is_some());
        tx.try_send(stanza(10)).unwrap();
        // Larger than the whole budget: goes alone, into an empty queue.
        while rx.try_recv().is_some() {}
        tx.try_send(stanza(50_000)).unwrap();
        assert!(matches!(tx.try_send(stanza(1)), Err(TrySendError::Full(_))));
        assert!(rx.try_recv().is_some());
        rx.close();
        assert!(matches!(tx.try_send(stanza(1)), Err(TrySendError::Closed(_))));
    }

    /// One item at a time needs no buffer; more keep their order across the inline head.
    #[test]
    fn one_at_a_time_allocates_nothing_and_order_holds() {
        let (tx, mut rx) = queue::<u32>(100, 1000);
        for i in 0..10 {
            tx.try_send_weighted(i, 1).unwrap();
            assert_eq!(rx.try_recv(), Some(i));
        }
        assert_eq!(rx.q.lock().items.capacity(), 0, "no buffer for a link that carries one at a time");
        let mut next = 0;
        let mut taken = Vec::new();
        for round in 0..20 {
            for _ in 0..(round % 4 + 1) {
                tx.try_send_weighted(next, 1).unwrap();
                next += 1;
            }
            for _ in 0..(round % 3) {
                taken.extend(rx.try_recv());
            }
            assert_eq!(tx.len(), next as usize - taken.len());
        }
        taken.extend(std::iter::from_fn(|| rx.try_recv()));
        assert_eq!(taken, (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn a_quiet_queue_gives_its_buffer_back_only_when_empty() {
        let (tx, mut rx) = queue::<u32>(8, 100);
        tx.try_send_weighted(1, 1).unwrap();
        tx.try_send_weighted(2, 1).unwrap();
        rx.try_recv().unwrap();
        rx.trim();
        assert!(rx.q.lock().items.capacity() > 0, "an item is still queued");
        rx.try_recv().unwrap();
        assert!(rx.q.lock().items.capacity() > 0, "kept between the items of a busy link");
        rx.trim();
        assert_eq!(rx.q.lock().items.capacity(), 0);
        tx.try_send_weighted(3, 1).unwrap();
        assert_eq!(rx.try_recv(), Some(3));
    }

    #[tokio::test]
    async fn the_receiver_wakes_for_items_and_ends_with_the_last_sender() {
        let (tx, mut rx) = queue::<u32>(8, 100);
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(x) = rx.recv().await {
                got.push(x);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.try_send_weighted(1, 1).unwrap();
        tx2.try_send_weighted(2, 1).unwrap();
        drop((tx, tx2));
        assert_eq!(waiting.await.unwrap(), vec![1, 2]);
    }
}
