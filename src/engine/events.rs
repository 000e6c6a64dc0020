//! What the engine tells the world: events, and the serialisable views of streams.

use serde::{Deserialize, Serialize};

use crate::net::tls::PeerCertInfo;
pub use crate::types::{AuthMethod, ConnState, Direction, PairStatus, VerificationResult};

/// One (local, remote) domain pair on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    pub local: String,
    pub remote: String,
    pub status: PairStatus,
    pub method: AuthMethod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub peer_cert: Option<PeerCertInfo>,
    /// The peer certificate judged for the domain the peer claims (or we dialled).
    #[serde(default)]
    pub cert_verdict: Option<crate::net::certs::CertVerdict>,
}

/// A stream as seen in the connection table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnSnapshot {
    pub id: String,
    pub direction: Direction,
    pub local: Option<String>,
    pub remote: Option<String>,
    pub peer_addr: Option<String>,
    pub state: ConnState,
    /// The XMPP stream id (ours for inbound streams, the peer's for outbound).
    pub stream_id: Option<String>,
    pub tls: Option<TlsInfo>,
    pub pairs: Vec<PairInfo>,
    /// Unix milliseconds.
    pub opened_ms: u64,
    pub last_activity_ms: u64,
    pub stanzas_in: u64,
    pub stanzas_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub close_reason: Option<String>,
}

/// The result of authenticating one remote domain on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationOutcome {
    pub time_ms: u64,
    pub stream: String,
    pub direction: Direction,
    pub local: String,
    pub remote: String,
    pub method: AuthMethod,
    pub result: VerificationResult,
    /// In words an operator can act on.
    pub reason: String,
    pub peer_addr: Option<String>,
}

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
        record: crate::store::DomainRecord,
    },
    ModeChanged {
        mode: String,
    },
    /// A transcript line of a stream being negotiated or watched.
    Transcript {
        id: String,
        line: TranscriptLine,
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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS UTC` (no time-zone database needed).
pub fn fmt_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, (rem / 60) % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formatting() {
        assert_eq!(super::fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::fmt_utc(1_795_309_028_000), "2026-11-22 00:57:08 UTC");
        assert_eq!(super::fmt_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
