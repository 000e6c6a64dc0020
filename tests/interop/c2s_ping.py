#!/usr/bin/env python3
"""A minimal XMPP client (RFC 6120 c2s, stdlib only) for the interop tests: log in to a
server (STARTTLS, SASL PLAIN, resource binding), then either send an XEP-0199 ping
to a JID (a remote domain, or a user's full JID) and print the round trip — exit 0 on a
pong, 4 on an error reply, printed as one line `ping JID: error TYPE CONDITION: TEXT` for
the scripts to check — or, with --serve, go online as user@domain/interop and answer pings
until --timeout (touching --ready-file once online). Exit 2 on a connection problem, 3 on
a timeout, 1 on anything else (a failed login, a refused STARTTLS, an exception): never
the code of an error reply."""
import argparse, base64, socket, ssl, sys, time, uuid
import xml.etree.ElementTree as ET

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"


class Stream:
    def __init__(self, sock, domain, deadline):
        self.sock, self.domain, self.deadline = sock, domain, deadline
        self.restart()

    def restart(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.queue = []
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' to='{self.domain}' version='1.0'>")

    def send(self, data):
        self.sock.sendall(data.encode())

    def next(self):
        """The next complete top-level element of the stream."""
        while not self.queue:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer in time")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.parser.feed(data)
            for ev, el in self.parser.read_events():
                if ev == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.queue.append(el)
        return self.queue.pop(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=5222)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--ping", help="JID to ping over federation (a domain or user@domain/resource)")
    ap.add_argument("--serve", action="store_true", help="go online as user@domain/interop and answer pings until --timeout")
    ap.add_argument("--ready-file", help="with --serve: created once online")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()
    if bool(a.ping) == a.serve:
        ap.error("give either --ping JID or --serve")
    user, domain = a.jid.split("@")
    deadline = time.monotonic() + a.timeout
    sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
    s = Stream(sock, domain, deadline)
    feats = s.next()
    if feats.find(f"{{{NS_TLS}}}starttls") is None:
        sys.exit("server does not offer STARTTLS")
    s.send(f"<starttls xmlns='{NS_TLS}'/>")
    if s.next().tag != f"{{{NS_TLS}}}proceed":
        sys.exit("STARTTLS refused")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.sock = ctx.wrap_socket(sock, server_hostname=domain)
    s.restart()
    s.next()  # features with SASL mechanisms
    token = base64.b64encode(f"\0{user}\0{a.password}".encode()).decode()
    s.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
    if s.next().tag != f"{{{NS_SASL}}}success":
        sys.exit("login failed")
    s.restart()
    s.next()  # features with bind
    # The serving client is user@domain/interop; a pinging one takes a resource of its own
    # (the same one would replace the serving client's session).
    resource = "interop" if a.serve else "ping-" + uuid.uuid4().hex[:8]
    s.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>")
    while True:
        el = s.next()
        if el.get("id") == "bind1":
            break
    if el.get("type") != "result":
        sys.exit("resource binding failed")
    if a.serve:
        return serve(s, a)
    pid = "ping-" + uuid.uuid4().hex
    t0 = time.monotonic()
    s.send(f"<iq type='get' id='{pid}' to='{a.ping}'><ping xmlns='urn:xmpp:ping'/></iq>")
    while True:
        el = s.next()
        if el.get("id") == pid:
            break
    rtt = (time.monotonic() - t0) * 1000
    if el.get("type") != "result":
        err = el.find(f"{{{NS_CLIENT}}}error")
        cond = [c.tag.split("}")[1] for c in (err if err is not None else []) if not c.tag.endswith("}text")]
        text = err.findtext("{urn:ietf:params:xml:ns:xmpp-stanzas}text") if err is not None else None
        etype = err.get("type", "?") if err is not None else "?"
        print(f"ping {a.ping}: error {etype} {cond[0] if cond else '?'}: {text or ''}")
        sys.exit(4)
    print(f"ping {a.ping} from {a.jid}: pong in {rtt:.1f} ms")
    s.send("</stream:stream>")


def serve(s, a):
    """Online (presence), answering XEP-0199 pings until the deadline."""
    s.send("<presence/>")
    if a.ready_file:
        open(a.ready_file, "w").close()
    answered = 0
    while True:
        try:
            el = s.next()
        except TimeoutError:
            print(f"{a.jid}: answered {answered} pings")
            s.send("</stream:stream>")
            return
        if el.tag == f"{{{NS_CLIENT}}}iq" and el.get("type") == "get" and el.find("{urn:xmpp:ping}ping") is not None:
            frm, iid = el.get("from", ""), el.get("id", "")
            s.send(f"<iq type='result' to='{xml_attr(frm)}' id='{xml_attr(iid)}'/>")
            answered += 1
            print(f"{a.jid}: ping from {frm} answered", flush=True)


def xml_attr(v):
    return v.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


if __name__ == "__main__":
    try:
        main()
    except TimeoutError as e:
        print(f"c2s_ping: {e}", file=sys.stderr)
        sys.exit(3)
    except (OSError, ConnectionError, ET.ParseError) as e:
        print(f"c2s_ping: {e}", file=sys.stderr)
        sys.exit(2)
