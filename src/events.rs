//! What the engine tells the world: events (to subscribers of `EngineHandle::subscribe`,
//! through [`bus`]), and the serialisable views of streams.

use serde::{Deserialize, Serialize};

pub mod bus;

pub use crate::types::{
    AuthMethod, CertExpiry, ConnSnapshot, ConnState, Direction, PairInfo, PairStatus, PeerCertInfo, RemoteCert, StreamKind, StreamLimits,
    TlsInfo, VerificationOutcome, VerificationResult, expiry_in_words, fmt_utc, fmt_utc_s, now_ms, now_s, span_in_words,
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

/// A domain's streams open now, each way: the federation streams whose header or one of
/// whose pairs names it — those `ctl explain` lists and a refusal would close, the rows the
/// Connections view shows for it. Apart from the domain record's `streams_in`/`streams_out`,
/// which count its streams that ended (authenticated ones, since records began).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveStreams {
    #[serde(rename = "live_streams_in")]
    pub inbound: usize,
    #[serde(rename = "live_streams_out")]
    pub outbound: usize,
}

impl LiveStreams {
    /// Every domain's live streams, from the streams known (closed ones are skipped).
    pub fn by_domain<'a>(streams: impl IntoIterator<Item = &'a ConnSnapshot>) -> std::collections::HashMap<String, LiveStreams> {
        let mut m: std::collections::HashMap<String, LiveStreams> = std::collections::HashMap::new();
        for s in streams {
            if s.state == ConnState::Closed || !s.kind.is_federation() {
                continue;
            }
            let mut named: Vec<&str> = s.remote.iter().map(String::as_str).chain(s.pairs.iter().map(|p| p.remote.as_str())).collect();
            named.sort_unstable();
            named.dedup();
            for d in named {
                let live = m.entry(d.to_owned()).or_default();
                match s.direction {
                    Direction::In => live.inbound += 1,
                    Direction::Out => live.outbound += 1,
                }
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(direction: Direction, state: ConnState, kind: StreamKind, remote: Option<&str>, pairs: &[&str]) -> ConnSnapshot {
        ConnSnapshot {
            id: "s".into(),
            direction,
            kind,
            local: Some("here.test".into()),
            remote: remote.map(str::to_owned),
            peer_addr: None,
            state,
            stream_id: None,
            tls: None,
            pairs: pairs
                .iter()
                .map(|r| PairInfo {
                    local: "here.test".into(),
                    remote: (*r).into(),
                    status: PairStatus::Valid,
                    method: AuthMethod::Dialback,
                })
                .collect(),
            opened_ms: 0,
            last_activity_ms: 0,
            stanzas_in: 0,
            stanzas_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            close_reason: None,
            limits: None,
        }
    }

    /// A stream counts once for each domain its header or a pair names, while it is open,
    /// and only between servers.
    #[test]
    fn live_streams_per_domain_and_direction() {
        use ConnState::{Closed, Established};
        use Direction::{In, Out};
        let fed = StreamKind::Federation;
        let streams = [
            stream(In, Established, fed, Some("a.test"), &["a.test", "b.test"]),
            stream(Out, Established, fed, Some("a.test"), &["a.test"]),
            stream(Out, Established, fed, Some("a.test"), &[]),
            stream(In, Closed, fed, Some("a.test"), &["a.test"]),
            stream(In, Established, StreamKind::Component, Some("a.test"), &["a.test"]),
        ];
        let m = LiveStreams::by_domain(&streams);
        assert_eq!(m["a.test"], LiveStreams { inbound: 1, outbound: 2 });
        assert_eq!(m["b.test"], LiveStreams { inbound: 1, outbound: 0 });
        assert_eq!(m.len(), 2);
    }
}
