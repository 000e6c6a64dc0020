//! XML stream layer: bytes → frames (no I/O here), element trees, and the writer.
//!
//! The framer owns its buffer and only ever hands complete top-level elements to
//! quick-xml, so parsing is cancel-safe and bounded by the stanza size limit (quick-xml's
//! async reader keeps partial state inside its future and has no size limit of its own).

pub mod element;
pub mod framer;
pub mod ns;
pub mod pretty;
pub mod writer;

pub use element::{Element, Node};
pub use framer::{Frame, Framer, StreamHeader, XmlError};
