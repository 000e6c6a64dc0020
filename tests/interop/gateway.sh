#!/usr/bin/env bash
# Gateway mode against real Prosody (Debian's package), twice over:
#   home.test  — a Prosody behind drawbridge (the internal server; user alice), its resolver
#                (libunbound) redirecting every .test name to drawbridge's gateway listener;
#   world.test — another Prosody out in the world (user bob), federating with drawbridge,
#                which the world's DNS gives as home.test's server.
#  (a) alice pings world.test and bob's client, bob pings home.test and alice's client
#      (internal → world → internal and world → internal → world, through drawbridge);
#  (b) drawbridge shows the internal link (pki: SASL EXTERNAL both ways with certificates its
#      gateway CA minted for world.test) and the internal server as reachable;
#  (c) a real external component (slixmpp, XEP-0114) on drawbridge answers pings to
#      comp.home.test from bob (the world) and from alice (through the internal server);
#  (d) blacklisting world.test in drawbridge cuts both directions, and alice's client is told
#      why (policy-violation with the reason);
#  (e) the same users reach each other with the internal link authenticated by dialback
#      (drawbridge and the internal Prosody restarted with gateway.auth = "dialback").
# Everything runs in a network namespace of its own; nothing leaves it. Needs root.
set -euo pipefail

name=gateway label="GATEWAY INTEROP"
logs=(drawbridge.log home.log world.log dnsmasq.log component.log)
source "$(dirname "$0")/lib.sh"
dns_ip=127.0.0.20 world_ip=127.0.0.21 home_ip=127.0.0.22 db_ip=127.0.0.23 gw_ip=127.0.0.24

say "packages"
# lua-unbound: the internal Prosody finds drawbridge through its own resolver (libunbound);
# python3-slixmpp: the external component (run with Debian's python3).
packages prosody lua-unbound python3-slixmpp dnsmasq openssl iproute2 python3
echo "prosody ${prosody_version:-?}"

say "build drawbridge"
build_drawbridge

say "network namespace $ns"
namespace $dns_ip $world_ip $home_ip $db_ip $gw_ip

say "certificates (a local CA for the servers' own certificates)"
cd "$work"
make_ca "gateway interop CA"
make_leaves world.test home.test

say "the world's DNS (dnsmasq on $dns_ip): home.test is drawbridge ($db_ip)"
dnsmasq_on $dns_ip \
  "host-record=world.test,$world_ip" \
  "host-record=home.test,$db_ip" \
  "srv-host=_xmpp-server._tcp.world.test,world.test,5269,0,5" \
  "srv-host=_xmpp-server._tcp.home.test,home.test,5269,0,5" \
  "srv-host=_xmpp-server._tcp.comp.home.test,home.test,5269,0,5"

say "drawbridge (home.test for the world on $db_ip; gateway listener $gw_ip; internal server $home_ip)"
cat > drawbridge.toml <<CONF
[server]
domains = ["home.test"]
listen = ["$db_ip:5269"]
data_dir = "$work/drawbridge-data"
[tls]
cert = "$work/home.test.crt"
key = "$work/home.test.key"
# world.test proves itself by its certificate from this CA.
ca_file = "$work/ca.pem"
[dns]
nameservers = ["$dns_ip"]
[timeouts]
negotiation = "20s"
dialback = "15s"
probe = "20s"
[log]
level = "debug"
file = "$work/drawbridge.log"
[gateway]
internal = "$home_ip:5269"
listen = ["$gw_ip:5269"]
auth = "pki"
# The internal server's certificate (home.test.crt) chains to this CA: its only trust anchor.
internal_ca = "$work/ca.pem"
# Every address of the namespace is on one loopback, so the internal Prosody's streams to
# $gw_ip leave from $gw_ip itself (the kernel's source for a local /32), not from $home_ip.
allow = ["$home_ip", "$gw_ip"]
[components]
listen = ["$db_ip:5347"]
[[component]]
domain = "comp.home.test"
secret = "interop component secret"
CONF
start_drawbridge() {
  in_ns "$db" --config "$1" serve >>"$work/drawbridge.stderr" 2>&1 &
  pids+=($!)
}
"$db" --config "$work/drawbridge.toml" gateway setup prosody > setup.lua || fail "drawbridge gateway setup prosody"
cat setup.lua
gw_ca="$work/drawbridge-data/gateway/ca.pem"
[ -f "$gw_ca" ] || fail "gateway setup did not create the gateway CA"
grep -q "cafile = \"$gw_ca\"" setup.lua || fail "gateway setup does not name the gateway CA"
start_drawbridge "$work/drawbridge.toml"

# The internal Prosody's configuration: what `gateway setup` printed (SETUP file), the .test
# redirect for libunbound (which answers the built-in test. zone itself under a "." redirect:
# see the setup's note), and MODULES.
home_config() {
  local setup=$1 modules=$2
  sed -e 's|\["local-zone:"\] = "\. redirect"|["local-zone:"] = "test. redirect"|' \
      -e 's|\["local-data:"\] = "\. 300 IN A |["local-data:"] = "test. 300 IN A |' "$setup" > "$work/setup-test.lua"
  grep -q '"test. 300 IN A '"$gw_ip"'"' "$work/setup-test.lua" || fail "unexpected gateway setup output"
  cat > "$work/home.cfg.lua" <<CONF
pidfile = "$work/home.pid"
data_path = "$work/home-data"
run_as_root = true
c2s_ports = { 5222 }
c2s_interfaces = { "$home_ip" }
http_ports = { }
https_ports = { }
modules_enabled = { $modules }
authentication = "internal_plain"
c2s_require_encryption = true
log = { debug = "$work/home.log" }
$(cat "$work/setup-test.lua")
VirtualHost "home.test"
  ssl = { certificate = "$work/home.test.crt"; key = "$work/home.test.key" }
CONF
}
start_home() {
  in_ns setsid prosody --config "$work/home.cfg.lua" -F >/dev/null 2>&1 &
  pids+=($!)
}

say "Prosody home.test (internal, $home_ip), configured with what gateway setup printed"
mkdir -p home-data
home_config "$work/setup.lua" '"roster"; "saslauth"; "tls"; "disco"; "ping"; "version"; "posix"'
prosodyctl --config "$work/home.cfg.lua" register alice home.test s3cret >/dev/null 2>&1 || fail "prosodyctl register alice"
start_home

say "Prosody world.test (the world, $world_ip)"
prosody_peer_config world world.test $world_ip "$work/ca.pem"
prosodyctl --config "$work/world.cfg.lua" register bob world.test s3cret >/dev/null 2>&1 || fail "prosodyctl register bob"
in_ns setsid prosody --config "$work/world.cfg.lua" -F >/dev/null 2>&1 &
pids+=($!)

wait_ready $home_ip:5222 $home_ip:5269 $world_ip:5222 $world_ip:5269 $db_ip:5269 $gw_ip:5269

client() { in_ns python3 "$here/c2s_ping.py" --password s3cret "$@"; }
# Start a client answering pings in the background; wait (bounded) until it is online.
online() {
  local jid=$1 host=$2 f="$work/${1%%@*}.ready"
  rm -f "$f"
  client --host "$host" --jid "$jid" --serve --timeout 120 --ready-file "$f" >>"$work/clients.log" 2>&1 &
  pids+=($!)
  for i in $(seq 1 100); do
    [ -f "$f" ] && return 0
    sleep 0.1
  done
  fail "$jid did not come online"
}

say "(a) both directions through drawbridge"
client --host $home_ip --jid alice@home.test --ping world.test --timeout 40 || fail "alice@home.test → world.test"
client --host $world_ip --jid bob@world.test --ping home.test --timeout 40 || fail "bob@world.test → home.test"
online bob@world.test $world_ip
online alice@home.test $home_ip
client --host $home_ip --jid alice@home.test --ping bob@world.test/interop --timeout 40 || fail "alice → bob's client"
client --host $world_ip --jid bob@world.test --ping alice@home.test/interop --timeout 40 || fail "bob → alice's client"

say "(b) what drawbridge saw"
in_ns "$db" --config "$work/drawbridge.toml" ctl status
in_ns "$db" --config "$work/drawbridge.toml" ctl connections
json=$(in_ns "$db" --config "$work/drawbridge.toml" ctl connections --json)
python3 - "$json" <<'PY' || fail "(b) drawbridge's connection table does not show the internal link"
import json, sys
conns = json.loads(sys.argv[1])
internal = [c for c in conns if c.get("kind") == "internal"]
def ok(direction, local, remote):
    return any(c["direction"] == direction and c["local"] == local and c["tls"]
               and any(p["remote"] == remote and p["status"] == "valid" and p["method"] == "sasl-external" for p in c["pairs"])
               for c in internal)
assert ok("out", "world.test", "home.test"), f"no internal stream to home.test as world.test by SASL EXTERNAL: {internal}"
assert ok("in", "world.test", "home.test"), f"no internal stream from home.test by SASL EXTERNAL: {internal}"
world = [c for c in conns if "kind" not in c]
assert any(c["remote"] == "world.test" for c in world), "no federation stream with world.test"
print("drawbridge: internal link both ways by SASL EXTERNAL; federation with world.test")
PY
status=$(in_ns "$db" --config "$work/drawbridge.toml" ctl status --json)
python3 - "$status" <<'PY' || fail "(b) ctl status does not show the internal server as reachable"
import json, sys
g = json.loads(sys.argv[1])["gateway"]
assert g["reachable"] is True, g
print(f"ctl status: internal server {g['internal']} reachable, auth {g['auth']}")
PY
[ -f "$work/drawbridge-data/gateway/minted/world.test.pem" ] || fail "(b) no certificate minted for world.test"
grep -q "Accepting SASL EXTERNAL identity from world.test" home.log \
  && echo "home.log: Accepting SASL EXTERNAL identity from world.test" \
  || fail "(b) the internal Prosody did not accept drawbridge as world.test by SASL EXTERNAL"

say "(c) a real component (slixmpp) answers pings from the world and from the internal server"
rm -f "$work/component.ready"
in_ns /usr/bin/python3 "$here/component.py" --domain comp.home.test --secret "interop component secret" --host $db_ip --port 5347 \
  --ready-file "$work/component.ready" --timeout 120 >>"$work/component.log" 2>&1 &
pids+=($!)
for i in $(seq 1 100); do
  [ -f "$work/component.ready" ] && break
  [ "$i" = 100 ] && { cat "$work/component.log"; fail "(c) the component did not connect"; }
  sleep 0.1
done
client --host $world_ip --jid bob@world.test --ping comp.home.test --timeout 40 || fail "(c) bob@world.test → comp.home.test"
client --host $home_ip --jid alice@home.test --ping comp.home.test --timeout 40 || fail "(c) alice@home.test → comp.home.test"
in_ns "$db" --config "$work/drawbridge.toml" ctl connections --json | python3 -c '
import json, sys
c = [s for s in json.load(sys.stdin) if s.get("kind") == "component"]
assert c and any(p["method"] == "component-handshake" for p in c[0]["pairs"]), c
print("drawbridge: the component stream, authenticated by its handshake")' || fail "(c) no component stream in drawbridge's table"

say "(d) blacklisting world.test in drawbridge cuts both directions"
in_ns "$db" --config "$work/drawbridge.toml" ctl blacklist world.test --reason "gateway interop" || fail "ctl blacklist world.test"
# A ping that must be answered with an error reply (exit 4; 1 would be a failed login or an
# exception) whose line is $2 (`ping JID: error TYPE CONDITION: TEXT`): output in $out.
ping_fails() {
  local what=$1 want=$2 rc
  shift 2
  set +e
  out=$(client "$@")
  rc=$?
  set -e
  echo "$out"
  [ $rc = 4 ] || fail "$what should be answered with an error (exit $rc)"
  echo "$out" | grep -qxF "$want" || fail "$what: the error reply is not: $want"
}
# Alice's server passes drawbridge's stanza error on as it is (policy-violation is of type
# modify, the type RFC 6120 §8.3.3.12 names first, as ejabberd gives it too); bob's (Prosody 0.12) bounces
# what it queued for a stream closed with a stream error as <remote-server-timeout/>, the
# peer's condition and text in its own text. Neither may be a failure of Prosody's own.
ping_fails "(d) alice's ping to bob" "ping bob@world.test/interop: error modify policy-violation: world.test is blacklisted: gateway interop" \
  --host $home_ip --jid alice@home.test --ping bob@world.test/interop --timeout 40
ping_fails "(d) bob's ping to alice while world.test is blacklisted" \
  "ping alice@home.test/interop: error wait remote-server-timeout: Server-to-server connection failed: policy-violation (world.test is blacklisted: gateway interop)" \
  --host $world_ip --jid bob@world.test --ping alice@home.test/interop --timeout 40

say "(e) the internal link by dialback (gateway.auth = \"dialback\"; nobody trusts anybody's certificate)"
in_ns "$db" --config "$work/drawbridge.toml" ctl unblock world.test || fail "ctl unblock world.test"
sed -e 's|^auth = "pki"|auth = "dialback"|' -e '/^ca_file = /d' -e '/^# world.test proves itself/d' -e '/^internal_ca = /d' -e '/^# The internal server.s certificate/d' drawbridge.toml > drawbridge-dialback.toml
grep -q '^auth = "dialback"' drawbridge-dialback.toml || fail "could not write drawbridge-dialback.toml"
"$db" --config "$work/drawbridge-dialback.toml" gateway setup prosody > setup-dialback.lua || fail "gateway setup prosody (dialback)"
grep -q "s2s_secure_auth = false" setup-dialback.lua && ! grep -q "modules_disabled" setup-dialback.lua \
  || fail "gateway setup for dialback should keep mod_dialback"
pkill -TERM -f "$work/drawbridge.toml" || true
pkill -TERM -f "$work/home.cfg.lua" || true
for i in $(seq 1 100); do
  pgrep -f "$work/drawbridge.toml" >/dev/null || pgrep -f "$work/home.cfg.lua" >/dev/null || break
  [ "$i" = 100 ] && fail "servers did not stop for the restart"
  sleep 0.1
done
start_drawbridge "$work/drawbridge-dialback.toml"
home_config "$work/setup-dialback.lua" '"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version"; "posix"'
start_home
wait_ready $home_ip:5222 $home_ip:5269 $db_ip:5269 $gw_ip:5269
online alice@home.test $home_ip
client --host $home_ip --jid alice@home.test --ping bob@world.test/interop --timeout 40 || fail "(e) alice → bob's client, dialback"
client --host $world_ip --jid bob@world.test --ping alice@home.test/interop --timeout 40 || fail "(e) bob → alice's client, dialback"
json=$(in_ns "$db" --config "$work/drawbridge-dialback.toml" ctl connections --json)
python3 - "$json" <<'PY' || fail "(e) drawbridge's table does not show the internal link by dialback both ways"
import json, sys
internal = [c for c in json.loads(sys.argv[1]) if c.get("kind") == "internal"]
def ok(direction):
    return any(c["direction"] == direction and c["local"] == "world.test"
               and any(p["remote"] == "home.test" and p["status"] == "valid" and p["method"] == "dialback" for p in c["pairs"])
               for c in internal)
assert ok("out") and ok("in"), internal
print("drawbridge: internal link both ways by dialback")
PY

say "GATEWAY INTEROP OK: Prosody ${prosody_version:-} behind drawbridge (pki and dialback): both directions, users both ways, a slixmpp component, policy both ways"
