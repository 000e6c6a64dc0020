#!/usr/bin/python3
"""The owner of an RTBL node for the interop test: a real client (Debian's python3-slixmpp,
its XEP-0060 plugin) logged in to Prosody, acting on a pubsub service the way xmppbl.org's
publisher does. Each action is done in turn and awaited; the script prints one line per
action and exits 0 when every action was answered with success, 1 otherwise.

Actions (as arguments, in order):
  create                  create the node (open access, the default)
  publish ID TEXT         publish an item with id ID (a domain) and an XEP-0377 report
  publish-strangers ID T  the same, with a <block-strangers/> recommendation
  retract ID              retract one item, with notify='true' (Prosody only notifies then)
  purge                   remove every item (subscribers get a <purge/> event)
  delete                  delete the node (subscribers get a <delete/> event)
"""
import argparse
import asyncio
import sys
import xml.etree.ElementTree as ET

from slixmpp import ClientXMPP

NS_REPORTING = "urn:xmpp:reporting:1"


def report(text, strangers=False):
    el = ET.Element(f"{{{NS_REPORTING}}}report", {"reason": "urn:xmpp:reporting:spam"})
    ET.SubElement(el, f"{{{NS_REPORTING}}}text").text = text
    if strangers:
        ET.SubElement(el, f"{{{NS_REPORTING}}}block-strangers")
    return el


def parse_actions(words):
    arity = {"create": 0, "publish": 2, "publish-strangers": 2, "retract": 1, "purge": 0, "delete": 0}
    out, i = [], 0
    while i < len(words):
        name = words[i]
        if name not in arity:
            raise SystemExit(f"unknown action {name!r}")
        n = arity[name]
        args = words[i + 1 : i + 1 + n]
        if len(args) != n:
            raise SystemExit(f"{name} needs {n} argument(s)")
        out.append((name, args))
        i += 1 + n
    return out


async def run(a, actions):
    x = ClientXMPP(a.jid, a.password)
    x.register_plugin("xep_0060")
    x.ca_certs = a.ca
    started = asyncio.get_event_loop().create_future()
    x.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    x.add_event_handler("failed_auth", lambda _: started.done() or started.set_exception(RuntimeError("login failed")))
    x.connect((a.host, a.port))
    await asyncio.wait_for(started, a.timeout)
    ps = x["xep_0060"]
    ok = True
    for name, args in actions:
        try:
            if name == "create":
                await ps.create_node(a.service, a.node, timeout=a.timeout)
            elif name in ("publish", "publish-strangers"):
                await ps.publish(a.service, a.node, id=args[0], payload=report(args[1], name == "publish-strangers"), timeout=a.timeout)
            elif name == "retract":
                await ps.retract(a.service, a.node, args[0], notify=True, timeout=a.timeout)
            elif name == "purge":
                await ps.purge(a.service, a.node, timeout=a.timeout)
            elif name == "delete":
                await ps.delete_node(a.service, a.node, timeout=a.timeout)
            print(f"pubsub {name} {' '.join(args)}: ok", flush=True)
        except Exception as e:  # an error reply or a timeout: reported, and the exit says so
            print(f"pubsub {name} {' '.join(args)}: FAILED {e!r}", flush=True)
            ok = False
            break
    x.disconnect()
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=5222)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--ca", required=True, help="the CA the server's certificate chains to")
    ap.add_argument("--service", required=True)
    ap.add_argument("--node", default="spam_source_domains")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("actions", nargs="*")
    a = ap.parse_args()
    actions = parse_actions(a.actions)
    ok = asyncio.get_event_loop().run_until_complete(run(a, actions))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
