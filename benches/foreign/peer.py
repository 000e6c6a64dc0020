#!/usr/bin/python3
"""drawbridge as a foreign peer sees it: a load generator built on another XMPP and TLS stack.

The other benches (benches/ping.rs, benches/streams.rs) measure drawbridge against drawbridge
or against the test harness, both on rustls. This one is Python's asyncio with OpenSSL
(TLS 1.3, session tickets as OpenSSL issues them), its own XML handling and its own
dialback, so that figures and interop faults the shared stack would hide show up.

It starts a real `drawbridge serve` (DRAWBRIDGE_BIN, default target/release/drawbridge)
hosting a.bench, plays the remote servers p0.bench… itself — the initiating server on its
streams into drawbridge, and the receiving and authoritative server on the listener every
pN.bench resolves to (`[[dns.override]]`), where drawbridge's own streams arrive: their
STARTTLS, drawbridge's SASL EXTERNAL (its certificate verified against the CA made here),
the dialback callbacks (`db:verify`, answered with XEP-0185 keys) and the pongs.

Phases (argument; default `all`):
  ping     one verified stream (AUTH, default dialback), OUTSTANDING pings (default 5000)
           kept in flight for SECONDS (default 3): pings/s, drawbridge's CPU per ping round
           trip (/proc/PID/stat), then p50/p99 latency at half that rate.
  streams  for each K in STREAMS (default "500,3000"), a fresh drawbridge and K streams from
           K domains, each authenticated by AUTH (dialback: drawbridge calls the peer back;
           sasl: SASL EXTERNAL with one wildcard certificate, `*.peers.bench`): CPU per set-up, and
           VmRSS at K/6 and K streams once idle, giving the per-stream slope and the fixed
           growth (intercept) apart. Without AUTH both methods are measured.
  all      ping, then streams.

Every connection is to 127.0.0.x; every wait has a bound. LOG=debug keeps drawbridge's
debug log (its path is printed); HOLD_SECS=S keeps each drawbridge up S seconds after its
figures (streams idle; the peer does not read meanwhile). EXTRA_CONFIG adds TOML to
drawbridge's configuration (`\n` for new lines). Not a test: nothing here asserts a figure.
"""

import asyncio
import base64
import hashlib
import hmac
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_DB = "jabber:server:dialback"
NS_SERVER = "jabber:server"

HOST = "a.bench"
PEERS = "peers.bench"  # the peers are p0.peers.bench…, the ping's g.peers.bench
# Loopback addresses of their own, so drawbridge's per-address limits see the peer alone.
DB_IP, PEER_IP = "127.0.0.81", "127.0.0.82"
# drawbridge gives freed memory back on this tick (drawbridge::engine::RELEASE_INTERVAL).
RELEASE_INTERVAL = 10.0
STEP = 30.0  # bound on any one negotiation step
CLK_TCK = os.sysconf("SC_CLK_TCK")


def header(frm, to, sid=None):
    idattr = f" id='{sid}'" if sid else ""
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        f"version='1.0' from='{frm}' to='{to}'{idattr}>"
    ).encode()


def db_key(secret, receiving, originating, sid):
    """XEP-0185: HMAC-SHA256(SHA256(secret), receiving ' ' originating ' ' id), hex. Stateless,
    so the authoritative side answers any callback without remembering the streams."""
    k = hashlib.sha256(secret).hexdigest().encode()
    return hmac.new(k, f"{receiving} {originating} {sid}".encode(), hashlib.sha256).hexdigest()


class Scanner:
    """Splits a stream into its header and top-level elements, incrementally. Enough XML for
    negotiation (tags, quoted attributes, text, `<?…?>`); elements are parsed by ElementTree
    once complete, inside a wrapper that declares the stream's namespaces."""

    TAG = re.compile(rb"<(/?)([^\s/>]+)((?:[^>'\"]|'[^']*'|\"[^\"]*\")*?)(/?)>", re.S)
    PI = re.compile(rb"<\?.*?\?>", re.S)
    ATTR = re.compile(rb"([^\s=]+)\s*=\s*(['\"])(.*?)\2", re.S)
    WRAP = (b"<w xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
            b"xmlns:db='jabber:server:dialback'>")

    def __init__(self):
        self.buf = b""
        self.pos = 0  # where scanning resumes
        self.depth = 0
        self.start = 0  # where the open top-level element began

    def feed(self, data):
        """New bytes in; a list of ('open', attrs) / ('el', Element) / ('close', None) out."""
        self.buf += data
        out, pos, buf = [], self.pos, self.buf
        while True:
            i = buf.find(b"<", pos)
            if i < 0:
                pos = len(buf)
                break
            if buf.startswith(b"<?", i):
                m = self.PI.match(buf, i)
            else:
                m = self.TAG.match(buf, i)
            if not m:
                pos = i  # incomplete: wait for more
                break
            pos = m.end()
            if m.re is self.PI:
                continue
            closing, name, attrs, empty = m.groups()
            if self.depth == 0:
                if name == b"stream:stream":
                    if closing:
                        out.append(("close", None))
                    else:
                        out.append(("open", {k.decode(): v.decode() for k, _, v in self.ATTR.findall(attrs)}))
                elif empty:
                    out.append(("el", ET.fromstring(self.WRAP + buf[i:pos] + b"</w>")[0]))
                elif not closing:
                    self.depth, self.start = 1, i
            elif closing:
                self.depth -= 1
                if self.depth == 0:
                    out.append(("el", ET.fromstring(self.WRAP + buf[self.start:pos] + b"</w>")[0]))
            elif not empty:
                self.depth += 1
        # Keep the open element whole (or the incomplete tag); drop what is done.
        cut = self.start if self.depth else pos
        self.buf, self.pos, self.start = buf[cut:], pos - cut, self.start - cut if self.depth else 0
        return out


class Conn:
    """One TCP connection: the reader and writer, and a scanner that restarts with the stream."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.scan = Scanner()
        self.pending = []
        # Set by the ping phase: the bytes go to it unparsed (one reader per connection).
        self.raw = None

    async def next(self, timeout=STEP):
        """The next ('open'|'el'|'close', value); ('eof', None) when the connection ends."""
        async def more():
            while not self.pending:
                data = await self.r.read(262144)
                if not data:
                    return ("eof", None)
                if self.raw:
                    self.raw(self.scan.buf + data)
                    self.scan = Scanner()
                    continue
                self.pending.extend(self.scan.feed(data))
            return self.pending.pop(0)
        if self.pending:
            return self.pending.pop(0)
        return await asyncio.wait_for(more(), timeout)

    async def expect(self, kind, tag=None, timeout=STEP):
        """The next event, which must be `kind` (and the element `tag`, '{ns}name')."""
        while True:
            ev = await self.next(timeout)
            if ev[0] == "el" and ev[1].tag == f"{{{NS_STREAM}}}error":
                raise RuntimeError("stream error: " + " ".join(c.tag.split("}")[-1] for c in ev[1]))
            if ev[0] != kind or (tag and ev[1].tag != tag):
                raise RuntimeError(f"expected {kind} {tag or ''}, got {ev[0]} {getattr(ev[1], 'tag', ev[1])}")
            return ev[1]

    def send(self, data):
        self.w.write(data)

    async def starttls(self, ctx, server_hostname=None):
        """Switch to TLS in place; the scanner starts over with the new stream."""
        assert not self.pending and not self.scan.buf.strip(), "bytes after <proceed/>"
        await asyncio.wait_for(self.w.start_tls(ctx, server_hostname=server_hostname), STEP)
        self.scan = Scanner()

    def close(self):
        try:
            self.w.close()
        except Exception:
            pass


class Peer:
    """The remote servers p0.bench…: the listener drawbridge's streams arrive at, and the
    streams they open into drawbridge."""

    def __init__(self, certs, db_addr):
        self.db_addr = db_addr
        self.secret = os.urandom(32)
        # Outbound (initiating) side: verifies drawbridge's certificate as a.bench, presents
        # the wildcard certificate for SASL EXTERNAL.
        self.client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs["ca"])
        self.client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.client_ctx.load_cert_chain(certs["peer_crt"], certs["peer_key"])
        # Receiving side: requires drawbridge's client certificate, from the CA.
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.server_ctx.load_cert_chain(certs["peer_crt"], certs["peer_key"])
        self.server_ctx.load_verify_locations(certs["ca"])
        self.server_ctx.verify_mode = ssl.CERT_REQUIRED
        self.callbacks = 0  # db:verify answered
        self.bad_callbacks = 0
        self.incoming = {}  # domain → drawbridge's authenticated stream to it
        self.incoming_ready = {}  # domain → Event, set once that stream is authenticated
        self.on_pong = None
        self.faults = []  # what drawbridge did that the peer did not expect
        self.server = None
        self.conns = []

    async def listen(self):
        self.server = await asyncio.start_server(self.accept, PEER_IP, 0, backlog=1024)
        return self.server.sockets[0].getsockname()[1]

    def ready_event(self, domain):
        return self.incoming_ready.setdefault(domain, asyncio.Event())

    async def accept(self, reader, writer):
        """drawbridge → pN.bench: STARTTLS (required), SASL EXTERNAL, then callbacks and pongs."""
        c = Conn(reader, writer)
        self.conns.append(c)
        try:
            await self.serve_in(c)
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, RuntimeError, ValueError) as e:
            self.faults.append(f"inbound stream from drawbridge: {type(e).__name__}: {e}")
        finally:
            c.close()

    async def serve_in(self, c):
        h = await c.expect("open")
        domain = h.get("to", "")
        if h.get("from") != HOST or not domain.endswith("." + PEERS):
            raise RuntimeError(f"unexpected header {h}")
        c.send(header(domain, HOST, os.urandom(8).hex())
               + f"<stream:features><starttls xmlns='{NS_TLS}'><required/></starttls></stream:features>".encode())
        await c.expect("el", f"{{{NS_TLS}}}starttls")
        c.send(f"<proceed xmlns='{NS_TLS}'/>".encode())
        await c.w.drain()
        await c.starttls(self.server_ctx)
        await c.expect("open")
        sid = os.urandom(8).hex()
        c.send(header(domain, HOST, sid) + (
            f"<stream:features><mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
            "</stream:features>").encode())
        authed = False
        while True:
            kind, el = await c.next(timeout=None if authed else STEP)
            if kind in ("eof", "close"):
                return
            if kind == "open":
                # The restart after <success/>: nothing more to offer.
                c.send(header(domain, HOST, os.urandom(8).hex()) + b"<stream:features/>")
                authed = True
                self.incoming[domain] = c
                self.ready_event(domain).set()
                continue
            if el.tag == f"{{{NS_SASL}}}auth":
                self.sasl_in(c, el, domain)
            elif el.tag == f"{{{NS_DB}}}verify":
                self.answer_verify(c, el)
            elif el.tag == f"{{{NS_SERVER}}}iq" and el.get("type") in ("result", "error"):
                if self.on_pong:
                    self.on_pong([el.get("id", "")])
            elif el.tag == f"{{{NS_SERVER}}}iq" and el.get("type") == "get":
                c.send(f"<iq type='result' id='{el.get('id')}' from='{el.get('to')}' to='{el.get('from')}'/>".encode())
            else:
                self.faults.append(f"unexpected on drawbridge's stream to {domain}: {el.tag} {el.attrib}")

    def sasl_in(self, c, el, domain):
        """XEP-0178 as the receiving server: OpenSSL verified the chain; the certificate must
        name a.bench, and an authorization identity, if any, must be a.bench."""
        cert = c.w.get_extra_info("peercert") or {}
        names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
        text = (el.text or "").strip()
        authzid = "" if text in ("", "=") else base64.b64decode(text).decode()
        if el.get("mechanism") != "EXTERNAL" or HOST not in names or authzid not in ("", HOST):
            self.faults.append(f"SASL from drawbridge refused: {el.attrib} {text!r} names={names}")
            c.send(f"<failure xmlns='{NS_SASL}'><not-authorized/></failure>".encode())
            return
        c.send(f"<success xmlns='{NS_SASL}'/>".encode())
        c.scan = Scanner()  # the stream restarts

    def answer_verify(self, c, el):
        """XEP-0220 §2.3 as the authoritative server: the key is ours if it is the XEP-0185
        key of (receiving, originating, stream id)."""
        frm, to, sid = el.get("from"), el.get("to"), el.get("id")
        ok = hmac.compare_digest((el.text or "").strip(), db_key(self.secret, frm, to, sid))
        self.callbacks += 1
        if not ok:
            self.bad_callbacks += 1
        c.send(f"<db:verify from='{to}' to='{frm}' id='{sid}' type='{'valid' if ok else 'invalid'}'/>".encode())

    async def open_stream(self, domain, auth):
        """pN.bench → a.bench: STARTTLS, then SASL EXTERNAL or dialback (with drawbridge's
        callback to our listener). Returns the connection, verified."""
        r, w = await asyncio.wait_for(asyncio.open_connection(*self.db_addr), STEP)
        c = Conn(r, w)
        self.conns.append(c)
        c.send(header(domain, HOST))
        await c.expect("open")
        f = await c.expect("el", f"{{{NS_STREAM}}}features")
        if f.find(f"{{{NS_TLS}}}starttls") is None:
            raise RuntimeError("no STARTTLS offered")
        c.send(f"<starttls xmlns='{NS_TLS}'/>".encode())
        await c.expect("el", f"{{{NS_TLS}}}proceed")
        await c.starttls(self.client_ctx, server_hostname=HOST)
        c.send(header(domain, HOST))
        h = await c.expect("open")
        sid = h.get("id")
        f = await c.expect("el", f"{{{NS_STREAM}}}features")
        if auth == "sasl":
            mechs = [m.text for m in f.iter(f"{{{NS_SASL}}}mechanism")]
            if "EXTERNAL" not in mechs:
                raise RuntimeError(f"SASL EXTERNAL not offered to {domain} (mechanisms: {mechs})")
            c.send(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>".encode())
            await c.expect("el", f"{{{NS_SASL}}}success")
            c.scan = Scanner()
            c.send(header(domain, HOST))
            await c.expect("open")
            await c.expect("el", f"{{{NS_STREAM}}}features")
        else:
            if not sid:
                raise RuntimeError("no stream id for dialback")
            key = db_key(self.secret, HOST, domain, sid)
            c.send(f"<db:result from='{domain}' to='{HOST}'>{key}</db:result>".encode())
            el = await c.expect("el", f"{{{NS_DB}}}result")
            if el.get("type") != "valid":
                raise RuntimeError(f"dialback for {domain}: {el.attrib} {[x.tag for x in el]}")
        return c


# ---- the drawbridge under test ------------------------------------------------------------

def make_certs(d):
    """A CA, drawbridge's certificate (a.bench) and the peers' one wildcard certificate
    (`*.peers.bench`: what each of K real peers would carry, not one certificate naming K
    domains; drawbridge takes no wildcard right under a top-level label, so not `*.bench`).
    ECDSA P-256, as rcgen makes for the other benches."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, cn in (("a", HOST), ("peer", f"*.{PEERS}")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName=DNS:{cn}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    j = lambda n: os.path.join(d, n)
    return {"ca": j("ca.pem"), "a_crt": j("a.crt"), "a_key": j("a.key"), "peer_crt": j("peer.crt"), "peer_key": j("peer.key")}


def die_with_parent():
    """PR_SET_PDEATHSIG: a peer killed mid-run leaves no drawbridge behind."""
    import ctypes
    import signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Drawbridge:
    """A `drawbridge serve` process hosting a.bench; every pN.bench resolves to the peer."""

    def __init__(self, d, certs, domains, peer_port, auth, name):
        self.bin = os.environ.get("DRAWBRIDGE_BIN") or os.path.join(os.path.dirname(__file__), "../../target/release/drawbridge")
        self.dir = os.path.join(d, name)
        os.makedirs(self.dir)
        self.port = free_port(DB_IP)
        level = os.environ.get("LOG", "warn")
        # The CA is drawbridge's trust root only under SASL: under dialback the peers'
        # certificate must not authenticate them, so every stream takes the callback.
        ca = f"ca_file = \"{certs['ca']}\"\n" if auth == "sasl" else ""
        cfg = (f"[server]\ndomains = [\"{HOST}\"]\nlisten = [\"{DB_IP}:{self.port}\"]\ndata_dir = \"{self.dir}/data\"\n"
               f"[tls]\ncert = \"{certs['a_crt']}\"\nkey = \"{certs['a_key']}\"\n{ca}"
               f"[dns]\nnameservers = [\"127.0.0.1:9\"]\n[log]\nlevel = \"{level}\"\n")
        cfg += os.environ.get("EXTRA_CONFIG", "").replace("\\n", "\n") + "\n"
        cfg += "".join(f"[[dns.override]]\ndomain = \"{x}\"\nhost = \"{PEER_IP}\"\nport = {peer_port}\n" for x in domains)
        self.cfg = os.path.join(self.dir, "drawbridge.toml")
        with open(self.cfg, "w") as f:
            f.write(cfg)
        self.log = os.path.join(self.dir, "stderr.log")
        self.proc = subprocess.Popen([self.bin, "--config", self.cfg, "serve"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), preexec_fn=die_with_parent)
        self.pid = self.proc.pid

    async def ready(self):
        for _ in range(400):
            if self.proc.poll() is not None:
                raise RuntimeError(f"drawbridge exited: {self.tail()}")
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(DB_IP, self.port), 1)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.025)
        raise RuntimeError("drawbridge never listened")

    def cpu(self):
        """User + system CPU seconds, from /proc/PID/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            s = f.read()
        fields = s[s.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def tail(self, n=20):
        try:
            with open(self.log, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def ctl(db, *args):
    """`drawbridge ctl …` against the process under test (for a failure's diagnosis)."""
    try:
        return subprocess.run([db.bin, "--config", db.cfg, "ctl", *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)


async def with_drawbridge(d, certs, domains, auth, name, body):
    peer = None
    db = None
    try:
        # The peer first: drawbridge's config needs the port every pN.bench resolves to.
        peer = Peer(certs, None)
        port = await peer.listen()
        db = Drawbridge(d, certs, domains, port, auth, name)
        peer.db_addr = (DB_IP, db.port)
        await db.ready()
        return await body(db, peer)
    except BaseException:
        if db:
            print(f"--- drawbridge ({db.log}):\n{db.tail()}", file=sys.stderr)
            print(ctl(db, "verifications"), file=sys.stderr)
        raise
    finally:
        if peer:
            for f in peer.faults[:10]:
                print(f"  peer saw: {f}", file=sys.stderr)
            for c in peer.conns:
                c.close()
            peer.server.close()
        if db:
            db.stop()


# ---- phase 1: pings on one stream ---------------------------------------------------------

PINGER = "g." + PEERS
PING = "<iq type='get' id='{}' from='" + PINGER + "' to='a.bench'><ping xmlns='urn:xmpp:ping'/></iq>"
# A pong's id: the answers are scanned from the bytes (parsing each would make the peer the
# bottleneck). drawbridge writes attributes in single quotes; both are accepted.
PONG_ID = re.compile(rb"<iq\b[^>]*?\bid=['\"](\d+)['\"]")


async def ping_phase(d, certs):
    auth = os.environ.get("AUTH", "dialback")
    secs = float(os.environ.get("SECONDS", "3"))
    window = int(os.environ.get("OUTSTANDING", "5000"))

    async def body(db, peer):
        out = await peer.open_stream(PINGER, auth)
        # One ping first: under SASL drawbridge has no stream back until it has an answer to send.
        warm = asyncio.Event()
        peer.on_pong = lambda ids: warm.set()
        out.send(PING.format("warm").encode())
        await asyncio.wait_for(warm.wait(), STEP)
        peer.on_pong = None
        back = peer.incoming[PINGER]
        # drawbridge's stream back is now quiet until the pongs: read it raw from here on.
        state = {"got": 0, "times": None, "lat": [], "carry": b""}
        arrived = asyncio.Event()

        def on_bytes(data):
            """Counts whole pongs (and, while timing, matches their ids to send times)."""
            carry = state["carry"] + data
            cut = carry.rfind(b">") + 1
            chunk, state["carry"] = carry[:cut], carry[cut:]
            times = state["times"]
            if times is None:
                state["got"] += chunk.count(b"<iq ")
            else:
                now = time.perf_counter()
                ids = PONG_ID.findall(chunk)
                state["got"] += len(ids)
                lat = state["lat"]
                for i in ids:
                    t = times.pop(int(i), None)
                    if t is not None:
                        lat.append(now - t)
            if b"<stream:error" in chunk or b"</stream:stream>" in chunk or b"<db:" in chunk:
                peer.faults.append(f"unexpected on the pong stream: {chunk[-300:]!r}")
            arrived.set()

        back.raw = on_bytes
        sent = 0
        # Saturated: keep `window` pings in flight, written in batches.
        cpu0, got0, t0 = db.cpu(), state["got"], time.perf_counter()
        pcpu0 = time.process_time()
        while time.perf_counter() - t0 < secs:
            room = window - (sent - state["got"])
            if room < min(window // 4, 500) + 1:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), 10)
                except asyncio.TimeoutError:
                    raise RuntimeError(f"no pong for 10 s ({state['got']} of {sent})")
                continue
            out.send("".join(PING.format(i) for i in range(sent, sent + room)).encode())
            sent += room
            await out.w.drain()
        elapsed = time.perf_counter() - t0
        pongs = state["got"] - got0
        cpu = db.cpu() - cpu0
        pcpu = time.process_time() - pcpu0
        rate = pongs / elapsed
        print(f"ping, one {auth}-verified stream, {window} outstanding, {secs:g} s: {rate:,.0f} pings/s; "
              f"drawbridge CPU {cpu * 1e6 / max(pongs, 1):.2f} µs per ping round trip "
              f"(peer's own CPU {pcpu / elapsed * 100:.0f} % of a core)")
        # Every ping answered before the next phase (bounded: 10 s without progress).
        last, since = -1, time.monotonic()
        while state["got"] < sent and time.monotonic() - since < 10:
            if state["got"] != last:
                last, since = state["got"], time.monotonic()
            await asyncio.sleep(0.01)
        if state["got"] < sent:
            print(f"  LOST: {sent - state['got']} of {sent} pings never answered")
        else:
            print(f"  all {sent} pings answered")
        # Half that rate, paced against the clock; latency from write to pong.
        await asyncio.sleep(0.5)
        times = {}
        state["times"] = times
        half = rate / 2
        t1 = time.perf_counter()
        base = sent
        while (now := time.perf_counter()) - t1 < secs:
            due = base + int((now - t1) * half)
            if due > sent:
                for i in range(sent, due):
                    times[i] = now
                out.send("".join(PING.format(i) for i in range(sent, due)).encode())
                sent = due
            await asyncio.sleep(0.0005)
        await asyncio.sleep(0.5)
        lat = sorted(state["lat"])
        if lat:
            p = lambda q: lat[min(int(len(lat) * q), len(lat) - 1)] * 1e3
            print(f"  at half that rate ({half:,.0f} pings/s): latency p50 {p(0.5):.3f} ms, p99 {p(0.99):.3f} ms "
                  f"({len(lat)} pongs)")
        hold(db)
        return rate

    return await with_drawbridge(d, certs, [PINGER], auth, "ping", body)


# ---- phase 2: set-up CPU and idle memory --------------------------------------------------

async def settle(db):
    """VmRSS 3 s after the last handshake, and again once a release tick has surely passed
    (idle streams give their buffers back after 2 s quiet; the allocator's freed pages go
    back to the system only on drawbridge's release tick, every RELEASE_INTERVAL)."""
    await asyncio.sleep(3)
    early = db.rss_kib()
    await asyncio.sleep(RELEASE_INTERVAL)
    return early, db.rss_kib()


async def streams_phase(d, certs, k, auth):
    domains = [f"p{i}.{PEERS}" for i in range(k + 1)]  # p0 warms up
    k1 = max(k // 6, 1)

    async def body(db, peer):
        rss_start = db.rss_kib()
        await open_many(peer, domains[:1], auth)
        _, rss0 = await settle(db)
        cpu_setup, wall, rss, early = 0.0, 0.0, [], 0
        for lo, hi in ((1, k1 + 1), (k1 + 1, k + 1)):
            c0, t0 = db.cpu(), time.perf_counter()
            await open_many(peer, domains[lo:hi], auth)
            cpu_setup += db.cpu() - c0
            wall += time.perf_counter() - t0
            early, late = await settle(db)
            rss.append(late)
        if auth == "dialback" and peer.callbacks < k + 1:
            peer.faults.append(f"only {peer.callbacks} callbacks for {k + 1} dialback streams")
        alive = sum(1 for c in peer.conns if not c.w.is_closing())
        rss1, rss2 = rss
        slope = (rss2 - rss1) / (k - k1)
        fixed = (rss1 - rss0) - slope * k1
        what = "stream + its callback stream" if auth == "dialback" else "stream"
        print(f"streams, {auth}, fresh process, {k} streams from {k} domains ({wall:.1f} s of set-up; "
              f"{peer.callbacks} callbacks answered, {peer.bad_callbacks} keys wrong; {alive} peer sockets open):")
        print(f"  CPU per set-up ({what}, TLS, authentication): {cpu_setup * 1e3 / k:.2f} ms")
        print(f"  VmRSS: {rss_start} KiB at start, {rss0} after the warm-up stream, {rss1} at {k1} streams, {rss2} at {k}")
        print(f"  per idle verified {what}, (RSS at {k} − RSS before) / {k}: {(rss2 - rss0) / k:.1f} KiB "
              f"({(early - rss0) / k:.1f} KiB read 3 s after the last handshake, before a release tick surely passed)")
        print(f"  per-stream cost (slope {k1}→{k}): {slope:.1f} KiB; fixed growth (intercept): {fixed / 1024:.1f} MiB")
        hold(db)
        return {"k": k, "rss0": rss0, "rss2": rss2, "cpu": cpu_setup / k}

    return await with_drawbridge(d, certs, domains, auth, f"streams-{auth}-{k}", body)


def hold(db):
    """HOLD_SECS=S: keep drawbridge (and the streams) up S seconds after the figures, for a
    profiler or `drawbridge --config CONFIG ctl connections`."""
    secs = float(os.environ.get("HOLD_SECS", "0"))
    if secs > 0:
        print(f"  holding {secs:g} s: drawbridge pid {db.pid}, --config {db.cfg}", flush=True)
        time.sleep(secs)


async def open_many(peer, domains, auth):
    """Streams a few at a time (drawbridge allows 16 unauthenticated ones per address)."""
    sem = asyncio.Semaphore(8)
    failed = []

    async def one(dom):
        async with sem:
            try:
                await peer.open_stream(dom, auth)
                if auth == "dialback":
                    await asyncio.wait_for(peer.ready_event(dom).wait(), STEP)
            except Exception as e:
                failed.append(f"{dom}: {type(e).__name__}: {e}")

    await asyncio.wait_for(asyncio.gather(*(one(x) for x in domains)), 60 + len(domains) * 2)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(domains)} streams failed; first: {failed[0]}")


async def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what not in ("all", "ping", "streams"):
        sys.exit(__doc__)
    d = tempfile.mkdtemp(prefix="drawbridge-foreign-")
    try:
        certs = make_certs(d)
        print(f"peer: Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, TLS 1.3; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        if what in ("all", "ping"):
            await ping_phase(d, certs)
        if what in ("all", "streams"):
            auths = [os.environ["AUTH"]] if "AUTH" in os.environ else ["dialback", "sasl"]
            sizes = [int(x) for x in os.environ.get("STREAMS", "500,3000").split(",") if x.strip()]
            for auth in auths:
                runs = [await streams_phase(d, certs, k, auth) for k in sizes]
                if len(runs) >= 2:
                    a, b = runs[0], runs[-1]
                    slope = ((b["rss2"] - b["rss0"]) - (a["rss2"] - a["rss0"])) / (b["k"] - a["k"])
                    fixed = (a["rss2"] - a["rss0"]) - slope * a["k"]
                    print(f"streams, {auth}, across fresh processes {a['k']}→{b['k']}: per-stream cost {slope:.1f} KiB, "
                          f"fixed growth {fixed / 1024:.1f} MiB")
        print(f"load average now {os.getloadavg()[0]:.2f}")
    finally:
        if os.environ.get("LOG"):
            print(f"logs kept in {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
