#!/usr/bin/env bash
# Interop: drawbridge follows a real-time blocklist (RTBL, XEP-0060) published by Prosody's
# own pubsub component, over federation, the way it follows xmppbl.org:
#  (a) an item published before drawbridge starts is fetched, and the feed is subscribed;
#  (b) an item published while drawbridge follows arrives as an event (action "block": the
#      domain is now refused, the reason naming the feed);
#  (c) a retract lifts the listing;
#  (d) drawbridge stopped with kill -9, an item published meanwhile (Prosody never
#      redelivers it): after the restart the stored list is there at once and the re-sync
#      picks up what was missed;
#  (e) a purge clears the list, a delete marks the feed stale.
# The publisher is a real client (slixmpp's XEP-0060 plugin) of the node's owner. Everything
# runs inside a network namespace of its own with a dnsmasq; nothing leaves it. Needs root.
set -euo pipefail

name=rtbl
label="RTBL INTEROP"
logs=(drawbridge.log world.log dnsmasq.log)
source "$(dirname "$0")/lib.sh"
dns_ip=127.0.0.20 world_ip=127.0.0.21 db_ip=127.0.0.23
service=pubsub.world.test

say "packages"
# python3-slixmpp: the publishing client (run with Debian's python3).
packages prosody lua-unbound python3-slixmpp dnsmasq openssl iproute2 python3
echo "prosody ${prosody_version:-?}"

say "build drawbridge"
build_drawbridge

say "network namespace $ns"
namespace $dns_ip $world_ip $db_ip

say "certificates (a local CA; leaf SAN DNS:D, DNS:*.D)"
cd "$work"
make_ca "drawbridge rtbl interop CA"
make_leaves world.test home.test

say "DNS (dnsmasq on $dns_ip)"
dnsmasq_on $dns_ip \
  "host-record=world.test,$world_ip" \
  "host-record=home.test,$db_ip" \
  "srv-host=_xmpp-server._tcp.world.test,world.test,5269,0,5" \
  "srv-host=_xmpp-server._tcp.$service,world.test,5269,0,5" \
  "srv-host=_xmpp-server._tcp.home.test,home.test,5269,0,5"

say "Prosody (world.test and its pubsub component $service on $world_ip)"
prosody_peer_config world world.test $world_ip "$work/ca.pem"
cat >> "$work/world.cfg.lua" <<CONF
Component "$service" "pubsub"
  admins = { "owner@world.test" }
  ssl = { certificate = "$work/world.test.crt"; key = "$work/world.test.key" }
CONF
prosodyctl --config "$work/world.cfg.lua" register owner world.test s3cret >/dev/null 2>&1 || fail "prosodyctl register owner"
in_ns setsid prosody --config "$work/world.cfg.lua" -F >/dev/null 2>&1 &
pids+=($!)
wait_ready $world_ip:5222 $world_ip:5269

owner() {
  in_ns /usr/bin/python3 "$here/pubsub_owner.py" --host $world_ip --jid owner@world.test --password s3cret \
    --ca "$work/ca.pem" --service $service --timeout 30 "$@"
}

say "(a) the owner creates the node and lists spam1.test before drawbridge starts"
owner create publish spam1.test "first report" || fail "(a) publishing on Prosody's pubsub"

cat > drawbridge.toml <<CONF
[server]
domains = ["home.test"]
listen = ["$db_ip:5269"]
data_dir = "$work/drawbridge-data"
[tls]
cert = "$work/home.test.crt"
key = "$work/home.test.key"
ca_file = "$work/ca.pem"
[dns]
nameservers = ["$dns_ip"]
[timeouts]
negotiation = "20s"
dialback = "15s"
[log]
level = "debug"
file = "$work/drawbridge.log"
[[rtbl]]
service = "$service"
action = "block"
CONF
ctl() { in_ns "$db" --config "$work/drawbridge.toml" ctl "$@"; }
start_drawbridge() {
  in_ns "$db" --config "$work/drawbridge.toml" serve >>"$work/drawbridge.stderr" 2>&1 &
  pids+=($!)
  wait_ready $db_ip:5269
}
start_drawbridge

# Wait (bounded: 40 s) until the python condition $2 holds for `ctl $1 --json` (in `r`).
until_json() {
  local what=$1 cond=$2 i out
  shift 2
  for i in $(seq 1 200); do
    out=$(ctl "$@" --json 2>/dev/null || true)
    if [ -n "$out" ] && python3 -c "import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if ($cond) else 1)" "$out" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "last: $out"
  fail "$what"
}
listed() { until_json "$1 should be listed and refused" \
  "r['verdict'] == 'refuse' and any('$service' in m for m in r['marks']) and '$service' in (r.get('reason') or '')" explain "$1"; }
unlisted() { until_json "$1 should no longer be listed" \
  "r['verdict'] == 'allow' and not any('$service' in m for m in r['marks'])" explain "$1"; }
feed_state() { until_json "the feed should be $1" \
  "any(f['status']['state']['state'] == '$1' for f in r['feeds'])" rtbl; }

listed spam1.test
feed_state subscribed
ctl explain spam1.test
ctl rtbl

say "(b) an item published while drawbridge follows arrives as an event"
owner publish spam2.test "second report" || fail "(b) publish spam2.test"
listed spam2.test
grep -q "Discarding\|Sending error replies" world.log && echo "(note) world.log mentions discarded stanzas"

say "(c) a retract lifts the listing"
owner retract spam1.test || fail "(c) retract spam1.test"
unlisted spam1.test
listed spam2.test

say "(d) kill -9; an item published meanwhile is picked up by the re-sync after the restart"
pkill -9 -f "$work/drawbridge.toml serve" || fail "(d) drawbridge was not running"
for i in $(seq 1 50); do pgrep -f "$work/drawbridge.toml serve" >/dev/null || break; sleep 0.1; done
owner publish spam3.test "published while drawbridge was down" || fail "(d) publish spam3.test"
start_drawbridge
listed spam2.test
listed spam3.test
unlisted spam1.test
feed_state subscribed

say "(e) a purge clears the list; a delete marks the feed stale"
owner purge || fail "(e) purge"
unlisted spam2.test
unlisted spam3.test
owner delete || fail "(e) delete"
feed_state stale
ctl rtbl

say "RTBL INTEROP OK: Prosody ${prosody_version:-} pubsub -> drawbridge: fetch, subscribe, publish, retract, re-sync after kill -9, purge, delete"
