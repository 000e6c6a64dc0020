//! Wire vocabulary: namespaces, stream headers and errors, stanza errors, dialback elements,
//! addresses. Pure functions and types, no I/O.

pub mod auth;
pub mod dialback;
pub mod jid;
pub mod machine;
pub mod ns;
pub mod sasl;
pub mod stanza;
pub mod stream;
