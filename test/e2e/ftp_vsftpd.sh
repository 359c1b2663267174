#!/usr/bin/env bash
# Scenario: the FTP helper in front of vsftpd, the same client matrix as
# ftp.sh (ftp_lib.sh). vsftpd runs standalone on the LAN host with a
# configuration this script writes: anonymous, a per-run folder, passive and
# active mode on, NO pasv_address and no passive port range. portrelay listens
# on port 21 alone, dual stack (external_address "::"), with `ftp = true` and
# its data listeners in a range of its own (ftp.data_ports), which the 227/229
# replies must use. vsftpd's log (every command, every transfer) shows the
# relay's LAN address as the client, only PASV and PORT (the relay turns the
# clients' EPSV and EPRT into those for an IPv4 server), and every PORT naming
# the relay's LAN address.
#
# Then what an FTP user expects of a session (ftp_lib.sh): ABOR during a
# download, through the relay exactly as directly from the router (426 then
# 226 at once, the data connection ended, the control connection still in
# use); 10 data channels in a row on one control connection; downloads resumed
# with REST (ftplib, curl -C -). vsftpd learns of an ABOR during a transfer
# only from the TCP urgent data (SIGURG; async_abor_enable=YES, off by default,
# without which it does not notice an ABOR until the transfer ends): this is
# the check that fails when the relay sends the urgent byte as plain data.
# vsftpd's log must show each aborted transfer and its "226 ABOR successful.".
#
# Debian's vsftpd conflicts with pure-ftpd: .ci/run unpacks the package
# (`apt-get download vsftpd`, `dpkg-deb -x`) into /opt/portrelay-test/vsftpd;
# VSFTPD_BIN names another binary. No system user is created and nothing under
# /etc is written: vsftpd's anonymous user ("ftp") is chrooted to its home
# directory, so vsftpd runs in a mount namespace of its own in which
# /etc/passwd is a per-run copy (bind-mounted) whose "ftp" user has the uid of
# nobody and the per-run folder as its home.

E2E_NEEDS=(curl lftp python3)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=ftp_lib.sh
source "$(dirname "$0")/ftp_lib.sh"

: "${VSFTPD_BIN:=/opt/portrelay-test/vsftpd/usr/sbin/vsftpd}"
export VSFTPD_BIN
[[ -x $VSFTPD_BIN ]] || skip "no vsftpd at $VSFTPD_BIN (.ci/run unpacks it there; or set VSFTPD_BIN)"

DATA_PORTS_FIRST=31000
DATA_PORTS_LAST=31099

scenario() {
	local d=$E2E_TMP/vsftpd
	topology_add_wan_ipv6
	topology_add_home_address
	FTP_ROOT=$d/root
	FTP_USER=anonymous
	FTP_PASS=e2e@example.test
	mkdir -p "$d/empty"
	ftp_prepare_files

	cat >"$d/vsftpd.conf" <<EOF
listen=YES
listen_ipv6=NO
listen_address=$LAN_HOST
listen_port=21
background=NO
anonymous_enable=YES
no_anon_password=YES
ftp_username=ftp
nopriv_user=nobody
local_enable=NO
write_enable=YES
anon_upload_enable=YES
anon_umask=022
pasv_enable=YES
port_enable=YES
connect_from_port_20=NO
secure_chroot_dir=$d/empty
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
tcp_wrappers=NO
ssl_enable=NO
syslog_enable=NO
xferlog_enable=YES
log_ftp_protocol=YES
vsftpd_log_file=$d/vsftpd.log
dirmessage_enable=NO
hide_ids=YES
max_clients=50
max_per_ip=50
idle_session_timeout=60
data_connection_timeout=30
ftpd_banner=vsftpd on the LAN host
async_abor_enable=YES
EOF
	grep -v '^ftp:' /etc/passwd >"$d/passwd"
	echo "ftp:x:65534:65534:anonymous FTP:$FTP_ROOT:/usr/sbin/nologin" >>"$d/passwd"
	chmod 644 "$d/passwd"
	# shellcheck disable=SC2016 # $1..$3 are the inner shell's
	start_bg ftpd "$NS_LAN" "$d/vsftpd.out.log" unshare --mount --propagation private \
		sh -c 'mount --bind "$1" /etc/passwd && exec "$2" "$3"' _ \
		"$d/passwd" "$VSFTPD_BIN" "$d/vsftpd.conf"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" tcp "$LAN_HOST" 21 "$PID_ftpd"

	assert_relay_is_only_path 21

	start_portrelay "$(relay_globals)
ftp = { data_ports = \"$DATA_PORTS_FIRST-$DATA_PORTS_LAST\"; data_timeout = 20.0; };
forwards = (
  { name = \"ftp\"; protocol = \"tcp\"; ftp = true; external_address = \"::\";
    external_port = 21; internal_ip = \"$LAN_HOST\"; internal_port = 21; }
);"

	ftp_run_matrix epsv
	ftp_abort pasv "$WAN_ROUTER"
	ftp_abort port "$WAN_ROUTER"
	ftp_abort epsv "$WAN6_ROUTER"
	ftp_rounds "$WAN_ROUTER"
	ftp_curl_resume "$WAN_ROUTER"

	# Every data listener of the relay, passive or active, took a port of its range.
	local ports bad
	ports=$(grep -Eo 'data listener on [^ ]+' "$RELAY_LOG" | grep -Eo '[0-9]+$')
	[[ -n $ports ]] || fail "no data listener in the relay's log"
	bad=$(awk -v a="$DATA_PORTS_FIRST" -v b="$DATA_PORTS_LAST" '$1 < a || $1 > b' <<<"$ports" | head -n3 | tr '\n' ' ')
	[[ -z $bad ]] || fail "data listeners outside ftp.data_ports $DATA_PORTS_FIRST-$DATA_PORTS_LAST: $bad"
	assert_file_contains "$RELAY_LOG" "ftp: passive data listener on $WAN_ROUTER:[0-9]+ for $LAN_HOST:[0-9]+" "passive listener on the WAN address (IPv4, dual-stack bind)"
	assert_file_contains "$RELAY_LOG" "ftp: passive data listener on \[?$WAN6_ROUTER\]?:[0-9]+ for $LAN_HOST:[0-9]+" "passive listener on the WAN address (IPv6)"
	assert_file_contains "$RELAY_LOG" "ftp: active data listener on $LAN_ROUTER:[0-9]+ for $HOME_HOST:[0-9]+" "active listener on the LAN address (IPv4 client)"
	assert_file_contains "$RELAY_LOG" "ftp: active data listener on $LAN_ROUTER:[0-9]+ for \[?$HOME6_HOST\]?:[0-9]+" "active listener on the LAN address (IPv6 client)"
	log "every data listener was in ftp.data_ports: $(sort -n <<<"$ports" | sed -n '1p;$p' | tr '\n' ' ')"

	stop_portrelay
	ftp_check_relay_totals 2 "$FTP_REFUSED_CMDS"

	# vsftpd's log: the relay's LAN address is the only client; it was asked for
	# PASV and PORT (never EPSV, EPRT, LPSV, LPRT: the relay translates or
	# refuses those), and every PORT named the relay's LAN address.
	# (The ABOR checks' controls, run directly from the router, come from the
	# same address: their downloads are counted in FTP_DOWNLOADS and FTP_ABORTS.)
	local v=$d/vsftpd.log n
	n=$(grep -Ec "OK DOWNLOAD: Client \"$LAN_ROUTER\", \"/share/big\.bin\", $FTP_BIG_SIZE bytes" "$v" || true)
	assert_eq "$FTP_DOWNLOADS" "$n" "downloads of big.bin in vsftpd's log from $LAN_ROUTER"
	# Each ABOR stopped its transfer (a failed download of huge.bin) and was
	# answered by the SIGURG handler ("226 ABOR successful."): vsftpd learnt of
	# it from the urgent data, during the transfer.
	n=$(grep -Ec "FAIL DOWNLOAD: Client \"$LAN_ROUTER\", \"/abort/huge\.bin\"" "$v" || true)
	assert_eq "$FTP_ABORTS" "$n" "aborted downloads of huge.bin in vsftpd's log"
	n=$(grep -Ec 'FTP response: Client "[^"]+", "226 ABOR successful\.' "$v" || true)
	assert_eq "$FTP_ABORTS" "$n" "'226 ABOR successful.' replies in vsftpd's log"
	n=$(grep -Ec "OK UPLOAD: Client \"$LAN_ROUTER\", \"/upload/[^\"]+\.bin\", $FTP_UP_SIZE bytes" "$v" || true)
	assert_eq "$FTP_UPLOADS" "$n" "uploads in vsftpd's log from $LAN_ROUTER"
	# (The checks before portrelay started only connected: CONNECT and 220 lines.)
	n=$(grep -E '(FTP command|OK [A-Z]+|FAIL [A-Z]+): Client "' "$v" | grep -Evc "Client \"$LAN_ROUTER\"" || true)
	assert_eq 0 "$n" "vsftpd commands and transfers from another client than the relay"
	n=$(grep -Eic 'FTP command: Client "[^"]+", "(EPSV|EPRT|LPSV|LPRT)' "$v" || true)
	assert_eq 0 "$n" "EPSV/EPRT/LPSV/LPRT commands that reached vsftpd"
	local pasv port
	pasv=$(grep -Ec 'FTP command: Client "[^"]+", "PASV"' "$v" || true)
	port=$(grep -Ec 'FTP command: Client "[^"]+", "PORT ' "$v" || true)
	((pasv > 0 && port > 0)) || fail "vsftpd saw $pasv PASV and $port PORT commands"
	n=$(grep -E 'FTP command: Client "[^"]+", "PORT ' "$v" | grep -Evc "\"PORT ${LAN_ROUTER//./,},[0-9]+,[0-9]+\"" || true)
	assert_eq 0 "$n" "PORT commands vsftpd saw that name another address than the relay's LAN address"
	log "vsftpd's log: $FTP_DOWNLOADS downloads, $FTP_UPLOADS uploads and $FTP_ABORTS aborted downloads (226 ABOR successful) from $LAN_ROUTER; $pasv PASV, $port PORT (all naming $LAN_ROUTER), no EPSV/EPRT"
	ftp_show_matrix
}

e2e_main
