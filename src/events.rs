//! What the engine tells the world: events (to subscribers of `EngineHandle::subscribe`,
//! through [`bus`]), and the serialisable views of streams.

use serde::{Deserialize, Serialize};

pub mod bus;

pub use crate::types::{
    AuthMethod, ConnSnapshot, ConnState, Direction, PairInfo, PairStatus, PeerCertInfo, StreamKind, StreamLimits, TlsInfo,
    VerificationOutcome, VerificationResult, fmt_utc, now_ms,
};

/// One entry of a stream's transcript: what crossed the wire (or what happened to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptLine {
    pub time_ms: u64,
    /// `in`, `out` or `note` (TLS established, unparseable input, …).
    pub dir: String,
    /// Pretty-printed XML, dialback keys replaced by a marker.
    pub text: String,
    /// The dialback key that was masked, for an operator who reveals it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Engine events (lossy broadcast: the engine never waits for listeners).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    StreamOpened {
        stream: ConnSnapshot,
    },
    /// A stream changed state or learned its TLS facts: its full current view.
    StreamUpdated {
        stream: ConnSnapshot,
    },
    PairAuthorised {
        id: String,
        local: String,
        remote: String,
        method: AuthMethod,
    },
    Verification {
        outcome: VerificationOutcome,
    },
    /// Periodic counters of live streams that changed.
    Counters {
        streams: Vec<StreamCounters>,
    },
    StreamClosed {
        stream: ConnSnapshot,
    },
    /// A domain's standing changed (operator action, pending, expiry).
    DomainChanged {
        record: crate::policy::DomainRecord,
    },
    ModeChanged {
        mode: String,
    },
    /// A transcript line of a stream being negotiated or watched.
    Transcript {
        id: String,
        line: TranscriptLine,
    },
    /// A real-time blocklist feed's status changed (its state, entry count or counters);
    /// the domains its entries touched come as [`Event::DomainChanged`].
    Feed {
        status: crate::rtbl::FeedStatus,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCounters {
    pub id: String,
    pub stanzas_in: u64,
    pub stanzas_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}
