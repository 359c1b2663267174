#!/usr/bin/env bash
# Scenario 7, keepalive ends a vanished peer. A TCP echo server on the LAN
# host (port 7000) behind a forward of the router's WAN port 7000; a client at
# home connects through the router, and its bytes come back (the connection
# relays). Then home vanishes without a FIN or a RST: its interface goes down
# (`ip link set eth0 down` in home's namespace; the router's wan0 loses its
# carrier and every packet to home is dropped). The client's process stays,
# holding its socket, and sends nothing more.
#   1. With `tcp = { keepalive = 2; };` the relay must close that connection
#      (both of its sockets) within KEEPALIVE_BOUND_S: probes start after 2 s
#      of idle time and five go unanswered 1 s apart, so about 7 s. Observed
#      on the relay's debug line "tcp closed 10.201.X.2:P -> ...", on its
#      established sockets (ss in the router's namespace: none left on 7000,
#      none to the LAN server) and on its descriptor count (back to what it
#      was before the client connected).
#   2. Control, the check can fail: the same with `keepalive = 0`; the
#      connection must still be open (established on both sides, descriptors
#      held, no "tcp closed" line) after the same time, and longer than the
#      close took in part 1.

E2E_NEEDS=(python3)
: "${E2E_TIMEOUT:=90}"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

PORT=7000
KEEPALIVE_BOUND_S=20

# The echo server: one thread per connection, bytes back as they come.
start_echo_server() {
	start_bg echo "$NS_LAN" "$E2E_TMP/echo.log" python3 -u -c '
import socket, sys, threading
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(16)
print("listening", flush=True)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
while True:
    c, peer = ls.accept()
    print("accepted", peer, flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
' "$LAN_HOST" "$PORT"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" tcp "$LAN_HOST" "$PORT" "$PID_echo"
}

# start_client NAME: a client at home that connects to the relay, checks its
# echo, says "relayed LOCAL_PORT", then holds the connection and stays silent
# (up to 120 s; teardown kills it by PID before that).
start_client() {
	start_bg "$1" "$NS_HOME" "$E2E_TMP/$1.log" python3 -u -c '
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"still there?\n")
got = b""
while len(got) < 13:
    d = s.recv(100)
    if not d:
        break
    got += d
if got != b"still there?\n":
    print("no echo:", got, flush=True)
    sys.exit(1)
print("relayed", s.getsockname()[1], flush=True)
time.sleep(120)
' "$WAN_ROUTER" "$PORT"
	local i pid_var=PID_$1
	for ((i = 0; i < 200; i++)); do
		grep -q '^relayed' "$E2E_TMP/$1.log" && break
		alive "${!pid_var}" || fail "client $1 ended: $(cat "$E2E_TMP/$1.log")"
		sleep 0.05
	done
	grep -q '^relayed' "$E2E_TMP/$1.log" || fail "client $1: no echo within 10 s"
	CLIENT_PORT=$(awk '/^relayed/ { print $2 }' "$E2E_TMP/$1.log")
}

relay_fds() { ls "/proc/$PID_relay/fd" | wc -l; }

# The relay's established TCP sockets of this test: from home on 7000, to the LAN server.
relay_conns() {
	on_router ss -Htn state established "( sport = :$PORT or dport = :$PORT )" | wc -l
}

vanish_home() {
	ip -n "$NS_HOME" link set eth0 down
	log "home's eth0 is down: home is gone without a FIN or a RST"
}

relay_config() { # KEEPALIVE
	cat <<EOF
$(relay_globals)
tcp = { keepalive = $1; };
shutdown_timeout = 0.5;
forwards = (
  { name = "echo"; protocol = "tcp"; external_port = $PORT;
    internal_ip = "$LAN_HOST"; internal_port = $PORT; }
);
EOF
}

CLOSED_AFTER_MS=

# part KEEPALIVE: start the relay, connect, vanish, watch.
part() {
	local keepalive=$1 fds0 fds1 t0 ms now conns closed
	start_portrelay "$(relay_config "$keepalive")"
	fds0=$(relay_fds)
	start_client "client_ka$keepalive"
	fds1=$(relay_fds)
	conns=$(relay_conns)
	assert_eq 2 "$conns" "keepalive $keepalive: the relay's established sockets (client side and LAN side)"
	((fds1 >= fds0 + 2)) || fail "keepalive $keepalive: the relay's descriptors went from $fds0 to only $fds1 with a connection open"
	log "keepalive $keepalive: home:$CLIENT_PORT relays; relay descriptors $fds0 -> $fds1"
	local needle="tcp closed $HOME_HOST:$CLIENT_PORT -> "
	vanish_home
	t0=$(now_ms)

	if [[ $keepalive != 0 ]]; then
		while :; do
			now=$(now_ms)
			ms=$((now - t0))
			closed=$(grep -cF -- "$needle" "$RELAY_LOG" || true)
			conns=$(relay_conns)
			[[ $closed -ge 1 && $conns == 0 && $(relay_fds) -le $fds0 ]] && break
			((ms < KEEPALIVE_BOUND_S * 1000)) ||
				fail "keepalive $keepalive: after $ms ms the vanished client's connection is still there (closed line: $closed, established sockets: $conns, descriptors: $(relay_fds), $fds0 before it)"
			sleep 0.1
		done
		CLOSED_AFTER_MS=$ms
		log "keepalive $keepalive: the relay closed it $ms ms after home vanished: $(grep -F -- "$needle" "$RELAY_LOG" | sed 's/.*tcp closed/tcp closed/')"
		((ms >= 2000)) || fail "keepalive $keepalive: closed after only $ms ms, before keepalive's idle time (2 s) had passed"
	else
		# As long as part 1 took, and more: never less than 12 s.
		local wait_ms=$((CLOSED_AFTER_MS + 5000))
		((wait_ms >= 12000)) || wait_ms=12000
		while (($(now_ms) - t0 < wait_ms)); do
			sleep 0.25
		done
		ms=$(($(now_ms) - t0))
		closed=$(grep -cF -- "$needle" "$RELAY_LOG" || true)
		conns=$(relay_conns)
		assert_eq 0 "$closed" "keepalive 0: \"tcp closed\" lines for the vanished client after $ms ms"
		assert_eq 2 "$conns" "keepalive 0: the relay's established sockets $ms ms after home vanished"
		(($(relay_fds) >= fds1)) || fail "keepalive 0: the relay's descriptors fell from $fds1 to $(relay_fds)"
		log "keepalive 0: $ms ms after home vanished the connection is still open (2 sockets, $(relay_fds) descriptors)"
	fi
	local pid_var=PID_client_ka$keepalive
	kill -TERM "${!pid_var}" 2>/dev/null || true
	stop_portrelay
	ip -n "$NS_HOME" link set eth0 up
}

scenario() {
	start_echo_server
	assert_relay_is_only_path "$PORT"
	part 2
	# home's link is up again (its address stayed): wait, bounded, until the
	# router's WAN port answers it again (refused: nothing listens now).
	local i why=
	for ((i = 0; i < 50; i++)); do
		why=$(tcp_connect "$NS_HOME" "$WAN_ROUTER" "$PORT" 1) || true
		[[ $why == *refused* ]] && break
		sleep 0.1
	done
	[[ $why == *refused* ]] || fail "home does not reach the router again after its link came up: $why"
	part 0
}

e2e_main
