//! The stanza queue of one link, bounded in count (`limits.outbound_queue`) and in bytes
//! (`limits.outbound_queue_bytes`): a slow peer holds at most that much of our memory,
//! however large each stanza is. The router never waits on it ([`QueueTx::try_send`]); a
//! full queue is answered by the overflow rule (see [`crate::router`]).

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use crate::xml::Element;

/// The sending side.
#[derive(Clone)]
pub struct QueueTx {
    tx: mpsc::Sender<(Element, u32)>,
    bytes: Arc<Semaphore>,
    max: u32,
}

/// The receiving side (the outbound stream's task).
pub struct QueueRx {
    rx: mpsc::Receiver<(Element, u32)>,
    bytes: Arc<Semaphore>,
}

pub fn queue(count: usize, bytes: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::channel(count);
    let max = u32::try_from(bytes.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let sem = Arc::new(Semaphore::new(max as usize));
    (QueueTx { tx, bytes: sem.clone(), max }, QueueRx { rx, bytes: sem })
}

/// Why a stanza could not be queued; the stanza comes back.
#[derive(Debug)]
pub enum TrySendError {
    /// The queue is spent in count or bytes.
    Full(Element),
    /// The stream behind it is gone.
    Closed(Element),
}

impl QueueTx {
    /// Queue `st` now, or give it back.
    pub fn try_send(&self, st: Element) -> Result<(), TrySendError> {
        // One stanza larger than the whole budget still goes, alone.
        let w = u32::try_from(st.weight()).unwrap_or(u32::MAX).clamp(1, self.max);
        let permit = match self.bytes.clone().try_acquire_many_owned(w) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full(st)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed(st)),
        };
        match self.tx.try_send((st, w)) {
            Ok(()) => {
                permit.forget();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full((st, _))) => Err(TrySendError::Full(st)),
            Err(mpsc::error::TrySendError::Closed((st, _))) => Err(TrySendError::Closed(st)),
        }
    }

    /// Queue `st`, waiting while the queue is full in count or bytes. Gives the stanza back
    /// if the stream is gone.
    pub async fn send(&self, st: Element) -> Result<(), Element> {
        // One stanza larger than the whole budget still goes, alone.
        let w = u32::try_from(st.weight()).unwrap_or(u32::MAX).clamp(1, self.max);
        let Ok(permit) = self.bytes.acquire_many(w).await else { return Err(st) };
        match self.tx.send((st, w)).await {
            Ok(()) => {
                permit.forget();
                Ok(())
            }
            Err(mpsc::error::SendError((st, _))) => Err(st),
        }
    }
}

impl QueueRx {
    pub async fn recv(&mut self) -> Option<Element> {
        let (st, w) = self.rx.recv().await?;
        self.bytes.add_permits(w as usize);
        Some(st)
    }

    pub fn try_recv(&mut self) -> Result<Element, mpsc::error::TryRecvError> {
        let (st, w) = self.rx.try_recv()?;
        self.bytes.add_permits(w as usize);
        Ok(st)
    }

    pub fn close(&mut self) {
        self.rx.close();
        self.bytes.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ns;

    fn stanza(body: usize) -> Element {
        Element::new("message", ns::SERVER).child(Element::new("body", ns::SERVER).text("x".repeat(body)))
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_bytes_as_well_as_count() {
        let (tx, mut rx) = queue(100, 10_000);
        tx.send(stanza(6_000)).await.unwrap();
        // The second does not fit in the bytes left: the sender waits ...
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(stanza(6_000)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ... until the first is taken.
        assert!(rx.recv().await.is_some());
        waiting.await.unwrap().unwrap();
        assert!(rx.recv().await.is_some());
        // Bigger than the whole budget: goes alone.
        tx.send(stanza(50_000)).await.unwrap();
        assert!(rx.recv().await.is_some());
        // Closed: the stanza comes back.
        rx.close();
        assert!(tx.send(stanza(1)).await.is_err());
    }

    #[test]
    fn try_send_never_waits() {
        let (tx, mut rx) = queue(2, 10_000);
        tx.try_send(stanza(6_000)).unwrap();
        assert!(matches!(tx.try_send(stanza(6_000)), Err(TrySendError::Full(_))), "bytes spent");
        tx.try_send(stanza(10)).unwrap();
        assert!(matches!(tx.try_send(stanza(10)), Err(TrySendError::Full(_))), "count spent");
        assert!(rx.try_recv().is_ok());
        tx.try_send(stanza(10)).unwrap();
        rx.close();
        assert!(matches!(tx.try_send(stanza(1)), Err(TrySendError::Closed(_))));
    }
}
