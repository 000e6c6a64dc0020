//! drawbridge: an XMPP server-to-server (s2s) federation server.
//!
//! Data flow, one module per step:
//! socket ([`net`]) → TLS ([`net::tls`]) → XML framing ([`xml`]) → stream state machines
//! ([`stream`], dialback in [`proto::dialback`]) → router ([`router`]) → events and the
//! engine API ([`engine`]) → control socket ([`control`]).
//! [`config`] turns the TOML file into typed settings; [`store`] keeps what must survive a
//! restart; [`domain`] is the normalised key for peers.

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
pub mod limits;
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
