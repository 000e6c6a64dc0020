#!/usr/bin/env bash
# Builds the Debian package (.ci/build-deb) and checks it as dpkg sees it: the files at their
# Debian paths, the conffile, name and version, maintainer scripts that create the user and
# enable the unit without starting it; then unpacks it into a throw-away root (dpkg -x) and
# runs the packaged binary. Needs dpkg-deb (Debian has it) and systemd-sysusers.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "package: FAILED: $*" >&2
  exit 1
}

deb=$(.ci/build-deb | tail -n1)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -f "$deb" ] || fail ".ci/build-deb printed no package ($deb)"
[ "$(basename "$deb")" = "drawbridge_${version}_amd64.deb" ] || fail "named $(basename "$deb"), not drawbridge_${version}_amd64.deb"

# Contents: path and mode (dpkg-deb -c lists "MODE OWNER SIZE DATE TIME ./PATH").
contents=$(dpkg-deb -c "$deb" | awk '{ print $1, $6 }')
for entry in \
  "-rwxr-xr-x ./usr/bin/drawbridge" \
  "-rw-r--r-- ./etc/drawbridge/drawbridge.toml" \
  "-rw-r--r-- ./usr/lib/systemd/system/drawbridge.service" \
  "-rw-r--r-- ./usr/lib/sysusers.d/drawbridge.conf" \
  "-rw-r--r-- ./usr/share/man/man1/drawbridge.1.gz" \
  "-rw-r--r-- ./usr/share/bash-completion/completions/drawbridge" \
  "-rw-r--r-- ./usr/share/zsh/vendor-completions/_drawbridge" \
  "-rw-r--r-- ./usr/share/fish/vendor_completions.d/drawbridge.fish"; do
  grep -qxF -- "$entry" <<<"$contents" || fail "no \"$entry\" in dpkg-deb -c:"$'\n'"$contents"
done

# Control: name, version, the conffile, the user's dependency.
info=$(dpkg-deb -I "$deb")
grep -qx ' Package: drawbridge' <<<"$info" || fail "package name:"$'\n'"$info"
grep -qxF " Version: $version" <<<"$info" || fail "version is not $version:"$'\n'"$info"
grep -q ' conffiles' <<<"$info" || fail "no conffiles in the control archive"
[ "$(dpkg-deb -I "$deb" conffiles)" = "/etc/drawbridge/drawbridge.toml" ] || fail "conffiles: $(dpkg-deb -I "$deb" conffiles)"
grep -q '^ Depends:.*systemd-sysusers' <<<"$info" || fail "no dependency on systemd-sysusers"

# postinst: the user first, then the unit enabled; never started on a fresh install (only
# try-restart on upgrade, which leaves a stopped service stopped).
postinst=$(dpkg-deb -I "$deb" postinst)
users=$(grep -n 'systemd-sysusers' <<<"$postinst" | head -n1 | cut -d: -f1)
enable=$(grep -n 'deb-systemd-helper enable drawbridge.service' <<<"$postinst" | head -n1 | cut -d: -f1)
[ -n "$users" ] && [ -n "$enable" ] && [ "$users" -lt "$enable" ] || fail "postinst must run systemd-sysusers, then enable the unit:"$'\n'"$postinst"
if grep 'deb-systemd-invoke\|systemctl.* start\|systemctl.* restart' <<<"$postinst" | grep -qv 'deb-systemd-invoke try-restart'; then
  fail "postinst may start the service:"$'\n'"$postinst"
fi

# Unpacked into a throw-away root: the packaged binary runs and generates what it should.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg -x "$deb" "$root"
bin="$root/usr/bin/drawbridge"
[ "$("$bin" --version)" = "drawbridge $version" ] || fail "--version says $("$bin" --version)"
"$bin" completions bash >"$root/completion.bash"
[ -s "$root/completion.bash" ] && grep -q 'ctl' "$root/completion.bash" || fail "completions bash is empty or lacks ctl"
bash -n "$root/completion.bash" || fail "completions bash does not parse"
cmp -s "$root/completion.bash" "$root/usr/share/bash-completion/completions/drawbridge" || fail "the packaged bash completion is not the binary's"
zcat "$root/usr/share/man/man1/drawbridge.1.gz" | grep -q '^\.SH FILES' || fail "the man page has no FILES section"

# The packaged config loads. There is no validation command: ctl reads the config first
# (exit 2 and "drawbridge: config …" if it is bad), then fails to reach the socket (exit 1).
set +e
out=$("$bin" --config "$root/etc/drawbridge/drawbridge.toml" ctl --socket "$root/no.sock" status 2>&1)
rc=$?
set -e
[ "$rc" = 1 ] && grep -q 'cannot reach drawbridge' <<<"$out" || fail "the packaged config does not load (exit $rc): $out"

# The sysusers file creates the unit's user (in the throw-away root, not on this machine).
systemd-sysusers --root="$root" drawbridge.conf >/dev/null 2>&1 || fail "systemd-sysusers refused drawbridge.conf"
grep -q '^drawbridge:x:[0-9]*:[0-9]*:.*:/var/lib/drawbridge:' "$root/etc/passwd" || fail "no drawbridge user: $(cat "$root/etc/passwd")"

echo "package: ok: $deb"
