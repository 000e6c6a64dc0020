//! Real-time blocklists (RTBL): domains the XMPP community reports as spam sources,
//! published as items of an XEP-0060 pubsub node (xmppbl.org's `spam_source_domains`).
//!
//! [`machine`] is the subscriber, sans-I/O: stanzas and timer ticks in, stanzas to send,
//! entry changes and state changes out; [`feeds`] dispatches among the feeds that share the
//! subscriber's JID. [`report`] reads an item's payload; [`familiar`] is who wrote to whom,
//! for the `strangers` action. A listing is
//! evidence, not a verdict: what it does is the feed's [`Action`], and the operator always
//! wins (see `policy::decide`).

pub mod familiar;
pub mod feeds;
pub mod machine;
pub mod report;

use serde::{Deserialize, Serialize};

pub use feeds::Feeds;
pub use machine::{Change, Entry, FeedMachine, FeedState, FeedStatus, Input, Now, Output, Timing};

/// The pubsub node xmppbl.org publishes its spam sources on (the default `node`).
pub const DEFAULT_NODE: &str = "spam_source_domains";
/// Entries kept per feed unless `max_entries` says otherwise: xmppbl.org lists a few
/// hundred domains; ten thousand leaves room while bounding a service that floods.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// The resource of the full JID the subscriptions are made from (`<first hosted domain>/drawbridge-rtbl`).
pub const RESOURCE: &str = "drawbridge-rtbl";

/// What a listing by one feed does to a domain with no operator decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing refused; the domain is marked as listed wherever the operator looks.
    #[default]
    Flag,
    /// Messages and subscription requests to local users who never wrote to the sender are refused.
    Strangers,
    /// The domain waits in the approval inbox, as in approval mode.
    Hold,
    /// The domain is refused as a blocked one is.
    Block,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "flag" => Some(Action::Flag),
            "strangers" => Some(Action::Strangers),
            "hold" => Some(Action::Hold),
            "block" => Some(Action::Block),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Flag => "flag",
            Action::Strangers => "strangers",
            Action::Hold => "hold",
            Action::Block => "block",
        }
    }
}

/// One `[[rtbl]]` block, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSettings {
    /// The pubsub service's JID (a bare domain such as `xmppbl.org`, or `user@domain` for PEP).
    pub service: String,
    pub node: String,
    pub action: Action,
    /// At most this many entries are kept; further items are ignored and counted.
    pub max_entries: usize,
}

impl FeedSettings {
    /// A feed's key in the store and in the operator's view: `service` and `node`.
    pub fn key(&self) -> FeedKey {
        FeedKey { service: self.service.clone(), node: self.node.clone() }
    }
}

/// Which feed: the service and its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeedKey {
    pub service: String,
    pub node: String,
}

impl std::fmt::Display for FeedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} node {}", self.service, self.node)
    }
}

/// A service JID's domain (`pubsub.example`, or the domain of `user@example` for PEP).
pub fn service_domain(service: &str) -> &str {
    service.rsplit_once('@').map_or(service, |(_, d)| d)
}
