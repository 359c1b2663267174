#!/usr/bin/env bash
# Scenario 3, DNS over UDP: dnsmasq on the LAN host behind a UDP forward of
# port 53. From home, dig's query is answered; then 400 clients, each on its
# own UDP socket (so from 400 distinct source ports), ask at once for 400
# different names, and each must get its own answer on the socket that asked,
# from the address it asked. dnsmasq must have seen every query coming from the
# relay's LAN address.

E2E_NEEDS=(dnsmasq dig python3)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

CLIENTS=400

scenario() {
	local d=$E2E_TMP/dns out
	start_dnsmasq "$d"

	# dnsmasq also listens on TCP 53, which gives the generic checks a port.
	assert_relay_is_only_path 53
	if out=$(on_home dig +time=1 +tries=1 +notcp @"$LAN_HOST" www.example.test A 2>&1); then
		fail "home got a DNS answer straight from $LAN_HOST without the relay: $out"
	fi

	start_portrelay "$(relay_globals)
forwards = (
  { name = \"dns\"; protocol = \"udp\"; external_port = 53;
    internal_ip = \"$LAN_HOST\"; internal_port = 53; }
);"

	# 1. One query, as a user types it.
	on_home dig +time=2 +tries=2 +notcp @"$WAN_ROUTER" www.example.test A >"$d/dig.txt"
	assert_file_contains "$d/dig.txt" "status: NOERROR" "dig status"
	assert_file_contains "$d/dig.txt" "^www\.example\.test\.[[:space:]]+[0-9]+[[:space:]]+IN[[:space:]]+A[[:space:]]+${LAN_HOST%.*}\.5$" "dig answer"
	assert_file_contains "$d/dig.txt" "SERVER: $WAN_ROUTER#53\($WAN_ROUTER\) \(UDP\)" "dig server line"
	log "dig @$WAN_ROUTER www.example.test: $(on_home dig +short +time=2 +tries=2 +notcp @"$WAN_ROUTER" www.example.test A)"

	# 2. Hundreds of clients on distinct source ports, at once.
	out=$(on_home python3 "$E2E_DIR/dns_clients.py" "$WAN_ROUTER" 53 --udp "$CLIENTS") ||
		fail "DNS clients: $out"
	log "DNS clients: $out"
	log "datagrams dropped on full receive buffers: router $(udp_drops "$NS_ROUTER"), LAN host $(udp_drops "$NS_LAN")"
	local seen
	seen=$(grep -E "query\[A\] h[0-9]+\.lan\.test from $LAN_ROUTER\$" "$d/dnsmasq.log" |
		grep -Eo 'h[0-9]+\.lan\.test' | sort -u | wc -l)
	assert_eq "$CLIENTS" "$seen" "distinct names dnsmasq was asked for by $LAN_ROUTER"

	stop_portrelay
}

e2e_main
