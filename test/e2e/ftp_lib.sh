# shellcheck shell=bash
# Shared part of the FTP helper scenarios (ftp.sh: pure-ftpd, ftp_vsftpd.sh:
# vsftpd): the server's files, the client matrix (curl, lftp, Python's ftplib
# in every data mode), the third-address checks and the relay's totals.
# Sourced after lib.sh. The server scenario sets, before calling these:
#   FTP_ROOT  the folder the FTP user sees as / (on the LAN host's side)
#   FTP_USER, FTP_PASS  the login
# The server's own data-port settings advertise nothing: no address of the
# router's, no forwarded passive range; the relay forwards port 21 alone.

FTP_BIG_SIZE=$((6 * 1024 * 1024 + 12345))
FTP_UP_SIZE=$((3 * 1024 * 1024 + 777))
FTP_NAMES="big.bin docs readme.txt"
FTP_HOME=
FTP_UPLOADS=0     # files uploaded (each must be on the LAN host, intact)
FTP_DOWNLOADS=0   # downloads of big.bin (each checked by hash)
# The target of the ABOR checks: far larger than every buffer on the way
# (sockets, the relay's pipes), so that, with the client no longer reading, the
# transfer cannot end before the ABOR. Sparse: it costs no disk and no time.
FTP_HUGE_SIZE=$((256 * 1024 * 1024))
FTP_ABORTS=0      # downloads of abort/huge.bin aborted (direct and through the relay)

# ftp_prepare_files: the shared folder on the LAN host, and the file home uploads.
ftp_prepare_files() {
	FTP_HOME=$E2E_TMP/home
	mkdir -p "$FTP_ROOT/share/docs" "$FTP_ROOT/upload" "$FTP_HOME"
	printf 'Shared folder of the LAN host.\n' >"$FTP_ROOT/share/readme.txt"
	printf 'minutes\n' >"$FTP_ROOT/share/docs/minutes.txt"
	head -c "$FTP_BIG_SIZE" /dev/urandom >"$FTP_ROOT/share/big.bin"
	mkdir -p "$FTP_ROOT/abort"
	truncate -s "$FTP_HUGE_SIZE" "$FTP_ROOT/abort/huge.bin"
	chmod -R a+rX "$FTP_ROOT"
	chown 65534:65534 "$FTP_ROOT/upload" # the FTP user's uid (nobody) writes here
	head -c "$FTP_UP_SIZE" /dev/urandom >"$FTP_HOME/up.bin"
	: >"$E2E_TMP/matrix.txt"
}

# The URL host part of an address: IPv6 in brackets.
ftp_url_host() {
	if [[ $1 == *:* ]]; then echo "[$1]"; else echo "$1"; fi
}

# The client's own address on the side of $1 (the relay's address it uses).
ftp_home_addr() {
	if [[ $1 == *:* ]]; then echo "$HOME6_HOST"; else echo "$HOME_HOST"; fi
}

ftp_family() {
	if [[ $1 == *:* ]]; then echo v6; else echo v4; fi
}

# ftp_check_transfers TAG GOT_FILE UPLOADED_NAME: the download matches big.bin,
# the upload exists on the LAN host and matches up.bin.
ftp_check_transfers() {
	local tag=$1 got=$2 name=$3
	[[ -f $got ]] || fail "$tag: nothing was downloaded"
	assert_eq "$FTP_BIG_SIZE" "$(stat -c %s "$got")" "$tag: size of the download"
	assert_eq "$(sha "$FTP_ROOT/share/big.bin")" "$(sha "$got")" "$tag: sha256 of the download"
	FTP_DOWNLOADS=$((FTP_DOWNLOADS + 1))
	[[ -f $FTP_ROOT/upload/$name ]] || fail "$tag: the uploaded $name is not on the LAN host"
	assert_eq "$(sha "$FTP_HOME/up.bin")" "$(sha "$FTP_ROOT/upload/$name")" "$tag: sha256 of the upload on the LAN host"
	FTP_UPLOADS=$((FTP_UPLOADS + 1))
	rm -f "$got"
}

# ftp_check_modes TAG LOGFILE EXPECTED: the data commands the client sent (as
# its log shows them, one per line, pre-extracted by the caller) are all EXPECTED.
ftp_check_modes() {
	local tag=$1 cmds=$2 want=$3 uniq
	uniq=$(sort -u <<<"$cmds" | tr '\n' ' ')
	assert_eq "$want " "$uniq" "$tag: data commands the client sent"
}

ftp_record() { # client mode family ms
	printf '%-7s %-5s %s  list+get+put  ok  %5d ms\n' "$1" "$2" "$3" "$4" >>"$E2E_TMP/matrix.txt"
	log "ok: $1 $2 over $3: listing, download and upload (sha256 match) in $4 ms"
}

# The passive reply the client got must name the relay's external address.
ftp_check_passive_reply() { # tag text-with-the-reply mode addr
	local tag=$1 text=$2 mode=$3 addr=$4
	case $mode in
	pasv)
		grep -Eq "227 Entering Passive Mode \(${addr//./,}," <<<"$text" ||
			fail "$tag: no 227 naming the WAN address $addr: $(grep -E '227' <<<"$text" | head -n2)"
		local lan=${LAN_HOST%.*}
		if grep -Eq "227 .*\(${lan//./,}," <<<"$text"; then
			fail "$tag: a 227 names a LAN address: $(grep -E '227' <<<"$text" | head -n2)"
		fi
		;;
	epsv) grep -Eq '229 .*\(\|\|\|[0-9]+\|\)' <<<"$text" || fail "$tag: no 229 reply" ;;
	port | eprt) grep -Eq '(^|[ :])200 ' <<<"$text" || fail "$tag: no 200 reply to ${mode^^}" ;;
	esac
}

# ---------------------------------------------------------------- curl

# ftp_curl MODE ADDR: curl lists /share/, downloads big.bin and uploads up.bin
# through the relay's address ADDR, in MODE (pasv, epsv, port, eprt).
ftp_curl() {
	local mode=$1 addr=$2 fam tag url home t0 names cmds
	fam=$(ftp_family "$addr")
	tag="curl $mode $fam"
	url=ftp://$(ftp_url_host "$addr")
	home=$(ftp_home_addr "$addr")
	local -a c=(curl -sS -g --max-time 20 --user "$FTP_USER:$FTP_PASS")
	case $mode in
	pasv) c+=(--disable-epsv --no-ftp-skip-pasv-ip) ;;
	epsv) ;;
	port) c+=(-P "$home" --disable-eprt) ;;
	eprt) c+=(-P "$home") ;;
	esac
	local up=curl-$mode-$fam.bin got=$FTP_HOME/curl-$mode-$fam.bin v=$FTP_HOME/curl-$mode-$fam.log
	t0=$(now_ms)
	names=$(on_home "${c[@]}" --list-only "$url/share/" | tr -d '\r' | grep -Evx '\.\.?' | sort | tr '\n' ' ')
	assert_eq "$FTP_NAMES " "$names" "$tag: NLST of /share/"
	on_home "${c[@]}" -v -o "$got" "$url/share/big.bin" 2>"$v" || {
		cat "$v" >&2
		fail "$tag: download failed"
	}
	on_home "${c[@]}" -v -T "$FTP_HOME/up.bin" "$url/upload/$up" 2>>"$v" || {
		cat "$v" >&2
		fail "$tag: upload failed"
	}
	ftp_check_transfers "$tag" "$got" "$up"
	cmds=$(grep -Eo '^> (PASV|EPSV|PORT|EPRT)' "$v" | cut -c3-)
	ftp_check_modes "$tag" "$cmds" "${mode^^}"
	ftp_check_passive_reply "$tag" "$(grep -E '^< ' "$v")" "$mode" "$addr"
	if [[ $mode == pasv ]]; then
		assert_file_contains "$v" "Connecting to $addr .* port [0-9]+" "$tag: data connection to the 227's address"
	fi
	ftp_record curl "${mode^^}" "$fam" $(($(now_ms) - t0))
}

# ---------------------------------------------------------------- lftp

# ftp_lftp MODE ADDR: the same with lftp. MODE: pasv (passive, PASV), epsv
# (passive, ftp:prefer-epsv), active (PORT over IPv4, EPRT over IPv6).
ftp_lftp() {
	local mode=$1 addr=$2 fam tag want passive=on epsv=no t0 names cmds
	fam=$(ftp_family "$addr")
	case $mode in
	pasv) want=PASV ;;
	epsv) want=EPSV epsv=yes ;;
	active)
		passive=off
		if [[ $fam == v6 ]]; then want=EPRT; else want=PORT; fi
		;;
	esac
	tag="lftp $want $fam"
	local up=lftp-$want-$fam.bin got=$FTP_HOME/lftp-$want-$fam.bin dbg=$FTP_HOME/lftp-$want-$fam.log
	t0=$(now_ms)
	names=$(on_home timeout 30 lftp -c "
set cmd:fail-exit yes; set net:timeout 10; set net:max-retries 1; set net:reconnect-interval-base 1
set ftp:ssl-allow no; set ftp:passive-mode $passive; set ftp:prefer-epsv $epsv
set ftp:fix-pasv-address no; set ftp:ignore-pasv-address no; set xfer:clobber on
debug -o $dbg 9
open -u $FTP_USER,$FTP_PASS ftp://$(ftp_url_host "$addr")
nlist /share/
get /share/big.bin -o $got
put $FTP_HOME/up.bin -o /upload/$up
bye" | tr -d '\r' | sed 's#.*/##' | grep -Evx '\.\.?' | sort | tr '\n' ' ') || {
		tail -n 30 "$dbg" >&2
		fail "$tag: lftp failed"
	}
	assert_eq "$FTP_NAMES " "$names" "$tag: nlist /share/"
	ftp_check_transfers "$tag" "$got" "$up"
	cmds=$(grep -Eo -- '---> (PASV|EPSV|PORT|EPRT)' "$dbg" | cut -c6-)
	ftp_check_modes "$tag" "$cmds" "$want"
	ftp_check_passive_reply "$tag" "$(grep -E -- '<--- ' "$dbg")" "${want,,}" "$addr"
	ftp_record lftp "$want" "$fam" $(($(now_ms) - t0))
}

# ---------------------------------------------------------------- ftplib

# ftp_py MODE ADDR [ARGS...]: the same with Python's ftplib (ftp_client.py).
# MODE: pasv, epsv, port, eprt, auto-passive, auto-active. Output in FTP_PY_OUT.
FTP_PY_OUT=
ftp_py() {
	local mode=$1 addr=$2 fam tag t0 want cmds
	shift 2
	fam=$(ftp_family "$addr")
	case $mode in
	auto-passive) if [[ $fam == v6 ]]; then want=EPSV; else want=PASV; fi ;;
	auto-active) if [[ $fam == v6 ]]; then want=EPRT; else want=PORT; fi ;;
	*) want=${mode^^} ;;
	esac
	tag="ftplib $want $fam"
	local up=ftplib-$mode-$fam.bin got=$FTP_HOME/ftplib-$mode-$fam.bin
	t0=$(now_ms)
	FTP_PY_OUT=$(on_home timeout 40 python3 "$E2E_DIR/ftp_client.py" --host "$addr" \
		--user "$FTP_USER" --password "$FTP_PASS" --mode "$mode" --list /share/ \
		--get /share/big.bin "$got" --put "$FTP_HOME/up.bin" "/upload/$up" "$@" 2>&1) || {
		echo "$FTP_PY_OUT" >&2
		fail "$tag: ftplib client failed"
	}
	grep -q "^list /share/: $FTP_NAMES$" <<<"$FTP_PY_OUT" ||
		fail "$tag: listing of /share/: $(grep '^list' <<<"$FTP_PY_OUT")"
	ftp_check_transfers "$tag" "$got" "$up"
	cmds=$(grep -Eo '^reply (PASV|EPSV|PORT|EPRT)' <<<"$FTP_PY_OUT" | cut -c7-)
	ftp_check_modes "$tag" "$cmds" "$want"
	ftp_check_passive_reply "$tag" "$(grep '^reply' <<<"$FTP_PY_OUT")" "${want,,}" "$addr"
	ftp_record ftplib "$want" "$fam" $(($(now_ms) - t0))
}

# ---------------------------------------------------------------- third parties

# ftp_foreign_passive MODE ADDR: while the relay's passive listener waits for
# the client, a connection from HOME_ALT (a third address) is turned away
# without a byte; then the client connects to the same port and downloads.
ftp_foreign_passive() {
	local mode=$1 addr=$2 outcome
	ftp_py "$mode" "$addr" --foreign "$HOME_ALT"
	outcome=$(grep -E '^foreign ' <<<"$FTP_PY_OUT") || fail "no foreign attempt was made"
	[[ $outcome =~ :\ (reset|eof)\ after ]] ||
		fail "a data connection from the third address $HOME_ALT was not turned away: $outcome"
	assert_file_contains "$RELAY_LOG" "ftp: data connection from $HOME_ALT(:[0-9]+)? refused \(only the client may use it\)" "relay warning about the foreign connection"
	log "third address, passive (${mode^^}): $outcome; the client's own connection then downloaded"
}

# ftp_foreign_active ADDR: while the relay's LAN-side listener waits for the
# server's connection (after PORT), the router itself (10.200.X.1, not the
# server) connects to it: turned away; then the download still works.
ftp_foreign_active() {
	local addr=$1 hold=$E2E_TMP/hold i port outcome pid rc=0
	mkdir -p "$hold"
	local got=$FTP_HOME/held.bin
	on_home timeout 40 python3 "$E2E_DIR/ftp_client.py" --host "$addr" --user "$FTP_USER" \
		--password "$FTP_PASS" --mode port --get /share/big.bin "$got" --hold "$hold" \
		>"$hold/out.txt" 2>&1 &
	pid=$!
	for ((i = 0; i < 300; i++)); do
		[[ -e $hold/port-sent ]] && break
		alive "$pid" || break
		sleep 0.05
	done
	[[ -e $hold/port-sent ]] || {
		cat "$hold/out.txt" >&2
		fail "the held active client did not send PORT"
	}
	port=$(grep -Eo "active data listener on $LAN_ROUTER:[0-9]+" "$RELAY_LOG" | tail -n1 | sed 's/.*://')
	[[ -n $port ]] || fail "no 'active data listener on $LAN_ROUTER:PORT' line in the relay's log"
	outcome=$(tcp_outcome "$NS_ROUTER" "$LAN_ROUTER" "$port" 5)
	touch "$hold/go"
	wait "$pid" || rc=$?
	[[ $rc == 0 ]] || {
		cat "$hold/out.txt" >&2
		fail "the held active client failed (status $rc)"
	}
	[[ $outcome =~ ^(reset|eof)\  ]] ||
		fail "a connection from $LAN_ROUTER to the active data listener was not turned away: $outcome"
	assert_eq "$(sha "$FTP_ROOT/share/big.bin")" "$(sha "$got")" "sha256 of the held active download"
	FTP_DOWNLOADS=$((FTP_DOWNLOADS + 1))
	assert_file_contains "$RELAY_LOG" "ftp: data connection from $LAN_ROUTER(:[0-9]+)? refused \(only the server may use it\)" "relay warning about the foreign connection (active)"
	log "third address, active (PORT): $LAN_ROUTER -> $LAN_ROUTER:$port: ${outcome% *} after ${outcome#* } ms; the server's own connection then delivered"
}

# ftp_refusals ADDR: data-port commands the relay answers itself, and the
# server never sees: PORT naming another host (bounce), PORT below 1024,
# LPSV/LPRT; over IPv6, PASV. Counted in FTP_REFUSED_CMDS.
FTP_REFUSED_CMDS=0
ftp_refusals() {
	local addr=$1 out x
	x=$(cut -d. -f3 <<<"$LAN_HOST")
	local -a args
	if [[ $addr == *:* ]]; then
		args=(--refuse PASV)
	else
		args=(--refuse "PORT 10,201,$x,3,200,10" --refuse "PORT ${HOME_HOST//./,},0,21"
			--refuse "LPSV" --refuse "LPRT 4,4,10,201,$x,2,2,200,10")
	fi
	out=$(on_home timeout 20 python3 "$E2E_DIR/ftp_client.py" --host "$addr" --user "$FTP_USER" \
		--password "$FTP_PASS" --mode auto-passive "${args[@]}" 2>&1) || {
		echo "$out" >&2
		fail "the relay let a data-port command through that it must refuse"
	}
	if [[ $addr == *:* ]]; then
		grep -q '^refused PASV: 500 ' <<<"$out" || fail "PASV over IPv6: expected the relay's 500: $out"
	else
		grep -q "^refused PORT 10,201,$x,3,200,10: 500 " <<<"$out" || fail "bounce PORT: expected 500: $out"
		grep -q "^refused PORT ${HOME_HOST//./,},0,21: 500 " <<<"$out" || fail "PORT to port 21: expected 500: $out"
		grep -q '^refused LPSV: 502 ' <<<"$out" || fail "LPSV: expected 502: $out"
		grep -q '^refused LPRT .*: 502 ' <<<"$out" || fail "LPRT: expected 502: $out"
	fi
	log "refused by the relay over $(ftp_family "$addr"): $(grep '^refused' <<<"$out" | sed 's/^refused //; s/: \([0-9]*\) .*/ -> \1/' | tr '\n' ';')"
	FTP_REFUSED_CMDS=$((FTP_REFUSED_CMDS + ${#args[@]} / 2))
}

# ---------------------------------------------------------------- ABOR, REST, many channels

# ftp_abort_run WHERE MODE HOST: one ftplib session (ftp_client.py --abort)
# from WHERE (router: directly to the server; home: through the relay) to
# HOST: RETR abort/huge.bin in MODE, read 256 KiB, then ABOR as RFC 959 has it
# (Telnet IP and Synch: "IAC IP IAC" with the last IAC as TCP urgent data, then
# "DM ABOR\r\n"), the data connection left open and unread: the server, blocked
# in its transfer, learns of the ABOR from the urgent data (vsftpd: SIGURG) or
# by watching the control connection meanwhile (pure-ftpd); then NOOP and a complete download of big.bin on the same control connection.
# Checks what an FTP user expects: the transfer's reply (426) and the ABOR's
# (225/226) within a second, the data connection ended (EOF or reset) short of
# the file's end, NOOP answered 200, the download intact. Sets ABORT_CODES,
# ABORT_MS, ABORT_END, ABORT_TOTAL.
ftp_abort_run() {
	local where=$1 mode=$2 host=$3 tag out got line ns=$NS_HOME
	tag="ABOR during a download over ${mode^^}, through the relay"
	[[ $where == router ]] && ns=$NS_ROUTER tag="ABOR during a download over ${mode^^}, directly from the router"
	got=$FTP_HOME/abort-$where-$mode.bin
	out=$(nsx "$ns" timeout 30 python3 "$E2E_DIR/ftp_client.py" --host "$host" \
		--user "$FTP_USER" --password "$FTP_PASS" --mode "$mode" --abort /abort/huge.bin \
		--get /share/big.bin "$got" 2>&1) || {
		echo "$out" >&2
		fail "$tag: the client failed: $(grep -E '^abort (failed|codes)' <<<"$out" || tail -n1 <<<"$out")"
	}
	FTP_ABORTS=$((FTP_ABORTS + 1))
	line=$(grep -E '^abort codes: ' <<<"$out") || fail "$tag: no ABOR replies: $out"
	[[ $line =~ ^abort\ codes:\ ([0-9 ]+)\ in\ ([0-9]+)\ ms$ ]] || fail "$tag: $line"
	ABORT_CODES=${BASH_REMATCH[1]} ABORT_MS=${BASH_REMATCH[2]}
	# RFC 959: 426 for the transfer (cut short: with the client not reading, it
	# could not have ended), then 225 or 226 for the ABOR.
	[[ $ABORT_CODES =~ ^426\ 22[56]$ ]] ||
		fail "$tag: expected 426 then 225/226, got '$ABORT_CODES': $(grep '^abort reply' <<<"$out" | tr '\n' ' ')"
	((ABORT_MS < 1000)) || fail "$tag: the ABOR replies took $ABORT_MS ms"
	line=$(grep -E '^abort data: ' <<<"$out") || fail "$tag: no data connection outcome: $out"
	[[ $line =~ ^abort\ data:\ (eof|reset)\ after\ [0-9]+\ more\ bytes\ in\ [0-9]+\ ms,\ ([0-9]+)\ of ]] ||
		fail "$tag: the data connection did not end after the ABOR: $line"
	ABORT_END=${BASH_REMATCH[1]} ABORT_TOTAL=${BASH_REMATCH[2]}
	((ABORT_TOTAL < FTP_HUGE_SIZE)) || fail "$tag: the whole file came ($ABORT_TOTAL bytes): nothing was aborted"
	grep -Eq '^abort noop: 200' <<<"$out" || fail "$tag: NOOP after the ABOR: $(grep '^abort noop' <<<"$out" || echo none)"
	[[ -f $got ]] || fail "$tag: no download after the ABOR"
	assert_eq "$(sha "$FTP_ROOT/share/big.bin")" "$(sha "$got")" "$tag: sha256 of the download after the ABOR"
	FTP_DOWNLOADS=$((FTP_DOWNLOADS + 1))
	rm -f "$got"
}

# ftp_abort MODE ADDR: the ABOR check through the relay (from home to ADDR,
# in MODE), and, as a control, the same directly from the router to the
# server, in the mode the server then sees (PASV or PORT; once per mode). The
# client must observe the same replies either way, as promptly, and its data
# connection must end the same way.
declare -A FTP_ABORT_DIRECT=()
ftp_abort() {
	local mode=$1 addr=$2 smode direct relay fam
	fam=$(ftp_family "$addr")
	case $mode in pasv | epsv | auto-passive) smode=pasv ;; *) smode=port ;; esac
	if [[ -z ${FTP_ABORT_DIRECT[$smode]:-} ]]; then
		ftp_abort_run router "$smode" "$LAN_HOST"
		FTP_ABORT_DIRECT[$smode]="$ABORT_CODES, data $ABORT_END"
		log "control, directly from the router: ABOR during a download over ${smode^^}: $ABORT_CODES in $ABORT_MS ms, data connection $ABORT_END after $ABORT_TOTAL of $FTP_HUGE_SIZE bytes; then NOOP and a download on the same control connection"
	fi
	direct=${FTP_ABORT_DIRECT[$smode]}
	ftp_abort_run home "$mode" "$addr"
	relay="$ABORT_CODES, data $ABORT_END"
	assert_eq "$direct" "$relay" "ABOR during a download over ${mode^^} ($fam): through the relay vs directly (replies, end of the data connection)"
	log "ok: ABOR during a download over ${mode^^} ($fam) through the relay: $ABORT_CODES in $ABORT_MS ms (as directly), data connection $ABORT_END after $ABORT_TOTAL of $FTP_HUGE_SIZE bytes; then NOOP and a download on the same control connection"
}

# ftp_rounds ADDR: one ftplib session through the relay: 10 data channels in a
# row, PASV and PORT in turn, LIST /share/ and RETR big.bin in turn (each
# listing right, each download's sha256 equal); then, in PORT mode on the same
# control connection, a download resumed with REST from an odd offset.
ftp_rounds() {
	local addr=$1 out part=$FTP_HOME/rounds-part.bin off=1234567 i line want_mode lists=0 retrs=0
	head -c "$off" "$FTP_ROOT/share/big.bin" >"$part"
	out=$(on_home timeout 30 python3 "$E2E_DIR/ftp_client.py" --host "$addr" --user "$FTP_USER" \
		--password "$FTP_PASS" --mode port --rounds 10 --round-modes pasv,port \
		--round-list /share/ --round-get /share/big.bin --resume /share/big.bin "$part" 2>&1) || {
		echo "$out" >&2
		fail "10 data channels on one control connection: the client failed"
	}
	for ((i = 0; i < 10; i++)); do
		((i % 2 == 0)) && want_mode=PASV || want_mode=PORT
		line=$(grep -E "^round $i " <<<"$out") || fail "round $i: no outcome: $out"
		case $((i % 4)) in
		0 | 3)
			assert_eq "round $i $want_mode list: $FTP_NAMES" "$line" "round $i: LIST /share/ over $want_mode"
			lists=$((lists + 1))
			;;
		*)
			assert_eq "round $i $want_mode retr: $FTP_BIG_SIZE $(sha "$FTP_ROOT/share/big.bin")" "$line" "round $i: RETR big.bin over $want_mode"
			retrs=$((retrs + 1))
			FTP_DOWNLOADS=$((FTP_DOWNLOADS + 1))
			;;
		esac
	done
	# Every round's data command was answered (the relay's 227 naming its WAN address).
	assert_eq 5 "$(grep -c '^reply PASV: 227 ' <<<"$out")" "PASVs answered 227 in the 10 rounds"
	ftp_check_passive_reply "rounds" "$(grep '^reply PASV' <<<"$out")" pasv "$addr"
	assert_eq 6 "$(grep -c '^reply PORT: 200 ' <<<"$out")" "PORTs answered 200 (10 rounds and the resume)"
	grep -Eq "^reply REST: 350 " <<<"$out" || fail "REST $off: no 350: $(grep '^reply REST' <<<"$out" || echo none)"
	grep -q "^resume /share/big.bin from $off: $FTP_BIG_SIZE bytes$" <<<"$out" ||
		fail "resumed download: $(grep '^resume' <<<"$out" || echo none)"
	assert_eq "$(sha "$FTP_ROOT/share/big.bin")" "$(sha "$part")" "sha256 of the download resumed from $off (REST, PORT)"
	rm -f "$part"
	log "ok: 10 data channels on one control connection (PASV and PORT in turn): $lists listings and $retrs downloads right; then REST $off + RETR over PORT resumed big.bin (sha256 equal)"
}

# ftp_curl_resume ADDR: curl -C - through the relay on a download that stopped
# after 2 MiB (the file holds the first 2 MiB of big.bin): SIZE, REST 2097152
# (350), RETR over EPSV; the completed file matches. (The partial file is cut
# locally: `curl -r` makes one too, but whether the server's log then counts a
# complete download depends on timing.)
ftp_curl_resume() {
	local addr=$1 url got=$FTP_HOME/curl-resume.bin v=$FTP_HOME/curl-resume.log
	url=ftp://$(ftp_url_host "$addr")/share/big.bin
	head -c 2097152 "$FTP_ROOT/share/big.bin" >"$got"
	on_home curl -sS -g --max-time 20 --user "$FTP_USER:$FTP_PASS" -v -C - -o "$got" "$url" 2>"$v" || {
		cat "$v" >&2
		fail "curl -C -: the resumed download failed"
	}
	assert_file_contains "$v" '^> REST 2097152' "curl -C -: REST from the partial file's size"
	assert_file_contains "$v" '^< 350 ' "curl -C -: REST answered 350"
	assert_file_contains "$v" '^> EPSV' "curl -C -: over EPSV"
	assert_eq "$(sha "$FTP_ROOT/share/big.bin")" "$(sha "$got")" "curl -C -: sha256 of the resumed download"
	rm -f "$got"
	log "ok: curl -C - through the relay (REST 2097152, EPSV) completed a download cut at 2 MiB: sha256 equal"
}

# ---------------------------------------------------------------- the relay's totals

# ftp_check_relay_totals REFUSED_DATA REFUSED_COMMANDS: after stop_portrelay,
# the closing line counts the foreign data connections and refused commands,
# and one data connection per debug line that closed one.
ftp_check_relay_totals() {
	local want_data=$1 want_cmds=$2 line opened connected expired dropped=0 refused cmds closed
	line=$(grep -E 'stopped\. ftp: ' "$RELAY_LOG") || fail "no 'stopped. ftp:' line in the relay's log"
	ftp_total() { # pattern (one group: the number)
		[[ $line =~ $1 ]] || fail "closing line without '$1': $line"
		echo "${BASH_REMATCH[1]}"
	}
	opened=$(ftp_total '([0-9]+) data listeners')
	connected=$(ftp_total '\(([0-9]+) connected')
	expired=$(ftp_total '([0-9]+) expired unused')
	[[ $line =~ ([0-9]+)\ closed\ unused ]] && dropped=${BASH_REMATCH[1]}
	refused=$(ftp_total '([0-9]+) data connections from a foreign address refused')
	cmds=$(ftp_total '([0-9]+) commands refused')
	closed=$(grep -Ec 'ftp (passive|active) data closed' "$RELAY_LOG")
	assert_eq "$want_data" "$refused" "data connections from a foreign address refused (closing line)"
	assert_eq "$want_cmds" "$cmds" "commands refused (closing line)"
	assert_eq "$closed" "$connected" "data connections: connected (closing line) vs 'ftp ... data closed' lines"
	assert_eq 0 "$expired" "data listeners expired unused"
	assert_eq "$opened" "$((connected + expired + dropped))" "data listeners: opened vs connected + expired + closed unused"
	# Each listing, download and upload had its data connection.
	((connected >= 3 * FTP_UPLOADS)) || fail "only $connected data connections for $FTP_UPLOADS list/get/put rounds"
	log "relay totals: $opened data listeners, $connected connected, $dropped closed unused, $refused foreign refused, $cmds commands refused"
}

ftp_show_matrix() {
	log "matrix ($FTP_DOWNLOADS downloads of $FTP_BIG_SIZE bytes, $FTP_UPLOADS uploads of $FTP_UP_SIZE bytes, all sha256-checked):"
	sed 's/^/    /' "$E2E_TMP/matrix.txt" >&2
}

# ftp_run_matrix FOREIGN_MODE: everything the clients do through the running
# relay (IPv4 on WAN_ROUTER, IPv6 on WAN6_ROUTER), in an order that keeps the
# relay's rate-limited warnings (one a second) apart: the foreign passive
# connection first, the foreign active one after the matrix, the refused
# commands last.
ftp_run_matrix() {
	local foreign_mode=$1 m
	ftp_foreign_passive "$foreign_mode" "$WAN_ROUTER"
	for m in pasv epsv port eprt; do ftp_curl "$m" "$WAN_ROUTER"; done
	for m in pasv epsv active; do ftp_lftp "$m" "$WAN_ROUTER"; done
	for m in pasv epsv port eprt; do
		[[ $m == "$foreign_mode" ]] || ftp_py "$m" "$WAN_ROUTER"
	done
	# Over IPv6: EPSV and EPRT towards the client, PASV and PORT towards the
	# IPv4-only server.
	for m in epsv eprt; do ftp_curl "$m" "$WAN6_ROUTER"; done
	for m in epsv active; do ftp_lftp "$m" "$WAN6_ROUTER"; done
	for m in auto-passive auto-active; do ftp_py "$m" "$WAN6_ROUTER"; done
	ftp_foreign_active "$WAN_ROUTER"
	ftp_refusals "$WAN_ROUTER"
	ftp_refusals "$WAN6_ROUTER"
}
