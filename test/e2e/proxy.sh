#!/usr/bin/env bash
# Scenario: proxy_protocol, the LAN server sees the real client. The router
# manual's addresses are added to the topology (home 172.16.2.100, router WAN
# 172.16.2.5, router LAN 192.168.20.1, LAN host 192.168.20.142) and used
# throughout. On the LAN host, servers that read the PROXY header themselves:
#   - nginx, `listen ... proxy_protocol`, logging $proxy_protocol_addr (v1 on
#     8080, v2 on 8081) and, as a control, a plain listener (8082) behind a
#     forward without proxy_protocol, where nginx sees only the router;
#   - HAProxy, `bind ... accept-proxy` (v1 on 9000, v2 on 9001), HTTP frontends
#     logging %ci:%cp and %fi:%fp to stdout (`log stdout format raw`, -db);
#   - a Python UDP server (5300) that parses the v2 DGRAM header of every
#     datagram, logs who it names, and answers.
# From home, curl and a UDP client: each LAN log line must name 172.16.2.100
# and the client's own port, and the address it connected to (172.16.2.5 and
# the external port); the UDP replies come back without a header. The log
# lines are printed.

E2E_NEEDS=(nginx curl haproxy python3)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

start_nginx_proxy() {
	local d=$1 p
	mkdir -p "$d/www" "$d/tmp"
	echo "hello from the LAN host" >"$d/www/index.html"
	cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log info;
events { worker_connections 256; }
http {
  log_format pp 'pp_addr=\$proxy_protocol_addr pp_port=\$proxy_protocol_port pp_server=\$proxy_protocol_server_addr:\$proxy_protocol_server_port remote_addr=\$remote_addr port=\$server_port "\$request" \$status';
  access_log $d/access.log pp;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  default_type text/plain;
  server { listen $LAN_HOST:8080 proxy_protocol; root $d/www; }
  server { listen $LAN_HOST:8081 proxy_protocol; root $d/www; }
  server { listen $LAN_HOST:8082; root $d/www; }
}
EOF
	chmod -R a+rX "$d"
	p=$(command -v nginx)
	start_bg nginx "$NS_LAN" "$d/nginx.out.log" "$p" -p "$d/" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
	local port
	for port in 8080 8081 8082; do
		# shellcheck disable=SC2154
		wait_listen "$NS_LAN" tcp "$LAN_HOST" "$port" "$PID_nginx"
	done
}

start_haproxy() {
	local d=$1 p
	mkdir -p "$d"
	cat >"$d/haproxy.cfg" <<EOF
global
  log stdout format raw local0 info
defaults
  log global
  mode http
  timeout connect 5s
  timeout client 10s
  timeout server 10s
  log-format "haproxy frontend=%f client=%ci:%cp connected_to=%fi:%fp status=%ST request=%{+Q}r"
frontend v1
  bind $LAN_HOST:9000 accept-proxy
  http-request return status 200 content-type text/plain string "hello from haproxy"
frontend v2
  bind $LAN_HOST:9001 accept-proxy
  http-request return status 200 content-type text/plain string "hello from haproxy"
EOF
	p=$(command -v haproxy)
	# -db: foreground, its log lines (stdout) in haproxy.log.
	start_bg haproxy "$NS_LAN" "$d/haproxy.log" "$p" -db -f "$d/haproxy.cfg"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" tcp "$LAN_HOST" 9000 "$PID_haproxy"
	wait_listen "$NS_LAN" tcp "$LAN_HOST" 9001 "$PID_haproxy"
}

# A UDP server that reads the PROXY v2 DGRAM header of each datagram (strictly:
# signature, v2 PROXY, UDP over IPv4 or IPv6, the length), logs whom it names
# and answers "reply to ADDR:PORT len N" (N: the payload's length); a datagram
# without a valid header is logged as such and not answered.
start_udp_server() {
	local d=$1
	mkdir -p "$d"
	cat >"$d/udp_server.py" <<'EOF'
import socket, struct, sys
SIG = b'\r\n\r\n\x00\r\nQUIT\n'
addr, port, logpath = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
log = open(logpath, 'a', buffering=1)
def parse(d):
    if len(d) < 16 or d[:12] != SIG or d[12] != 0x21 or d[13] not in (0x12, 0x22):
        raise ValueError('no v2 PROXY DGRAM header: %r' % d[:16])
    fam = socket.AF_INET if d[13] == 0x12 else socket.AF_INET6
    alen = 4 if fam == socket.AF_INET else 16
    n = struct.unpack('!H', d[14:16])[0]
    if n != 2 * alen + 4 or len(d) < 16 + n:
        raise ValueError('bad length %d' % n)
    b = d[16:16 + n]
    src = socket.inet_ntop(fam, b[:alen]); dst = socket.inet_ntop(fam, b[alen:2 * alen])
    sp, dp = struct.unpack('!HH', b[2 * alen:])
    return src, sp, dst, dp, d[16 + n:]
while True:
    d, peer = s.recvfrom(65535)
    try:
        src, sp, dst, dp, payload = parse(d)
    except ValueError as e:
        log.write('udp-server from=%s:%d INVALID %s\n' % (peer[0], peer[1], e))
        continue
    log.write('udp-server client=%s:%d sent_to=%s:%d via=%s:%d payload=%d\n'
              % (src, sp, dst, dp, peer[0], peer[1], len(payload)))
    s.sendto(b'reply to %s:%d len %d' % (src.encode(), sp, len(payload)), peer)
EOF
	: >"$d/udp.log"
	start_bg udp "$NS_LAN" "$d/udp_server.out.log" python3 -u "$d/udp_server.py" "$LAN_HOST" 5300 "$d/udp.log"
	# shellcheck disable=SC2154
	wait_listen "$NS_LAN" udp "$LAN_HOST" 5300 "$PID_udp"
}

# curl_from_home URL: one GET from home's manual address; prints
# "STATUS LOCAL_PORT BODY".
curl_from_home() {
	local out
	out=$(on_home curl -sS --max-time 10 --interface "$HOME_HOST" -w '\n%{http_code} %{local_ip} %{local_port}' "$1") ||
		fail "curl $1 failed: $out"
	local body=${out%$'\n'*} meta=${out##*$'\n'}
	local code=${meta%% *} rest=${meta#* }
	assert_eq "$HOME_HOST" "${rest%% *}" "curl's local address for $1"
	echo "$code ${rest#* } $body"
}

scenario() {
	topology_use_manual_addresses
	local n=$E2E_TMP/nginx h=$E2E_TMP/haproxy u=$E2E_TMP/udp
	start_nginx_proxy "$n"
	start_haproxy "$h"
	start_udp_server "$u"

	assert_relay_is_only_path 8082

	start_portrelay "$(relay_globals)
forwards = (
  { name = \"nginx-v1\"; protocol = \"tcp\"; external_port = 8080;
    internal_ip = \"$LAN_HOST\"; internal_port = 8080; proxy_protocol = \"v1\"; },
  { name = \"nginx-v2\"; protocol = \"tcp\"; external_port = 8081;
    internal_ip = \"$LAN_HOST\"; internal_port = 8081; proxy_protocol = \"v2\"; },
  { name = \"nginx-plain\"; protocol = \"tcp\"; external_port = 8082;
    internal_ip = \"$LAN_HOST\"; internal_port = 8082; },
  { name = \"haproxy-v1\"; protocol = \"tcp\"; external_port = 9000;
    internal_ip = \"$LAN_HOST\"; internal_port = 9000; proxy_protocol = \"v1\"; },
  { name = \"haproxy-v2\"; protocol = \"tcp\"; external_port = 9001;
    internal_ip = \"$LAN_HOST\"; internal_port = 9001; proxy_protocol = \"v2\"; },
  { name = \"udp-v2\"; protocol = \"udp\"; external_port = 5300;
    internal_ip = \"$LAN_HOST\"; internal_port = 5300; proxy_protocol = \"v2\"; }
);"

	# (a) nginx: v1, v2, and the plain control.
	local port code cport body line r i
	for port in 8080 8081 8082; do
		r=$(curl_from_home "http://$WAN_ROUTER:$port/index.html")
		read -r code cport body <<<"$r"
		assert_eq "200 hello from the LAN host" "$code $body" "nginx through $WAN_ROUTER:$port"
		line=
		for ((i = 0; i < 100; i++)); do    # nginx writes the line as the request ends
			line=$(grep -E " port=$port " "$n/access.log" || true)
			[[ -n $line ]] && break
			sleep 0.05
		done
		[[ -n $line ]] || fail "nginx logged no request on port $port"
		log "nginx access.log: $line"
		if [[ $port == 8082 ]]; then
			[[ $line == "pp_addr=- pp_port=- pp_server=-:- remote_addr=$LAN_ROUTER port=8082 "* ]] ||
				fail "nginx, plain listener without proxy_protocol: expected only the router ($LAN_ROUTER), got: $line"
		else
			[[ $line == "pp_addr=$HOME_HOST pp_port=$cport pp_server=$WAN_ROUTER:$port remote_addr=$LAN_ROUTER port=$port "*' 200' ]] ||
				fail "nginx on $port: expected pp_addr=$HOME_HOST pp_port=$cport pp_server=$WAN_ROUTER:$port, got: $line"
		fi
	done
	log "nginx: \$proxy_protocol_addr is the home client $HOME_HOST (v1 and v2) with its port; \$remote_addr is the router $LAN_ROUTER; the plain forward shows only the router"

	# (b) HAProxy, accept-proxy: %ci is the home client.
	for port in 9000 9001; do
		r=$(curl_from_home "http://$WAN_ROUTER:$port/")
		read -r code cport body <<<"$r"
		assert_eq "200 hello from haproxy" "$code $body" "HAProxy through $WAN_ROUTER:$port"
		line=
		for ((i = 0; i < 100; i++)); do
			line=$(grep -E "connected_to=$WAN_ROUTER:$port " "$h/haproxy.log" || true)
			[[ -n $line ]] && break
			sleep 0.05
		done
		[[ -n $line ]] || fail "HAProxy logged no request for $WAN_ROUTER:$port: $(tail -n 5 "$h/haproxy.log")"
		log "haproxy stdout: $line"
		[[ $line == "haproxy frontend=v$((port - 8999)) client=$HOME_HOST:$cport connected_to=$WAN_ROUTER:$port status=200 "* ]] ||
			fail "HAProxy on $port: expected client=$HOME_HOST:$cport, got: $line"
	done
	log "HAProxy: %ci:%cp is the home client $HOME_HOST with its port, %fi:%fp the router's WAN address and port (v1 and v2)"

	# (c) UDP with v2 DGRAM: two client sockets, three datagrams each (one of
	# 8000 bytes, fragmented on the wire); every reply names the client itself.
	local out
	out=$(on_home python3 - "$HOME_HOST" "$WAN_ROUTER" 5300 <<'EOF'
import socket, sys
home, wan, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
bad = 0
for c in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((home, 0))
    s.settimeout(3)
    me = s.getsockname()[1]
    for size in (5, 1200, 8000):
        s.sendto(b'x' * size, (wan, port))
        want = b'reply to %s:%d len %d' % (home.encode(), me, size)
        try:
            got = s.recv(65535)
        except socket.timeout:
            got = None
        ok = got == want
        bad += not ok
        print('client %s:%d sent %d bytes, reply %r %s' % (home, me, size, got, 'ok' if ok else 'WRONG'))
    s.close()
sys.exit(1 if bad else 0)
EOF
	) || fail "UDP through the relay: $out"
	while IFS= read -r line; do log "udp client: $line"; done <<<"$out"
	local ports
	ports=$(grep -oE "^client $HOME_HOST:[0-9]+" <<<"$out" | sort -u | cut -d: -f2)
	assert_eq 6 "$(grep -c "^udp-server client=$HOME_HOST:[0-9]* sent_to=$WAN_ROUTER:5300 via=$LAN_ROUTER:[0-9]* payload=" "$u/udp.log" || true)" \
		"UDP server log lines naming $HOME_HOST and $WAN_ROUTER:5300"
	local p
	for p in $ports; do
		assert_eq 3 "$(grep -c "^udp-server client=$HOME_HOST:$p " "$u/udp.log" || true)" "datagrams of client port $p in the UDP server's log"
	done
	if grep -q INVALID "$u/udp.log"; then fail "the UDP server got a datagram without a valid header"; fi
	while IFS= read -r line; do log "udp server log: $line"; done <"$u/udp.log"
	log "UDP: every datagram carried a v2 DGRAM header naming its home client; replies came back without one"

	stop_portrelay
}

e2e_main
