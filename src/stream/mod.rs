//! Streams: the per-connection tasks. [`conn`] is the I/O wrapper (transport, framer,
//! batched writes); [`inbound`] and [`outbound`] are the two state machines.

pub mod conn;
pub mod inbound;
pub mod outbound;

pub use conn::{Conn, ConnError, Transport};
