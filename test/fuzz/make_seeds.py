#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into test/fuzz/corpus/.

The seeds are committed; run this again only to change them:
    python3 test/fuzz/make_seeds.py

ftp_filter seeds are scripts in fuzz_ftp_filter.c's language (one operation
per byte, see the comment at its top) playing small real sessions; the
others are plain text: lines for ftp_proto, configuration files for config,
-L specs (one per line) for spec.
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")

CLIENT, SERVER = 0, 1


class Script:
    """Builds a fuzz_ftp_filter script."""

    def __init__(self, client="v4", server="v4", passive="v4", active="v4"):
        clients = {"v4": 0, "v6": 1, "mapped": 2}
        listeners = {"v4": 0, "v6": 1, "mapped": 2}
        setup = clients[client]
        setup |= 4 if server == "v6" else 0
        setup |= listeners[passive] << 3
        setup |= listeners[active] << 5
        self.b = bytearray([setup])

    def feed(self, side, data, urgent=None):
        if isinstance(data, str):
            data = data.encode("latin-1")
        while data:
            chunk, data = data[:256], data[256:]
            if urgent is not None and urgent < len(chunk):
                self.b += bytes([0x80 | side, len(chunk) - 1, urgent])
                urgent = None
            else:
                self.b += bytes([side, len(chunk) - 1])
                if urgent is not None:
                    urgent -= len(chunk)
            self.b += chunk
        self.b.append(10)   # both sides take their output
        return self

    def client(self, data, urgent=None):
        return self.feed(CLIENT, data, urgent)

    def server(self, data):
        return self.feed(SERVER, data)

    def repeat(self, side, count, byte):
        self.b += bytes([2 | side, count >> 8, count & 0xff, ord(byte)])
        return self

    def take(self, side, n):
        self.b += bytes([4 | side, n >> 8, n & 0xff])
        return self

    def eof(self, side):
        self.b.append(6 | side)
        return self

    def toggle_passive(self):
        self.b.append(8)
        return self

    def toggle_active(self):
        self.b.append(9)
        return self


def login(s):
    return (s.server("220 (vsFTPd 3.0.3)\r\n")
             .client("USER anonymous\r\n").server("331 Please specify the password.\r\n")
             .client("PASS guest@\r\n").server("230 Login successful.\r\n"))


def filter_seeds():
    seeds = {}
    s = login(Script())
    s.client("TYPE I\r\n").server("200 Switching to Binary mode.\r\n")
    s.client("PASV\r\n").server("227 Entering Passive Mode (10,0,0,9,117,48).\r\n")
    s.client("RETR file.bin\r\n").server("150 Opening BINARY mode data connection.\r\n")
    s.server("226 Transfer complete.\r\n")
    s.client("EPSV\r\n").server("227 Entering Passive Mode (10,0,0,9,117,49).\r\n")
    s.client("LIST\r\n").server("150 Here comes the directory listing.\r\n226 Directory send OK.\r\n")
    s.client("PORT 203,0,113,5,19,137\r\n").server("200 PORT command successful.\r\n")
    s.client("EPRT |1|203.0.113.5|5002|\r\n").server("200 EPRT command successful.\r\n")
    s.client("QUIT\r\n").server("221 Goodbye.\r\n").eof(SERVER).eof(CLIENT)
    seeds["session-ipv4"] = s

    s = login(Script(client="v6", passive="v6"))
    s.client("EPSV\r\n").server("227 Entering Passive Mode (10,0,0,9,117,48)\r\n")
    s.client("EPRT |2|2001:db8::5|5001|\r\n").server("200 PORT command successful.\r\n")
    s.client("PASV\r\nEPSV 1\r\nEPRT |1|203.0.113.5|5001|\r\n")
    s.client("QUIT\r\n").server("221 Goodbye.\r\n")
    seeds["session-ipv6-client"] = s

    s = login(Script(server="v6", active="v6"))
    s.client("PASV\r\n").server("229 Entering Extended Passive Mode (|||30000|)\r\n")
    s.client("PORT 203,0,113,5,19,137\r\n").server("200 EPRT command successful.\r\n")
    seeds["session-ipv6-server"] = s

    s = login(Script(client="mapped"))
    s.client("USER a\r\nLPSV\r\nPASS b\r\nPORT 10,0,0,99,19,137\r\nNOOP\r\n\r\nSYST\r\n")
    s.server("331 Password please\r\n").server("230 Logged in\r\n")
    s.server("200 NOOP ok\r\n215 UNIX Type: L8\r\n")
    s.client("PORT 203,0,113,5,0,21\r\n PORT 203,0,113,5,19,137\r\nP\xff\xf4ORT 10,0,0,99,19,137\r\n")
    s.client("PORT 256,0,113,5,19,137\r\nUSER a\rb\r\nLPRT 4,4,1,2,3,4,2,0,20\r\n")
    seeds["pipelined-refusals"] = s

    s = Script()
    s.client("LPSV\r\nUSER a\r\n")
    s.server("220-Welcome\r\n220-to the\r\n220 server\r\n")
    s.client("FEAT\r\nSTAT\r\nPASV\r\n")
    s.server("211-Features:\r\n EPRT\r\n EPSV\r\n PASV\r\n211 End\r\n")
    s.server("211-Status\r\n227 Entering Passive Mode (10,0,0,9,1,1)\r\n211 End\r\n")
    s.server("227-Entering Passive Mode\r\n227 Entering Passive Mode (10,0,0,9,117,48)\r\n")
    s.server("227 Entering Passive Mode (10,0,0,9,117,48)\r\n")   # unsolicited
    seeds["multiline"] = s

    s = login(Script())
    s.client("AUTH TLS\r\nPORT 10,0,0,99,19,137\r\n").server("234 Proceed with negotiation.\r\n")
    s.client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\x00\n")
    s.server("227 Entering Passive Mode (10,0,0,9,117,48).\r\n")
    seeds["auth-tls"] = s

    s = login(Script())
    s.client("AUTH SSL\r\n").server("504 Unknown AUTH type.\r\n")
    s.client("EPSV ALL\r\nPASV\r\nPORT 203,0,113,5,19,137\r\nEPSV\r\n")
    s.server("227 Entering Passive Mode (10,0,0,9,117,48).\r\n")
    seeds["auth-refused-epsv-all"] = s

    s = login(Script())
    s.client("RETR big.iso\r\n").server("150 Opening BINARY mode data connection.\r\n")
    s.client("\xff\xf4")
    s.client("\xff\xf2" "ABOR\r\n", urgent=0)
    s.server("426 Connection closed; transfer aborted.\r\n226 ABOR successful.\r\n")
    seeds["abor-urgent"] = s

    s = login(Script())
    s.client("NOOP\r\nRETR ").repeat(CLIENT, 8180, "f").client("\r\n")
    s.server("550 No such file.\r\n")
    s.repeat(SERVER, 9000, "x")
    seeds["long-lines"] = s

    s = login(Script())
    for _ in range(20):
        s.b += bytes([CLIENT, 5]) + b"NOOP\r\n"
    for _ in range(20):
        s.server("200 NOOP ok.\r\n")
    s.take(CLIENT, 3).take(SERVER, 1)
    s.client("PASV\r\n").toggle_passive().server("227 Entering Passive Mode (10,0,0,9,117,48).\r\n")
    s.client("PORT 203,0,113,5,19,137\r\n").toggle_active()
    s.client("PASV\r\n").server("227 Entering Passive Mode.\r\n")
    s.client("STOR x\r\nPORT 203,0,113,5,19,138").eof(CLIENT)
    s.server("226 ok\r\n221 partial").eof(SERVER)
    seeds["queue-hooks-eof"] = s
    return {name: bytes(s.b) for name, s in seeds.items()}


PROTO_SEEDS = [
    "PORT 192,168,1,2,117,48", "192,168,1,2,117,48", "1,2,3,4,256,1",
    "|1|132.235.1.2|6275|", "|2|1080::8:800:200C:417A|5282|", "!1!10.0.0.1!2000!",
    "|2|fe80::1%eth0|5000|",
    "227 Entering Passive Mode (127,0,0,1,182,175)",
    "227 Entering Passive Mode (192,168,1,2,117,48).",
    "227 =192,168,1,2,117,48", "227 Entering Passive Mode 192, 168, 1, 2, 117, 48",
    "227 Entering Passive Mode v2.0 (192,168,1,2,117,48)",
    "229 Entering Extended Passive Mode (|||6446|)", "229 (!!!65535!)",
    "230-Welcome", "220 Ready", "\xff\xf4\xff\xf2" "ABOR", "P\xff\xf4ORT 1,2,3,4,5,6",
    "  EPSV ALL", "AUTH TLS",
]

SPEC_SEEDS = {
    "readme": "tcp:8080:127.0.0.1:80\ntcp:127.0.0.1:2222:10.0.0.5:22\n"
              "both:5000:db.lan:5000\ntcp:30000-30009:192.0.2.10:40000-40009\n"
              "tcp:[::1]:8080:[fd00::5]:80\nftp:21:192.168.20.142:21\n",
    "overlap": "tcp:8080:127.0.0.1:80\nboth:0.0.0.0:8080:127.0.0.1:81\n"
               "udp:[::]:9000-9100:[::1]:19000-19100\n",
    "errors": "tcp:70000:127.0.0.1:80\nudp:1-10:127.0.0.1:5-9\ntcp:[::1:80:1.2.3.4:80\n"
              "ftp:21:[fd00::1]\nsctp:1:1.1.1.1:1\n",
    "scoped": "udp:[::1]:5353:[fe80::1%lo]:53\ntcp:[fe80::1%1]:8080:[fe80::2%lo]:80\n"
              "udp:[::1]:5354:[fe80::1%]:53\ntcp:[fe80::1%nosuch0]:8081:[::1]:80\n",
    "loops": "tcp:127.0.0.1:23456:127.0.0.1:23456\nudp:[::]:5353:[::1]:5353\n"
             "tcp:23450-23460:192.0.2.10:23450-23460\ntcp:8080:127.0.0.1:23455\n"
             "both:9090:0.0.0.0:9090\n",
}

CONFIG_SEEDS = {
    "small": 'wan_address = "0.0.0.0";\nforwards = ( { name = "web"; protocol = "tcp"; '
             'external_port = 8080; internal_ip = "127.0.0.1"; internal_port = 80; } );\n',
    "ranges-ipv6": 'wan_address = "::";\nlog_level = "debug";\nworkers = 2;\nbusy_poll = 50;\n'
                   'tcp = { connect_timeout = 2.5; idle_timeout = 60.0; splice = false; };\n'
                   'udp = { idle_timeout = 30.0; max_flows = 1024; };\n'
                   'forwards = (\n  { name = "game"; protocol = "both"; external_port = "30000-30009";\n'
                   '    internal_ip = "[fd00::5]"; internal_port = "40000-40009"; udp_idle_timeout = 5.0; },\n'
                   '  { name = "off"; protocol = "udp"; external_address = "127.0.0.1";\n'
                   '    external_port = 53; internal_ip = "nowhere.invalid"; enabled = false; }\n);\n',
    "ftp": 'ftp = { data_ports = "31000-31999"; data_timeout = 10.0; };\n'
           'forwards = ( { name = "ftp"; protocol = "tcp"; external_port = 2121;\n'
           '  internal_ip = "192.168.20.142"; internal_port = 21; ftp = true;\n'
           '  ftp_data_ports = "32000-32009"; } );\n',
    "errors": 'forwards = ( { name = "a"; protocol = "tcp"; external_port = 70000; internal_ip = "1.2.3.4"; },\n'
              '  { name = "b"; protocol = "udp"; external_port = 1; internal_ip = "1.2.3.4"; ftp = true; typo = 1; } );\n',
    "admission": 'max_connections = 5000;\nuser = "root";\ngroup = 0;\n'
                 'tcp = { keepalive = 120; };\nudp = { unreplied_timeout = 7.5; max_flows = 0; };\n'
                 'forwards = (\n  { name = "web"; protocol = "both"; external_port = 8080;\n'
                 '    internal_ip = "192.0.2.10"; max_connections = 100;\n'
                 '    max_connections_per_source = 0; max_flows_per_source = 16;\n'
                 '    allow = [ "192.168.0.0/16", "2001:db8::/32", "::ffff:10.0.0.0/104" ];\n'
                 '    deny = ( "0.0.0.0/0", "::/0" ); freebind = true; },\n'
                 '  { name = "loop"; protocol = "udp"; external_address = "[fe80::1%lo]";\n'
                 '    external_port = 5353; internal_ip = "[::1]"; deny = [ "10.0.0.1/8" ]; }\n);\n',
    "loop": 'forwards = ( { protocol = "tcp"; external_port = 23456; internal_ip = "127.0.0.1"; },\n'
            '  { protocol = "udp"; external_address = "127.0.0.1"; external_port = "5000-5009";\n'
            '    internal_ip = "0.0.0.0"; internal_port = "4995-5004"; } );\n',
}

# fuzz_admin: byte 0 picks the endpoint ("0": the one asking for the bearer
# token, "1": the open one on a Unix socket, "2": the open one on TCP, where
# the Host header is checked), "<" (0x3c): the token one, wrong tokens
# allowed (each answered after a second); bits 6-7 what the API's apply
# answers ("A"/"B": 1 on the open endpoint ...). The rest is what the client
# sends.
ADMIN_TOKEN = "fuzz-token-0123456789"
SESSION = "portrelay_session=" + "0123456789abcdef" * 4
RULE = ('{"name":"new","protocol":"tcp","external_address":"127.0.0.1","external_port":18081,'
        '"internal_ip":"127.0.0.1","internal_port":80,"enabled":true}')


def http(method, path, headers=(), body="", version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, path, version)] + list(headers)
    if body:
        lines.append("Content-Length: %d" % len(body.encode("latin-1")))
    return "\r\n".join(lines) + "\r\n\r\n" + body


BEARER = "Authorization: Bearer " + ADMIN_TOKEN
ADMIN_SEEDS = {
    "metrics-token": "0GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % ADMIN_TOKEN,
    "status-token": "0GET /status HTTP/1.0\r\nAuthorization: bearer %s\r\n\r\n" % ADMIN_TOKEN,
    "no-token": "0GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "wrong-token": "<GET /metrics HTTP/1.1\r\nAuthorization: Bearer fuzz-token-012345678\r\n\r\n",
    "basic-auth": "0GET /status HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
    "metrics": "1GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9330\r\nAccept: */*\r\n\r\n",
    "status": "1GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    "head": "1HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "post": "1POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "put-token": "0PUT /status HTTP/1.1\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\n\r\n" % ADMIN_TOKEN,
    "delete": "1DELETE /status HTTP/1.1\r\n\r\n",
    "options": "1OPTIONS * HTTP/1.1\r\n\r\n",
    "not-found": "1GET /metrics/ HTTP/1.1\r\n\r\n",
    "query": "1GET /metrics?name[]=x&y=%41 HTTP/1.1\r\n\r\n",
    "absolute-uri": "1GET http://127.0.0.1:9330/status?x#frag HTTP/1.1\r\n\r\n",
    "encoded-path": "1GET /%6detrics HTTP/1.1\r\n\r\n",
    "pipelined": "1GET /metrics HTTP/1.1\r\n\r\nHEAD /status HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n",
    "pipelined-token": ("0GET /status HTTP/1.1\r\nAuthorization: Bearer %s\r\n\r\n"
                        "GET /metrics HTTP/1.1\r\n\r\n" % ADMIN_TOKEN),
    "http09": "1GET /metrics\r\n\r\n",
    "http10-keepalive": "1GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "chunked": "1GET /status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "folded-header": "0GET /metrics HTTP/1.1\r\nAuthorization: Bearer\r\n %s\r\n\r\n" % ADMIN_TOKEN,
    "bare-lf": "1GET /metrics HTTP/1.1\nHost: x\n\n",
    "expect": "1GET /metrics HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    "long-header": "1GET /metrics HTTP/1.1\r\nX-Long: " + "a" * 9000 + "\r\n\r\n",
    "partial": "1GET /metr",
    "garbage": "1\x00\xff\r\n\r\n",
    "bad-version": "1GET /metrics HTTP/9.9\r\n\r\n",
    # The page and the login (issue 13).
    "login-page": "0" + http("GET", "/", ["Host: 127.0.0.1:9330", "Accept: text/html"]),
    "login-page-head": "0" + http("HEAD", "/index.html", ["Host: 127.0.0.1:9330"]),
    "page-token": "0" + http("GET", "/", [BEARER]) + http("GET", "/app.js", [BEARER]),
    "app-js-no-token": "0" + http("GET", "/app.js", ["Host: localhost"]),
    "style": "0" + http("GET", "/style.css") + http("HEAD", "/favicon.svg"),
    "favicon-post": "0" + http("POST", "/favicon.svg", [], "x"),
    "login": "0" + http("POST", "/login", ["Host: 127.0.0.1:9330", "Origin: http://127.0.0.1:9330",
                                          "Sec-Fetch-Site: same-origin",
                                          "Content-Type: application/x-www-form-urlencoded"],
                        "token=" + ADMIN_TOKEN),
    "login-then-page": "0" + http("POST", "/login", [], "token=" + ADMIN_TOKEN) +
                       http("GET", "/", ["Cookie: " + SESSION]),
    "login-empty": "0" + http("POST", "/login", [], "token="),
    "login-no-body": "0" + http("POST", "/login"),
    "login-get": "0" + http("GET", "/login") + http("PUT", "/logout"),
    "login-wrong": "<" + http("POST", "/login", ["Content-Type: application/x-www-form-urlencoded"],
                              "token=guess"),
    "login-open": "1" + http("POST", "/login", [], "token=x"),
    "logout": "0" + http("POST", "/logout", ["Cookie: theme=dark; " + SESSION + "; x=y"]),
    "cookie-page": "0" + http("GET", "/", ["Cookie: a=b; " + SESSION]) +
                   http("GET", "/api/forwards", ["Cookie: " + SESSION.upper()]),
    "csrf-origin": "0" + http("POST", "/api/forwards", [BEARER, "Host: 127.0.0.1:9330",
                                                      "Origin: http://evil.example",
                                                      "Content-Type: application/json"], RULE),
    "csrf-fetch-site": "0" + http("DELETE", "/api/forwards/api%20one",
                                  [BEARER, "Sec-Fetch-Site: cross-site"]),
    "csrf-null-origin": "1" + http("POST", "/logout", ["Host: localhost", "Origin: null"]),
    "same-origin-https": "1" + http("PUT", "/api/forwards/api%20one",
                                    ["Host: localhost:9330", "Origin: https://localhost:9330",
                                     "Sec-Fetch-Site: same-origin"], RULE),
    "host-name": "2" + http("GET", "/metrics", ["Host: evil.example"]),
    "host-rebind": "2" + http("GET", "/api/forwards", ["Host: 127.0.0.1.evil.example:9330"]),
    "host-ip": "2" + http("GET", "/api/forwards", ["Host: 127.0.0.1:9330"]) +
               http("HEAD", "/", ["Host: [::1]:9330"]) + http("GET", "/status", ["Host: LOCALHOST"]),
    "host-none": "2" + http("GET", "/", [], version="HTTP/1.0"),
    # The API through the endpoint.
    "api-list": "0" + http("GET", "/api/forwards", [BEARER]),
    "api-list-no-token": "0" + http("GET", "/api/forwards/", []),
    "api-get": "1" + http("GET", "/api/forwards/api%2Ftwo%25") + http("HEAD", "/api/forwards/web%20%22one%22%5C"),
    "api-post": "1" + http("POST", "/api/forwards", ["Content-Type: application/json"], RULE),
    "api-post-token": "0" + http("POST", "/api/forwards", [BEARER, "Content-Type: application/json"], RULE),
    "api-post-bad": "A" + http("POST", "/api/forwards", [], '{"name":"x","external_port":70000}'),
    "api-put": "\x81" + http("PUT", "/api/forwards/api%20one", [],
                             '{"protocol":"udp","external_port":"41000-41001","internal_ip":"backend.test"}'),
    "api-put-readonly": "1" + http("PUT", "/api/forwards/ftp", [], RULE),
    "api-enable": "\xc1" + http("POST", "/api/forwards/api%2Ftwo%25/enable") +
                  http("POST", "/api/forwards/api%20one/disable"),
    "api-delete": "1" + http("DELETE", "/api/forwards/api%20one") + http("DELETE", "/api/forwards/nope"),
    "api-method": "1" + http("PATCH", "/api/forwards") + http("OPTIONS", "/api/forwards/api%20one/enable"),
    "api-chunked": "1POST /api/forwards HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
    "api-bad-path": "1" + http("GET", "/api") + http("GET", "/api/forwards/a/b") + http("GET", "/api/forwards/%00"),
}

# fuzz_api: byte 0 = method (bits 0-2: GET HEAD POST PUT DELETE OTHER POST
# PUT), path (bits 3-5, see fuzz_api.c), what apply answers (bits 6-7); for
# paths 5-7 the path comes first, up to a newline; the rest is the body.
GET, HEAD, POST, PUT, DELETE, OTHER = range(6)
COLLECTION, ONE, ONE_DISABLE, TWO_ENABLE, READ_ONLY, ENCODED, SUFFIX, RAW = range(8)


def api(method, kind, rest="", result=0):
    return chr(method | kind << 3 | result << 6) + rest


API_SEEDS = {
    "list": api(GET, COLLECTION),
    "head-one": api(HEAD, ONE),
    "get-read-only": api(GET, READ_ONLY),
    "get-encoded": api(GET, ENCODED, "api/two%\n"),
    "post": api(POST, COLLECTION, RULE),
    "post-range": api(POST, COLLECTION, '{"name":"range","protocol":"both","external_port":"30000-30009",'
                      '"internal_ip":"192.0.2.10","internal_port":"40000-40009"}'),
    "post-all-fields": api(POST, COLLECTION,
                           '{"name":"ftp2","protocol":"tcp","external_address":"127.0.0.1",'
                           '"external_port":2121,"internal_ip":"ftp.test","internal_port":21,'
                           '"enabled":true,"ftp":true,"ftp_data_ports":"31000-31009",'
                           '"access_log":true,"max_connections":100,"max_connections_per_source":5,'
                           '"max_flows_per_source":7,"allow":["10.0.0.0/8","2001:db8::/32"],'
                           '"deny":["0.0.0.0/0"],"freebind":true}', 1),
    "post-udp": api(POST, COLLECTION, '{"name":"dns","protocol":"udp","external_address":"::1",'
                    '"external_port":5353,"internal_ip":"localhost","internal_port":53,'
                    '"udp_idle_timeout":2.5,"proxy_protocol":"v2","source":"client"}', 2),
    "post-disabled": api(POST, COLLECTION, '{"name":"later","protocol":"tcp","external_port":1,'
                         '"internal_ip":"nowhere.invalid","enabled":false,"max_connections":null}', 3),
    "post-output-fields": api(POST, COLLECTION,
                              '{"name":"copy","protocol":"tcp","external_address":"0.0.0.0",'
                              '"external_port":18082,"internal_ip":"127.0.0.1","internal_port":80,'
                              '"enabled":true,"read_only":false,"origin":"x:1","counters":'
                              '{"tcp_connections_active":0,"bytes_to_client":0}}'),
    "post-port-70000": api(POST, COLLECTION, '{"name":"a","protocol":"tcp","external_port":70000,"internal_ip":"1.2.3.4"}'),
    "post-reversed": api(POST, COLLECTION, '{"name":"a","protocol":"tcp","external_port":"10-5","internal_ip":"1.2.3.4"}'),
    "post-widths": api(POST, COLLECTION, '{"name":"a","protocol":"udp","external_port":"10-15",'
                       '"internal_ip":"1.2.3.4","internal_port":"20-21"}'),
    "post-missing": api(POST, COLLECTION, '{"name":"a","external_port":1}'),
    "post-yes": api(POST, COLLECTION, '{"name":"a","protocol":"tcp","external_port":1,"internal_ip":"1.2.3.4","enabled":"yes"}'),
    "post-newline-name": api(POST, COLLECTION, '{"name":"a\\nb","protocol":"tcp","external_port":1,"internal_ip":"1.2.3.4"}'),
    "post-object": api(POST, COLLECTION, '{"name":"a","protocol":{"x":1}}'),
    "post-numbers-list": api(POST, COLLECTION, '{"name":"a","allow":[1,2]}'),
    "post-unknown": api(POST, COLLECTION, '{"name":"a","protocol":"tcp","colour":"red","a b":1}'),
    "post-duplicate": api(POST, COLLECTION, '{"name":"a","name":"b"}'),
    "post-not-json": api(POST, COLLECTION, '{"name":'),
    "post-array": api(POST, COLLECTION, '[{"name":"a"}]'),
    "post-no-name": api(POST, COLLECTION, '{"protocol":"tcp","external_port":1,"internal_ip":"1.2.3.4"}'),
    "post-name-taken": api(POST, COLLECTION, '{"name":"web","protocol":"tcp","external_port":1,"internal_ip":"1.2.3.4"}'),
    "post-overlap": api(POST, COLLECTION, '{"name":"x","protocol":"udp","external_address":"127.0.0.1",'
                        '"external_port":"40005-40020","internal_ip":"1.2.3.4","enabled":true}'),
    # fuzz_api's "web" (both) and "api one" (tcp) are on 127.0.0.1:47101 and :47103 when free.
    "post-overlap-web": api(POST, COLLECTION, '{"name":"x","protocol":"udp","external_port":"47100-47101",'
                            '"internal_ip":"192.0.2.1","internal_port":"100-101"}'),
    "post-overlap-one": api(POST, COLLECTION, '{"name":"x","protocol":"tcp","external_address":"127.0.0.1",'
                            '"external_port":47103,"internal_ip":"192.0.2.1"}'),
    "post-no-overlap": api(POST, COLLECTION, '{"name":"x","protocol":"udp","external_address":"127.0.0.1",'
                           '"external_port":47103,"internal_ip":"192.0.2.1"}'),
    "put-onto-web": api(PUT, ONE, '{"protocol":"tcp","external_address":"0.0.0.0",'
                        '"external_port":47101,"internal_ip":"192.0.2.1"}'),
    "post-loop": api(POST, COLLECTION, '{"name":"loop","protocol":"tcp","external_address":"127.0.0.1",'
                     '"external_port":23456,"internal_ip":"127.0.0.1","internal_port":23456}'),
    "post-big-numbers": api(POST, COLLECTION, '{"name":"a","protocol":"tcp","external_port":1,'
                            '"internal_ip":"1.2.3.4","max_connections":4294967296,'
                            '"udp_idle_timeout":1e300}'),
    "post-scoped": api(POST, COLLECTION, '{"name":"v6","protocol":"tcp","external_address":"[::1]",'
                       '"external_port":18083,"internal_ip":"[fe80::1%lo]","internal_port":80}'),
    "put-same-name": api(PUT, ONE, '{"protocol":"tcp","external_address":"127.0.0.1","external_port":18084,'
                         '"internal_ip":"192.0.2.8"}'),
    "put-rename": api(PUT, ONE, '{"name":"api renamed","protocol":"both","external_port":"18085-18086",'
                      '"internal_ip":"backend.test","internal_port":"28085-28086"}', 1),
    "put-name-null": api(PUT, ONE, '{"name":null,"protocol":"tcp"}'),
    "put-read-only": api(PUT, READ_ONLY, RULE),
    "put-collection": api(PUT, COLLECTION, RULE),
    "put-encoded": api(PUT, ENCODED, 'api/two%\n{"protocol":"udp","external_port":"40000-40009",'
                       '"internal_ip":"backend.test","internal_port":"50000-50009","enabled":true}', 2),
    "disable": api(POST, ONE_DISABLE),
    "enable": api(POST, TWO_ENABLE, "", 1),
    "enable-get": api(GET, TWO_ENABLE),
    "enable-suffix": api(POST, SUFFIX, "/api%20one/enable\n", 3),
    "disable-read-only": api(POST, SUFFIX, "/web/disable\n"),
    "delete": api(DELETE, ONE),
    "delete-encoded": api(DELETE, ENCODED, "api/two%\n", 2),
    "delete-read-only": api(DELETE, READ_ONLY),
    "delete-collection": api(DELETE, COLLECTION),
    "other": api(OTHER, ONE),
    "other-collection": api(OTHER, COLLECTION),
    "raw-trailing-slash": api(POST, RAW, "/api/forwards/\n" + RULE),
    "raw-api": api(GET, RAW, "/api\n"),
    "raw-two-levels": api(GET, SUFFIX, "/a/b\n"),
    "raw-nul": api(GET, SUFFIX, "/%00\n"),
    "raw-plus": api(GET, SUFFIX, "/api+one\n"),
    "raw-bad-escape": api(DELETE, SUFFIX, "/%zz\n"),
    "raw-long": api(GET, SUFFIX, "/" + "a" * 300 + "\n"),
}

def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("latin-1")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    for name, data in filter_seeds().items():
        write("ftp_filter", name, data)
    for i, line in enumerate(PROTO_SEEDS):
        write("ftp_proto", "line-%02d" % i, line)
    for name, text in SPEC_SEEDS.items():
        write("spec", name, text)
    for name, text in CONFIG_SEEDS.items():
        write("config", name, text)
    for name, text in ADMIN_SEEDS.items():
        write("admin", name, text)
    for name, text in API_SEEDS.items():
        write("api", name, text)
    with open(os.path.join(ROOT, "etc", "portrelay.conf"), "rb") as f:
        write("config", "etc-portrelay.conf", f.read())


if __name__ == "__main__":
    main()
