pub mod domain;
pub mod proto;
pub mod xml;
