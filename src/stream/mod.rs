//! Streams: the per-connection tasks. [`conn`] is the I/O wrapper (transport, framer,
//! batched writes); [`driver`] runs a [`crate::proto::machine::Machine`] over it in one loop
//! for every role; [`inbound`], [`outbound`] and [`component`] set a stream up, add their
//! role's queues and outputs (`driver::Role`) and carry out what its ending decided (the
//! protocol, and what becomes of queued stanzas, is the machine's).
//!
//! A driver gets [`Caps`] — the machine's environment, TLS, the router, the connection
//! table, an [`Observer`] for what must be recorded, DNS and dialling for outbound streams,
//! and its settings — and nothing else of the server.

pub mod component;
pub mod conn;
pub mod driver;
pub mod inbound;
pub mod outbound;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conn::{Conn, ConnError, Transport};

use crate::domain::Domain;
use crate::net::dial::OutboundSettings;
use crate::net::resolve::Resolver;
use crate::net::tls::CurrentTls;
use crate::proto::machine::Env;
use crate::router::Router;
use crate::table::{ConnEntry, ConnTable};
use crate::types::VerificationOutcome;

/// Where streams report what must outlive them (the engine records it).
pub trait Observer: Send + Sync {
    /// A verification outcome: log, store, events. `cert` is the peer certificate of the
    /// stream's TLS session, given with a valid outcome (what a domain that authenticated by
    /// certificate is known to present: its expiry is forecast from it).
    fn outcome(&self, outcome: VerificationOutcome, cert: Option<Arc<crate::types::PeerCertInfo>>);
    /// A verified domain nobody decided on waits for the operator.
    fn pending(&self, domain: &Domain);
    /// A stream ended: closed list, history, domain counters.
    fn closed(&self, entry: &ConnEntry, reason: &str);
}

/// The settings streams use.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `server.domains`; the first answers when a peer names none.
    pub domains: Vec<Domain>,
    pub timeouts: crate::config::Timeouts,
    pub limits: crate::config::Limits,
    pub outbound: OutboundSettings,
    /// `dns.timeout`.
    pub dns_timeout: Duration,
}

/// The TLS configs a driver's handshakes use, by the local domain of the stream: the
/// server's own certificate, or in gateway mode one minted for the remote domain we stand in
/// for (which can fail: the reason ends the handshake).
pub trait TlsConfigs: Send + Sync {
    fn server_config(&self, local: &Domain) -> Result<Arc<rustls::ServerConfig>, TlsConfigError>;
    fn client_config(&self, local: &Domain) -> Result<Arc<rustls::ClientConfig>, TlsConfigError>;
}

/// Why a stream got no TLS config (gateway mode: no certificate could be minted for the
/// domain, or the minted one did not make a config).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("no certificate for {domain}: {source}")]
    NoCertificate {
        domain: Domain,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Config(#[from] crate::net::tls::TlsError),
}

impl TlsConfigs for CurrentTls {
    fn server_config(&self, local: &Domain) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        Ok(self.get().server_config(local))
    }
    fn client_config(&self, local: &Domain) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
        Ok(self.get().client_config(local))
    }
}

/// What a stream driver may use.
pub struct Caps {
    pub env: Arc<Env>,
    pub tls: Arc<dyn TlsConfigs>,
    pub router: Arc<Router>,
    pub table: Arc<ConnTable>,
    pub observer: Arc<dyn Observer>,
    /// Ticks when the policy changes (held pairs may be released or refused).
    pub policy_changes: watch::Receiver<u64>,
    pub resolver: Arc<Resolver>,
    /// Outbound connection attempts in progress (`[outbound] max_dials`).
    pub dials: Arc<tokio::sync::Semaphore>,
    /// Spawned work (dialback callbacks), waited for at shutdown.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub settings: StreamSettings,
    /// Gateway mode's streams with the internal server: outbound ones connect to this
    /// address (`gateway.internal`) instead of resolving the remote domain; all of them are
    /// marked as the internal link for the operator.
    pub internal: Option<std::net::SocketAddr>,
}

impl Caps {
    /// The same capabilities, reporting to `observer` (the internal link's and components'
    /// streams are recorded apart from federation's).
    pub fn reporting_to(&self, observer: Arc<dyn Observer>) -> Caps {
        Caps {
            env: self.env.clone(),
            tls: self.tls.clone(),
            router: self.router.clone(),
            table: self.table.clone(),
            observer,
            policy_changes: self.policy_changes.clone(),
            resolver: self.resolver.clone(),
            dials: self.dials.clone(),
            tasks: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
            settings: self.settings.clone(),
            internal: self.internal,
        }
    }

    /// What the streams driven with these capabilities connect to.
    pub fn kind(&self) -> crate::types::StreamKind {
        if self.internal.is_some() { crate::types::StreamKind::Internal } else { crate::types::StreamKind::Federation }
    }
}
