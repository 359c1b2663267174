#!/usr/bin/env bash
# Scenario 2, HTTP: nginx on the LAN host (port 80) behind a TCP forward on a
# different external port (8080). From home, curl downloads a large file whose
# hash must match, then makes 200 requests in parallel, each for its own file:
# all must succeed with the right body, and nginx must have served all 200 to
# the relay's LAN address.

E2E_NEEDS=(nginx curl)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

BIG=$((64 * 1024 * 1024 + 4321))
PARALLEL=200

scenario() {
	local d=$E2E_TMP/nginx h=$E2E_TMP/home i
	mkdir -p "$d/www/n" "$h/n"
	head -c "$BIG" /dev/urandom >"$d/www/big.bin"
	for ((i = 1; i <= PARALLEL; i++)); do
		echo "reply $i from the LAN host" >"$d/www/n/$i.txt"
	done
	start_nginx "$d"

	assert_relay_is_only_path 80 8080

	start_portrelay "$(relay_globals)
forwards = (
  { name = \"web\"; protocol = \"tcp\"; external_port = 8080;
    internal_ip = \"$LAN_HOST\"; internal_port = 80; }
);"
	local url=http://$WAN_ROUTER:8080

	# 1. A large download.
	local t0 ms out
	t0=$(now_ms)
	out=$(on_home curl -sS --max-time 30 -o "$h/big.bin" -w '%{http_code} %{size_download}' "$url/big.bin")
	ms=$(($(now_ms) - t0))
	assert_eq "200 $BIG" "$out" "status and size of the large download"
	assert_eq "$(sha "$d/www/big.bin")" "$(sha "$h/big.bin")" "sha256 of the large download"
	log "downloaded $BIG bytes through the relay in $ms ms: sha256 matches"

	# 2. 200 requests at once, each on its own connection.
	t0=$(now_ms)
	on_home curl -sS --no-progress-meter --max-time 30 --parallel --parallel-immediate --parallel-max "$PARALLEL" \
		-w '%{http_code} %{url_effective}\n' -o "$h/n/#1.txt" "$url/n/[1-$PARALLEL].txt" >"$h/codes.txt"
	ms=$(($(now_ms) - t0))
	assert_eq "$PARALLEL" "$(grep -c '^200 ' "$h/codes.txt")" "requests answered 200 (of $PARALLEL)"
	for ((i = 1; i <= PARALLEL; i++)); do
		[[ $(<"$h/n/$i.txt") == "reply $i from the LAN host" ]] ||
			fail "request $i got the wrong body: $(head -c 100 "$h/n/$i.txt")"
	done
	local served conns
	served=$(grep -cE "^$LAN_ROUTER [0-9]+ 200 /n/[0-9]+\.txt " "$d/access.log" || true)
	assert_eq "$PARALLEL" "$served" "requests nginx served to the relay's address $LAN_ROUTER"
	conns=$(grep -E " /n/[0-9]+\.txt " "$d/access.log" | cut -d' ' -f2 | sort -u | wc -l)
	log "$PARALLEL parallel requests in $ms ms: all 200 with the right body; nginx served them on $conns connections"

	stop_portrelay
}

e2e_main
