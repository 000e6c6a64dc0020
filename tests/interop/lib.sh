# What the interop tests share (sourced): a network namespace of their own with loopback
# addresses, a work directory, packages from Debian, a local CA, a dnsmasq, and a cleanup
# that leaves nothing behind. Set `name` (the namespace and work dir), `label` (messages) and
# `logs` (files in the work dir shown on failure) before sourcing.

here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
ns=db${name}$$
work=$(mktemp -d "/tmp/drawbridge-$name.XXXXXX")
pids=()

say() { printf '\n== %s\n' "$*"; }
fail() {
  printf '\n%s FAILED: %s\n' "${label:-INTEROP}" "$*" >&2
  for f in "${logs[@]}"; do
    [ -f "$work/$f" ] && { printf -- '--- last lines of %s\n' "$f" >&2; tail -n 40 "$work/$f" >&2; }
  done
  exit 1
}
cleanup() {
  # Everything we started names the work dir on its command line.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "$work" 2>/dev/null || true
  for _ in $(seq 1 20); do pgrep -f "$work" >/dev/null || break; sleep 0.1; done
  pkill -9 -f "$work" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "/etc/netns/$ns"
  [ -n "${KEEP_INTEROP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }

[ "$(id -u)" = 0 ] || fail "run as root (network namespaces)"

# Install what is missing (by package name), without Recommends.
packages() {
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # The package may have started its own service; it must not hold anything we use.
  service prosody stop >/dev/null 2>&1 || true
  prosody_version=$(dpkg-query -W -f='${Version}' prosody 2>/dev/null || true)
}

build_drawbridge() {
  (cd "$repo" && cargo build --quiet)
  db="$repo/target/debug/drawbridge"
}

# The namespace, its loopback with these addresses, and its resolver (the first address).
namespace() {
  ip netns add "$ns"
  in_ns ip link set lo up
  local a
  for a in "$@"; do in_ns ip addr replace "$a/32" dev lo; done
  mkdir -p "/etc/netns/$ns"
  echo "nameserver $1" > "/etc/netns/$ns/resolv.conf"
  printf '127.0.0.1 localhost\n::1 localhost\n127.0.1.1 %s\n' "$(hostname)" > "/etc/netns/$ns/hosts"
}

# A local CA (ca.pem, ca.key; or PREFIX-ca.* with a second argument) in the work dir.
make_ca() {
  local cn=$1 prefix=${2:-}
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$cn" \
    -keyout "$work/${prefix}ca.key" -out "$work/${prefix}ca.pem" 2>/dev/null
}

# Leaf certificates from ca.pem: DOMAIN.crt/.key with SAN DNS:D, DNS:*.D.
make_leaves() {
  local d
  for d in "$@"; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$d" -keyout "$work/$d.key" -out "$work/$d.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:*.%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$d" "$d" > "$work/$d.ext"
    openssl x509 -req -in "$work/$d.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
      -extfile "$work/$d.ext" -out "$work/$d.crt" 2>/dev/null
  done
  chmod 644 "$work"/*.key
}

# dnsmasq on ADDRESS for .test with the records given (dnsmasq.conf lines), logging queries.
dnsmasq_on() {
  local addr=$1
  shift
  {
    printf 'no-resolv\nno-hosts\nlocal=/test/\nlisten-address=%s\nbind-interfaces\nlog-queries\n' "$addr"
    printf 'log-facility=%s/dnsmasq.log\npid-file=%s/dnsmasq.pid\n' "$work" "$work"
    printf '%s\n' "$@"
  } > "$work/dnsmasq.conf"
  in_ns dnsmasq --keep-in-foreground --conf-file="$work/dnsmasq.conf" >/dev/null 2>&1 &
  pids+=($!)
}

# Whether ADDRESS:PORT accepts a connection inside the namespace.
ready() { in_ns python3 -c "import socket,sys; socket.create_connection(('$1', $2), timeout=1)" 2>/dev/null; }

# Wait (bounded) until every ADDRESS:PORT given accepts connections.
wait_ready() {
  local i hp ok
  for i in $(seq 1 150); do
    ok=1
    for hp in "$@"; do ready "${hp%:*}" "${hp##*:}" || { ok=0; break; }; done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  fail "servers did not start ($*)"
}

# A Prosody federating over the namespace's DNS: NAME.cfg.lua for DOMAIN on ADDRESS (s2s
# 5269, c2s 5222), trusting the CAs in TRUST, dialback over required TLS, a debug log in
# NAME.log, its data in NAME-data; DOMAIN.crt/.key from make_leaves.
prosody_peer_config() {
  local name=$1 domain=$2 addr=$3 trust=$4
  mkdir -p "$work/$name-data"
  cat > "$work/$name.cfg.lua" <<CONF
pidfile = "$work/$name.pid"
data_path = "$work/$name-data"
run_as_root = true
interfaces = { "$addr" }
s2s_ports = { 5269 }
c2s_ports = { 5222 }
http_ports = { }
https_ports = { }
modules_enabled = { "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version"; "posix"; "admin_shell" }
authentication = "internal_plain"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = false
ssl = { cafile = "$trust" }
log = { debug = "$work/$name.log" }
unbound = { resolvconf = "/etc/netns/$ns/resolv.conf"; hoststxt = false; options = { ["local-zone:"] = "test. transparent" } }
VirtualHost "$domain"
  ssl = { certificate = "$work/$domain.crt"; key = "$work/$domain.key" }
CONF
}
