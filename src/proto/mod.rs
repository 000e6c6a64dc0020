//! The s2s protocol without I/O: the stream machine ([`machine`]: inputs in, outputs out,
//! time as an input) and what it speaks — stream headers and errors, stanza errors, dialback
//! elements, SASL, addresses, and the proofs ([`auth`]) only this layer can build.

pub mod auth;
pub mod dialback;
pub mod jid;
pub mod machine;
pub mod sasl;
pub mod stanza;
pub mod stream;
/// Namespaces live with the XML layer (the framer and writer need them); re-exported here
/// for the protocol code that names them.
pub use crate::xml::ns;
