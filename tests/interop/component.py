#!/usr/bin/python3
"""A real external component (XEP-0114) for the interop test: slixmpp's ComponentXMPP,
connected to drawbridge's [components] listener, answering XEP-0199 pings to its domain
(slixmpp's xep_0199 plugin). It touches --ready-file once the handshake succeeded and runs
until --timeout. Debian's python3-slixmpp."""
import argparse
import asyncio
import sys

from slixmpp.componentxmpp import ComponentXMPP


class PingComponent(ComponentXMPP):
    def __init__(self, a):
        super().__init__(a.domain, a.secret, a.host, a.port)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.ready_file = a.ready_file
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("disconnected", lambda _: print("component: disconnected", flush=True))

    def on_start(self, _):
        print(f"component {self.boundjid}: connected", flush=True)
        if self.ready_file:
            open(self.ready_file, "w").close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5347)
    ap.add_argument("--ready-file")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    c = PingComponent(a)
    c.connect()
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.sleep(a.timeout))
    c.disconnect()


if __name__ == "__main__":
    sys.exit(main())
