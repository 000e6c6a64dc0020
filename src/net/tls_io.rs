//! A TLS connection over TCP that holds no buffer while idle.
//!
//! rustls's buffered connection (what tokio-rustls wraps) keeps a 4 KiB record buffer for
//! the life of the connection: 8 KiB per federated pair that sits idle most of its life.
//! Here rustls's unbuffered API does the protocol and this type owns the bytes: received
//! ciphertext, decrypted plaintext not yet read, ciphertext not yet written. Each is empty
//! between bursts, and [`TlsIo::trim`] gives their memory back.
//!
//! Bounds (what a peer can make us hold): received ciphertext at most one record plus one
//! read (rustls refuses records over 16 KiB + overhead, and handshake messages over 64 KiB);
//! plaintext at most what the records read in one call decrypted to; ciphertext out at most
//! [`MAX_ENCRYPT`] per write call plus what rustls itself asks to send.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic};
use rustls::{ClientConfig, CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::net::reserve_io;

/// Bytes of TCP read at a time into the ciphertext buffer.
const READ_CHUNK: usize = 4096;
/// Plaintext taken per write call (encrypted in one go into records of up to 16 KiB).
pub const MAX_ENCRYPT: usize = 64 * 1024;
/// Received ciphertext kept before a record completes: a handshake message may span
/// several records (rustls caps it at 64 KiB), application records are ≤ 16 KiB + 2 KiB.
const MAX_INCOMING: usize = 72 * 1024;

enum Session {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// What one pass over the received bytes found.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Handshake done, application data may flow.
    Ready,
    /// The handshake needs the peer's next flight.
    NeedRead,
    /// The peer sent close_notify.
    PeerClosed,
}

/// An established (or establishing) TLS session over a TCP stream.
pub struct TlsIo {
    tcp: TcpStream,
    session: Session,
    /// Received ciphertext; `incoming[..used]` not yet processed.
    incoming: Vec<u8>,
    used: usize,
    /// Decrypted plaintext; `plain[plain_pos..]` not yet read.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext to write; `outgoing[out_pos..]` not yet written.
    outgoing: Vec<u8>,
    out_pos: usize,
    peer_closed: bool,
    /// TCP end of stream seen.
    eof: bool,
    close_notify_sent: bool,
}

/// Where one rustls step puts its results.
struct Sink<'a, 'w> {
    plain: &'a mut Vec<u8>,
    plain_pos: &'a mut usize,
    outgoing: &'a mut Vec<u8>,
    peer_closed: &'a mut bool,
    /// Application data (or close_notify, when `true`) to encrypt once rustls offers writing;
    /// taken when done.
    write: Option<(&'w [u8], bool)>,
}

impl Sink<'_, '_> {
    /// Apply one state of rustls; returns bytes to discard from the received ones and, when
    /// rustls waits for the peer or for us, where it stands.
    fn take<D>(&mut self, status: UnbufferedStatus<'_, '_, D>) -> io::Result<(usize, Option<Step>)> {
        let UnbufferedStatus { mut discard, state } = status;
        let step = match state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(tls_error)?;
                    discard += rec.discard;
                    if *self.plain_pos == self.plain.len() {
                        self.plain.clear();
                        *self.plain_pos = 0;
                    }
                    let needed = self.plain.len() + rec.payload.len();
                    reserve_io(self.plain, needed);
                    self.plain.extend_from_slice(rec.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut e) => {
                let start = self.outgoing.len();
                let mut room = 1024;
                loop {
                    reserve_io(self.outgoing, start + room);
                    self.outgoing.resize(start + room, 0);
                    match e.encode(&mut self.outgoing[start..]) {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(s)) if s.required_size > room => room = s.required_size,
                        Err(e) => {
                            self.outgoing.truncate(start);
                            return Err(io::Error::other(e.to_string()));
                        }
                    }
                }
                None
            }
            // Queued in `outgoing`, which is written before anything queued later.
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Step::NeedRead),
            ConnectionState::WriteTraffic(mut w) => {
                if let Some((data, close_notify)) = self.write.take() {
                    encrypt_into(&mut w, self.outgoing, data, close_notify)?;
                }
                Some(Step::Ready)
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                *self.peer_closed = true;
                Some(Step::PeerClosed)
            }
            ConnectionState::ReadEarlyData(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS early data")),
            _ => return Err(io::Error::other("unknown TLS connection state")),
        };
        Ok((discard, step))
    }
}

/// Encrypt into the end of `outgoing`, growing it to what rustls says it needs.
fn encrypt_into<D>(w: &mut WriteTraffic<'_, D>, outgoing: &mut Vec<u8>, data: &[u8], close_notify: bool) -> io::Result<()> {
    let start = outgoing.len();
    let mut room = data.len() + data.len() / 16 + 64;
    loop {
        reserve_io(outgoing, start + room);
        outgoing.resize(start + room, 0);
        let r = if close_notify { w.queue_close_notify(&mut outgoing[start..]) } else { w.encrypt(data, &mut outgoing[start..]) };
        match r {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) if s.required_size > room => room = s.required_size,
            Err(e) => {
                outgoing.truncate(start);
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsIo {
    /// The handshake as a client (SNI and the name verified: `name`).
    pub async fn connect(tcp: TcpStream, config: Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<TlsIo> {
        let session = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        TlsIo::new(tcp, Session::Client(session)).handshake().await
    }

    /// The handshake as a server.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsIo> {
        let session = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        TlsIo::new(tcp, Session::Server(session)).handshake().await
    }

    fn new(tcp: TcpStream, session: Session) -> TlsIo {
        TlsIo {
            tcp,
            session,
            incoming: Vec::new(),
            used: 0,
            plain: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            peer_closed: false,
            eof: false,
            close_notify_sent: false,
        }
    }

    /// The session's facts: version, cipher suite, the peer's certificates, ALPN.
    pub fn session(&self) -> &CommonState {
        match &self.session {
            Session::Client(c) => c,
            Session::Server(s) => s,
        }
    }

    async fn handshake(mut self) -> io::Result<TlsIo> {
        loop {
            let step = self.process()?;
            std::future::poll_fn(|cx| self.poll_write_out(cx)).await?;
            match step {
                Step::Ready => {
                    self.after_handshake();
                    return Ok(self);
                }
                Step::PeerClosed => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed during the TLS handshake")),
                Step::NeedRead => {
                    if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during the TLS handshake"));
                    }
                }
            }
        }
    }

    /// Run rustls over the received bytes: decrypted application data goes to `plain`,
    /// what rustls wants sent to `outgoing`; returns when it needs bytes or may write.
    fn process(&mut self) -> io::Result<Step> {
        self.pass(None).map(|(step, _)| step)
    }

    /// [`TlsIo::process`], encrypting `write` into `outgoing` as soon as rustls offers
    /// writing; says whether it did.
    fn pass(&mut self, mut write: Option<(&[u8], bool)>) -> io::Result<(Step, bool)> {
        let wants_write = write.is_some();
        loop {
            let TlsIo { session, incoming, used, plain, plain_pos, outgoing, peer_closed, .. } = self;
            let incoming = &mut incoming[..*used];
            let mut out = Sink { plain, plain_pos, outgoing, peer_closed, write: write.take() };
            let (discard, step) = match session {
                Session::Client(c) => out.take(c.process_tls_records(incoming))?,
                Session::Server(s) => out.take(s.process_tls_records(incoming))?,
            };
            write = out.write;
            self.discard(discard);
            if let Some(step) = step {
                return Ok((step, wants_write && write.is_none()));
            }
        }
    }

    fn discard(&mut self, n: usize) {
        if n > 0 {
            self.incoming.copy_within(n..self.used, 0);
            self.used -= n;
        }
    }

    /// Read more ciphertext from TCP. Ok(0) at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.used >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "TLS record too large")));
        }
        if self.incoming.len() < self.used + READ_CHUNK {
            self.incoming.resize(self.used + READ_CHUNK, 0);
        }
        let mut buf = ReadBuf::new(&mut self.incoming[self.used..]);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.used += n;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Write queued ciphertext; Ready once all of it is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.outgoing.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypt application data (or close_notify) into `outgoing`: the session must be
    /// established and still able to send.
    fn encrypt(&mut self, data: &[u8], close_notify: bool) -> io::Result<()> {
        // The pass that reports the peer's close lets the next one offer writing (or not).
        for _ in 0..2 {
            if self.pass(Some((data, close_notify)))?.1 {
                return Ok(());
            }
        }
        Err(io::Error::new(io::ErrorKind::BrokenPipe, "the TLS session can no longer send"))
    }

    /// Readable now (plaintext held, or the peer closed) or once TCP has bytes.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plain_pos < self.plain.len() || self.peer_closed || self.eof {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Give back what the handshake grew. A peer's certificate flight (its Certificate
    /// message, RFC 8446 §4.4.2, which rustls takes up to 64 KiB) grows `incoming` to hold
    /// it, doubling to 64 KiB for a 40 KB certificate; kept,
    /// that is the price of every stream that then negotiates or idles, on top of the
    /// certificate rustls keeps (measured: 1 000 streams with 40 KB certificates held
    /// 64 MiB of empty receive buffers until their idle trim). What was read past the
    /// handshake (the peer's first application records) is kept, in a buffer its size.
    fn after_handshake(&mut self) {
        self.trim();
        if self.incoming.capacity() > self.used + READ_CHUNK {
            let mut kept = Vec::with_capacity(self.used + READ_CHUNK);
            kept.extend_from_slice(&self.incoming[..self.used]);
            self.incoming = kept;
        }
    }

    /// Give back the buffers that hold nothing.
    pub fn trim(&mut self) {
        if self.used == 0 && self.incoming.capacity() > 0 {
            self.incoming = Vec::new();
        }
        if self.plain_pos == self.plain.len() && self.plain.capacity() > 0 {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        if self.out_pos == self.outgoing.len() && self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.out_pos = 0;
        }
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain.clear();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || this.eof {
                return Poll::Ready(Ok(()));
            }
            this.process()?;
            // What rustls wants sent in reply (a key update, an alert) goes out as the
            // socket allows; a write that waits does not hold up reading.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
            if this.plain_pos < this.plain.len() || this.peer_closed {
                continue;
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Backpressure: new plaintext only once the ciphertext before it is on its way.
        ready!(this.poll_write_out(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(MAX_ENCRYPT);
        this.encrypt(&data[..n], false)?;
        // Start writing at once; what the socket does not take waits for the next call.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// close_notify (RFC 8446 §6.1), then the TCP shutdown.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            ready!(this.poll_write_out(cx))?;
            this.close_notify_sent = true;
            this.encrypt(&[], true)?;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::domain::Domain;
    use crate::net::IO_BUFFER_MIN;
    use crate::net::tls::TlsContext;

    fn context(name: &str) -> TlsContext {
        context_naming(vec![name.to_owned()])
    }

    /// A self-signed certificate for all of `names` (the first is the domain).
    fn context_naming(names: Vec<String>) -> TlsContext {
        let name = names[0].clone();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        TlsContext::from_parts(vec![ck.cert.der().clone()], key, &[Domain::parse(&name).unwrap()]).unwrap()
    }

    /// Our server side against tokio-rustls (rustls's buffered connection) as the client.
    async fn server_and_peer() -> (TlsIo, tokio_rustls::client::TlsStream<TcpStream>) {
        server_and_peer_presenting(context("client.test")).await
    }

    /// The same, the client presenting `client`'s certificate (named client.test).
    async fn server_and_peer_presenting(client: TlsContext) -> (TlsIo, tokio_rustls::client::TlsStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = context("server.test");
        let config = client.client_config(&Domain::parse("client.test").unwrap());
        let peer = async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("server.test").unwrap();
            tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap()
        };
        let ours = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsIo::accept(tcp, server.server_config(&Domain::parse("server.test").unwrap())).await.unwrap()
        };
        tokio::join!(ours, peer)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[tokio::test]
    async fn large_transfers_cross_intact_both_ways() {
        let (mut ours, mut peer) = server_and_peer().await;
        assert!(ours.session().peer_certificates().is_some_and(|c| !c.is_empty()), "the client's certificate is known");
        // More than one write call (MAX_ENCRYPT) and many 16 KiB records each way, at once.
        let up = pattern(300 * 1024, 1);
        let down = pattern(200 * 1024 + 7, 2);
        let (u, d) = (up.clone(), down.clone());
        let peer_side = async move {
            let mut got = vec![0; d.len()];
            let (mut r, mut w) = tokio::io::split(&mut peer);
            let send = async {
                w.write_all(&u).await.unwrap();
                w.flush().await.unwrap();
            };
            let recv = async { r.read_exact(&mut got).await.unwrap() };
            tokio::join!(send, recv);
            got
        };
        let our_side = async {
            let mut got = vec![0; up.len()];
            let (mut r, mut w) = tokio::io::split(&mut ours);
            let send = async {
                w.write_all(&down).await.unwrap();
                w.flush().await.unwrap();
            };
            let recv = async { r.read_exact(&mut got).await.unwrap() };
            tokio::join!(send, recv);
            got
        };
        let (peer_got, ours_got) = tokio::join!(peer_side, our_side);
        assert!(peer_got == down, "the peer received what we sent");
        assert!(ours_got == up, "we received what the peer sent");
    }

    #[tokio::test]
    async fn an_idle_connection_gives_its_buffers_back_and_reads_on() {
        let (mut ours, mut peer) = server_and_peer().await;
        peer.write_all(b"<presence/>").await.unwrap();
        peer.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let n = ours.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"<presence/>");
        ours.write_all(b"<presence type='probe'/>").await.unwrap();
        ours.flush().await.unwrap();
        assert!(ours.incoming.capacity() > 0, "reading took a buffer");
        // Out of the size classes of what every stream keeps for life (crate::net::io_capacity).
        assert_eq!((ours.plain.capacity(), ours.outgoing.capacity()), (IO_BUFFER_MIN, IO_BUFFER_MIN));
        ours.trim();
        assert_eq!((ours.incoming.capacity(), ours.plain.capacity(), ours.outgoing.capacity()), (0, 0, 0));
        // Readiness without a buffer, then the next bytes as usual.
        peer.write_all(b"<message/>").await.unwrap();
        peer.flush().await.unwrap();
        std::future::poll_fn(|cx| ours.poll_readable(cx)).await.unwrap();
        let n = ours.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"<message/>");
        let mut got = [0u8; 24];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"<presence type='probe'/>");
    }

    /// A 40 KB client certificate grows the receive buffer to 64 KiB during the handshake;
    /// the established session keeps none of it (nor the written flight's buffer), and
    /// reads on as usual.
    #[tokio::test]
    async fn a_large_certificate_flight_leaves_no_large_buffer_behind() {
        let long = |c: char| format!("{}.test", c.to_string().repeat(10_000));
        let client = context_naming(vec!["client.test".into(), long('a'), long('b'), long('c'), long('d')]);
        let (mut ours, mut peer) = server_and_peer_presenting(client).await;
        let der = ours.session().peer_certificates().unwrap()[0].len();
        assert!(der > 40_000, "the peer presented its {der}-byte certificate");
        assert!(
            ours.incoming.capacity() <= ours.used + READ_CHUNK,
            "receive buffer after the handshake: {} bytes",
            ours.incoming.capacity()
        );
        assert_eq!(ours.outgoing.capacity(), 0, "the handshake's written flight is given back");
        peer.write_all(b"<presence/>").await.unwrap();
        peer.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let n = ours.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"<presence/>");
    }

    #[tokio::test]
    async fn close_notify_reads_as_the_end_both_ways() {
        let (mut ours, mut peer) = server_and_peer().await;
        ours.shutdown().await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(peer.read_to_end(&mut buf).await.unwrap(), 0, "our close_notify ends the peer's reading");
        peer.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(ours.read(&mut buf).await.unwrap(), 0, "the peer's close_notify ends ours");
    }

    #[tokio::test]
    async fn our_client_side_talks_to_a_buffered_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = context("server.test");
        let client = context("client.test");
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config(&Domain::parse("server.test").unwrap()));
        let peer = async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = vec![0; 40_000];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
            tls.flush().await.unwrap();
            tls
        };
        let ours = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("server.test").unwrap();
            let mut tls = TlsIo::connect(tcp, client.client_config(&Domain::parse("client.test").unwrap()), name).await.unwrap();
            let data = pattern(40_000, 9);
            tls.write_all(&data).await.unwrap();
            tls.flush().await.unwrap();
            let mut back = vec![0; data.len()];
            tls.read_exact(&mut back).await.unwrap();
            assert!(back == data, "the echo came back intact");
            tls
        };
        let (_peer, ours) = tokio::join!(peer, ours);
        assert_eq!(crate::net::tls::session_facts(ours.session()).0, "TLS 1.3");
    }

    /// Bytes that are not TLS end the handshake with an error, holding at most one record.
    #[tokio::test]
    async fn garbage_instead_of_a_handshake_fails_cleanly() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = context("server.test");
        let sender = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            // A handshake record header announcing 64 KiB, then filler.
            let _ = tcp.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).await;
            let _ = tcp.write_all(&vec![0x41; 128 * 1024]).await;
            tcp
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let r = TlsIo::accept(tcp, server.server_config(&Domain::parse("server.test").unwrap())).await;
        assert!(r.is_err(), "not a TLS handshake");
        drop(sender);
    }
}
