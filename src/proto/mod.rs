//! Wire vocabulary: namespaces, stream headers and errors, stanza errors, dialback elements,
//! addresses. Pure functions and types, no I/O.

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
