#!/usr/bin/env bash
# Scenario 4, one `both` forward carrying TCP and UDP on the same port:
# dnsmasq on the LAN host answers DNS over UDP and over TCP on port 53, and a
# single forward with protocol "both" maps the router's port 5353 to it. From
# home, dig asks over UDP and over TCP and gets the answer both ways; then 100
# UDP clients and 50 TCP clients ask at the same time, each for its own name,
# and each gets its own answer.

E2E_NEEDS=(dnsmasq dig python3)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

PORT=5353

scenario() {
	local d=$E2E_TMP/dns out proto
	start_dnsmasq "$d"

	assert_relay_is_only_path 53 "$PORT"

	start_portrelay "$(relay_globals)
forwards = (
  { name = \"dns-both\"; protocol = \"both\"; external_port = $PORT;
    internal_ip = \"$LAN_HOST\"; internal_port = 53; }
);"

	# The one forward holds a TCP listener and a UDP socket on the same port.
	[[ -n $(on_router ss -Hltn src "$WAN_ROUTER:$PORT") ]] || fail "no TCP listener on $WAN_ROUTER:$PORT"
	[[ -n $(on_router ss -Hlun src "$WAN_ROUTER:$PORT") ]] || fail "no UDP socket on $WAN_ROUTER:$PORT"

	# 1. dig over UDP, then over TCP, to the same port.
	for proto in notcp tcp; do
		on_home dig +time=2 +tries=2 +"$proto" -p "$PORT" @"$WAN_ROUTER" www.example.test A >"$d/dig-$proto.txt"
		assert_file_contains "$d/dig-$proto.txt" "status: NOERROR" "dig +$proto status"
		assert_file_contains "$d/dig-$proto.txt" "^www\.example\.test\.[[:space:]]+[0-9]+[[:space:]]+IN[[:space:]]+A[[:space:]]+${LAN_HOST%.*}\.5$" "dig +$proto answer"
	done
	assert_file_contains "$d/dig-notcp.txt" "SERVER: $WAN_ROUTER#$PORT\($WAN_ROUTER\) \(UDP\)" "dig +notcp went over UDP"
	assert_file_contains "$d/dig-tcp.txt" "SERVER: $WAN_ROUTER#$PORT\($WAN_ROUTER\) \(TCP\)" "dig +tcp went over TCP"
	log "dig over UDP and over TCP to $WAN_ROUTER:$PORT: both answered ${LAN_HOST%.*}.5"

	# 2. Both protocols at the same time, many clients each.
	out=$(on_home python3 "$E2E_DIR/dns_clients.py" "$WAN_ROUTER" "$PORT" --udp 100 --tcp 50 --first 501) ||
		fail "DNS clients: $out"
	log "DNS clients: $out"
	local seen
	seen=$(grep -E "query\[A\] h[0-9]+\.lan\.test from $LAN_ROUTER\$" "$d/dnsmasq.log" |
		grep -Eo 'h[0-9]+\.lan\.test' | sort -u | wc -l)
	assert_eq 150 "$seen" "distinct names dnsmasq was asked for by $LAN_ROUTER"

	stop_portrelay
	local tcp_served
	tcp_served=$(grep -Ec "\[dns-both\] tcp closed $HOME_HOST:[0-9]+ -> $LAN_HOST:53" "$RELAY_LOG" || true)
	log "relay log: $tcp_served TCP connections of the forward closed"
}

e2e_main
