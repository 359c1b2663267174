# shellcheck shell=bash
# Shared code of the end-to-end scenarios: the topology, server and relay
# helpers, assertions, and teardown. A scenario script sets E2E_NEEDS (the
# programs it runs), sources this file, defines scenario(), and calls e2e_main.
#
# Topology, built anew by every run in three network namespaces whose names are
# unique to the run (pre2e-<pid>-<random>-{lan,router,home}):
#
#   [lan]  eth0 10.200.X.2/24 ---- lan0 10.200.X.1/24 [router] wan0 10.201.X.1/24 ---- eth0 10.201.X.2/24 [home]
#          internal servers                 portrelay, ip_forward = 0                    clients
#
# X is derived from the run's PID. These addresses exist only on veth interfaces
# inside the run's own namespaces (the veth pairs are created directly inside
# them), so no packet of the tests leaves them. Home has a route to the LAN
# through the router and the LAN host a default route through it: the only
# thing standing between home and the LAN is the router's disabled IP
# forwarding, so portrelay is the only path, and assert_relay_is_only_path
# checks that before portrelay starts.
#
# Two processes: the outer one (not time-limited) owns the temp dir and the
# namespaces and always tears them down; the inner one (the same script with
# E2E_INNER=1) builds the topology and runs the scenario under `timeout`.
# Teardown kills every process inside the run's namespaces by PID
# (`ip netns pids`), deletes the namespaces, and removes the temp dir, on
# success, failure, timeout, SIGINT or SIGTERM.
#
# Exit status: 0 pass, 1 fail, 77 skip (not root, no `ip netns`, or a program
# the scenario needs is missing).
#
# Environment: PORTRELAY_BIN (set by meson) the binary under test;
# E2E_TIMEOUT (default 50) seconds the inner part may take;
# PORTRELAY_VALGRIND=1 runs the relay under valgrind.

set -Eeuo pipefail

E2E_NAME=$(basename "$0" .sh)
E2E_SCRIPT=$(realpath "$0")
# shellcheck disable=SC2034 # used by the scenarios
E2E_DIR=$(dirname "$E2E_SCRIPT")
: "${E2E_TIMEOUT:=50}"
E2E_NS_PREFIX=pre2e

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S.%3N)" "$E2E_NAME" "$*" >&2; }
fail() {
	log "FAIL: $*"
	exit 1
}
skip() {
	# CI installs every package and runs as root: a skip there hides a broken test.
	[[ -z ${PORTRELAY_E2E_REQUIRED:-} ]] || fail "cannot run ($*), and PORTRELAY_E2E_REQUIRED is set"
	log "SKIP: $*"
	exit 77
}

# Milliseconds since the epoch.
now_ms() {
	local t=${EPOCHREALTIME/./}
	echo $((t / 1000))
}

# ---------------------------------------------------------------- assertions

assert_eq() { # expected actual what
	[[ "$1" == "$2" ]] || fail "$3: expected '$1', got '$2'"
}

assert_file_contains() { # file pattern(grep -E) what
	grep -Eq -- "$2" "$1" || fail "$3: no line matching '$2' in $(basename "$1")"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# ----------------------------------------------------------- namespace helpers

nsx() { # ns command...
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}
on_lan() { nsx "$NS_LAN" "$@"; }
on_router() { nsx "$NS_ROUTER" "$@"; }
on_home() { nsx "$NS_HOME" "$@"; }

# start_bg NAME NS LOGFILE command...: start a process in NS in the background,
# stdout and stderr to LOGFILE; its PID goes in PID_<NAME>. `ip netns exec`
# execs the command, so the PID is the command's own.
start_bg() {
	local name=$1 ns=$2 logf=$3
	shift 3
	ip netns exec "$ns" "$@" >"$logf" 2>&1 </dev/null &
	printf -v "PID_$name" '%s' "$!"
	echo "$!" >>"$E2E_TMP/pids"
}

# alive PID: the process exists and is not a zombie.
alive() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	stat=${stat##*) }
	[[ $stat != Z* ]]
}

# wait_listen NS tcp|udp ADDR PORT PID: poll until something listens on
# ADDR:PORT in NS (bounded, 10 s); fail early if PID died.
wait_listen() {
	local ns=$1 proto=$2 addr=$3 port=$4 pid=$5 i flag
	[[ $proto == tcp ]] && flag=-Hltn || flag=-Hlun
	for ((i = 0; i < 200; i++)); do
		if [[ -n $(ip netns exec "$ns" ss $flag src "$addr:$port" 2>/dev/null) ]]; then
			return 0
		fi
		alive "$pid" || fail "process $pid died before listening on $proto $addr:$port"
		sleep 0.05
	done
	fail "nothing listens on $proto $addr:$port in $ns after 10 s"
}

# tcp_connect NS ADDR PORT [SECONDS]: try a TCP connection; status 0 if it
# opens. The reason of a failure goes to stdout.
tcp_connect() {
	local ns=$1 addr=$2 port=$3 secs=${4:-3} out
	# shellcheck disable=SC2016 # $1 and $2 are the inner bash's
	if out=$(ip netns exec "$ns" timeout "$secs" bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$addr" "$port" 2>&1); then
		return 0
	fi
	echo "${out:-timed out after ${secs}s}" | tail -n1
	return 1
}

# tcp_outcome NS ADDR PORT [SECONDS]: what a TCP client in NS observes when it
# connects to ADDR:PORT, sends an HTTP request and waits for the answer. Prints
# "OUTCOME ELAPSED_MS": refused (RST to the SYN: nothing listens), reset (the
# connection opened, then a RST), eof (opened, then closed cleanly), data
# (opened and answered), timeout. Needs python3.
tcp_outcome() {
	ip netns exec "$1" python3 - "$2" "$3" "${4:-10}" <<'EOF'
import errno, socket, sys, time
addr, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(secs)
def done(what):
    print(what, int((time.monotonic() - t0) * 1000))
    sys.exit(0)
try:
    s.connect((addr, port))
except ConnectionRefusedError:
    done("refused")
except ConnectionResetError:
    done("reset")
except socket.timeout:
    done("timeout")
try:
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = s.recv(100)
    done("data" if data else "eof")
except (ConnectionResetError, BrokenPipeError):
    done("reset")
except socket.timeout:
    done("timeout")
EOF
}

# udp_drops NS: UDP datagrams the kernel in NS dropped because a socket's
# receive buffer was full (RcvbufErrors).
udp_drops() {
	# shellcheck disable=SC2016
	ip netns exec "$1" awk '/^Udp:/ { n++; if (n == 2) print $6 }' /proc/net/snmp
}

# ------------------------------------------------------------------ topology

topology_up() {
	ip link add eth0 netns "$NS_LAN" type veth peer name lan0 netns "$NS_ROUTER"
	ip link add wan0 netns "$NS_ROUTER" type veth peer name eth0 netns "$NS_HOME"
	ip -n "$NS_LAN" addr add "$LAN_HOST/24" dev eth0
	ip -n "$NS_ROUTER" addr add "$LAN_ROUTER/24" dev lan0
	ip -n "$NS_ROUTER" addr add "$WAN_ROUTER/24" dev wan0
	ip -n "$NS_HOME" addr add "$HOME_HOST/24" dev eth0
	local ns
	for ns in "$NS_LAN" "$NS_ROUTER" "$NS_HOME"; do
		ip -n "$ns" link set lo up
	done
	ip -n "$NS_LAN" link set eth0 up
	ip -n "$NS_ROUTER" link set lan0 up
	ip -n "$NS_ROUTER" link set wan0 up
	ip -n "$NS_HOME" link set eth0 up
	# Home knows the way to the LAN through the router, and the LAN host the
	# way back: only the router's disabled forwarding separates them.
	ip -n "$NS_HOME" route add "$LAN_NET" via "$WAN_ROUTER"
	ip -n "$NS_LAN" route add default via "$LAN_ROUTER"
	set_forwarding 0
	log "topology: lan $LAN_HOST | router $LAN_ROUTER + $WAN_ROUTER (ip_forward 0) | home $HOME_HOST"
}

# Opt-in additions to the topology, for the scenarios that call them.

# topology_add_wan_ipv6: IPv6 on the WAN link only (the LAN stays IPv4-only):
# WAN6_ROUTER on the router's wan0 and HOME6_HOST on home's eth0, both in
# fd00:201:X::/64, without duplicate address detection (usable at once).
topology_add_wan_ipv6() {
	local x
	x=$(cut -d. -f3 <<<"$LAN_HOST")
	WAN6_ROUTER=fd00:201:$x::1
	HOME6_HOST=fd00:201:$x::2
	ip -n "$NS_ROUTER" addr add "$WAN6_ROUTER/64" dev wan0 nodad
	ip -n "$NS_HOME" addr add "$HOME6_HOST/64" dev eth0 nodad
	log "topology: IPv6 on the WAN link: router $WAN6_ROUTER | home $HOME6_HOST"
}

# topology_add_home_address: a second IPv4 address on home's eth0, HOME_ALT
# (10.201.X.3): a third party on the WAN side, neither the client's control
# address nor the server's. Home's connections still leave from HOME_HOST.
topology_add_home_address() {
	HOME_ALT=${HOME_HOST%.*}.3
	ip -n "$NS_HOME" addr add "$HOME_ALT/24" dev eth0
	log "topology: home also has $HOME_ALT"
}

set_forwarding() {
	on_router sh -c "echo $1 > /proc/sys/net/ipv4/ip_forward"
}

# assert_relay_is_only_path PORT [EXT_PORT]: with portrelay not running and a
# server listening on LAN_HOST:PORT (tcp):
#   - the router itself reaches the server (the server is up),
#   - the router's IP forwarding is off, and home cannot reach the server,
#   - nothing answers on the router's WAN address, port EXT_PORT (default PORT),
#   - control: with forwarding switched on for a moment home would reach it,
#     so it is the disabled forwarding (not a missing route) that blocks it.
assert_relay_is_only_path() {
	local port=$1 ext=${2:-$1} why
	why=$(tcp_connect "$NS_ROUTER" "$LAN_HOST" "$port") ||
		fail "the router cannot reach the server at $LAN_HOST:$port: $why"
	assert_eq 0 "$(on_router cat /proc/sys/net/ipv4/ip_forward)" "router net.ipv4.ip_forward"
	if tcp_connect "$NS_HOME" "$LAN_HOST" "$port" 1 >/dev/null; then
		fail "home reaches $LAN_HOST:$port with forwarding off and no relay"
	fi
	if why=$(tcp_connect "$NS_HOME" "$WAN_ROUTER" "$ext" 1); then
		fail "home reaches $WAN_ROUTER:$ext before portrelay runs"
	fi
	[[ $why == *refused* ]] || fail "home -> $WAN_ROUTER:$ext before portrelay: expected refused, got: $why"
	set_forwarding 1
	why=$(tcp_connect "$NS_HOME" "$LAN_HOST" "$port") || {
		set_forwarding 0
		fail "control: even with forwarding on, home cannot reach $LAN_HOST:$port: $why"
	}
	set_forwarding 0
	assert_eq 0 "$(on_router cat /proc/sys/net/ipv4/ip_forward)" "router net.ipv4.ip_forward"
	if tcp_connect "$NS_HOME" "$LAN_HOST" "$port" 1 >/dev/null; then
		fail "home reaches $LAN_HOST:$port after forwarding was switched off again"
	fi
	log "no path without the relay: home -> $LAN_HOST:$port blocked (ip_forward 0; reachable when on), $WAN_ROUTER:$ext refused"
}

# topology_use_manual_addresses: the router manual's example addresses on the
# same links (home 172.16.2.100, router WAN 172.16.2.5 and LAN 192.168.20.1,
# LAN host 192.168.20.142 with its default route via the router); from here on
# the scenario and the helpers below use them (HOME_HOST, WAN_ROUTER, ...).
topology_use_manual_addresses() {
	ip -n "$NS_HOME" addr add 172.16.2.100/24 dev eth0
	ip -n "$NS_ROUTER" addr add 172.16.2.5/24 dev wan0
	ip -n "$NS_ROUTER" addr add 192.168.20.1/24 dev lan0
	ip -n "$NS_LAN" addr add 192.168.20.142/24 dev eth0
	ip -n "$NS_HOME" route add 192.168.20.0/24 via 172.16.2.5
	ip -n "$NS_LAN" route replace default via 192.168.20.1
	HOME_HOST=172.16.2.100 WAN_ROUTER=172.16.2.5 LAN_ROUTER=192.168.20.1
	LAN_HOST=192.168.20.142 LAN_NET=192.168.20.0/24
	log "topology: the router manual's addresses: home $HOME_HOST | router $WAN_ROUTER + $LAN_ROUTER | lan $LAN_HOST (default via $LAN_ROUTER)"
}

# transparent_rule add|del, transparent_route: README's policy routing for
# source = "client" on the router: what comes in from the LAN is looked up
# in table 100, where every address is local.
transparent_rule() {
	ip -n "$NS_ROUTER" rule "$1" iif lan0 lookup 100
}
transparent_route() {
	ip -n "$NS_ROUTER" route add local 0.0.0.0/0 dev lo table 100
}

# ------------------------------------------------------------------ servers

# start_nginx DIR [LOG_FORMAT]: nginx on LAN_HOST:80 serving DIR/www, in the
# foreground (PID in PID_nginx), with its configuration, pid file, logs and
# temp paths in DIR. The access log has one line per request, by default:
#   client-address connection-serial status uri bytes-sent
# or in LOG_FORMAT (nginx's log_format syntax, without single quotes).
start_nginx() {
	local d=$1 p
	# shellcheck disable=SC2016 # nginx's variables, not the shell's
	local format=${2:-'$remote_addr $connection $status $request_uri $body_bytes_sent'}
	mkdir -p "$d/www" "$d/tmp"
	cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log info;
events { worker_connections 2048; }
http {
  log_format e2e '$format';
  access_log $d/access.log e2e;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 1000;
  server {
    listen $LAN_HOST:80 backlog=1024;
    root $d/www;
  }
}
EOF
	chmod -R a+rX "$d"
	p=$(command -v nginx)
	start_bg nginx "$NS_LAN" "$d/nginx.out.log" "$p" -p "$d/" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" tcp "$LAN_HOST" 80 "$PID_nginx"
}

# start_udp_echo DIR: a UDP echo server on LAN_HOST:5300 (PID in PID_udp)
# writing one line per datagram to DIR/udp.log, with the source as it sees it:
#   udp-echo from=ADDRESS:PORT len=BYTES sha256=FIRST-16-HEX-DIGITS
start_udp_echo() {
	local d=$1
	mkdir -p "$d"
	cat >"$d/udp_echo.py" <<'EOF'
import hashlib, socket, sys
addr, port, logpath = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((addr, port))
log = open(logpath, 'a', buffering=1)
while True:
    d, peer = s.recvfrom(65535)
    log.write('udp-echo from=%s:%d len=%d sha256=%s\n'
              % (peer[0], peer[1], len(d), hashlib.sha256(d).hexdigest()[:16]))
    s.sendto(d, peer)
EOF
	: >"$d/udp.log"
	start_bg udp "$NS_LAN" "$d/udp_echo.out.log" python3 -u "$d/udp_echo.py" "$LAN_HOST" 5300 "$d/udp.log"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" udp "$LAN_HOST" 5300 "$PID_udp"
}

# start_dnsmasq DIR: dnsmasq on LAN_HOST:53 (UDP and TCP), in the foreground
# (PID in PID_dnsmasq), no upstream and no /etc/hosts; it knows
# www.example.test (LAN_HOST's .5) and, from DIR/hosts, h1..h1000.lan.test:
# hN.lan.test is 198.18.N/256.N%256 (dns_clients.py expects exactly that).
# Every query is logged to DIR/dnsmasq.log.
start_dnsmasq() {
	local d=$1 n p
	mkdir -p "$d"
	for ((n = 1; n <= 1000; n++)); do
		echo "198.18.$((n / 256)).$((n % 256)) h$n.lan.test"
	done >"$d/hosts"
	chmod -R a+rX "$d"
	p=$(command -v dnsmasq)
	start_bg dnsmasq "$NS_LAN" "$d/dnsmasq.out.log" "$p" --no-daemon --conf-file=/dev/null \
		--no-resolv --no-hosts --addn-hosts="$d/hosts" --address="/example.test/${LAN_HOST%.*}.5" \
		--port=53 --listen-address="$LAN_HOST" --bind-interfaces --pid-file="$d/dnsmasq.pid" \
		--user=nobody --group=nogroup --cache-size=2000 \
		--log-queries --log-facility="$d/dnsmasq.log"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" udp "$LAN_HOST" 53 "$PID_dnsmasq"
	wait_listen "$NS_LAN" tcp "$LAN_HOST" 53 "$PID_dnsmasq"
}

# ------------------------------------------------------------------ portrelay

RELAY_LOG=
PID_relay=
# start_portrelay CONFIG_TEXT: write the configuration, run portrelay in the
# router at log level debug, and wait (bounded) for its `ready` line.
start_portrelay() {
	local conf=$E2E_TMP/portrelay.conf i limit=200
	RELAY_LOG=$E2E_TMP/portrelay.log
	printf '%s\n' "$1" >"$conf"
	local -a cmd=("$PORTRELAY_BIN" -c "$conf" -l debug)
	if [[ ${PORTRELAY_VALGRIND:-} == 1 ]]; then
		# shellcheck disable=SC2054
		cmd=(valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect
			--error-exitcode=99 "${cmd[@]}")
		limit=1000
	fi
	start_bg relay "$NS_ROUTER" "$RELAY_LOG" "${cmd[@]}"
	for ((i = 0; i < limit; i++)); do
		if grep -q 'ready' "$RELAY_LOG"; then
			log "portrelay ready (pid $PID_relay)"
			return 0
		fi
		alive "$PID_relay" || {
			cat "$RELAY_LOG" >&2
			fail "portrelay exited before it was ready"
		}
		sleep 0.05
	done
	fail "portrelay not ready after $((limit / 20)) s"
}

# stop_portrelay: SIGTERM; it must exit 0 within 10 s (valgrind: 60 s).
stop_portrelay() {
	local i rc=0 limit=200
	[[ ${PORTRELAY_VALGRIND:-} == 1 ]] && limit=1200
	kill -TERM "$PID_relay"
	for ((i = 0; i < limit; i++)); do
		alive "$PID_relay" || break
		sleep 0.05
	done
	alive "$PID_relay" && fail "portrelay still running $((limit / 20)) s after SIGTERM"
	wait "$PID_relay" || rc=$?
	[[ $rc == 0 ]] || {
		tail -n 30 "$RELAY_LOG" >&2
		fail "portrelay exited with status $rc after SIGTERM"
	}
	log "portrelay stopped cleanly: $(grep -E 'stopped' "$RELAY_LOG" | tail -n1 | sed 's/.*stopped/stopped/')"
}

# The [global] part of the configuration every scenario uses.
relay_globals() {
	cat <<EOF
wan_address = "$WAN_ROUTER";
log_level = "debug";
EOF
}

# ------------------------------------------------------------------ teardown

# Kill every process in namespace $1 (TERM, then KILL), by PID.
ns_kill_all() {
	local ns=$1 pids i
	pids=$(ip netns pids "$ns" 2>/dev/null) || return 0
	[[ -z $pids ]] && return 0
	# shellcheck disable=SC2086
	kill -TERM $pids 2>/dev/null || true
	for ((i = 0; i < 60; i++)); do
		pids=$(ip netns pids "$ns" 2>/dev/null) || return 0
		[[ -z $pids ]] && return 0
		sleep 0.05
	done
	log "teardown: killing what ignored SIGTERM in $ns: $pids"
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	for ((i = 0; i < 60; i++)); do
		[[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && return 0
		sleep 0.05
	done
}

ns_delete() {
	ns_kill_all "$1"
	ip netns del "$1" 2>/dev/null || true
}

# Namespaces and temp dirs left by an earlier run that was SIGKILLed (so could
# not tear down): only those of this suite whose owning PID is gone.
reap_stale() {
	local ns owner d
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$E2E_NS_PREFIX-[0-9]+-" || true); do
		owner=$(cut -d- -f2 <<<"$ns")
		if ! kill -0 "$owner" 2>/dev/null; then
			log "removing stale namespace $ns of dead run $owner"
			ns_delete "$ns"
		fi
	done
	for d in /tmp/portrelay-e2e-*; do
		[[ -d $d ]] || continue
		owner=${d#/tmp/portrelay-e2e-}
		owner=${owner%%.*}
		[[ $owner =~ ^[0-9]+$ ]] || continue
		kill -0 "$owner" 2>/dev/null || rm -rf "$d"
	done
}

E2E_INNER_PID=
teardown() {
	local rc=$? ns f
	set +e
	trap - ERR INT TERM
	if [[ -n $E2E_INNER_PID ]] && kill -0 "$E2E_INNER_PID" 2>/dev/null; then
		kill -TERM "$E2E_INNER_PID" 2>/dev/null
		wait "$E2E_INNER_PID" 2>/dev/null
	fi
	if [[ $rc != 0 && $rc != 77 && -d ${E2E_TMP:-} ]]; then
		for f in "$E2E_TMP"/*.log "$E2E_TMP"/*/*.log; do
			[[ -s $f ]] || continue
			echo "----- ${f#"$E2E_TMP"/} (last 40 lines)" >&2
			tail -n 40 "$f" >&2
		done
	fi
	for ns in "$NS_HOME" "$NS_ROUTER" "$NS_LAN"; do
		ns_delete "$ns"
	done
	[[ -d ${E2E_TMP:-} ]] && rm -rf "$E2E_TMP"
	if ip netns list 2>/dev/null | grep -q "^$E2E_RUN-"; then
		log "teardown: namespaces left behind: $(ip netns list | grep "^$E2E_RUN-" | tr '\n' ' ')"
		[[ $rc == 0 ]] && rc=1
	fi
	exit "$rc"
}

# ------------------------------------------------------------------ main

e2e_main() {
	if [[ ${E2E_INNER:-} == 1 ]]; then
		trap 'fail "line $LINENO: \`$BASH_COMMAND\` failed"' ERR
		trap 'log "inner part interrupted"; exit 143' TERM INT
		local t0
		t0=$(now_ms)
		topology_up
		scenario
		log "PASS in $(((($(now_ms) - t0) + 50) / 100 * 100)) ms (topology and scenario)"
		exit 0
	fi

	[[ $(id -u) == 0 ]] || skip "needs root to build network namespaces"
	command -v ip >/dev/null || skip "ip (iproute2) is not installed"
	ip netns list >/dev/null 2>&1 || skip "ip netns is unavailable"
	local p
	for p in timeout ss sha256sum awk "${E2E_NEEDS[@]}"; do
		command -v "$p" >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v "$p" >/dev/null ||
			skip "$p is not installed (.ci/run lists the packages)"
	done
	export PATH=$PATH:/usr/sbin:/sbin
	[[ -n ${PORTRELAY_BIN:-} && -x $PORTRELAY_BIN ]] ||
		fail "PORTRELAY_BIN must name the portrelay binary (meson sets it)"
	PORTRELAY_BIN=$(realpath "$PORTRELAY_BIN")

	reap_stale
	E2E_RUN=$E2E_NS_PREFIX-$$-$RANDOM
	NS_LAN=$E2E_RUN-lan
	NS_ROUTER=$E2E_RUN-router
	NS_HOME=$E2E_RUN-home
	local x=$(($$ % 250 + 1))
	LAN_NET=10.200.$x.0/24
	LAN_ROUTER=10.200.$x.1
	LAN_HOST=10.200.$x.2
	WAN_ROUTER=10.201.$x.1
	HOME_HOST=10.201.$x.2
	E2E_TMP=
	trap teardown EXIT
	trap 'log "interrupted"; exit 130' INT
	trap 'log "terminated"; exit 143' TERM
	E2E_TMP=$(mktemp -d "/tmp/portrelay-e2e-$$.XXXXXX")
	# Servers drop privileges (to nobody) and must read what they serve.
	chmod 755 "$E2E_TMP"
	export E2E_RUN NS_LAN NS_ROUTER NS_HOME LAN_NET LAN_ROUTER LAN_HOST WAN_ROUTER HOME_HOST
	export E2E_TMP PORTRELAY_BIN PATH

	local err
	if ! err=$(ip netns add "$NS_LAN" 2>&1); then
		skip "cannot create a network namespace: $err"
	fi
	ip netns add "$NS_ROUTER"
	ip netns add "$NS_HOME"

	log "run $E2E_RUN, temp dir $E2E_TMP, time limit ${E2E_TIMEOUT}s"
	local rc=0
	E2E_INNER=1 timeout -k 5 "$E2E_TIMEOUT" bash "$E2E_SCRIPT" &
	E2E_INNER_PID=$!
	wait "$E2E_INNER_PID" || rc=$?
	E2E_INNER_PID=
	if [[ $rc == 124 || $rc == 137 ]]; then
		log "FAIL: timed out after ${E2E_TIMEOUT}s"
		rc=1
	fi
	exit "$rc"
}
