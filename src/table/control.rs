//! A stream's control channel, beside its row: close requests (operator, policy) and the
//! server's shutdown reach the stream's task here.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::proto::stream::{StreamError, StreamErrorCondition};

/// Why a stream is asked to close, and the stream error to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub reason: String,
    pub error: Option<StreamError>,
}

/// The channel's shared half (in the stream's entry).
#[derive(Debug)]
pub(super) struct CloseChannel {
    /// Boxed: asked of few streams; an idle stream holds a pointer (memory per stream).
    request: Mutex<Option<Box<CloseRequest>>>,
    /// Wakes the stream's task for a request. (A `Notify`: tokio's watch channel allocated
    /// ~400 bytes per stream.)
    notify: Notify,
    /// Server shutdown, which closes every stream.
    shutdown: CancellationToken,
}

impl CloseChannel {
    pub(super) fn new(shutdown: CancellationToken) -> Self {
        CloseChannel { request: Mutex::new(None), notify: Notify::new(), shutdown }
    }

    /// Ask the stream to close (the latest request is the one its task reads).
    pub(super) fn request(&self, r: CloseRequest) {
        *self.request.lock().unwrap() = Some(Box::new(r));
        self.notify.notify_waiters();
    }
}

/// A stream task's end of its control channel: close requests from the operator or the
/// policy, and the server's shutdown.
#[derive(Clone)]
pub struct StreamControl {
    pub(super) entry: Arc<super::ConnEntry>,
}

impl StreamControl {
    /// Resolves when the stream is asked to close (at once if it already was). Cancel-safe.
    pub async fn closed(&mut self) -> CloseRequest {
        let c = &self.entry.close;
        loop {
            // Registered before the request is read: a request made in between still wakes it.
            let mut notified = std::pin::pin!(c.notify.notified());
            notified.as_mut().enable();
            if let Some(r) = c.request.lock().unwrap().as_deref().cloned() {
                return r;
            }
            if c.shutdown.is_cancelled() {
                return CloseRequest {
                    reason: "server shutting down".into(),
                    error: Some(StreamError::new(StreamErrorCondition::SystemShutdown, "server shutting down")),
                };
            }
            tokio::select! {
                _ = notified => {}
                _ = c.shutdown.cancelled() => {}
            }
        }
    }
}
