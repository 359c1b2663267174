#!/bin/sh
# check_install.sh BUILD_DIR - `meson install --destdir` into a temporary
# directory, then checks that the binary, the systemd unit, the man pages and
# the example configuration are in place, that the unit names the installed
# binary and configuration, and (where systemd-analyze exists) that systemd
# accepts the unit. Exit 77 (skip) without scdoc, as the man pages are then
# not built.
set -eu
build=$1
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

meson install -C "$build" --destdir "$stage" --no-rebuild --quiet >/dev/null

fail() { echo "FAIL: $*" >&2; find "$stage" -type f | sed "s|^$stage||" >&2; exit 1; }
one() {   # the single file under the stage whose path ends with $1
	found=$(find "$stage" -path "*$1" -type f)
	[ -n "$found" ] || fail "nothing installed as */$1"
	[ "$(printf '%s\n' "$found" | wc -l)" -eq 1 ] || fail "more than one */$1"
	printf '%s\n' "$found"
}

bin=$(one bin/portrelay)
[ -x "$bin" ] || fail "$bin is not executable"
conf=$(one etc/portrelay.conf)
unit=$(one systemd/system/portrelay.service)
"$bin" --version >/dev/null || fail "the installed binary does not run"
"$bin" -c "$conf" --check >/dev/null || fail "the installed example configuration is not valid"

# The unit names the installed paths (without the stage prefix).
grep -qx "ExecStart=${bin#"$stage"} -c ${conf#"$stage"}" "$unit" || fail "ExecStart in $unit"
grep -qx 'Type=notify' "$unit" || fail "Type= in $unit"
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' "$unit" || fail "ExecReload= in $unit"
for key in DynamicUser=yes AmbientCapabilities=CAP_NET_BIND_SERVICE ProtectSystem=strict \
	   'SystemCallFilter=@system-service' NoNewPrivileges=yes; do
	grep -qx "$key" "$unit" || fail "$key missing in $unit"
done

if ! command -v scdoc >/dev/null 2>&1; then
	echo "scdoc not found: man pages not built; skipping the rest"
	exit 77
fi
man8=$(one man8/portrelay.8)
man5=$(one man5/portrelay.conf.5)
grep -q '^\.TH "portrelay" "8"' "$man8" || fail "$man8 is no man page"
grep -q 'shutdown_timeout' "$man5" || fail "$man5 does not document shutdown_timeout"

if command -v systemd-analyze >/dev/null 2>&1; then
	# systemd checks ExecStart's binary and the Documentation= man pages:
	# point both at the stage.
	verify=$stage/verify/portrelay.service
	mkdir -p "$(dirname "$verify")"
	sed -e "s|^ExecStart=|ExecStart=$stage|" -e "s| -c | -c $stage|" "$unit" >"$verify"
	MANPATH=$(dirname "$(dirname "$man8")") systemd-analyze verify "$verify" ||
		fail "systemd-analyze verify rejects the unit"
fi
echo "installed: $(find "$stage" -type f | sed "s|^$stage||" | sort | tr '\n' ' ')"
