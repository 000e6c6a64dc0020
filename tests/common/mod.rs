//! Test harness: a real DNS server on loopback (hickory-server, in-memory zone `test.`),
//! drawbridge engines on port 0 with temp data dirs, and a raw peer that speaks bytes;
//! a throw-away PostgreSQL in [`postgres`].
#![allow(dead_code)]

pub mod postgres;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drawbridge::config::Settings;
use drawbridge::domain::Domain;
use drawbridge::engine::Engine;
#[allow(unused_imports)]
pub use drawbridge::engine::{Reply, Request};
use drawbridge::net::tls::TlsContext;
use drawbridge::proto::ns;
use drawbridge::proto::stream::{StreamError, StreamErrorCondition};
use drawbridge::xml::{Element, Frame, Framer, StreamHeader};
use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::process::Command;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// `DRAWBRIDGE_TEST_WAIT_SCALE` (a factor, default 1) widens every bound of the tests at
/// once, for a slow or crowded machine. Bounds only stop a hang: events decide outcomes.
pub fn wait_scale() -> f64 {
    static SCALE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var("DRAWBRIDGE_TEST_WAIT_SCALE") {
        Ok(v) => v.parse().ok().filter(|f: &f64| f.is_finite() && *f > 0.0).expect("DRAWBRIDGE_TEST_WAIT_SCALE is a positive number"),
        Err(_) => 1.0,
    })
}

/// `d` widened by [`wait_scale`].
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(wait_scale())
}

/// Bound for every wait in tests: a broken feature fails, it does not hang.
pub static WAIT: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| scaled(Duration::from_secs(30)));

pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(*WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A DNS server for the zone `test.` on 127.0.0.1 (UDP and TCP on one port).
pub struct Dns {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    _server: Server<Catalog>,
}

impl Dns {
    pub async fn start() -> Dns {
        let origin = Name::from_ascii("test.").unwrap();
        let mut zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(Name::from_ascii("ns.test.").unwrap(), Name::from_ascii("admin.test.").unwrap(), 1, 3600, 600, 86400, 0);
        zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(origin.into(), vec![zone.clone()]);
        let mut server = Server::new(catalog);
        // UDP and TCP on the same port.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        Dns { addr, zone, _server: server }
    }

    pub async fn add_srv(&self, domain: &str, priority: u16, weight: u16, target: &str, port: u16) {
        let name = Name::from_ascii(format!("_xmpp-server._tcp.{domain}.")).unwrap();
        let srv = SRV::new(priority, weight, port, Name::from_ascii(format!("{target}.")).unwrap());
        self.zone.upsert(Record::from_rdata(name, 0, RData::SRV(srv)), 2).await;
    }

    pub async fn add_a(&self, host: &str, ip: Ipv4Addr) {
        let name = Name::from_ascii(format!("{host}.")).unwrap();
        self.zone.upsert(Record::from_rdata(name, 0, RData::A(A(ip))), 2).await;
    }
}

/// A drawbridge engine for a test.
pub struct TestServer {
    pub engine: Engine,
    pub addr: SocketAddr,
    pub domain: String,
    pub dir: tempfile::TempDir,
}

/// Config text for a test server; `extra` (TOML) is merged over the test defaults.
pub fn config_text(domain: &str, dir: &Path, dns: SocketAddr, extra: &str) -> String {
    let base = format!(
        r#"
[server]
domains = ["{domain}"]
listen = ["127.0.0.1:0"]
data_dir = "{data}"

[dns]
nameservers = ["{dns}"]
timeout = "{dns_t}ms"

[timeouts]
connect = "{connect}ms"
negotiation = "{negotiation}ms"
dialback = "{dialback}ms"
probe = "{probe}ms"
"#,
        data = dir.join("data").display(),
        // Deadlines no test waits out: generous, and widened with the other bounds (tests
        // running in parallel on two cores make a loopback DNS answer slow at times).
        dns_t = ms(5),
        connect = ms(5),
        negotiation = ms(10),
        dialback = ms(8),
        probe = ms(12),
    );
    let mut base: toml::Table = base.parse().unwrap();
    let extra: toml::Table = extra.parse().expect("extra config is TOML");
    merge(&mut base, extra);
    toml::to_string(&base).unwrap()
}

/// `secs` seconds, widened by [`wait_scale`], in milliseconds.
fn ms(secs: u64) -> u128 {
    scaled(Duration::from_secs(secs)).as_millis()
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub async fn start_server(domain: &str, dns: &Dns, extra: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(domain, dir.path(), dns.addr, extra);
    let settings = Settings::parse(&text, &dir.path().join("drawbridge.toml")).unwrap();
    let engine = Engine::start(settings).await.unwrap();
    let addr = engine.listening().federation[0];
    TestServer { engine, addr, domain: domain.to_owned(), dir }
}

/// Start a server and publish it in DNS: SRV `_xmpp-server._tcp.DOMAIN` → `xmpp.DOMAIN:port`.
pub async fn start_published(domain: &str, dns: &Dns, extra: &str) -> TestServer {
    let s = start_server(domain, dns, extra).await;
    // DNS holds the A-label of an internationalised name.
    let ascii = Domain::parse(domain).unwrap().ascii().into_owned();
    dns.add_a(&format!("xmpp.{ascii}"), Ipv4Addr::LOCALHOST).await;
    dns.add_srv(&ascii, 0, 5, &format!("xmpp.{ascii}"), s.addr.port()).await;
    s
}

/// A TLS context for a made-up domain (the raw peer's certificate).
pub fn peer_tls(domain: &str) -> TlsContext {
    let ck = rcgen::generate_simple_self_signed(vec![domain.to_owned()]).unwrap();
    let chain = vec![ck.cert.der().clone()];
    let key = rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    TlsContext::from_parts(chain, key, &[Domain::parse(domain).unwrap()]).unwrap()
}

/// A test peer's transport. Its TLS is tokio-rustls (rustls's buffered connection): an
/// implementation independent of the server's own transport.
pub enum PeerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    Gone,
}

impl tokio::io::AsyncRead for PeerIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PeerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerIo::Gone => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl tokio::io::AsyncWrite for PeerIo {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, b: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, b),
            PeerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, b),
            PeerIo::Gone => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PeerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            PeerIo::Gone => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PeerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerIo::Gone => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

/// A hand-driven peer: bytes out, frames in.
pub struct RawPeer {
    pub io: PeerIo,
    pub framer: Framer,
}

pub fn header(from: &str, to: &str) -> String {
    drawbridge::proto::stream::header(Some(from), Some(to), None)
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
        RawPeer::from_tcp(tcp)
    }

    pub fn from_tcp(tcp: TcpStream) -> RawPeer {
        RawPeer { io: PeerIo::Plain(tcp), framer: Framer::new(1 << 20, 64) }
    }

    pub async fn send(&mut self, s: &str) {
        self.send_bytes(s.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.io.write_all(b).await;
        let _ = self.io.flush().await;
    }

    pub async fn send_el(&mut self, el: &Element) {
        let mut s = String::new();
        drawbridge::xml::writer::write_top(&mut s, el);
        self.send(&s).await;
    }

    /// The next frame; `None` when the connection ends.
    pub async fn next(&mut self) -> Option<Frame> {
        within("a frame from the server", async {
            loop {
                match self.framer.next_frame() {
                    Ok(Some(f)) => return Some(f),
                    Ok(None) => {}
                    Err(e) => panic!("server sent bad XML: {e}"),
                }
                let mut buf = [0u8; 4096];
                match self.io.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.framer.feed(&buf[..n]),
                }
            }
        })
        .await
    }

    /// The next element (skipping headers); `None` at the end of the stream.
    pub async fn next_el(&mut self) -> Option<Element> {
        loop {
            match self.next().await? {
                Frame::Element(e) => return Some(e),
                Frame::StreamClose => return None,
                Frame::StreamOpen(_) => continue,
            }
        }
    }

    /// Read until a stream error arrives; then expect the close and the end of the connection.
    pub async fn expect_stream_error(&mut self) -> StreamError {
        loop {
            match self.next().await {
                Some(Frame::Element(e)) if e.is("error", ns::STREAMS) => {
                    let err = StreamError::from_element(&e);
                    // RFC 6120 §4.9.1.1: the error is followed by the closing tag.
                    match self.next().await {
                        Some(Frame::StreamClose) | None => {}
                        other => panic!("expected </stream:stream> after {err}, got {other:?}"),
                    }
                    self.send(drawbridge::proto::stream::CLOSE).await;
                    return err;
                }
                Some(_) => continue,
                None => panic!("connection ended without a stream error"),
            }
        }
    }

    pub async fn expect_condition(&mut self, c: StreamErrorCondition) -> StreamError {
        let e = self.expect_stream_error().await;
        assert_eq!(e.condition, c, "expected <{c}/>, got {e}");
        e
    }

    /// Send our header; read the server's header and features.
    pub async fn open(&mut self, from: &str, to: &str) -> (StreamHeader, Element) {
        self.send(&header(from, to)).await;
        let h = match self.next().await {
            Some(Frame::StreamOpen(h)) => h,
            other => panic!("expected a stream header, got {other:?}"),
        };
        let f = self.next_el().await.expect("features");
        assert!(f.is("features", ns::STREAMS), "expected features, got {f:?}");
        (h, f)
    }

    /// STARTTLS and the TLS handshake as `from`; then a fresh stream. Returns the new header
    /// (its id is the stream id dialback keys are bound to) and features.
    pub async fn starttls(&mut self, from: &str, to: &str) -> (StreamHeader, Element) {
        let ctx = peer_tls(from);
        self.starttls_with(from, to, &ctx).await
    }

    /// STARTTLS presenting the certificate of `ctx`.
    pub async fn starttls_with(&mut self, from: &str, to: &str, ctx: &TlsContext) -> (StreamHeader, Element) {
        self.send_el(&Element::new("starttls", ns::TLS)).await;
        let p = self.next_el().await.expect("proceed");
        assert!(p.is("proceed", ns::TLS), "expected <proceed/>, got {p:?}");
        let PeerIo::Plain(tcp) = std::mem::replace(&mut self.io, PeerIo::Gone) else { panic!() };
        let connector = tokio_rustls::TlsConnector::from(ctx.client_config(&Domain::parse(from).unwrap()));
        let name = rustls_pki_types::ServerName::try_from(to.to_owned()).unwrap();
        let tls = within("TLS handshake", connector.connect(name, tcp)).await.unwrap();
        self.io = PeerIo::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
        self.framer = Framer::new(1 << 20, 64);
        self.open(from, to).await
    }
}

/// Bound for waits whose work scales with the machine's load (filling kernel buffers, a
/// burst of thousands of stanzas): what they wait for is an event; this only stops a hang.
pub static LOADED: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| scaled(Duration::from_secs(120)));

/// Wait for an engine event matching `pred` (bounded by [`WAIT`]).
pub async fn wait_event(
    rx: &mut drawbridge::engine::events::bus::Receiver,
    what: &str,
    pred: impl FnMut(&drawbridge::engine::events::Event) -> bool,
) -> drawbridge::engine::events::Event {
    wait_event_within(rx, what, *WAIT, pred).await
}

/// [`wait_event`] bounded by `limit`.
pub async fn wait_event_within(
    rx: &mut drawbridge::engine::events::bus::Receiver,
    what: &str,
    limit: Duration,
    mut pred: impl FnMut(&drawbridge::engine::events::Event) -> bool,
) -> drawbridge::engine::events::Event {
    let waiting = async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) => continue,
                Err(drawbridge::engine::events::bus::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event channel: {e}"),
            }
        }
    };
    match tokio::time::timeout(limit, waiting).await {
        Ok(ev) => ev,
        Err(_) => panic!("timed out waiting for {what} ({limit:?})"),
    }
}

/// Play a receiving server by hand for `domain`: accept one connection on `listener`,
/// negotiate STARTTLS and restart, offer dialback. Returns the peer in TLS mode and the
/// stream id we gave it.
pub async fn accept_as_server(listener: &TcpListener, domain: &str) -> (RawPeer, String) {
    let (tcp, _) = within("the server's connection", listener.accept()).await.unwrap();
    let mut p = RawPeer { io: PeerIo::Plain(tcp), framer: Framer::new(1 << 20, 64) };
    let h = match p.next().await {
        Some(Frame::StreamOpen(h)) => h,
        other => panic!("expected a header, got {other:?}"),
    };
    let from = h.from.clone().unwrap_or_default();
    p.send(&drawbridge::proto::stream::header(Some(domain), Some(&from), Some("pre-tls-id"))).await;
    p.send("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>").await;
    let st = p.next_el().await.expect("starttls");
    assert!(st.is("starttls", ns::TLS));
    p.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    let PeerIo::Plain(tcp) = std::mem::replace(&mut p.io, PeerIo::Gone) else { panic!() };
    let ctx = peer_tls(domain);
    let acceptor = tokio_rustls::TlsAcceptor::from(ctx.server_config(&Domain::parse(domain).unwrap()));
    let tls = within("TLS accept", acceptor.accept(tcp)).await.unwrap();
    p.io = PeerIo::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
    p.framer = Framer::new(1 << 20, 64);
    match p.next().await {
        Some(Frame::StreamOpen(_)) => {}
        other => panic!("expected a header after TLS, got {other:?}"),
    }
    let id = format!("fake-{}", drawbridge::engine::table::random_id());
    p.send(&drawbridge::proto::stream::header(Some(domain), Some(&from), Some(&id))).await;
    p.send("<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>").await;
    (p, id)
}

/// A listener on loopback published in DNS as `domain` (for hand-played servers).
pub async fn publish_listener(dns: &Dns, domain: &str) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    dns.add_a(&format!("xmpp.{domain}"), Ipv4Addr::LOCALHOST).await;
    dns.add_srv(domain, 0, 5, &format!("xmpp.{domain}"), l.local_addr().unwrap().port()).await;
    l
}

/// A raw peer connected to `server`, through STARTTLS, claiming `from`.
pub async fn tls_peer(server: &TestServer, from: &str) -> (RawPeer, StreamHeader, Element) {
    let mut p = RawPeer::connect(server.addr).await;
    let (_, f) = p.open(from, &server.domain).await;
    assert!(f.has_child("starttls", ns::TLS));
    let (h, f) = p.starttls(from, &server.domain).await;
    (p, h, f)
}

/// A hand-played remote server `domain` federated with `server` both ways: `to_server` is
/// our authenticated stream into it, `from_server` its authenticated stream to us.
pub struct HandPlayed {
    pub to_server: RawPeer,
    pub from_server: RawPeer,
}

pub async fn hand_played(server: &TestServer, dns: &Dns, domain: &str) -> HandPlayed {
    let listener = publish_listener(dns, domain).await;
    hand_played_on(server, domain, listener).await
}

/// [`hand_played`] with the server's connections arriving on `listener` (already in DNS).
pub async fn hand_played_on(server: &TestServer, domain: &str, listener: TcpListener) -> HandPlayed {
    use drawbridge::proto::dialback::{Answer, DbElement, result_answer, verify_answer};
    let (mut to_server, h, _) = tls_peer(server, domain).await;
    let sid = h.id.unwrap();
    to_server.send_el(&drawbridge::proto::dialback::result_request(domain, &server.domain, "k")).await;
    let (mut from_server, _) = accept_as_server(&listener, domain).await;
    let (mut answered_verify, mut answered_result) = (false, false);
    while !(answered_verify && answered_result) {
        let el = from_server.next_el().await.expect("dialback from the server");
        let db = DbElement::parse(&el).expect("dialback element");
        if db.verify {
            assert_eq!(db.id.as_deref(), Some(sid.as_str()));
            from_server.send_el(&verify_answer(domain, &server.domain, &sid, &Answer::Valid)).await;
            answered_verify = true;
        } else {
            from_server.send_el(&result_answer(domain, &server.domain, &Answer::Valid)).await;
            answered_result = true;
        }
    }
    loop {
        let el = to_server.next_el().await.expect("db:result answer");
        if let Some(db) = DbElement::parse(&el) {
            assert_eq!(db.answer, Some(Answer::Valid));
            break;
        }
    }
    HandPlayed { to_server, from_server }
}

impl HandPlayed {
    /// The next stanza the server sends us (dialback and whitespace skipped).
    pub async fn next_stanza(&mut self) -> Element {
        loop {
            let el = self.from_server.next_el().await.expect("a stanza from the server");
            if drawbridge::proto::stanza::is_stanza(&el) {
                return el;
            }
        }
    }
}

impl Dns {
    /// RFC 2782: a single SRV record with target "." — no service.
    pub async fn add_srv_root(&self, domain: &str) {
        let name = Name::from_ascii(format!("_xmpp-server._tcp.{domain}.")).unwrap();
        let srv = SRV::new(0, 0, 0, Name::root());
        self.zone.upsert(Record::from_rdata(name, 0, RData::SRV(srv)), 2).await;
    }
}

/// A tmux session running the real binary (end-to-end dashboard tests).
pub struct Tmux(String);

impl Tmux {
    /// A session named `prefix` plus this process's id and a counter: concurrent runs (other
    /// checkouts, other test binaries) never share, and so never kill, each other's session.
    pub fn start(prefix: &str, cmd: &str) -> Tmux {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "120", "-y", "32", cmd])
            .status()
            .expect("tmux is installed");
        assert!(ok.success(), "tmux new-session {name}");
        Tmux(name)
    }

    pub fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            assert!(Command::new("tmux").args(["send-keys", "-t", &self.0, k]).status().unwrap().success());
        }
    }

    /// Wait (bounded) until the screen shows all of `needles`.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if needles.iter().all(|n| s.contains(n)) {
                return s;
            }
            assert!(t0.elapsed() < *WAIT, "screen never showed {needles:?}:\n{s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn alive(&self) -> bool {
        Command::new("tmux").args(["has-session", "-t", &self.0]).output().map(|o| o.status.success()).unwrap_or(false)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
    }
}

impl Dns {
    /// `_xmpps-server._tcp` (direct TLS, XEP-0368).
    pub async fn add_srv_direct(&self, domain: &str, priority: u16, target: &str, port: u16) {
        let name = Name::from_ascii(format!("_xmpps-server._tcp.{domain}.")).unwrap();
        let srv = SRV::new(priority, 5, port, Name::from_ascii(format!("{target}.")).unwrap());
        self.zone.upsert(Record::from_rdata(name, 0, RData::SRV(srv)), 2).await;
    }
}

/// A CA made in the test.
pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// `[tls]` for `domain` with a server-auth-only certificate from `ca`, trusting `trust`.
pub fn tls_config(dir: &std::path::Path, ca: &Ca, domain: &str, trust: &Ca) -> String {
    tls_config_with(dir, ca, domain, trust, |_| {})
}

/// [`tls_config`] with the certificate's parameters changed first (e.g. its validity).
pub fn tls_config_with(dir: &std::path::Path, ca: &Ca, domain: &str, trust: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> String {
    let mut params = CertificateParams::new(vec![domain.to_owned(), format!("*.{domain}")]).unwrap();
    params.distinguished_name.push(DnType::CommonName, domain);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    edit(&mut params);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key)).unwrap();
    let (c, k, t) = (dir.join(format!("{domain}.crt")), dir.join(format!("{domain}.key")), dir.join(format!("{domain}-trust.pem")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&t, &trust.pem).unwrap();
    format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\nca_file = \"{}\"\n", c.display(), k.display(), t.display())
}

/// The log lines of this test binary at drawbridge's default level (a global subscriber;
/// other tests' lines land too, which only adds to a count).
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture this process's log (INFO and above, no colours) for [`captured_logs`].
pub fn capture_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("drawbridge=info").with_ansi(false).with_writer(|| LogWriter).try_init();
}

/// What was logged since [`capture_logs`].
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

/// An operator's request through the engine's API, as "tester"; it must succeed.
pub async fn ask(engine: &drawbridge::engine::EngineHandle, req: drawbridge::engine::Request) -> drawbridge::engine::Reply {
    let what = format!("{req:?}");
    engine.acting_as("tester").execute(req).await.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A policy change (approve, block, blacklist, unblock) through the API: its report.
pub async fn change(engine: &drawbridge::engine::EngineHandle, req: drawbridge::engine::Request) -> drawbridge::engine::ChangeReport {
    match ask(engine, req).await {
        drawbridge::engine::Reply::Change(c) => *c,
        other => panic!("not a policy change: {other:?}"),
    }
}

/// Everything the engine knows about a domain (`Request::Domain`).
pub async fn domain_report(engine: &drawbridge::engine::EngineHandle, domain: &str) -> drawbridge::engine::DomainReport {
    match ask(engine, drawbridge::engine::Request::Domain { domain: domain.into() }).await {
        drawbridge::engine::Reply::Domain(r) => *r,
        other => panic!("not a domain report: {other:?}"),
    }
}

/// The policy's record of a domain, if it has one.
pub async fn record(engine: &drawbridge::engine::EngineHandle, domain: &str) -> Option<drawbridge::policy::DomainRecord> {
    domain_report(engine, domain).await.record
}

/// The domains in one state (`Request::Domains`).
pub async fn domains(engine: &drawbridge::engine::EngineHandle, state: Option<&str>) -> Vec<drawbridge::policy::DomainRecord> {
    domain_rows(engine, state).await.into_iter().map(|r| r.record).collect()
}

/// The domains in one state with their live streams (`Request::Domains`).
pub async fn domain_rows(engine: &drawbridge::engine::EngineHandle, state: Option<&str>) -> Vec<drawbridge::engine::DomainRow> {
    match ask(engine, drawbridge::engine::Request::Domains { state: state.map(str::to_owned) }).await {
        drawbridge::engine::Reply::Domains(v) => v,
        other => panic!("not a domain list: {other:?}"),
    }
}

/// Read `p` up to the dialback element `name` (`"result"` or `"verify"`) that carries an
/// answer (`type`); returns it and the stanzas read before it.
pub async fn until_db_answer(p: &mut RawPeer, name: &str) -> (Element, Vec<Element>) {
    let mut before = Vec::new();
    loop {
        let el = p.next_el().await.unwrap_or_else(|| panic!("the stream ended before a db:{name} answer; read {before:?}"));
        if el.is(name, ns::DIALBACK) && el.get_attr("type").is_some() {
            return (el, before);
        }
        if drawbridge::proto::stanza::is_stanza(&el) {
            before.push(el);
        }
    }
}

/// The far side of a server's outbound stream to `domain` that we accepted and answered
/// valid (`from_server`): proves what the server sent on it so far *after* it took that
/// answer. We open a stream of our own into `server` as `domain` and claim it by dialback;
/// the server asks `domain`'s authoritative server over the same outbound stream, whose
/// driver takes queued stanzas before verifications (a biased select): a stanza it did not
/// hold is written before that `db:verify`. Returns the stanzas read before the `db:verify`,
/// our stream into the server (its `db:result` not yet answered), and the `db:verify`.
pub async fn stanzas_before_a_verify(from_server: &mut RawPeer, server: &TestServer, domain: &str) -> (Vec<Element>, RawPeer, Element) {
    let (mut to_server, _, _) = tls_peer(server, domain).await;
    to_server.send_el(&drawbridge::proto::dialback::result_request(domain, &server.domain, "k")).await;
    let mut before = Vec::new();
    loop {
        let el = from_server.next_el().await.unwrap_or_else(|| panic!("the outbound stream ended; read {before:?}"));
        if el.is("verify", ns::DIALBACK) {
            return (before, to_server, el);
        }
        if drawbridge::proto::stanza::is_stanza(&el) {
            before.push(el);
        }
    }
}

impl RawPeer {
    /// The TCP connection under this peer's transport.
    pub fn tcp(&self) -> &TcpStream {
        match &self.io {
            PeerIo::Plain(s) => s,
            PeerIo::Tls(s) => s.get_ref().0,
            PeerIo::Gone => panic!("no transport"),
        }
    }

    /// Whether the server's end of this connection would take a write now (see
    /// [`socket_writable`]; the server runs in this process).
    /// `None` once the server closed its end.
    pub fn server_end_writable(&self) -> Option<bool> {
        let t = self.tcp();
        let (ours, theirs) = (t.local_addr().ok()?, t.peer_addr().ok()?);
        socket_writable(theirs, ours)
    }
}

/// Whether the kernel would take a write now on this process's TCP socket from `local` to
/// `peer` (poll for POLLOUT, not waiting): `false` means its send buffer is full, so a write
/// the server wants to make is really waiting. Found among this process's file descriptors
/// (the servers under test run in the test's process); `None` if there is no such socket.
pub fn socket_writable(local: SocketAddr, peer: SocketAddr) -> Option<bool> {
    fn addr(fd: i32, f: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32) -> Option<SocketAddr> {
        // SAFETY: a zeroed sockaddr_storage is valid; the length says how much the kernel may
        // write; the kernel fills it for a socket fd (any other fd fails and is skipped).
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if unsafe { f(fd, (&raw mut ss).cast(), &mut len) } != 0 {
            return None;
        }
        match i32::from(ss.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says it is a sockaddr_in.
                let a: libc::sockaddr_in = unsafe { std::ptr::read((&raw const ss).cast()) };
                Some(SocketAddr::from((Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says it is a sockaddr_in6.
                let a: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const ss).cast()) };
                Some(SocketAddr::from((std::net::Ipv6Addr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port))))
            }
            _ => None,
        }
    }
    for e in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if !std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")) {
            continue;
        }
        if addr(fd, libc::getsockname) != Some(local) || addr(fd, libc::getpeername) != Some(peer) {
            continue;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        return Some(n == 1 && p.revents & libc::POLLOUT != 0);
    }
    None
}
