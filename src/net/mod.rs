//! The network edge: finding peers (DNS SRV), connecting to them, and TLS.

pub mod certs;
pub mod dial;
pub mod resolve;
pub mod tls;
pub mod tls_io;
