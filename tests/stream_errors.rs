//! Bad input gets the protocol's answer (RFC 6120 §4.9, §11): the restricted-XML and
//! malformed-input corpus, header checks, encryption policy, timeouts — and the server keeps
//! serving its other streams throughout.

mod common;

use common::*;
use drawbridge::proto::ns;
use drawbridge::proto::stream::StreamErrorCondition as C;
use drawbridge::xml::Frame;

const HDR_B: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='x.test' to='b.test' version='1.0'>";

/// (name, bytes after the header — or a whole stream if it starts with `!`, expected condition)
fn corpus() -> Vec<(&'static str, Vec<u8>, C)> {
    let mut v: Vec<(&'static str, Vec<u8>, C)> = vec![
        ("comment", b"<!-- hello -->".to_vec(), C::RestrictedXml),
        ("comment inside a stanza", b"<message><!-- x --></message>".to_vec(), C::RestrictedXml),
        ("processing instruction", b"<?evil thing?>".to_vec(), C::RestrictedXml),
        ("DTD", b"<!DOCTYPE foo [<!ENTITY x 'y'>]>".to_vec(), C::RestrictedXml),
        ("entity reference", b"<message><body>&xxe;</body></message>".to_vec(), C::RestrictedXml),
        ("mismatched tags", b"<message><body></message></x>".to_vec(), C::NotWellFormed),
        ("invalid UTF-8", b"<message><body>\xc3\x28</body></message>".to_vec(), C::NotWellFormed),
        ("control character", b"<message><body>\x07</body></message>".to_vec(), C::NotWellFormed),
        ("unbound prefix", b"<foo:message/>".to_vec(), C::NotWellFormed),
        ("duplicate attribute", b"<message to='a' to='b'/>".to_vec(), C::NotWellFormed),
        ("text between stanzas", b"hello".to_vec(), C::BadFormat),
        ("too deep", "<a>".repeat(100).into_bytes(), C::PolicyViolation),
        ("stanza before TLS", b"<message from='a@x.test' to='b@b.test'/>".to_vec(), C::PolicyViolation),
        ("dialback before TLS", b"<db:result from='x.test' to='b.test'>abc</db:result>".to_vec(), C::PolicyViolation),
        ("unknown top-level element", b"<foo xmlns='urn:foo'/>".to_vec(), C::UnsupportedStanzaType),
        ("data behind starttls", b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message/>".to_vec(), C::PolicyViolation),
    ];
    let mut big = b"<message><body>".to_vec();
    big.extend(std::iter::repeat_n(b'a', 600 * 1024));
    big.extend_from_slice(b"</body></message>");
    v.push(("stanza over the size limit", big, C::PolicyViolation));
    v.push(("DTD before the header", b"!<!DOCTYPE x>".to_vec(), C::RestrictedXml));
    v.push((
        "unknown host",
        b"!<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='nope.test' version='1.0'>".to_vec(),
        C::HostUnknown,
    ));
    v.push((
        "wrong default namespace",
        b"!<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>".to_vec(),
        C::InvalidNamespace,
    ));
    v.push((
        "wrong stream namespace",
        b"!<stream:stream xmlns='jabber:server' xmlns:stream='urn:not-streams' to='b.test' version='1.0'>".to_vec(),
        C::InvalidNamespace,
    ));
    v.push((
        "no version",
        b"!<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b.test'>".to_vec(),
        C::UnsupportedVersion,
    ));
    v.push((
        "version 2",
        b"!<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='2.0'>".to_vec(),
        C::UnsupportedVersion,
    ));
    v.push(("garbage instead of a header", b"!\x00\x01\x02 hello".to_vec(), C::BadFormat));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_corpus_gets_the_right_condition_and_others_carry_on() {
    let dns = Dns::start().await;
    let a = start_published("a.test", &dns, "").await;
    let b = start_published("b.test", &dns, "").await;
    // A live federated stream a → b that must survive every bad peer.
    let r = within("probe", a.engine.probe("b.test", None)).await;
    assert!(r.ok, "{:?}", r.error);
    let stream_before = r.stream.clone();

    for (name, bytes, expected) in corpus() {
        let mut p = RawPeer::connect(b.addr).await;
        if bytes.first() == Some(&b'!') {
            p.send_bytes(&bytes[1..]).await;
        } else {
            p.send(HDR_B).await;
            p.send_bytes(&bytes).await;
        }
        let e = p.expect_stream_error().await;
        assert_eq!(e.condition, expected, "case {name:?}: got {e}");
        assert!(!e.text.is_empty(), "case {name:?}: the error says why");
        // The federated stream still carries traffic, on the same stream.
        let r = within("probe after bad input", a.engine.probe("b.test", None)).await;
        assert!(r.ok, "after case {name:?}: {:?}", r.error);
        assert_eq!(r.stream, stream_before, "after case {name:?}: the good stream was not disturbed");
    }
}

/// The header and `<starttls/>` arrive one byte at a time, a multi-byte character among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_chunks() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "").await;
    let mut p = RawPeer::connect(b.addr).await;
    let hdr = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xml:lang='fr-\u{e9}\u{1F600}' from='x.test' to='b.test' version='1.0'>";
    for byte in hdr.as_bytes() {
        p.send_bytes(&[*byte]).await;
    }
    let h = match p.next().await {
        Some(Frame::StreamOpen(h)) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.from.as_deref(), Some("b.test"));
    assert_eq!(h.id.as_ref().map(|i| i.len()), Some(48), "128 random bits and a 64-bit tag (issue 16: ids we issued are recognised), hex");
    let f = p.next_el().await.unwrap();
    let tls = f.get_child("starttls", ns::TLS).expect("STARTTLS offered");
    assert!(tls.has_child("required", ns::TLS), "and required by default");
    assert!(!f.has_child("dialback", ns::DIALBACK_FEATURE), "no dialback before TLS when encryption is required");
    for byte in b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" {
        p.send_bytes(&[*byte]).await;
    }
    let proceed = p.next_el().await.unwrap();
    assert!(proceed.is("proceed", ns::TLS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_timeout_and_clean_close() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[timeouts]\nnegotiation = \"300ms\"\n").await;
    // A peer that opens a stream and never authenticates. The deadline may pass before the
    // server read our header on a crowded machine: whatever it sent first, the stream
    // ends with the deadline's error.
    let mut p = RawPeer::connect(b.addr).await;
    p.send(&header("x.test", "b.test")).await;
    let e = p.expect_condition(C::ConnectionTimeout).await;
    assert!(e.text.contains("timeouts.negotiation"), "{e}");

    // A peer that closes politely gets </stream:stream> back (on a server whose deadline
    // cannot come first: the test default of 10 s).
    let b = start_published("b2.test", &dns, "").await;
    let mut p = RawPeer::connect(b.addr).await;
    p.open("x.test", "b2.test").await;
    p.send("</stream:stream>").await;
    assert!(matches!(p.next().await, Some(Frame::StreamClose)), "closing handshake answered");
    assert!(p.next().await.is_none(), "and the TCP connection closed");
}

/// With require_encryption = false, dialback is offered before TLS (and STARTTLS is optional).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_encryption_offers_dialback_in_the_clear() {
    let dns = Dns::start().await;
    let b = start_published("b.test", &dns, "[tls]\nrequire_encryption = false\n").await;
    let mut p = RawPeer::connect(b.addr).await;
    let (_, f) = p.open("x.test", "b.test").await;
    let tls = f.get_child("starttls", ns::TLS).expect("STARTTLS still offered");
    assert!(!tls.has_child("required", ns::TLS));
    assert!(f.has_child("dialback", ns::DIALBACK_FEATURE));
}
