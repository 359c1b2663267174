#!/usr/bin/env bash
# Scenario 1, the manual's own example: an FTP server on the LAN host with a
# user and a shared folder; portrelay forwards TCP 21 and the server's passive
# port range, and the server advertises the WAN address in its PASV replies.
# From home, curl (a real FTP client) lists the folder, downloads a multi-MiB
# file whose hash must match, and uploads a file that must then exist, intact,
# on the LAN host.
#
# Server: pure-ftpd with a virtual user in a per-run PureDB (no system user is
# created, nothing under /etc is touched), chrooted to a per-run folder.

E2E_NEEDS=(pure-ftpd pure-pw curl perl)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

PASV_MIN=30000
PASV_MAX=30009

scenario() {
	local d=$E2E_TMP/ftp h=$E2E_TMP/home user=alice pass
	mkdir -p "$d/root/share/docs" "$d/root/upload" "$h"
	pass=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')

	# The shared folder, as the LAN host has it.
	printf 'Shared folder of the LAN host.\n' >"$d/root/share/readme.txt"
	printf 'minutes\n' >"$d/root/share/docs/minutes.txt"
	head -c $((6 * 1024 * 1024 + 12345)) /dev/urandom >"$d/root/share/big.bin"
	chmod -R a+rX "$d/root"
	chown 65534:65534 "$d/root/upload" # the virtual user's uid (nobody) may write here

	# The user's entry, as `pure-pw useradd USER -u 65534 -g 65534 -d ROOT` makes
	# it (chrooted to ROOT), but with a SHA-512 crypt hash: pure-pw's own argon2
	# costs seconds per login on a small machine.
	local salt hash
	salt=$(head -c 12 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 12)
	hash=$(perl -e 'print crypt($ARGV[0], "\$6\$$ARGV[1]\$")' "$pass" "$salt")
	# shellcheck disable=SC2016
	[[ $hash == '$6$'* ]] || fail "crypt(3) did not make a SHA-512 hash"
	printf '%s:%s:65534:65534::%s/./::::::::::::\n' "$user" "$hash" "$d/root" >"$d/passwd"
	pure-pw mkdb "$d/passwd.pdb" -f "$d/passwd"

	start_bg ftpd "$NS_LAN" "$d/ftpd.log" pure-ftpd \
		-l "puredb:$d/passwd.pdb" -S "$LAN_HOST,21" -E -A -H -c 50 -C 50 \
		-p "$PASV_MIN:$PASV_MAX" -P "$WAN_ROUTER" \
		-O "clf:$d/transfer.log" -g "$d/ftpd.pid"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" tcp "$LAN_HOST" 21 "$PID_ftpd"

	assert_relay_is_only_path 21

	start_portrelay "$(relay_globals)
forwards = (
  { name = \"ftp\"; protocol = \"tcp\"; external_port = 21;
    internal_ip = \"$LAN_HOST\"; internal_port = 21; },
  { name = \"ftp-passive\"; protocol = \"tcp\"; external_port = \"$PASV_MIN-$PASV_MAX\";
    internal_ip = \"$LAN_HOST\"; internal_port = \"$PASV_MIN-$PASV_MAX\"; }
);"

	local url=ftp://$WAN_ROUTER
	local -a ftp=(curl -sS --max-time 20 --user "$user:$pass")

	# 1. The listing of the shared folder, names and the big file's size.
	local names
	names=$(on_home "${ftp[@]}" --list-only "$url/share/" | tr -d '\r' | grep -Evx '\.\.?' | sort | tr '\n' ' ')
	assert_eq "big.bin docs readme.txt " "$names" "NLST of /share/"
	on_home "${ftp[@]}" "$url/share/" | tr -d '\r' >"$h/list.txt"
	assert_file_contains "$h/list.txt" " $((6 * 1024 * 1024 + 12345)) .* big\.bin$" "LIST of /share/ (size of big.bin)"
	assert_file_contains "$h/list.txt" "^d.* docs$" "LIST of /share/ (docs is a folder)"
	log "listing of /share/ from home: $names"

	# 2. Download with PASV, connecting to the address the server advertises:
	# it must be the WAN address, and the data must arrive intact.
	local t0 ms
	t0=$(now_ms)
	on_home "${ftp[@]}" -v --disable-epsv --no-ftp-skip-pasv-ip \
		-o "$h/big.bin" "$url/share/big.bin" 2>"$h/get.log"
	ms=$(($(now_ms) - t0))
	local wan_commas=${WAN_ROUTER//./,}
	assert_file_contains "$h/get.log" "227 Entering Passive Mode \($wan_commas," "PASV reply advertises the WAN address"
	assert_file_contains "$h/get.log" "Connecting to $WAN_ROUTER .* port 300[0-9][0-9]" "data connection to the WAN address"
	assert_eq "$(sha "$d/root/share/big.bin")" "$(sha "$h/big.bin")" "sha256 of big.bin downloaded over PASV"
	log "downloaded big.bin ($(stat -c %s "$h/big.bin") bytes, PASV to $(grep -Eo "port 300[0-9][0-9]" "$h/get.log" | tail -n1)) in $ms ms: sha256 matches"

	# The same with EPSV (curl's default) and a second passive port.
	on_home "${ftp[@]}" -o "$h/big2.bin" "$url/share/big.bin"
	assert_eq "$(sha "$d/root/share/big.bin")" "$(sha "$h/big2.bin")" "sha256 of big.bin downloaded over EPSV"
	on_home "${ftp[@]}" -o "$h/minutes.txt" "$url/share/docs/minutes.txt"
	assert_eq minutes "$(cat "$h/minutes.txt")" "docs/minutes.txt"

	# 3. Upload from home; the file then exists on the LAN host, intact.
	head -c $((3 * 1024 * 1024 + 777)) /dev/urandom >"$h/holiday.bin"
	t0=$(now_ms)
	on_home "${ftp[@]}" -T "$h/holiday.bin" "$url/upload/holiday.bin"
	ms=$(($(now_ms) - t0))
	[[ -f $d/root/upload/holiday.bin ]] || fail "the uploaded file is not on the LAN host"
	assert_eq "$(sha "$h/holiday.bin")" "$(sha "$d/root/upload/holiday.bin")" "sha256 of the uploaded file on the LAN host"
	assert_eq 65534 "$(stat -c %u "$d/root/upload/holiday.bin")" "owner of the uploaded file"
	names=$(on_home "${ftp[@]}" --list-only "$url/upload/" | tr -d '\r' | grep -Evx '\.\.?' | tr '\n' ' ')
	assert_eq "holiday.bin " "$names" "NLST of /upload/ after the upload"
	log "uploaded holiday.bin ($(stat -c %s "$h/holiday.bin") bytes) in $ms ms: on the LAN host, sha256 matches"

	# The server's transfer log saw the transfers coming from the relay's LAN address.
	assert_file_contains "$d/transfer.log" "^$LAN_ROUTER .*\"PUT [^\"]*/upload/holiday\.bin\" 200 $((3 * 1024 * 1024 + 777))" "server transfer log (upload)"
	assert_file_contains "$d/transfer.log" "^$LAN_ROUTER .*\"GET [^\"]*/share/big\.bin\" 200 $((6 * 1024 * 1024 + 12345))" "server transfer log (download)"

	stop_portrelay
	if on_home curl -sS --max-time 5 --user "$user:$pass" --list-only "$url/share/" >/dev/null 2>&1; then
		fail "FTP still reachable from home after portrelay stopped"
	fi
}

e2e_main
