//! `[timeouts]`: how long each wait may last; durations as [`super::parse_duration`] reads
//! them, none of them zero.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Ctx};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TimeoutsFile {
    negotiation: Option<String>,
    connect: Option<String>,
    dialback: Option<String>,
    close: Option<String>,
    idle_outbound: Option<String>,
    keepalive: Option<String>,
    probe: Option<String>,
    write: Option<String>,
    idle_inbound: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From TCP accept/connect until the stream is authenticated → `<connection-timeout/>`.
    pub negotiation: Duration,
    /// Per connection attempt (TCP connect to one SRV target).
    pub connect: Duration,
    /// Receiving server waiting for the authoritative server's `db:verify` answer.
    pub dialback: Duration,
    /// Waiting for the peer's `</stream:stream>` after ours.
    pub close: Duration,
    /// Outbound streams with no stanza for this long are closed.
    pub idle_outbound: Duration,
    /// Whitespace keepalive interval on idle outbound streams.
    pub keepalive: Duration,
    /// `ctl probe` waiting for the pong.
    pub probe: Duration,
    /// Longest one write may wait for the peer to read (a peer with a closed receive window
    /// holds nothing beyond it).
    pub write: Duration,
    /// Established inbound streams that carried no byte (not even a keepalive) for this
    /// long are closed with `<connection-timeout/>`.
    pub idle_inbound: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            negotiation: Duration::from_secs(30),
            connect: Duration::from_secs(10),
            dialback: Duration::from_secs(30),
            close: Duration::from_secs(5),
            idle_outbound: Duration::from_secs(600),
            keepalive: Duration::from_secs(60),
            probe: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle_inbound: Duration::from_secs(1200),
        }
    }
}

impl TimeoutsFile {
    pub fn validate(&self, cx: &Ctx<'_>) -> Result<Timeouts, ConfigError> {
        let (d, t) = (Timeouts::default(), self);
        Ok(Timeouts {
            negotiation: cx.duration("timeouts.negotiation", &t.negotiation, d.negotiation)?,
            connect: cx.duration("timeouts.connect", &t.connect, d.connect)?,
            dialback: cx.duration("timeouts.dialback", &t.dialback, d.dialback)?,
            close: cx.duration("timeouts.close", &t.close, d.close)?,
            idle_outbound: cx.duration("timeouts.idle_outbound", &t.idle_outbound, d.idle_outbound)?,
            keepalive: cx.duration("timeouts.keepalive", &t.keepalive, d.keepalive)?,
            probe: cx.duration("timeouts.probe", &t.probe, d.probe)?,
            write: cx.duration("timeouts.write", &t.write, d.write)?,
            idle_inbound: cx.duration("timeouts.idle_inbound", &t.idle_inbound, d.idle_inbound)?,
        })
    }
}
