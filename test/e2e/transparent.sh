#!/usr/bin/env bash
# Scenario: transparent mode (source = "client"), the LAN server sees the real
# client, as behind a router's DNAT, without netfilter. The router manual's
# addresses are added to the topology (home 172.16.2.100, router WAN
# 172.16.2.5, router LAN 192.168.20.1, LAN host 192.168.20.142, whose default
# route is the router) and used throughout. The router's IP forwarding stays
# off; on the router, the two routing commands of README's "Transparent mode":
#   ip rule add iif lan0 lookup 100
#   ip route add local 0.0.0.0/0 dev lo table 100
# portrelay on the router forwards, with source = "client":
#   - TCP 8080 -> nginx on the LAN host, port 80 (access log: $remote_addr
#     $remote_port);
#   - UDP 53 -> dnsmasq on the LAN host (--log-queries: "query[A] NAME from ADDR");
#   - UDP 5300 -> a Python UDP server that logs each datagram's source
#     address and port and echoes the payload;
# and, as a control, TCP 8081 -> the same nginx without it (nginx sees the router).
#   (a) curl from home: nginx's log shows 172.16.2.100 and curl's own port;
#       a download's sha256 matches; the control forward shows 192.168.20.1.
#   (b) dig and 100 DNS clients: dnsmasq logs every query from 172.16.2.100,
#       each answer right; the UDP server sees each client socket's own
#       address and port, and payloads (up to 8000 bytes) come back intact;
#       clients sending from the forward's own port (TCP 8080, UDP 53) pass.
#   (c) the `ip rule` removed: the same TCP connection is reset after
#       tcp.connect_timeout (2 s; the server's SYN-ACK to 172.16.2.100 is not
#       delivered locally), nginx logs nothing, and a DNS query reaches dnsmasq
#       (logged from 172.16.2.100) but its answer never reaches home; with the
#       rule back, both work again; and with README's narrower rules instead
#       (`iif lan0 from LAN_HOST ipproto tcp sport 80`, and udp sport 53).
#   (d) without CAP_NET_ADMIN (as nobody, and as root without it and
#       CAP_NET_RAW, which the kernel also accepts) and with `user =`, portrelay
#       refuses to start: exit 1 and the reason on stderr; as nobody holding
#       CAP_NET_ADMIN alone (ambient, as README's systemd drop-in) it starts and
#       nginx sees the home client; as nobody, the same forwards without
#       source = "client" start.
# The LAN servers' log lines are printed.

E2E_NEEDS=(nginx curl dnsmasq dig python3 setpriv)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

BIG=$((8 * 1024 * 1024 + 4321))

# wait_line FILE PATTERN: the first line matching PATTERN (grep -E), waiting
# up to 5 s for the server to write it.
wait_line() {
	local i line
	for ((i = 0; i < 100; i++)); do
		line=$(grep -E -- "$2" "$1" | head -n1 || true)
		[[ -n $line ]] && {
			echo "$line"
			return 0
		}
		sleep 0.05
	done
	return 1
}

# start_then_stop NAME LOG command...: run a relay in the router; status 0 if
# it reaches `ready` (then SIGTERM, and it must exit 0), 1 if it exits first.
start_then_stop() {
	local name=$1 logf=$2 i pid rc=0
	shift 2
	start_bg "$name" "$NS_ROUTER" "$logf" "$@"
	pid=PID_$name
	pid=${!pid}
	for ((i = 0; i < 200; i++)); do
		grep -q ready "$logf" && break
		alive "$pid" || {
			wait "$pid" || true
			return 1
		}
		sleep 0.05
	done
	grep -q ready "$logf" || fail "$name: neither ready nor gone after 10 s"
	kill -TERM "$pid"
	wait "$pid" || rc=$?
	assert_eq 0 "$rc" "$name: exit status after SIGTERM"
}

relay_conf() { # source line (empty, or `source = "client";`), tcp port, udp port, udp echo port
	cat <<EOF
$(relay_globals)
tcp = { connect_timeout = 2.0; };
forwards = (
  { name = "web"; protocol = "tcp"; external_port = $2;
    internal_ip = "$LAN_HOST"; internal_port = 80; $1 },
  { name = "dns"; protocol = "udp"; external_port = $3;
    internal_ip = "$LAN_HOST"; internal_port = 53; $1 },
  { name = "echo"; protocol = "udp"; external_port = $4;
    internal_ip = "$LAN_HOST"; internal_port = 5300; $1 },
  { name = "web-plain"; protocol = "tcp"; external_port = $(($2 + 1));
    internal_ip = "$LAN_HOST"; internal_port = 80; }
);
EOF
}

scenario() {
	topology_use_manual_addresses
	local n=$E2E_TMP/nginx d=$E2E_TMP/dns u=$E2E_TMP/udp h=$E2E_TMP/home
	mkdir -p "$h"
	mkdir -p "$n/www"
	echo "hello from the LAN host" >"$n/www/index.html"
	head -c "$BIG" /dev/urandom >"$n/www/big.bin"
	start_nginx "$n" 'remote_addr=$remote_addr remote_port=$remote_port server=$server_addr:$server_port "$request" $status $body_bytes_sent'
	start_dnsmasq "$d"
	start_udp_echo "$u"

	assert_relay_is_only_path 80 8080

	transparent_rule add
	transparent_route
	log "router: ip rule add iif lan0 lookup 100; ip route add local 0.0.0.0/0 dev lo table 100"
	log "router rules: $(on_router ip rule show | tr '\n' ';' | tr -s ' \t' ' ')"
	log "router table 100: $(on_router ip route show table 100 | tr '\n' ';')"
	assert_eq 0 "$(on_router cat /proc/sys/net/ipv4/ip_forward)" "router net.ipv4.ip_forward"

	start_portrelay "$(relay_conf 'source = "client";' 8080 53 5300)"
	local url=http://$WAN_ROUTER:8080 line out code lip lport

	# (a) TCP: nginx sees the home client, with curl's own port.
	out=$(on_home curl -sS --max-time 10 --interface "$HOME_HOST" -w '\n%{http_code} %{local_ip} %{local_port}' "$url/index.html") ||
		fail "curl $url/index.html: $out"
	read -r code lip lport <<<"${out##*$'\n'}"
	out=${out%$'\n'*}
	assert_eq "200 $HOME_HOST hello from the LAN host" "$code $lip ${out%$'\n'}" "curl through the transparent forward"
	line=$(wait_line "$n/access.log" '"GET /index.html ') || fail "nginx logged no request for /index.html"
	log "LAN nginx access.log: $line"
	assert_eq "remote_addr=$HOME_HOST remote_port=$lport server=$LAN_HOST:80 \"GET /index.html HTTP/1.1\" 200 24" "$line" \
		"nginx's line for the transparent forward"

	out=$(on_home curl -sS --max-time 30 --interface "$HOME_HOST" -o "$h/big.bin" -w '%{http_code} %{size_download} %{local_port}' "$url/big.bin")
	read -r code lip lport <<<"$out"
	assert_eq "200 $BIG" "$code $lip" "status and size of the download"
	assert_eq "$(sha "$n/www/big.bin")" "$(sha "$h/big.bin")" "sha256 of the download"
	line=$(wait_line "$n/access.log" '"GET /big.bin ') || fail "nginx logged no request for /big.bin"
	log "LAN nginx access.log: $line"
	assert_eq "remote_addr=$HOME_HOST remote_port=$lport server=$LAN_HOST:80 \"GET /big.bin HTTP/1.1\" 200 $BIG" "$line" \
		"nginx's line for the download"
	log "downloaded $BIG bytes: sha256 matches; nginx saw $HOME_HOST:$lport"

	# The forward without source = "client", beside it, is unchanged.
	out=$(on_home curl -sS --max-time 10 --interface "$HOME_HOST" "http://$WAN_ROUTER:8081/index.html?plain") ||
		fail "curl through the plain forward: $out"
	assert_eq "hello from the LAN host" "$out" "body through the plain forward"
	line=$(wait_line "$n/access.log" '"GET /index.html\?plain ') || fail "nginx logged no request for ?plain"
	log "LAN nginx access.log (control, forward without source): $line"
	[[ $line == "remote_addr=$LAN_ROUTER "* ]] || fail "the plain forward: nginx should see the router $LAN_ROUTER, got: $line"

	# (b) UDP: dnsmasq logs the home client; answers intact.
	on_home dig +time=2 +tries=2 +notcp -b "$HOME_HOST" @"$WAN_ROUTER" www.example.test A >"$d/dig.txt" ||
		fail "dig through the transparent forward: $(cat "$d/dig.txt")"
	assert_file_contains "$d/dig.txt" "status: NOERROR" "dig status"
	assert_file_contains "$d/dig.txt" "^www\.example\.test\.[[:space:]]+[0-9]+[[:space:]]+IN[[:space:]]+A[[:space:]]+${LAN_HOST%.*}\.5$" "dig answer"
	line=$(wait_line "$d/dnsmasq.log" 'query\[A\] www\.example\.test from ') || fail "dnsmasq logged no query for www.example.test"
	log "LAN dnsmasq.log: $line"
	[[ $line == *"query[A] www.example.test from $HOME_HOST" ]] || fail "dnsmasq should see $HOME_HOST, got: $line"

	out=$(on_home python3 "$E2E_DIR/dns_clients.py" "$WAN_ROUTER" 53 --udp 100) || fail "DNS clients: $out"
	log "DNS clients: $out"
	local seen others
	seen=$(grep -E "query\[A\] h[0-9]+\.lan\.test from $HOME_HOST\$" "$d/dnsmasq.log" | grep -Eo 'h[0-9]+\.lan\.test' | sort -u | wc -l)
	assert_eq 100 "$seen" "distinct names dnsmasq was asked for by $HOME_HOST"
	others=$(grep -E 'query\[' "$d/dnsmasq.log" | grep -vc " from $HOME_HOST\$" || true)
	assert_eq 0 "$others" "dnsmasq queries from any other address than $HOME_HOST"
	log "LAN dnsmasq.log, one of the 100: $(grep -E 'query\[A\] h42\.lan\.test' "$d/dnsmasq.log" | head -n1)"

	# The Python server: each socket's own address and port; payloads intact.
	out=$(on_home python3 - "$HOME_HOST" "$WAN_ROUTER" 5300 <<'EOF'
import hashlib, os, socket, sys
home, wan, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
bad = 0
for c in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((home, 0))
    s.settimeout(3)
    me = s.getsockname()[1]
    for size in (5, 1200, 8000):
        data = os.urandom(size)
        s.sendto(data, (wan, port))
        try:
            got, src = s.recvfrom(65535)
        except socket.timeout:
            got, src = None, None
        ok = got == data and src == (wan, port)
        bad += not ok
        print('client %s:%d sent %d bytes sha256=%s, reply %s from %s %s' % (home, me, size,
              hashlib.sha256(data).hexdigest()[:16], 'None' if got is None else '%d bytes' % len(got),
              src, 'intact' if ok else 'WRONG'))
    s.close()
sys.exit(1 if bad else 0)
EOF
	) || fail "UDP echo through the transparent forward: $out"
	local p sum size
	while IFS= read -r line; do
		log "udp client: $line"
		[[ $line =~ ^client\ [0-9.]+:([0-9]+)\ sent\ ([0-9]+)\ bytes\ sha256=([0-9a-f]+) ]] || continue
		p=${BASH_REMATCH[1]} size=${BASH_REMATCH[2]} sum=${BASH_REMATCH[3]}
		wait_line "$u/udp.log" "^udp-echo from=$HOME_HOST:$p len=$size sha256=$sum\$" >/dev/null ||
			fail "the UDP server did not log $HOME_HOST:$p len=$size sha256=$sum: $(cat "$u/udp.log")"
	done <<<"$out"
	while IFS= read -r line; do log "LAN udp server log: $line"; done <"$u/udp.log"
	log "UDP: dnsmasq and the UDP server saw $HOME_HOST with each client socket's own port; answers intact"

	# A client whose own port is the forward's port (WireGuard, NTP, IKE, DNS
	# servers do that): the relay's socket towards the server takes that port
	# on the client's address, beside the relay's listener on WAN_ROUTER.
	out=$(on_home curl -sS --max-time 10 --interface "$HOME_HOST" --local-port 8080 "$url/index.html?sameport") ||
		fail "curl from $HOME_HOST:8080 to $WAN_ROUTER:8080: $out"
	assert_eq "hello from the LAN host" "$out" "the body, client port 8080"
	line=$(wait_line "$n/access.log" '"GET /index.html\?sameport ') || fail "nginx logged no request for ?sameport"
	log "client port 8080 -> $WAN_ROUTER:8080: LAN nginx access.log: $line"
	[[ $line == "remote_addr=$HOME_HOST remote_port=8080 "* ]] || fail "client port 8080: nginx should see $HOME_HOST:8080: $line"
	out=$(on_home dig +short +time=2 +tries=2 +notcp -b "$HOME_HOST#53" @"$WAN_ROUTER" sameport.example.test A) ||
		fail "dig from $HOME_HOST#53: $out"
	assert_eq "${LAN_HOST%.*}.5" "$out" "dig's answer, client port 53"
	log "client port 53 -> $WAN_ROUTER:53: answered; LAN dnsmasq.log: $(wait_line "$d/dnsmasq.log" 'query\[A\] sameport\.example\.test from ')"

	# (c) Without the rule, the server's replies to the foreign address are
	# not delivered: the same connection times out and the datagram's answer is lost.
	transparent_rule del
	log "router: ip rule del iif lan0 lookup 100 (table 100 kept)"
	local before
	before=$(wc -l <"$n/access.log")
	out=$(tcp_outcome "$NS_HOME" "$WAN_ROUTER" 8080 10)
	log "without the rule, TCP through $WAN_ROUTER:8080: $out"
	[[ $out =~ ^reset\ ([0-9]+)$ ]] || fail "without the rule, expected a reset after the connect timeout, got: $out"
	((BASH_REMATCH[1] >= 1800 && BASH_REMATCH[1] <= 4000)) ||
		fail "without the rule, the reset should come after tcp.connect_timeout (2 s), came after ${BASH_REMATCH[1]} ms"
	wait_line "$RELAY_LOG" 'connect timeout' >/dev/null || fail "the relay logged no connect timeout"
	log "relay: $(grep -E 'connect timeout' "$RELAY_LOG" | tail -n1)"
	assert_eq "$before" "$(wc -l <"$n/access.log")" "nginx log lines after the attempt without the rule"
	if out=$(on_home dig +time=2 +tries=1 +notcp -b "$HOME_HOST" @"$WAN_ROUTER" norule.example.test A 2>&1); then
		fail "without the rule, dig got an answer: $out"
	fi
	line=$(wait_line "$d/dnsmasq.log" 'query\[A\] norule\.example\.test from ') || fail "dnsmasq did not get the query without the rule"
	log "without the rule: dig timed out; LAN dnsmasq.log: $line"
	[[ $line == *" from $HOME_HOST" ]] || fail "without the rule, dnsmasq should still see $HOME_HOST: $line"
	transparent_rule add
	out=$(on_home curl -sS --max-time 10 --interface "$HOME_HOST" "$url/index.html?again") || fail "with the rule back, curl: $out"
	assert_eq "hello from the LAN host" "$out" "with the rule back, the body"
	out=$(on_home dig +short +time=2 +tries=2 +notcp -b "$HOME_HOST" @"$WAN_ROUTER" again.example.test A) ||
		fail "with the rule back, dig: $out"
	assert_eq "${LAN_HOST%.*}.5" "$out" "with the rule back, dig's answer"
	log "with the rule back: TCP and UDP work again"

	# README's narrower rules, for a relay host that also routes its LAN: only
	# the servers' replies (from their address and port) are delivered locally.
	transparent_rule del
	ip -n "$NS_ROUTER" rule add iif lan0 from "$LAN_HOST" ipproto tcp sport 80 lookup 100
	ip -n "$NS_ROUTER" rule add iif lan0 from "$LAN_HOST" ipproto udp sport 53 lookup 100
	out=$(on_home curl -sS --max-time 10 --interface "$HOME_HOST" "$url/index.html?narrow") || fail "with the narrow rules, curl: $out"
	assert_eq "hello from the LAN host" "$out" "with the narrow rules, the body"
	line=$(wait_line "$n/access.log" '"GET /index.html\?narrow ') || fail "nginx logged no request for ?narrow"
	log "narrow rules (iif lan0 from $LAN_HOST ipproto tcp sport 80 / udp sport 53): LAN nginx access.log: $line"
	[[ $line == "remote_addr=$HOME_HOST "* ]] || fail "with the narrow rules, nginx should see $HOME_HOST: $line"
	out=$(on_home dig +short +time=2 +tries=2 +notcp -b "$HOME_HOST" @"$WAN_ROUTER" narrow.example.test A) ||
		fail "with the narrow rules, dig: $out"
	assert_eq "${LAN_HOST%.*}.5" "$out" "with the narrow rules, dig's answer"
	line=$(wait_line "$d/dnsmasq.log" 'query\[A\] narrow\.example\.test from ') || fail "dnsmasq logged no query for narrow.example.test"
	log "narrow rules: LAN dnsmasq.log: $line"
	ip -n "$NS_ROUTER" rule del iif lan0 from "$LAN_HOST" ipproto tcp sport 80 lookup 100
	ip -n "$NS_ROUTER" rule del iif lan0 from "$LAN_HOST" ipproto udp sport 53 lookup 100
	transparent_rule add

	stop_portrelay

	# (d) No CAP_NET_ADMIN: refused at start-up. Unprivileged ports, so that
	# the control (nobody, no source = "client") can bind them.
	local conf=$E2E_TMP/tp-unpriv.conf rc err=$E2E_TMP/tp-unpriv.err
	relay_conf 'source = "client";' 18080 15353 15300 >"$conf"
	chmod 644 "$conf"
	rc=0
	on_router timeout 10 setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all \
		"$PORTRELAY_BIN" -c "$conf" >/dev/null 2>"$err" || rc=$?
	log "as nobody: exit $rc, stderr: $(tr '\n' ' ' <"$err")"
	assert_eq 1 "$rc" "exit status as nobody with source = \"client\""
	assert_file_contains "$err" 'forward "web": source = "client" cannot work here: IP_TRANSPARENT: Operation not permitted \(it needs CAP_NET_ADMIN or CAP_NET_RAW\)' "stderr as nobody"

	# IP_TRANSPARENT takes CAP_NET_ADMIN or CAP_NET_RAW (ip(7)): root without both.
	rc=0
	on_router timeout 10 setpriv --inh-caps=-net_admin,-net_raw --bounding-set=-net_admin,-net_raw \
		"$PORTRELAY_BIN" -c "$conf" >/dev/null 2>"$err" || rc=$?
	log "as root without CAP_NET_ADMIN and CAP_NET_RAW: exit $rc, stderr: $(grep -v ' info ' "$err" | tr '\n' ' ')"
	assert_eq 1 "$rc" "exit status as root without CAP_NET_ADMIN and CAP_NET_RAW"
	assert_file_contains "$err" 'forward "web": source = "client" cannot work here: IP_TRANSPARENT: Operation not permitted' \
		"stderr as root without CAP_NET_ADMIN and CAP_NET_RAW"
	# Only CAP_NET_ADMIN dropped: the kernel still allows IP_TRANSPARENT with CAP_NET_RAW.
	if start_then_stop raw "$E2E_TMP/tp-raw.log" setpriv --inh-caps=-net_admin --bounding-set=-net_admin \
		"$PORTRELAY_BIN" -c "$conf"; then
		log "as root without CAP_NET_ADMIN but with CAP_NET_RAW: started (the kernel takes either capability)"
	else
		log "as root without CAP_NET_ADMIN but with CAP_NET_RAW: refused: $(grep -v ' info ' "$E2E_TMP/tp-raw.log" | tr '\n' ' ')"
	fi

	printf 'user = "nobody";\n%s\n' "$(relay_conf 'source = "client";' 18080 15353 15300)" >"$conf"
	rc=0
	on_router timeout 10 "$PORTRELAY_BIN" -c "$conf" >/dev/null 2>"$err" || rc=$?
	log "as root with user = \"nobody\": exit $rc, stderr: $(tr '\n' ' ' <"$err")"
	assert_eq 1 "$rc" "exit status with user ="
	assert_file_contains "$err" 'source = "client" needs CAP_NET_ADMIN while running, which user = "nobody" gives up' "stderr with user ="

	# As nobody holding CAP_NET_ADMIN alone (ambient), as the systemd unit's
	# drop-in in README gives it: it starts, and nginx sees the home client.
	relay_conf 'source = "client";' 18080 15353 15300 >"$conf"
	start_bg amb "$NS_ROUTER" "$E2E_TMP/tp-amb.log" setpriv --reuid=nobody --regid=nogroup --clear-groups \
		--inh-caps=-all,+net_admin --ambient-caps=+net_admin "$PORTRELAY_BIN" -c "$conf" -l debug
	local i
	for ((i = 0; i < 200; i++)); do
		grep -q ready "$E2E_TMP/tp-amb.log" && break
		# shellcheck disable=SC2154
		alive "$PID_amb" || fail "as nobody with CAP_NET_ADMIN, portrelay exited: $(cat "$E2E_TMP/tp-amb.log")"
		sleep 0.05
	done
	grep -q ready "$E2E_TMP/tp-amb.log" || fail "as nobody with CAP_NET_ADMIN: not ready after 10 s"
	log "as nobody with CAP_NET_ADMIN only (ambient): $(grep -m1 CapEff "/proc/$PID_amb/status" | tr '\t' ' '), ready"
	out=$(on_home curl -sS --max-time 10 --interface "$HOME_HOST" "http://$WAN_ROUTER:18080/index.html?ambient") ||
		fail "as nobody with CAP_NET_ADMIN, curl: $out"
	assert_eq "hello from the LAN host" "$out" "as nobody with CAP_NET_ADMIN, the body"
	line=$(wait_line "$n/access.log" '"GET /index.html\?ambient ') || fail "nginx logged no request for ?ambient"
	log "as nobody with CAP_NET_ADMIN: LAN nginx access.log: $line"
	[[ $line == "remote_addr=$HOME_HOST "* ]] || fail "as nobody with CAP_NET_ADMIN, nginx should see $HOME_HOST: $line"
	kill -TERM "$PID_amb"
	rc=0
	wait "$PID_amb" || rc=$?
	assert_eq 0 "$rc" "exit status after SIGTERM, as nobody with CAP_NET_ADMIN"

	# Control: as nobody, the same forwards without source = "client" start.
	relay_conf '' 18080 15353 15300 >"$conf"
	start_then_stop ctl "$E2E_TMP/tp-ctl.log" setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all \
		"$PORTRELAY_BIN" -c "$conf" ||
		fail "control: as nobody without source = \"client\", portrelay did not start: $(cat "$E2E_TMP/tp-ctl.log")"
	log "control: as nobody, the same forwards without source = \"client\" started and stopped cleanly"
}

e2e_main
