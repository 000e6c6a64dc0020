//! One connection's I/O: the transport (plain TCP or TLS), the framer that owns the read
//! buffer, and an output buffer so several elements go out in one write (few TLS records).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

use crate::net::io_capacity;
use crate::net::tls_io::TlsIo;
use crate::proto::stream::StreamError;
use crate::table::ConnEntry;
use crate::xml::writer::{masked_key, write_top};
use crate::xml::{Element, Frame, Framer, XmlError};

/// Plain TCP before STARTTLS, TLS after.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: the session state is large beside a socket.
    Tls(Box<TlsIo>),
    /// Only while upgrading.
    Gone,
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// [`Transport::readable`], polled.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(tcp) => tcp.poll_read_ready(cx),
            Transport::Tls(tls) => tls.poll_readable(cx),
            Transport::Gone => Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "transport gone"))),
        }
    }

    /// Wait until a read would find bytes, without holding a buffer meanwhile. Over TLS,
    /// plaintext already decrypted counts as readable at once.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Transport::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Transport::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Transport::Gone => Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "transport gone"))),
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed by the peer")]
    Eof,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Xml(#[from] XmlError),
}

/// A connection: transport + framer + output buffer + the table entry it reports to.
pub struct Conn {
    pub io: Transport,
    pub framer: Framer,
    out: String,
    /// Bytes of `out` already written (a write in progress is resumed, never repeated).
    written: usize,
    /// The stanzas in `out` and where their bytes end, until all of `out` is written: one
    /// not yet handed to the transport when the stream ends was never sent, and its sender
    /// hears back ([`Conn::take_unsent`]) instead of losing it silently.
    /// Boxed and taken only while output waits: every stream's task carries the connection
    /// inline (memory per idle stream).
    #[allow(clippy::box_collection)]
    unsent: Option<Box<Vec<(usize, Element)>>>,
    /// Since when `out` has been waiting for the peer to read it.
    write_since: Option<Instant>,
    pub entry: Arc<ConnEntry>,
    /// `limits.max_stanza_size`: the element size limit once the stream authenticated (u32
    /// as `max_depth`: the task's size, see `unsent`).
    max_size: u32,
    /// Until then the smaller [`UNAUTHENTICATED_MAX_FRAME`] holds.
    authenticated: bool,
    max_depth: u32,
    /// `[timeouts] write`: longest a write may wait for the peer to read.
    write_timeout: Duration,
    /// The negotiation deadline while the stream is not authenticated: writes end there too.
    deadline: Option<Instant>,
    /// When bytes last arrived (whitespace keepalives included).
    pub last_read: Instant,
    /// Close requests end a blocked write at once.
    control: crate::table::StreamControl,
    /// Off while a stanza read from this stream waits for room in a link's queue: the
    /// socket is not read meanwhile, so TCP pushes back on the peer (writes go on).
    pub reading: bool,
}

const READ_CHUNK: usize = 2048;

/// The element size limit until a stream authenticates (or `limits.max_stanza_size` if
/// smaller): before, only negotiation elements of a few hundred bytes are legitimate, so
/// what an unauthenticated connection can make us buffer and parse stays what it was
/// before the stanza limit grew to Prosody's 512 KiB.
pub const UNAUTHENTICATED_MAX_FRAME: usize = 256 * 1024;

/// Output waiting for the peer beyond which a stream stops reading (what it reads may ask
/// for more writes: the peer cannot make us buffer without bound by not reading).
pub const OUT_HIGH_WATER: usize = 256 * 1024;

/// What moved in [`Conn::read_or_write`].
#[derive(Debug)]
pub enum Progress {
    Read(Result<usize, ConnError>),
    /// Everything queued was written (or writing failed).
    Written(io::Result<()>),
}

impl Conn {
    pub fn new(io: Transport, entry: Arc<ConnEntry>, limits: &crate::config::Limits, write_timeout: Duration) -> Conn {
        let mut framer = Framer::new(limits.max_stanza_size, limits.max_depth);
        framer.set_max_size(limits.max_stanza_size.min(UNAUTHENTICATED_MAX_FRAME), true);
        Conn {
            io,
            framer,
            out: String::new(),
            written: 0,
            unsent: None,
            write_since: None,
            max_size: u32::try_from(limits.max_stanza_size).unwrap_or(u32::MAX),
            authenticated: false,
            max_depth: u32::try_from(limits.max_depth).unwrap_or(u32::MAX),
            write_timeout,
            deadline: None,
            last_read: Instant::now(),
            control: entry.control(),
            entry,
            reading: true,
        }
    }

    /// Writes (and so the whole stream) end at `deadline` too: the negotiation deadline
    /// holds even while a peer that stopped reading keeps a write waiting.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// A stream restart (RFC 6120 §4.3.3): a fresh parser, nothing carried over.
    pub fn restart(&mut self) {
        self.framer = Framer::new(self.max_size as usize, self.max_depth as usize);
        if !self.authenticated {
            self.framer.set_max_size((self.max_size as usize).min(UNAUTHENTICATED_MAX_FRAME), true);
        }
    }

    /// The stream authenticated: elements up to `limits.max_stanza_size` (what our features
    /// advertise, XEP-0478) are taken from now on.
    pub fn authenticated(&mut self) {
        if !self.authenticated {
            self.authenticated = true;
            self.framer.set_max_size(self.max_size as usize, false);
        }
    }

    /// The next frame. Cancel-safe: bytes read stay in the framer's buffer.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            self.read_more().await?;
        }
    }

    /// The next complete frame among the bytes read, if any (recorded in the transcript).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, XmlError> {
        match self.framer.next_frame() {
            Ok(Some(f)) => {
                if self.entry.capturing() {
                    self.record_in(&f);
                }
                Ok(Some(f))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.entry.record("note", format!("unparseable input: {e}"), None);
                Err(e)
            }
        }
    }

    /// Read what the transport has (at least one byte). Cancel-safe.
    pub async fn read_more(&mut self) -> Result<usize, ConnError> {
        if self.framer.capacity() == 0 {
            // Trimmed while idle: take a buffer only once bytes are there.
            self.io.readable().await?;
        }
        let n = self.io.read_buf(self.framer.read_buf(READ_CHUNK)).await?;
        if n == 0 {
            return Err(ConnError::Eof);
        }
        self.last_read = Instant::now();
        self.entry.touch_in(n);
        Ok(n)
    }

    /// Room for `additional` more bytes of output, the buffer sized as
    /// [`crate::net::io_capacity`] says (what it grows to while an element is written
    /// doubles from there).
    fn reserve_out(&mut self, additional: usize) {
        let needed = self.out.len() + additional;
        if self.out.capacity() < needed {
            self.out.reserve_exact(io_capacity(needed) - self.out.len());
        }
    }

    /// Queue an element (written on the next [`Conn::flush`]).
    pub fn send(&mut self, el: &Element) {
        self.reserve_out(1);
        let start = self.out.len();
        write_top(&mut self.out, el);
        if self.entry.capturing() {
            let (text, key) = match masked_key(el) {
                Some((masked, key)) => (masked, Some(key)),
                None => (self.out[start..].to_owned(), None),
            };
            self.entry.record("out", text, key);
        }
    }

    /// Queue a stanza, kept until its bytes are written (see [`Conn::take_unsent`]).
    pub fn send_stanza(&mut self, st: Element) {
        self.send(&st);
        let end = self.out.len();
        self.unsent.get_or_insert_default().push((end, st));
    }

    /// The stanzas not (wholly) handed to the transport: after the stream ended, these were
    /// never sent — a part written without its end is no stanza to the peer. (Bytes the
    /// transport took but the peer never read cannot be told apart from delivered ones.)
    pub fn take_unsent(&mut self) -> Vec<Element> {
        let written = self.written;
        let unsent = self.unsent.take().map(|b| *b).unwrap_or_default();
        unsent.into_iter().filter(|(end, _)| *end > written).map(|(_, st)| st).collect()
    }

    pub fn send_raw(&mut self, s: &str) {
        self.reserve_out(s.len());
        self.out.push_str(s);
        if !s.trim().is_empty() && self.entry.capturing() {
            self.entry.record("out", s.trim_start_matches("<?xml version='1.0'?>").to_owned(), None);
        }
    }

    /// The transcript keeps what crossed the wire, not a re-serialisation (whose size a
    /// peer could inflate); dialback keys are masked.
    fn record_in(&self, f: &Frame) {
        let (text, key) = match f {
            Frame::Element(el) => match masked_key(el) {
                Some((masked, key)) => (masked, Some(key)),
                None => (self.framer.last_frame_text().to_owned(), None),
            },
            Frame::StreamOpen(_) => (self.framer.last_frame_text().to_owned(), None),
            Frame::StreamClose => ("</stream:stream>".to_owned(), None),
        };
        self.entry.record("in", text, key);
    }

    /// An idle connection gives its buffers back (read and write); they come back with the
    /// next bytes.
    pub fn trim(&mut self) {
        self.framer.trim();
        if let Transport::Tls(tls) = &mut self.io {
            tls.trim();
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = String::new();
        }
        if self.unsent.as_ref().is_some_and(|u| u.is_empty()) {
            self.unsent = None;
        }
    }

    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Output waiting for the peer, in bytes.
    pub fn pending_output(&self) -> usize {
        self.out.len() - self.written
    }

    /// Output is waiting: its `timeouts.write` runs from now (if not already running). Set
    /// before the deadline is read, so the first wait with output pending is bounded too.
    pub fn start_write_clock(&mut self) {
        if !self.out.is_empty() && self.write_since.is_none() {
            self.write_since = Some(Instant::now());
        }
    }

    /// When the output waiting now must have been written: `[timeouts] write` after it
    /// began waiting, or the negotiation deadline if earlier; and which of the two.
    pub fn write_deadline(&self) -> Option<(Instant, String)> {
        let since = self.write_since?;
        let mut at = (since + self.write_timeout, format!("the peer read nothing for {}s (timeouts.write)", self.write_timeout.as_secs()));
        if let Some(d) = self.deadline
            && d < at.0
        {
            at = (d, "stream not authenticated in time (timeouts.negotiation)".into());
        }
        Some(at)
    }

    fn written_all(&mut self, n: usize) {
        self.entry.touch_out(n);
        self.out.clear();
        self.written = 0;
        self.write_since = None;
        if self.out.capacity() > 64 * 1024 {
            self.out.shrink_to(4096);
        }
        if let Some(u) = &mut self.unsent {
            u.clear();
            if u.capacity() > 64 {
                self.unsent = None;
            }
        }
    }

    /// Drive both directions at once: write what is queued while waiting for bytes to read,
    /// so a peer slow to read never stops us reading it (nor the other way round). Returns
    /// when bytes arrived or everything queued was written. Cancel-safe: partial writes are
    /// remembered, bytes read stay in the framer. Reading pauses while more than
    /// [`OUT_HIGH_WATER`] bytes wait to be written (what we read may ask for more writes).
    pub async fn read_or_write(&mut self) -> Progress {
        self.start_write_clock();
        std::future::poll_fn(|cx| self.poll_progress(cx)).await
    }

    fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<Progress> {
        if !self.out.is_empty() {
            while self.written < self.out.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.out.as_bytes()[self.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Progress::Written(Err(io::Error::from(io::ErrorKind::WriteZero)))),
                    Poll::Ready(Ok(k)) => self.written += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Progress::Written(Err(e))),
                    Poll::Pending => break,
                }
            }
            if self.written == self.out.len() {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        let n = self.out.len();
                        self.written_all(n);
                        return Poll::Ready(Progress::Written(Ok(())));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Progress::Written(Err(e))),
                    Poll::Pending => {}
                }
            }
        }
        if self.pending_output() > OUT_HIGH_WATER || !self.reading {
            return Poll::Pending;
        }
        if self.framer.capacity() == 0 {
            // Trimmed while idle: take a buffer only once bytes are there.
            match self.io.poll_readable(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Progress::Read(Err(e.into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
        let buf = self.framer.read_buf(READ_CHUNK);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, buf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Progress::Read(Err(ConnError::Eof))),
            Poll::Ready(Ok(n)) => {
                self.last_read = Instant::now();
                self.entry.touch_in(n);
                Poll::Ready(Progress::Read(Ok(n)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Progress::Read(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Write everything queued in one go, within `[timeouts] write` (and the negotiation
    /// deadline, if set); an operator's close or a policy change ends the wait at once.
    pub async fn flush(&mut self) -> io::Result<()> {
        let mut control = self.control.clone();
        tokio::select! {
            r = self.write_out(self.write_timeout) => r,
            why = control.closed() => Err(io::Error::new(io::ErrorKind::Interrupted, format!("abandoned: {}", why.reason))),
        }
    }

    async fn write_out(&mut self, limit: Duration) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let n = self.out.len();
        let mut until = self.write_since.unwrap_or_else(Instant::now) + limit;
        let mut what = format!("the peer read nothing for {}s (timeouts.write)", limit.as_secs());
        if let Some(d) = self.deadline
            && d < until
        {
            until = d;
            what = "stream not authenticated in time (timeouts.negotiation)".into();
        }
        let write = async {
            while self.written < self.out.len() {
                let k = self.io.write(&self.out.as_bytes()[self.written..]).await?;
                if k == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                self.written += k;
            }
            self.io.flush().await
        };
        match tokio::time::timeout_at(until, write).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, what)),
        }
        self.written_all(n);
        Ok(())
    }

    /// Send `<stream:error/>` (if any) and `</stream:stream>`, then wait (bounded) for the
    /// peer's close and shut the TCP connection down (RFC 6120 §4.4).
    pub async fn close(&mut self, error: Option<&StreamError>, close_timeout: std::time::Duration, peer_closed: bool) {
        if let Some(e) = error {
            self.send(&e.to_element());
        }
        self.send_raw(crate::proto::stream::CLOSE);
        // Closing is not abandoned by a cancel (that is usually why we close), but bounded.
        if self.write_out(close_timeout).await.is_err() {
            return;
        }
        if !peer_closed {
            let wait = async {
                loop {
                    match self.read_frame().await {
                        Ok(Frame::StreamClose) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            };
            let _ = tokio::time::timeout(close_timeout, wait).await;
        }
        let _ = tokio::time::timeout(close_timeout, self.io.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Direction, bus};
    use crate::proto::ns;
    use crate::table::{ConnTable, TranscriptBudget};
    use crate::types::StreamKind;

    fn message(id: &str, body: usize) -> Element {
        Element::new("message", ns::SERVER)
            .attr("id", id)
            .attr("from", "a.test")
            .attr("to", "b.test")
            .child(Element::new("body", ns::SERVER).text("x".repeat(body)))
    }

    /// The output buffer is taken at [`crate::net::io_capacity`]'s sizes (never sized by
    /// the first element, among the classes of every stream's long-lived state) and given
    /// back by the idle trim.
    #[tokio::test]
    async fn output_takes_an_io_buffer_and_gives_it_back_when_idle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (_peer, _) = listener.accept().await.unwrap();
        let table = ConnTable::new(bus::channel(bus::Backlog::default()), (10, 1 << 20), TranscriptBudget::new(10, 1024, 4096));
        let entry = table.open(Direction::Out, &tokio_util::sync::CancellationToken::new(), StreamKind::Federation);
        let mut conn = Conn::new(Transport::Plain(tcp), entry, &crate::config::Limits::default(), Duration::from_secs(5));
        conn.send_raw(&"x".repeat(259));
        conn.send_stanza(message("first", 200));
        assert_eq!(conn.out.capacity(), crate::net::IO_BUFFER_MIN);
        conn.send_stanza(message("more", 600));
        assert_eq!(conn.out.capacity(), 2 * crate::net::IO_BUFFER_MIN, "grown by doubling");
        conn.flush().await.unwrap();
        conn.trim();
        assert_eq!(conn.out.capacity(), 0);
    }

    /// What a stream took to send but never handed to the transport comes back when its
    /// write fails — also a stanza written in part (no stanza to the peer); what was written
    /// does not (it may have been read).
    #[tokio::test]
    async fn stanzas_not_written_when_the_write_fails_come_back() {
        // A peer that never reads, with small buffers on both sides.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = sock.listen(1).unwrap();
        let ours = tokio::net::TcpSocket::new_v4().unwrap();
        ours.set_send_buffer_size(4096).unwrap();
        let tcp = ours.connect(listener.local_addr().unwrap()).await.unwrap();
        let (_peer, _) = listener.accept().await.unwrap();
        let table = ConnTable::new(bus::channel(bus::Backlog::default()), (10, 1 << 20), TranscriptBudget::new(10, 1024, 4096));
        let entry = table.open(Direction::Out, &tokio_util::sync::CancellationToken::new(), StreamKind::Federation);
        let limits = crate::config::Limits::default();
        let mut conn = Conn::new(Transport::Plain(tcp), entry, &limits, Duration::from_millis(300));
        conn.send_stanza(message("written", 10));
        conn.flush().await.unwrap();
        // Far more than the buffers between us and the peer take: written in part at most.
        conn.send_stanza(message("cut", 8 << 20));
        conn.send_raw(" ");
        conn.send_stanza(message("behind", 10));
        let e = conn.flush().await.expect_err("the peer reads nothing");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(conn.written > 0, "part of the large stanza went");
        let back: Vec<_> = conn.take_unsent().iter().map(|st| st.get_attr("id").unwrap().to_owned()).collect();
        assert_eq!(back, ["cut", "behind"]);
        assert!(conn.take_unsent().is_empty(), "handed back once");
    }
}
