#!/usr/bin/env bash
# Interop: two drawbridge nodes serving drawbridge.test on one PostgreSQL (issue 20), with a
# real Prosody (Debian's package) as the peer, dialback over TLS:
#  (a) a client logged in to Prosody pings drawbridge.test: Prosody reaches node 2 (the SRV
#      record names only node 2) and federation works as with one node;
#  (b) node 1 opens a stream to prosody.test: Prosody calls drawbridge.test back to verify
#      node 1's key, the callback lands on node 2, and node 2 confirms it (the dialback
#      secret is shared through PostgreSQL) — node 1's stream is authenticated;
#  (c) blacklisting prosody.test on node 2 closes node 1's streams with it (the policy is
#      shared, LISTEN/NOTIFY), and node 1 refuses it afterwards;
#  (d) unblocking on node 1 restores federation through node 2.
# Everything runs inside a network namespace of its own; PostgreSQL listens on a Unix socket
# in the work dir. Needs root (netns; PostgreSQL runs as its own user). Fails loudly.
set -euo pipefail

name=cluster
label="INTEROP (cluster)"
logs=(node1.log node2.log prosody.log dnsmasq.log pg/server.log)
source "$(dirname "$0")/lib.sh"
dns_ip=127.0.0.20 prosody_ip=127.0.0.21 node1_ip=127.0.0.23 node2_ip=127.0.0.24

say "packages"
packages prosody dnsmasq openssl iproute2 python3 postgresql
service postgresql stop >/dev/null 2>&1 || true
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
echo "prosody ${prosody_version:-?}, PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}')"

say "build drawbridge"
build_drawbridge

say "PostgreSQL (a cluster of its own in $work/pg, Unix socket only)"
chmod 711 "$work"
mkdir -p "$work/pg/run"
chown -R postgres "$work/pg"
chmod 700 "$work/pg"
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth-local=trust --auth-host=reject \
  --no-locale -E UTF8 --no-sync >/dev/null || fail "initdb"
printf "listen_addresses = ''\nunix_socket_directories = '%s'\nfsync = off\n" "$work/pg/run" >> "$work/pg/data/postgresql.conf"
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -t 30 start >/dev/null || fail "pg_ctl start"
stop_pg() { runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true; }
trap 'stop_pg; cleanup' EXIT
psql -h "$work/pg/run" -U postgres -q -c "CREATE ROLE drawbridge LOGIN" -c "CREATE DATABASE drawbridge OWNER drawbridge" \
  || fail "create the role and the database"
conninfo="host=$work/pg/run dbname=drawbridge user=drawbridge"

say "network namespace $ns"
namespace $dns_ip $prosody_ip $node1_ip $node2_ip

say "certificates (a local CA; Prosody trusts another one: dialback, not certificates)"
cd "$work"
make_ca "drawbridge interop CA"
make_leaves prosody.test drawbridge.test
make_ca "unrelated CA" other-
cp other-ca.pem prosody-trust.pem

say "DNS (dnsmasq on $dns_ip): drawbridge.test is node 2"
dnsmasq_on $dns_ip \
  "host-record=prosody.test,$prosody_ip" \
  "host-record=node2.drawbridge.test,$node2_ip" \
  "srv-host=_xmpp-server._tcp.prosody.test,prosody.test,5269,0,5" \
  "srv-host=_xmpp-server._tcp.drawbridge.test,node2.drawbridge.test,5269,0,5"

say "Prosody (prosody.test on $prosody_ip)"
prosody_peer_config prosody prosody.test $prosody_ip "$work/prosody-trust.pem"
prosodyctl --config "$work/prosody.cfg.lua" register alice prosody.test s3cret >/dev/null 2>&1 \
  || fail "prosodyctl register"
in_ns setsid prosody --config "$work/prosody.cfg.lua" -F >/dev/null 2>&1 &
pids+=($!)

say "drawbridge node1 on $node1_ip and node2 on $node2_ip, one PostgreSQL"
for n in 1 2; do
  ip_var=node${n}_ip
  cat > "node$n.toml" <<CONF
[server]
domains = ["drawbridge.test"]
listen = ["${!ip_var}:5269"]
data_dir = "$work/node$n-data"
[tls]
cert = "$work/drawbridge.test.crt"
key = "$work/drawbridge.test.key"
[dns]
nameservers = ["$dns_ip"]
[timeouts]
negotiation = "20s"
dialback = "15s"
probe = "5s"
[store]
backend = "postgres"
postgres = "$conninfo"
[cluster]
node = "node$n"
[log]
level = "debug"
file = "$work/node$n.log"
CONF
  in_ns "$db" --config "$work/node$n.toml" serve >>"$work/node$n.stderr" 2>&1 &
  pids+=($!)
done
wait_ready $prosody_ip:5222 $prosody_ip:5269 $node1_ip:5269 $node2_ip:5269
ctl() { local n=$1; shift; in_ns "$db" --config "$work/node$n.toml" ctl "$@"; }

say "(a) alice@prosody.test pings drawbridge.test (Prosody → node 2)"
in_ns python3 "$here/c2s_ping.py" --host $prosody_ip --jid alice@prosody.test --password s3cret --ping drawbridge.test --timeout 40 \
  || fail "(a) ping from a Prosody client to drawbridge.test"

say "(b) node 1 opens a stream to prosody.test; Prosody's callback lands on node 2"
# The probe's answer comes back on Prosody's stream to drawbridge.test, which reaches node 2
# (routing stays local to each node): node 1 sees no pong. What counts is that Prosody
# accepted node 1's stream, which it does only if node 2 confirmed node 1's key.
ctl 1 probe prosody.test || echo "(the pong went to node 2, as DNS says)"
json=$(ctl 1 connections --json)
json=$(python3 - "$json" <<'PY' || fail "(b) node 1's stream to prosody.test is not authenticated"
import json, sys
conns = json.loads(sys.argv[1])
out = [c for c in conns if c["direction"] == "out" and c["tls"] and any(p["remote"] == "prosody.test" and p["status"] == "valid" and p["method"] == "dialback" for p in c["pairs"])]
assert out, conns
print(out[0]["stream_id"])
PY
)
sid=$(echo "$json" | tail -1)
echo "node 1: its outbound stream to prosody.test (Prosody's stream id $sid) is authenticated (dialback valid)"
grep -q "_xmpp-server._tcp.drawbridge.test" dnsmasq.log || fail "Prosody did not look up drawbridge.test"
grep "authoritative answer to prosody.test about drawbridge.test (stream $sid)" node2.log | grep -q "valid" \
  || fail "(b) node 2's log does not show it confirmed node 1's key on stream $sid"
echo "node 2: $(grep -o "authoritative answer to prosody.test about drawbridge.test (stream $sid)[^(]*" node2.log | head -1)"

say "(c) blacklisting prosody.test on node 2 closes node 1's streams too"
ctl 2 blacklist prosody.test --reason "cluster interop" || fail "ctl blacklist on node 2"
for i in $(seq 1 50); do
  json=$(ctl 1 connections --json)
  python3 -c "import json,sys; c=json.loads(sys.argv[1]); sys.exit(0 if not any(p['remote']=='prosody.test' for s in c for p in s['pairs']) else 1)" "$json" && break
  [ "$i" = 50 ] && fail "(c) node 1 still has streams with prosody.test 5 s after the blacklist on node 2"
  sleep 0.1
done
echo "node 1 closed its streams with prosody.test"
grep -q "another node changed prosody.test" node1.log || fail "(c) node 1's log does not say another node changed prosody.test"
set +e
probe_out=$(ctl 1 probe prosody.test)
rc=$?
set -e
echo "$probe_out"
[ $rc != 0 ] && echo "$probe_out" | grep -q "policy-violation" || fail "(c) node 1 should refuse prosody.test (policy-violation)"

say "(d) unblocking on node 1 restores federation through node 2"
ctl 1 unblock prosody.test || fail "ctl unblock on node 1"
for i in $(seq 1 50); do
  ctl 2 domain prosody.test | head -1 | grep -q "allowed" && break
  [ "$i" = 50 ] && fail "(d) node 2 did not take the unblock made on node 1"
  sleep 0.1
done
in_ns python3 "$here/c2s_ping.py" --host $prosody_ip --jid alice@prosody.test --password s3cret --ping drawbridge.test --timeout 40 \
  || fail "(d) ping from a Prosody client to drawbridge.test after unblocking on node 1"
rows=$(psql -h "$work/pg/run" -U drawbridge -d drawbridge -At -c "SELECT node || ': ' || (record->>'action') FROM policy_log ORDER BY id")
echo "$rows"
echo "$rows" | grep -q "^node2: blacklist" && echo "$rows" | grep -q "^node1: unblock" || fail "(d) the policy log lacks a node's change"

say "INTEROP OK: Prosody ${prosody_version:-} <-> two drawbridge nodes on one PostgreSQL: shared dialback secret, shared policy"
