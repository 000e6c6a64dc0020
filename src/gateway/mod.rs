//! Gateway mode (drawbridge in front of an existing XMPP server): the pieces built so far.
//! [`ca`] mints the certificates drawbridge presents to the internal server as each remote
//! domain.

pub mod ca;
