#!/usr/bin/env bash
# Interop with a real Prosody (Debian's package), dialback over TLS in both directions:
#  (a) a client logged in to Prosody pings drawbridge.test over s2s
#      (Prosody originating, drawbridge receiving and calling back Prosody's authoritative role);
#  (b) `drawbridge ctl probe prosody.test` succeeds
#      (drawbridge originating, Prosody receiving and calling back drawbridge);
#  (c) blacklisting prosody.test closes its streams, and the client's ping now gets an error;
#  (d) unblocking restores federation both ways;
#  (e) with each side trusting the other's certificate, SASL EXTERNAL in both directions.
# Everything runs inside a network namespace of its own with a dnsmasq serving SRV records
# for both domains; nothing leaves it. Needs root (netns). Fails loudly when either fails.
set -euo pipefail

name=interop
logs=(drawbridge.log prosody.log dnsmasq.log)
source "$(dirname "$0")/lib.sh"
dns_ip=127.0.0.20 prosody_ip=127.0.0.21 db_ip=127.0.0.23

say "packages"
packages prosody dnsmasq openssl iproute2 python3
echo "prosody ${prosody_version:-?}, dnsmasq $(dnsmasq --version | head -1 | awk '{print $3}')"

say "build drawbridge"
build_drawbridge

say "network namespace $ns"
namespace $dns_ip $prosody_ip $db_ip

say "certificates (a local CA; leaf SAN DNS:D, DNS:*.D)"
cd "$work"
make_ca "drawbridge interop CA"
make_leaves prosody.test drawbridge.test
# An unrelated CA: trusting only it means trusting nobody here (the dialback phase).
make_ca "unrelated CA" other-
cp other-ca.pem prosody-trust.pem

say "DNS (dnsmasq on $dns_ip)"
dnsmasq_on $dns_ip \
  "host-record=prosody.test,$prosody_ip" \
  "host-record=drawbridge.test,$db_ip" \
  "srv-host=_xmpp-server._tcp.prosody.test,prosody.test,5269,0,5" \
  "srv-host=_xmpp-server._tcp.drawbridge.test,drawbridge.test,5269,0,5"

say "Prosody (prosody.test on $prosody_ip)"
prosody_peer_config prosody prosody.test $prosody_ip "$work/prosody-trust.pem"
prosodyctl --config "$work/prosody.cfg.lua" register alice prosody.test s3cret >/dev/null 2>&1 \
  || fail "prosodyctl register"
start_prosody() {
  in_ns setsid prosody --config "$work/prosody.cfg.lua" -F >/dev/null 2>&1 &
  pids+=($!)
}
start_prosody

say "drawbridge (drawbridge.test on $db_ip)"
cat > drawbridge.toml <<CONF
[server]
domains = ["drawbridge.test"]
listen = ["$db_ip:5269"]
data_dir = "$work/drawbridge-data"
[tls]
cert = "$work/drawbridge.test.crt"
key = "$work/drawbridge.test.key"
[dns]
nameservers = ["$dns_ip"]
[timeouts]
negotiation = "20s"
dialback = "15s"
probe = "20s"
[log]
level = "debug"
file = "$work/drawbridge.log"
CONF
start_drawbridge() {
  in_ns "$db" --config "$1" serve >>"$work/drawbridge.stderr" 2>&1 &
  pids+=($!)
}
start_drawbridge "$work/drawbridge.toml"

# Wait (bounded) until both servers accept connections.
wait_ready $prosody_ip:5222 $prosody_ip:5269 $db_ip:5269

say "(a) alice@prosody.test pings drawbridge.test (Prosody originating, drawbridge receiving)"
in_ns python3 "$here/c2s_ping.py" --host $prosody_ip --jid alice@prosody.test --password s3cret --ping drawbridge.test --timeout 40 \
  || fail "(a) ping from a Prosody client to drawbridge.test"

say "(b) drawbridge ctl probe prosody.test (drawbridge originating, Prosody receiving)"
in_ns "$db" --config "$work/drawbridge.toml" ctl probe prosody.test || fail "(b) drawbridge ctl probe prosody.test"

say "what each side saw"
in_ns "$db" --config "$work/drawbridge.toml" ctl connections
in_ns "$db" --config "$work/drawbridge.toml" ctl verifications
json=$(in_ns "$db" --config "$work/drawbridge.toml" ctl connections --json)
python3 - "$json" <<'PY' || fail "drawbridge's connection table does not show dialback-authenticated TLS streams both ways"
import json, sys
conns = json.loads(sys.argv[1])
def ok(direction):
    return any(c["direction"] == direction and c["tls"] and any(p["remote"] == "prosody.test" and p["status"] == "valid" and p["method"] == "dialback" for p in c["pairs"]) for c in conns)
assert ok("in"), "no inbound stream from prosody.test authenticated by dialback over TLS"
assert ok("out"), "no outbound stream to prosody.test authenticated by dialback over TLS"
print("drawbridge: inbound and outbound streams with prosody.test, TLS, dialback valid")
PY
grep -q "_xmpp-server._tcp.drawbridge.test" dnsmasq.log || fail "Prosody did not look up drawbridge.test's SRV record"
grep -q "_xmpp-server._tcp.prosody.test" dnsmasq.log || fail "drawbridge did not look up prosody.test's SRV record"
echo "DNS: both sides found each other through SRV records"
grep -qi "dialback" prosody.log && echo "prosody.log mentions dialback: $(grep -ci 'dialback' prosody.log) lines"

say "(c) blacklisting prosody.test closes its streams; a client ping from Prosody now fails"
out=$(in_ns "$db" --config "$work/drawbridge.toml" ctl blacklist prosody.test --reason "interop test") \
  || fail "ctl blacklist prosody.test"
echo "$out"
echo "$out" | grep -q "closed [1-9][0-9]* live stream" || fail "blacklisting prosody.test closed no live stream"
set +e
ping_out=$(in_ns python3 "$here/c2s_ping.py" --host $prosody_ip --jid alice@prosody.test --password s3cret --ping drawbridge.test --timeout 40)
rc=$?
set -e
echo "$ping_out"
# Exit 4 is an error reply (1 would be a failed login or an exception). Prosody 0.12 bounces
# what it queued for a stream the peer closed with a stream error as <remote-server-timeout/>
# and puts the peer's condition and text in the reply's text: drawbridge's refusal must be
# there (Prosody's own failures, e.g. remote-server-not-found for DNS, do not match).
[ $rc = 4 ] || fail "(c) expected the ping to be answered with an error while blacklisted (exit $rc)"
echo "$ping_out" | grep -qxF "ping drawbridge.test: error wait remote-server-timeout: Server-to-server connection failed: policy-violation (prosody.test is blacklisted: interop test)" \
  || fail "(c) the error reply does not carry drawbridge's policy-violation and its reason"
set +e
probe_out=$(in_ns "$db" --config "$work/drawbridge.toml" ctl probe prosody.test)
rc=$?
set -e
echo "$probe_out"
[ $rc != 0 ] && echo "$probe_out" | grep -q "policy-violation" || fail "(c) ctl probe prosody.test should fail with policy-violation while blacklisted"

say "(d) unblocking prosody.test restores federation"
in_ns "$db" --config "$work/drawbridge.toml" ctl unblock prosody.test || fail "ctl unblock prosody.test"
in_ns python3 "$here/c2s_ping.py" --host $prosody_ip --jid alice@prosody.test --password s3cret --ping drawbridge.test --timeout 40 \
  || fail "(d) ping from a Prosody client to drawbridge.test after unblocking"
in_ns "$db" --config "$work/drawbridge.toml" ctl probe prosody.test || fail "(d) ctl probe prosody.test after unblocking"
in_ns "$db" --config "$work/drawbridge.toml" ctl domain prosody.test > domain.txt || fail "ctl domain prosody.test"
sed -n 1,12p domain.txt

say "(e) certificates trusted both ways: SASL EXTERNAL in both directions"
# Prosody trusts our CA, we trust Prosody's (the same local CA); restart both.
cp ca.pem prosody-trust.pem
sed "s|^key = \"$work/drawbridge.test.key\"|&\nca_file = \"$work/ca.pem\"|" drawbridge.toml > drawbridge-trust.toml
grep -q ca_file drawbridge-trust.toml || fail "could not write drawbridge-trust.toml"
pkill -TERM -f "$work/drawbridge.toml" || true
pkill -TERM -f "$work/prosody.cfg.lua" || true
for i in $(seq 1 100); do
  pgrep -f "$work/drawbridge.toml" >/dev/null || pgrep -f "$work/prosody.cfg.lua" >/dev/null || break
  [ "$i" = 100 ] && fail "servers did not stop for the restart"
  sleep 0.1
done
start_prosody
start_drawbridge "$work/drawbridge-trust.toml"
wait_ready $prosody_ip:5222 $prosody_ip:5269 $db_ip:5269
in_ns python3 "$here/c2s_ping.py" --host $prosody_ip --jid alice@prosody.test --password s3cret --ping drawbridge.test --timeout 40 \
  || fail "(e) ping from a Prosody client to drawbridge.test with certificates"
in_ns "$db" --config "$work/drawbridge-trust.toml" ctl probe prosody.test || fail "(e) ctl probe prosody.test with certificates"
in_ns "$db" --config "$work/drawbridge-trust.toml" ctl connections
json=$(in_ns "$db" --config "$work/drawbridge-trust.toml" ctl connections --json)
python3 - "$json" <<'PY' || fail "(e) drawbridge's connection table does not show SASL EXTERNAL both ways"
import json, sys
conns = json.loads(sys.argv[1])
def ok(direction):
    return any(c["direction"] == direction and c["tls"] and (c["tls"].get("cert_verdict") or {}).get("verdict") == "valid"
               and any(p["remote"] == "prosody.test" and p["status"] == "valid" and p["method"] == "sasl-external" for p in c["pairs"]) for c in conns)
assert ok("in"), "no inbound stream from prosody.test authenticated by SASL EXTERNAL with a valid certificate"
assert ok("out"), "no outbound stream to prosody.test authenticated by SASL EXTERNAL with a valid certificate"
print("drawbridge: inbound and outbound streams with prosody.test, certificate valid, SASL EXTERNAL")
PY
grep -q "Accepting SASL EXTERNAL identity from drawbridge.test" prosody.log && echo "prosody.log: Accepting SASL EXTERNAL identity from drawbridge.test" \
  || fail "(e) Prosody's log does not show it accepted drawbridge.test by SASL EXTERNAL"

say "INTEROP OK: Prosody ${prosody_version:-} <-> drawbridge: dialback over TLS both ways; policy; SASL EXTERNAL both ways"
