//! `[limits]`: sizes, counts and byte budgets; read as written (every key optional, the
//! defaults below), then each checked against its floor.

use serde::Deserialize;

use super::{ConfigError, Ctx};

/// `[limits]`: read from the file as is (every key optional, defaults below).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest top-level element accepted (RFC 6120 §13.12 resource exhaustion), advertised
    /// to peers as XEP-0478 `max-bytes`. 512 KiB: what Prosody sends by default
    /// (`s2s_stanza_size_limit`), so its avatars and vCards fit.
    pub max_stanza_size: usize,
    /// Deepest element nesting accepted.
    pub max_depth: usize,
    /// Stanzas queued per outbound domain pair before senders wait (backpressure): far
    /// above any burst; the bytes bind.
    pub outbound_queue: usize,
    /// Bytes of stanzas queued per outbound domain pair (and held per inbound stream while
    /// a domain awaits approval) before senders wait (at most `timeouts.write`).
    pub outbound_queue_bytes: usize,
    /// Inbound connections not authenticated yet (all sources together).
    pub max_inbound_unauthenticated: usize,
    /// Inbound connections not authenticated yet from one address.
    pub max_unauthenticated_per_address: usize,
    /// Connections on `gateway.listen` not authenticated yet: the internal server's door,
    /// apart from the public listener's limits.
    pub max_unauthenticated_gateway: usize,
    /// Connections on the components listener not authenticated yet (their own door).
    pub max_unauthenticated_components: usize,
    /// Authenticated inbound streams.
    pub max_inbound: usize,
    /// Outbound streams (their own room: no inbound flood can take it).
    pub max_outbound: usize,
    /// Dialback verifications under way on one inbound stream.
    pub max_verifications_in_flight: usize,
    /// Dialback verifications one inbound stream may start per minute.
    pub verifications_per_minute: usize,
    /// Domain pairs one inbound stream may authorise (dialback piggybacking).
    pub max_pairs_per_stream: usize,
    /// Recently closed streams kept in the connection table.
    pub closed_streams: usize,
    /// Transcript lines kept per stream (the dashboard's transcript view).
    pub transcript_lines: usize,
    /// Transcript bytes kept per stream (as received/sent; oldest lines dropped first).
    pub transcript_bytes: usize,
    /// Transcript bytes kept for all streams together, closed ones included (their
    /// transcripts are dropped first, oldest first).
    pub transcript_total_bytes: usize,
    /// Events waiting for one control subscriber (`ctl subscribe`, `attach`): past either
    /// limit its oldest are dropped and it is told so (it resynchronises from a snapshot).
    pub event_backlog: usize,
    pub event_backlog_bytes: usize,
    /// Bytes of recently closed streams' rows kept (with `closed_streams` entries).
    pub closed_streams_bytes: usize,
    /// Bytes of failed unauthenticated verifications kept in memory (the outcome ring).
    pub unauthenticated_outcomes_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 512 * 1024,
            max_depth: 32,
            outbound_queue: 100_000,
            outbound_queue_bytes: 4 * 1024 * 1024,
            max_inbound_unauthenticated: 1000,
            max_unauthenticated_per_address: 16,
            max_unauthenticated_gateway: 256,
            max_unauthenticated_components: 64,
            max_inbound: 10_000,
            max_outbound: 10_000,
            max_verifications_in_flight: 8,
            verifications_per_minute: 60,
            max_pairs_per_stream: 64,
            closed_streams: 200,
            transcript_lines: 500,
            transcript_bytes: 256 * 1024,
            transcript_total_bytes: 64 * 1024 * 1024,
            event_backlog: 4096,
            event_backlog_bytes: 8 * 1024 * 1024,
            closed_streams_bytes: 4 * 1024 * 1024,
            unauthenticated_outcomes_bytes: 1024 * 1024,
        }
    }
}

impl Limits {
    /// Each limit at or above its floor (0: the feature keeps nothing, where that is allowed).
    pub(super) fn validate(&self, cx: &Ctx<'_>) -> Result<(), ConfigError> {
        let l = self;
        for (key, v, min) in [
            ("limits.max_stanza_size", l.max_stanza_size, 4096),
            ("limits.max_depth", l.max_depth, 4),
            ("limits.outbound_queue", l.outbound_queue, 1),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes, 4096),
            ("limits.max_inbound_unauthenticated", l.max_inbound_unauthenticated, 1),
            ("limits.max_unauthenticated_per_address", l.max_unauthenticated_per_address, 1),
            ("limits.max_unauthenticated_gateway", l.max_unauthenticated_gateway, 1),
            ("limits.max_unauthenticated_components", l.max_unauthenticated_components, 1),
            ("limits.max_inbound", l.max_inbound, 1),
            ("limits.max_outbound", l.max_outbound, 1),
            ("limits.max_verifications_in_flight", l.max_verifications_in_flight, 1),
            ("limits.verifications_per_minute", l.verifications_per_minute, 1),
            ("limits.max_pairs_per_stream", l.max_pairs_per_stream, 1),
            ("limits.closed_streams", l.closed_streams, 0),
            ("limits.transcript_lines", l.transcript_lines, 0),
            ("limits.transcript_bytes", l.transcript_bytes, 0),
            ("limits.transcript_total_bytes", l.transcript_total_bytes, 0),
            ("limits.event_backlog", l.event_backlog, 16),
            ("limits.event_backlog_bytes", l.event_backlog_bytes, 64 * 1024),
            ("limits.closed_streams_bytes", l.closed_streams_bytes, 0),
            ("limits.unauthenticated_outcomes_bytes", l.unauthenticated_outcomes_bytes, 0),
        ] {
            if v < min {
                return Err(cx.bad(key, format!("{v} is too small (at least {min})")));
            }
        }
        Ok(())
    }
}
