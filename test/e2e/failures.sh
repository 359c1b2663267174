#!/usr/bin/env bash
# Scenario 5, what must fail fails cleanly. portrelay runs with a working
# forward (8080 -> nginx on the LAN host), a forward to a LAN port where
# nothing listens (8082 -> LAN host:8082), and a forward to a LAN address where
# no host answers (8083 -> .99:80, tcp.connect_timeout 2 s). From home:
#   - a TCP port that is not forwarded (8081) is refused at once (RST to SYN);
#   - a UDP port that is not forwarded (8081) is refused (ICMP port unreachable);
#   - 8082: the connection opens and is reset promptly (well under a second);
#   - 8083: the connection opens and is reset once connect_timeout expires;
#   - the working forward works before and after all that, and home is left
#     with no connection open to the router.

E2E_NEEDS=(nginx curl python3)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

CONNECT_TIMEOUT_MS=2000

# http_get URL: curl from home; prints "EXIT ELAPSED_MS MESSAGE".
http_get() {
	local t0 rc=0 msg
	t0=$(now_ms)
	msg=$(on_home curl -sS --max-time 10 -o /dev/null "$1" 2>&1) || rc=$?
	echo "$rc $(($(now_ms) - t0)) ${msg//$'\n'/ }"
}

scenario() {
	local d=$E2E_TMP/nginx absent=${LAN_HOST%.*}.99 out rc ms msg
	mkdir -p "$d/www"
	echo "hello from the LAN host" >"$d/www/hello.txt"
	start_nginx "$d"

	assert_relay_is_only_path 80 8080

	start_portrelay "$(relay_globals)
tcp = { connect_timeout = $((CONNECT_TIMEOUT_MS / 1000)).0; };
forwards = (
  { name = \"web\"; protocol = \"tcp\"; external_port = 8080;
    internal_ip = \"$LAN_HOST\"; internal_port = 80; },
  { name = \"closed-port\"; protocol = \"tcp\"; external_port = 8082;
    internal_ip = \"$LAN_HOST\"; internal_port = 8082; },
  { name = \"absent-host\"; protocol = \"tcp\"; external_port = 8083;
    internal_ip = \"$absent\"; internal_port = 80; }
);"
	local url=http://$WAN_ROUTER

	assert_eq "hello from the LAN host" "$(on_home curl -sS --max-time 10 "$url:8080/hello.txt")" "the working forward"

	# 1. A TCP port that is not forwarded: refused (RST to the SYN), at once.
	read -r out ms <<<"$(tcp_outcome "$NS_HOME" "$WAN_ROUTER" 8081)"
	assert_eq refused "$out" "TCP client to 8081 (not forwarded)"
	((ms < 1000)) || fail "not-forwarded TCP 8081: refused only after $ms ms"
	read -r rc ms msg <<<"$(http_get "$url:8081/")"
	[[ $rc == 7 ]] || fail "not-forwarded TCP 8081: curl exit $rc ($msg), expected 7 (could not connect)"
	log "TCP 8081 (not forwarded): refused in $ms ms ($msg)"

	# 2. A UDP port that is not forwarded: refused (ICMP port unreachable).
	out=$(on_home python3 - "$WAN_ROUTER" 8081 <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"anyone there?")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("no answer")
EOF
)
	assert_eq refused "$out" "not-forwarded UDP 8081"
	log "UDP 8081 (not forwarded): refused"

	# 3. A forward to a LAN port where nothing listens: the relay accepts, and
	# resets the client as soon as the LAN host refuses. (curl may see the
	# reset before it has seen its connect complete: exit 7, 52 or 56.)
	read -r out ms <<<"$(tcp_outcome "$NS_HOME" "$WAN_ROUTER" 8082)"
	assert_eq reset "$out" "TCP client to 8082 (forwarded to a closed LAN port)"
	((ms < 1000)) || fail "forward to a closed LAN port: the client waited $ms ms"
	read -r rc ms msg <<<"$(http_get "$url:8082/")"
	[[ $rc == 56 || $rc == 52 || $rc == 7 ]] ||
		fail "forward to a closed LAN port: curl exit $rc ($msg), expected 56, 52 or 7"
	((ms < 1000)) || fail "forward to a closed LAN port: curl waited $ms ms"
	assert_file_contains "$RELAY_LOG" "connect refused" "relay log of the refused connect"
	log "TCP 8082 -> $LAN_HOST:8082 (nothing listens): client reset after $ms ms ($msg)"

	# 4. A forward to an address where no host answers: the client is reset
	# when tcp.connect_timeout expires, not later.
	read -r out ms <<<"$(tcp_outcome "$NS_HOME" "$WAN_ROUTER" 8083)"
	assert_eq reset "$out" "TCP client to 8083 (forwarded to an absent host)"
	((ms >= CONNECT_TIMEOUT_MS - 200 && ms < CONNECT_TIMEOUT_MS + 1500)) ||
		fail "forward to an absent host: client reset after $ms ms, connect_timeout is $CONNECT_TIMEOUT_MS ms"
	assert_file_contains "$RELAY_LOG" "connect timeout" "relay log of the connect timeout"
	log "TCP 8083 -> $absent:80 (no such host): client reset after $ms ms"

	# 5. The relay carries on; nothing is left open.
	assert_eq "hello from the LAN host" "$(on_home curl -sS --max-time 10 "$url:8080/hello.txt")" "the working forward afterwards"
	out=$(on_home ss -Htn state established dst "$WAN_ROUTER")
	[[ -z $out ]] || fail "home still has connections to the router: $out"
	out=$(on_router ss -Htn state established)
	[[ -z $out ]] || fail "the router still has established connections: $out"

	stop_portrelay
}

e2e_main
