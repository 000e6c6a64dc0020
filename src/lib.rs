//! drawbridge: an XMPP server-to-server (s2s) federation server.
//!
//! A stanza's path: socket ([`net`]) → TLS ([`net::tls_io`]) → framer ([`xml`]) → stream
//! machine ([`proto`], driven by [`stream`]) → [`router`] → link → machine → TLS → socket.
//! An operator's path: [`dashboard`] or `ctl` ([`cli`]) → [`control`] socket →
//! [`engine::Request`] → [`engine`] → [`policy`] / [`store`] / [`table`] → [`events`] → views.
//! Beside them: [`config`] (TOML → typed settings), [`domain`] (the normalised peer key),
//! [`limits`] (budgets and gauges), [`gateway`] (fronting an internal server), [`secrets`]
//! (files holding secrets checked), [`text`] (peer text made safe), [`latency`] (lock-free timing histograms), [`types`] (shared
//! vocabulary), [`demo`].

pub mod cli;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod latency;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proto;
pub mod router;
pub mod rtbl;
pub mod secrets;
pub mod store;
pub mod stream;
pub mod table;
pub mod text;
pub mod types;
pub mod xml;
