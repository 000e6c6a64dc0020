//! Namespaces (RFC 6120, XEP-0220, XEP-0199, XEP-0030, XEP-0092, XEP-0478).

pub const STREAMS: &str = "http://etherx.jabber.org/streams";
pub const SERVER: &str = "jabber:server";
pub const CLIENT: &str = "jabber:client";
/// External components (XEP-0114).
pub const COMPONENT_ACCEPT: &str = "jabber:component:accept";
pub const DIALBACK: &str = "jabber:server:dialback";
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Stream limits advertisement (XEP-0478).
pub const STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";
pub const PING: &str = "urn:xmpp:ping";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const VERSION: &str = "jabber:iq:version";
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
