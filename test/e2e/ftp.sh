#!/usr/bin/env bash
# Scenario: the FTP helper in front of pure-ftpd. The server on the LAN host
# is configured as it would be without any router in mind: no advertised
# address (no -P), no passive port range (no -p), so its 227 names its LAN
# address and a port of its own choosing. portrelay forwards TCP 21 alone, with
# `ftp = true`, on the WAN address and on the router's IPv6 WAN address.
# From home, curl, lftp and Python's ftplib list, download (6 MiB, sha256) and
# upload (3 MiB, sha256 on the LAN host) in every data mode: PASV, EPSV, PORT,
# EPRT over IPv4, EPSV and EPRT over IPv6 (ftp_lib.sh). A data connection from
# a third address is turned away, on either side of the relay; commands the
# relay must refuse never reach the server. pure-ftpd's transfer log shows
# every transfer coming from the relay's LAN address. Then ABOR during a
# download (as directly from the router), 10 data channels in a row on one
# control connection, and downloads resumed with REST (ftp_lib.sh). pure-ftpd
# answers an ABOR during a transfer just as well when it comes without urgent
# data (a relay built to send the urgent byte as plain data passes here), so
# here that check is one of behaviour only; ftp_vsftpd.sh has the one that
# needs the urgent byte.
#
# Server: pure-ftpd with a virtual user in a per-run PureDB (no system user is
# created, nothing under /etc is touched), chrooted to a per-run folder.

E2E_NEEDS=(pure-ftpd pure-pw curl lftp perl python3)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=ftp_lib.sh
source "$(dirname "$0")/ftp_lib.sh"

scenario() {
	local d=$E2E_TMP/ftp
	topology_add_wan_ipv6
	topology_add_home_address
	FTP_ROOT=$d/root
	FTP_USER=alice
	FTP_PASS=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
	ftp_prepare_files

	# The user's entry, as `pure-pw useradd USER -u 65534 -g 65534 -d ROOT` makes
	# it (chrooted to ROOT), but with a SHA-512 crypt hash: pure-pw's own argon2
	# costs seconds per login on a small machine.
	local salt hash
	salt=$(head -c 12 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 12)
	hash=$(perl -e 'print crypt($ARGV[0], "\$6\$$ARGV[1]\$")' "$FTP_PASS" "$salt")
	# shellcheck disable=SC2016
	[[ $hash == '$6$'* ]] || fail "crypt(3) did not make a SHA-512 hash"
	printf '%s:%s:65534:65534::%s/./::::::::::::\n' "$FTP_USER" "$hash" "$FTP_ROOT" >"$d/passwd"
	pure-pw mkdb "$d/passwd.pdb" -f "$d/passwd"

	# No -P (advertised address) and no -p (passive range): the relay needs neither.
	start_bg ftpd "$NS_LAN" "$d/ftpd.log" pure-ftpd \
		-l "puredb:$d/passwd.pdb" -S "$LAN_HOST,21" -E -A -H -c 50 -C 50 \
		-O "clf:$d/transfer.log" -g "$d/ftpd.pid"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" tcp "$LAN_HOST" 21 "$PID_ftpd"

	assert_relay_is_only_path 21

	start_portrelay "$(relay_globals)
forwards = (
  { name = \"ftp\"; protocol = \"tcp\"; ftp = true; external_port = 21;
    internal_ip = \"$LAN_HOST\"; internal_port = 21; },
  { name = \"ftp6\"; protocol = \"tcp\"; ftp = true; external_address = \"$WAN6_ROUTER\";
    external_port = 21; internal_ip = \"$LAN_HOST\"; internal_port = 21; }
);"
	assert_file_contains "$RELAY_LOG" "ftp +tcp +$WAN_ROUTER:21 -> $LAN_HOST:21" "the relay's forward list"

	ftp_run_matrix pasv
	ftp_abort pasv "$WAN_ROUTER"
	ftp_abort port "$WAN_ROUTER"
	ftp_abort epsv "$WAN6_ROUTER"
	ftp_rounds "$WAN_ROUTER"
	ftp_curl_resume "$WAN_ROUTER"

	# The relay's debug log: the passive listeners were on the external address
	# the client used, the data connections closed normally.
	assert_file_contains "$RELAY_LOG" "ftp: passive data listener on $WAN_ROUTER:[0-9]+ for $LAN_HOST:[0-9]+" "passive listener on the WAN address (IPv4)"
	assert_file_contains "$RELAY_LOG" "ftp: passive data listener on \[?$WAN6_ROUTER\]?:[0-9]+ for $LAN_HOST:[0-9]+" "passive listener on the WAN address (IPv6)"
	assert_file_contains "$RELAY_LOG" "ftp active data closed" "an active data connection in the relay's log"
	assert_file_contains "$RELAY_LOG" "ftp passive data closed" "a passive data connection in the relay's log"

	stop_portrelay
	ftp_check_relay_totals 2 "$FTP_REFUSED_CMDS"

	# pure-ftpd's transfer log: every transfer, each from the relay's LAN address.
	local t=$d/transfer.log n
	n=$(grep -Ec "^$LAN_ROUTER .*\"GET [^\"]*/share/big\.bin\" 200 $FTP_BIG_SIZE" "$t" || true)
	assert_eq "$FTP_DOWNLOADS" "$n" "downloads of big.bin in pure-ftpd's transfer log from $LAN_ROUTER"
	n=$(grep -Ec "^$LAN_ROUTER .*\"PUT [^\"]*/upload/[^\"]+\.bin\" 200 $FTP_UP_SIZE" "$t" || true)
	assert_eq "$FTP_UPLOADS" "$n" "uploads in pure-ftpd's transfer log from $LAN_ROUTER"
	n=$(grep -Evc "^$LAN_ROUTER " "$t" || true)
	assert_eq 0 "$n" "transfer log lines from another address than the relay's"
	log "pure-ftpd's transfer log: $FTP_DOWNLOADS downloads and $FTP_UPLOADS uploads, all from $LAN_ROUTER"
	ftp_show_matrix

	if on_home curl -sS --max-time 5 --user "$FTP_USER:$FTP_PASS" --list-only "ftp://$WAN_ROUTER/share/" >/dev/null 2>&1; then
		fail "FTP still reachable from home after portrelay stopped"
	fi
}

e2e_main
