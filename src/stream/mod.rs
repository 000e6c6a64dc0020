//! Streams: the per-connection tasks. [`conn`] is the I/O wrapper (transport, framer,
//! batched writes); [`driver`] runs a [`crate::proto::machine::Machine`] over it;
//! [`inbound`] and [`outbound`] are the two drivers (the protocol is in the machine).

pub mod conn;
pub mod driver;
pub mod inbound;
pub mod outbound;

pub use conn::{Conn, ConnError, Transport};
