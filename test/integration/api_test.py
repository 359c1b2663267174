#!/usr/bin/env python3
"""Integration tests of the Port Forwarding API (issue 13), through the real binary on
loopback. The contract is INTERFACE.md's "The Port Forwarding page" and the API's
description in README.md.

    api_test.py endpoints   every endpoint: the list (read-only rules with their origin,
                            counters that follow TCP and UDP traffic), POST (201,
                            Location; TCP echoes and UDP answers through the new port,
                            a port range), GET one, PUT (retarget: new connections reach
                            the new server, an open one stays; GET-edit-PUT; rename;
                            another port; tcp to udp), enable/disable (the port refuses,
                            then works; a UDP rule with a live flow, five times), DELETE
                            (the port refuses, 404 after, the port free again), a name
                            with spaces, a slash and markup through percent-encoding, a
                            name ending in /disable, requests on a kept-alive connection
    api_test.py errors      every error with its status and field, each changing nothing
                            (the list and the rules file byte for byte; the port not
                            opened): bad JSON, not an object, missing fields, bad ports
                            and ranges, unknown fields, wrong types, a host that does not
                            resolve, bad names, duplicates, overlaps with read-only and
                            API rules, ports held by another program, read-only rules
                            (403), unknown names (404), wrong methods (405, Allow), bodies
                            too large (413); the limits themselves accepted
    api_test.py auth        no credentials (401 at once, the login page), a wrong bearer
                            or login (401 after >= 1 s, logged), the login form's cookie
                            (attributes; GET and same-origin POST work), CSRF (a foreign
                            Origin or Sec-Fetch-Site refused whatever the credentials),
                            logout, the security headers, a flood of wrong tokens (few
                            compared, the rest 429; an open session unaffected); without
                            token_file: CSRF, the Host check, 409 without rules_file
    api_test.py persist     SIGTERM and a restart on the same files: the API's rules are
                            back and work, read-only ones stay read-only, the hand-written
                            file is byte-identical, the rules file holds no temporary file
                            beside it; a change while SIGTERM waits: 503; a rule added to
                            the rules file by hand appears at SIGHUP; a rules file that
                            cannot be written: 500, nothing changed
    api_test.py concurrent  8 threads adding 10 rules each at once, plus names and a port
                            raced for: every reply 201 or 409, the list holds exactly the
                            winners, and so does the rules file after a restart; 8
                            DELETEs or renames of one rule at once: one 200, the rest 404
    api_test.py reload      SIGHUP every 50 ms during 30 edits: every edit succeeds, the
                            final rules are what the edits imply, no reload failed, a TCP
                            connection opened at the start still echoes at the end
    api_test.py empty       an admin listener and a rules file but no forward yet: it
                            starts, takes a first rule, the last one can be disabled and
                            deleted

Without an argument every part runs. PORTRELAY_BIN names the binary (meson sets it);
without it the test skips (exit 77). PORTRELAY_TEST_QUIET=1 stops echoing the relay's
stderr. Waits are on log lines, replies or socket events, each bounded by a deadline
that only stops a hang; no sleep stands in for readiness.
"""
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from itest_lib import (check, exit_status, free_port, taken_ports as _taken, tcp_echo_server,
                       tcp_server, udp_echo_server)

BIN = os.environ.get('PORTRELAY_BIN')
QUIET = os.environ.get('PORTRELAY_TEST_QUIET') == '1'
SKIP = 77
LINE_TIMEOUT = 15.0      # bounds a wait for one log line (a hang, not a latency)
IO_TIMEOUT = 15.0        # bounds one request or socket operation
TOKEN = 'c0ffee' + '%026x' % random.getrandbits(104)
EVIL = 'http://evil.example'
COUNTER_KEYS = {'tcp_connections_active', 'tcp_connections_total', 'udp_flows_active',
                'udp_flows_total', 'bytes_to_internal', 'bytes_to_client',
                'udp_datagrams_to_internal', 'udp_datagrams_to_client'}
CSP_REQUIRED = ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"]


class Abort(Exception):
    """A step the rest of a part depends on did not happen."""


def require(cond, what):
    if not check(cond, what):
        raise Abort(what)


def free_range(width):
    """The first port of `width` consecutive free ports."""
    for _ in range(200):
        first = free_port()
        ports = [first + i for i in range(1, width)]
        if all(p < 32000 and p not in _taken for p in ports):
            try:
                socks = []
                for p in ports:
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        s = socket.socket(socket.AF_INET, kind)
                        socks.append(s)
                        s.bind(('127.0.0.1', p))
            except OSError:
                continue
            finally:
                for s in socks:
                    s.close()
            _taken.update(ports)
            return first
    raise RuntimeError('no free range')


# ---- servers and clients -------------------------------------------------------------

def banner_echo_server(tag, port=0):
    """A TCP server that sends TAG and a newline on accept, then echoes; returns its port.
    The banner tells a client which server a forward reached."""
    def serve(conn):
        with conn:
            try:
                conn.sendall(tag.encode() + b'\n')
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return
    return tcp_server(serve, port=port)


def udp_echo_logged():
    """A UDP echo server; returns (port, the list of payloads it received)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(('127.0.0.1', 0))
    heard = []

    def loop():
        while True:
            data, peer = sock.recvfrom(65536)
            heard.append(data)
            try:
                sock.sendto(data, peer)
            except OSError:
                pass
    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1], heard


def recv_exact(sock, n):
    data = b''
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_line(sock):
    data = b''
    while not data.endswith(b'\n'):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors='replace').strip()


class Conn:
    """A TCP connection through a forward to a banner server: its banner, then echoes."""

    def __init__(self, port, banner=True):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=IO_TIMEOUT)
        self.banner = recv_line(self.sock) if banner else None

    def echo(self, payload=b'ping'):
        try:
            self.sock.sendall(payload)
            return recv_exact(self.sock, len(payload)) == payload
        except OSError:
            return False

    def close(self):
        self.sock.close()


def tcp_banner(port):
    """The banner of the server a new connection to `port` reaches, after one echo
    through it; 'refused', or an error text."""
    try:
        c = Conn(port)
    except ConnectionRefusedError:
        return 'refused'
    except OSError as e:
        return 'error: %s' % e
    try:
        if not c.banner:
            return 'error: no banner'
        return c.banner if c.echo(b'hello %d' % port) else 'error: no echo'
    finally:
        c.close()


def tcp_refused(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=IO_TIMEOUT).close()
        return False
    except ConnectionRefusedError:
        return True


def udp_ask(port, payload=b'question', tries=3):
    """The reply a datagram to 127.0.0.1:port gets ('refused' for ICMP port unreachable,
    None for silence), from a new socket (a new flow)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(('127.0.0.1', port))
        s.settimeout(1.0)
        for _ in range(tries):
            try:
                s.send(payload)
                return s.recv(65536)
            except ConnectionRefusedError:
                return 'refused'
            except socket.timeout:
                continue
    return None


# ---- the relay -----------------------------------------------------------------------

class Relay:
    """PORTRELAY_BIN -c CONF (plus args); started on its `ready` line; stopped by PID
    with SIGTERM. The file is the test's: this class never writes it."""

    def __init__(self, conf_path, args=(), expect_ready=True):
        self.proc = subprocess.Popen([BIN, '-c', conf_path, *args], stderr=subprocess.PIPE,
                                     text=True)
        self.log = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if expect_ready and not self.wait_line(' ready: '):
            self.stop()
            raise Abort('relay not ready:\n' + self.text())

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.log.append(line)
                self.cond.notify_all()
            if not QUIET:
                sys.stderr.write('relay| ' + line)
        with self.cond:
            self.cond.notify_all()

    def text(self):
        with self.cond:
            return ''.join(self.log)

    def count(self, pattern):
        with self.cond:
            return sum(bool(re.search(pattern, line)) for line in self.log)

    def wait_line(self, needle, count=1, timeout=LINE_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(needle in line for line in self.log) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def stop(self, sig=signal.SIGTERM):
        """Its exit status (after SIGTERM; killed after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = 'killed: no exit within 15 s of SIGTERM'
        self.reader.join(5)
        reports = [l for l in self.log if 'AddressSanitizer' in l or 'LeakSanitizer' in l or 'runtime error:' in l]
        check(not reports, 'no sanitizer report in the relay\'s log' + ''.join('\n  ' + l.rstrip() for l in reports[:5]))
        return code


class Setup:
    """A temporary directory with a token file, a rules file in a directory of its own,
    and a hand-written configuration: wan_address 127.0.0.1, the admin listener on a
    free port, read-only forwards ro-tcp (to a TCP echo server) and ro-udp (to a UDP
    echo server), one per line so that their origins are exact, and an -L forward
    ro-cli. The configuration's bytes are kept to compare later."""

    def __init__(self, tmp, token=True, rules=True, extra=''):
        self.tmp = tmp
        self.admin_port = free_port()
        self.token_path = os.path.join(tmp, 'admin.token')
        with open(self.token_path, 'w') as f:
            f.write(TOKEN + '\n')
        self.rules_dir = os.path.join(tmp, 'rules')
        os.mkdir(self.rules_dir)
        self.rules_path = os.path.join(self.rules_dir, 'forwards.conf')
        self.echo = tcp_echo_server()
        self.uecho = udp_echo_server()
        self.ro_tcp, self.ro_udp, self.ro_cli = free_port(), free_port(), free_port()
        admin = f'listen = "127.0.0.1:{self.admin_port}";'
        if token:
            admin += f' token_file = "{self.token_path}";'
        if rules:
            admin += f' rules_file = "{self.rules_path}";'
        lines = [
            '# Hand-written by api_test.py: the relay must never rewrite this file.',
            'wan_address = "127.0.0.1";   # a comment that must stay',
            extra,
            f'admin = {{ {admin} }};',
            'forwards = (',
            f'  {{ name = "ro-tcp"; protocol = "tcp"; external_port = {self.ro_tcp}; '
            f'internal_ip = "127.0.0.1"; internal_port = {self.echo}; }},',
            f'  {{ name = "ro-udp"; protocol = "udp"; external_port = {self.ro_udp}; '
            f'internal_ip = "127.0.0.1"; internal_port = {self.uecho}; }}',
            ');',
            '',
        ]
        self.conf_path = os.path.join(tmp, 'portrelay.conf')
        self.line_of = {'ro-tcp': lines.index(next(l for l in lines if '"ro-tcp"' in l)) + 1,
                        'ro-udp': lines.index(next(l for l in lines if '"ro-udp"' in l)) + 1}
        self.conf_bytes = '\n'.join(lines).encode()
        with open(self.conf_path, 'wb') as f:
            f.write(self.conf_bytes)
        self.cli_spec = f'tcp:{self.ro_cli}:127.0.0.1:{self.echo}'
        self.relay = None

    def start(self):
        self.relay = Relay(self.conf_path, ['-L', self.cli_spec])
        return self.relay

    def rules_bytes(self):
        try:
            with open(self.rules_path, 'rb') as f:
                return f.read()
        except FileNotFoundError:
            return None


# ---- HTTP ----------------------------------------------------------------------------

class Reply:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers          # http.client.HTTPMessage (case-insensitive get)
        self.body = body                # bytes
        self.elapsed = elapsed
        try:
            self.json = json.loads(body.decode()) if body else None
        except ValueError:
            self.json = None

    def field(self):
        return self.json.get('field') if isinstance(self.json, dict) else None

    def __repr__(self):
        return f'{self.status} {self.body[:300]!r}'


_DEFAULT = object()
NO_PORT = object()


class Api:
    """Requests to the admin listener, each on a connection of its own.
    api(method, path, body, token=..., cookie=..., origin=..., headers=...) -> Reply.
    body: a dict or list is sent as JSON, str/bytes as they are. token defaults to the
    admin token (None: no Authorization header)."""

    def __init__(self, port, token=TOKEN):
        self.port = port
        self.token = token

    def __call__(self, method, path, body=None, token=_DEFAULT, cookie=None, origin=None,
                 headers=None, timeout=IO_TIMEOUT):
        token = self.token if token is _DEFAULT else token
        hdrs = {}
        if token is not None:
            hdrs['Authorization'] = 'Bearer ' + token
        if cookie is not None:
            hdrs['Cookie'] = cookie
        if origin is not None:
            hdrs['Origin'] = origin
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs['Content-Type'] = 'application/json'
        elif isinstance(body, str):
            body = body.encode()
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        t0 = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, resp.headers, data, time.monotonic() - t0)
        except (OSError, http.client.HTTPException) as e:
            return Reply(None, http.client.HTTPMessage(), ('%s: %s' % (type(e).__name__, e)).encode(),
                         time.monotonic() - t0)
        finally:
            conn.close()

    def same_origin(self):
        return f'http://127.0.0.1:{self.port}'

    def rules(self):
        """GET /api/forwards: the list (None if not 200 and a list)."""
        r = self('GET', '/api/forwards')
        return r.json if r.status == 200 and isinstance(r.json, list) else None

    def rule(self, name):
        r = self('GET', path_of(name))
        return r.json if r.status == 200 else None


def path_of(name, action=None):
    path = '/api/forwards/' + urllib.parse.quote(name, safe='')
    return path + '/' + action if action else path


def without_counters(rules):
    if rules is None:
        return None
    return [{k: v for k, v in r.items() if k != 'counters'} for r in rules]


def by_name(rules):
    return {r['name']: r for r in rules or []}


def api_names(rules):
    return [r['name'] for r in rules or [] if r.get('read_only') is False]


def state(api, setup):
    """What an error must leave as it was: the list (without counters) and the rules
    file's bytes."""
    return without_counters(api.rules()), setup.rules_bytes()


def unchanged(before, after):
    """Two state()s are the same, and the list was read."""
    return before[0] is not None and after == before


def wait_for(pred, timeout=10.0, step=0.05):
    """Polls pred() until it returns a true value or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def tcp_rule(name, port, target, **more):
    rule = {'name': name, 'protocol': 'tcp', 'external_port': port, 'internal_ip': '127.0.0.1',
            'internal_port': target}
    rule.update(more)
    return rule


def udp_rule(name, port, target, **more):
    return tcp_rule(name, port, target, protocol='udp', **more)


def must_post(api, rule, what):
    r = api('POST', '/api/forwards', rule)
    require(r.status == 201, f'{what}: POST {rule["name"]!r} -> 201 (got {r})')
    return r


def security_headers(r, what):
    csp = r.headers.get('Content-Security-Policy') or ''
    check(all(d in [p.strip() for p in csp.split(';')] for d in CSP_REQUIRED)
          and 'unsafe-inline' not in csp and 'unsafe-eval' not in csp and '*' not in csp,
          f'{what}: Content-Security-Policy {csp!r} has {CSP_REQUIRED} and no unsafe-inline/eval')
    check(r.headers.get('X-Frame-Options', '').upper() == 'DENY',
          f'{what}: X-Frame-Options DENY (got {r.headers.get("X-Frame-Options")!r})')
    check(r.headers.get('X-Content-Type-Options', '').lower() == 'nosniff',
          f'{what}: X-Content-Type-Options nosniff (got {r.headers.get("X-Content-Type-Options")!r})')
    # no-referrer was the contract's; same-origin also sends nothing to other sites, and
    # under no-referrer Chrome sends "Origin: null" with the page's own login form.
    check(r.headers.get('Referrer-Policy', '').lower() in ('no-referrer', 'same-origin'),
          f'{what}: Referrer-Policy no-referrer or same-origin (got {r.headers.get("Referrer-Policy")!r})')
    check(r.headers.get('Access-Control-Allow-Origin') is None,
          f'{what}: no Access-Control-Allow-Origin (got {r.headers.get("Access-Control-Allow-Origin")!r})')
    check('no-store' in (r.headers.get('Cache-Control') or ''),
          f'{what}: Cache-Control no-store (got {r.headers.get("Cache-Control")!r})')


# ---- endpoints -----------------------------------------------------------------------

def test_endpoints(tmp):
    s = Setup(tmp)
    relay = s.start()
    api = Api(s.admin_port)
    try:
        # The list: read-only rules in configuration order, with origin and counters.
        r = api('GET', '/api/forwards')
        require(r.status == 200 and isinstance(r.json, list),
                f'GET /api/forwards -> 200 and a JSON array (got {r})')
        check('application/json' in (r.headers.get('Content-Type') or ''),
              f'its Content-Type is JSON (got {r.headers.get("Content-Type")!r})')
        rules = r.json
        check([x.get('name') for x in rules][:2] == ['ro-tcp', 'ro-udp'] and len(rules) == 3,
              f'the list holds the file\'s two forwards then the -L one, in order '
              f'(got {[x.get("name") for x in rules]})')
        check(all(x.get('read_only') is True for x in rules),
              'each of them is read_only: true')
        named = by_name(rules)
        for name in ('ro-tcp', 'ro-udp'):
            want = f'{s.conf_path}:{s.line_of[name]}'
            check(named.get(name, {}).get('origin') == want,
                  f'{name}: origin {want!r} (got {named.get(name, {}).get("origin")!r})')
        cli = [x for x in rules if x.get('name') not in ('ro-tcp', 'ro-udp')]
        check(len(cli) == 1 and str(cli[0].get('origin', '')).startswith('-L')
              and s.cli_spec in cli[0].get('origin', ''),
              f'the -L forward: origin "-L \'{s.cli_spec}\'" (got {cli[0].get("origin") if cli else None!r})')
        ro = named.get('ro-tcp', {})
        check(ro.get('protocol') == 'tcp' and ro.get('external_port') == s.ro_tcp and
              ro.get('internal_ip') == '127.0.0.1' and ro.get('internal_port') == s.echo and
              ro.get('enabled') is True,
              f'ro-tcp has the file\'s fields (got {ro})')
        check(all(isinstance(x.get('counters'), dict) and set(x['counters']) >= COUNTER_KEYS and
                  all(type(x['counters'][k]) is int for k in COUNTER_KEYS) for x in rules),
              f'every rule has integer counters {sorted(COUNTER_KEYS)}')

        # Counters follow TCP traffic through a read-only forward.
        def counters(name):
            return (api.rule(name) or {}).get('counters', {})
        before = counters('ro-tcp')
        c = Conn(s.ro_tcp, banner=False)
        payload = os.urandom(1000)
        check(c.echo(payload), 'ro-tcp echoes 1000 bytes')
        got = wait_for(lambda: counters('ro-tcp').get('tcp_connections_active') == 1)
        check(got, f'tcp_connections_active is 1 while a connection is open (got {counters("ro-tcp")})')
        c.close()

        def tcp_moved():
            now = counters('ro-tcp')
            return (now.get('tcp_connections_active') == 0 and
                    now.get('tcp_connections_total', 0) - before.get('tcp_connections_total', 0) == 1 and
                    now.get('bytes_to_internal', 0) - before.get('bytes_to_internal', 0) == 1000 and
                    now.get('bytes_to_client', 0) - before.get('bytes_to_client', 0) == 1000)
        check(wait_for(tcp_moved),
              f'after the connection: tcp_connections_total +1, bytes_to_internal +1000, '
              f'bytes_to_client +1000, active 0 (before {before}, after {counters("ro-tcp")})')

        # ... and UDP traffic: one flow, three datagrams each way.
        before = counters('ro-udp')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.connect(('127.0.0.1', s.ro_udp))
            u.settimeout(IO_TIMEOUT)
            answers = 0
            for i in range(3):
                u.send(b'datagram %d' % i)
                answers += u.recv(100) == b'datagram %d' % i
        check(answers == 3, f'ro-udp answers 3 datagrams (got {answers})')

        def udp_moved():
            now = counters('ro-udp')
            return (now.get('udp_flows_total', 0) - before.get('udp_flows_total', 0) == 1 and
                    now.get('udp_datagrams_to_internal', 0) - before.get('udp_datagrams_to_internal', 0) == 3 and
                    now.get('udp_datagrams_to_client', 0) - before.get('udp_datagrams_to_client', 0) == 3 and
                    now.get('bytes_to_internal', 0) - before.get('bytes_to_internal', 0) == 30 and
                    now.get('bytes_to_client', 0) - before.get('bytes_to_client', 0) == 30)
        check(wait_for(udp_moved), f'udp_flows_total +1, udp_datagrams_to_internal +3, udp_datagrams_to_client +3, '
              f'bytes each way +30 (before {before}, after {counters("ro-udp")})')
        check(counters('ro-udp').get('udp_flows_active', 0) >= 1,
              f'udp_flows_active counts the flow (got {counters("ro-udp")})')

        # POST: a TCP rule.
        srv_a, srv_b = banner_echo_server('A'), banner_echo_server('B')
        web = free_port()
        check(s.rules_bytes() is None, 'no rules file before the first change')
        r = api('POST', '/api/forwards', tcp_rule('web', web, srv_a))
        require(r.status == 201, f'POST /api/forwards web -> 201 (got {r})')
        check(r.headers.get('Location') == '/api/forwards/web',
              f'Location: /api/forwards/web (got {r.headers.get("Location")!r})')
        body = r.json or {}
        check(body.get('name') == 'web' and body.get('external_port') == web and
              body.get('internal_port') == srv_a and body.get('enabled') is True and
              body.get('read_only') is False and body.get('protocol') == 'tcp',
              f'the reply is the rule, enabled, read_only false (got {body})')
        check(tcp_banner(web) == 'A', f'a connection to the new port {web} reaches server A and echoes')
        check(s.rules_bytes() is not None and b'web' in s.rules_bytes(),
              'the rules file exists and holds the rule')
        check(os.listdir(s.rules_dir) == ['forwards.conf'],
              f'nothing but the rules file in its directory (got {os.listdir(s.rules_dir)})')
        listed = api.rules() or []
        check([x['name'] for x in listed][-1:] == ['web'] and by_name(listed)['web'].get('read_only') is False,
              'the list ends with the new rule, read_only false')

        # POST: a UDP rule.
        dns = free_port()
        uport, heard = udp_echo_logged()
        must_post(api, udp_rule('dns', dns, uport), 'a UDP rule')
        check(udp_ask(dns, b'udp through the api') == b'udp through the api',
              'a datagram to the new UDP port is answered')
        check(tcp_refused(dns), 'the UDP rule opened no TCP port')

        # POST: a range, two ports to two servers.
        ext = free_range(2)
        tgt = free_range(2)
        banner_echo_server('R0', tgt)
        banner_echo_server('R1', tgt + 1)
        r = api('POST', '/api/forwards', tcp_rule('range', f'{ext}-{ext + 1}', f'{tgt}-{tgt + 1}'))
        check(r.status == 201 and (r.json or {}).get('external_port') == f'{ext}-{ext + 1}',
              f'a range rule -> 201 with external_port "{ext}-{ext + 1}" (got {r})')
        check(tcp_banner(ext) == 'R0' and tcp_banner(ext + 1) == 'R1',
              'each port of the range reaches its own server')

        # GET one.
        r = api('GET', '/api/forwards/web')
        check(r.status == 200 and isinstance(r.json, dict) and r.json.get('name') == 'web' and
              r.json.get('internal_port') == srv_a and isinstance(r.json.get('counters'), dict),
              f'GET /api/forwards/web -> 200 the rule with counters (got {r})')

        # Several requests on one connection (a browser keeps it alive).
        conn = http.client.HTTPConnection('127.0.0.1', s.admin_port, timeout=IO_TIMEOUT)
        seen = []
        try:
            for method, path in [('GET', '/api/forwards'), ('GET', '/api/forwards/web'), ('POST', '/api/forwards/web/enable'),
                                 ('GET', '/api/forwards/nope'), ('GET', '/api/forwards')]:
                conn.request(method, path, headers={'Authorization': 'Bearer ' + TOKEN})
                resp = conn.getresponse()
                resp.read()
                seen.append(resp.status)
        except (OSError, http.client.HTTPException) as e:
            seen.append(type(e).__name__)
        finally:
            conn.close()
        check(seen == [200, 200, 200, 404, 200], f'five requests on one kept-alive connection (got {seen})')

        # PUT: retarget to server B; an open connection stays on A.
        old = Conn(web)
        check(old.banner == 'A', 'a connection opened before the PUT reaches A')
        r = api('PUT', '/api/forwards/web', tcp_rule('web', web, srv_b))
        check(r.status == 200 and (r.json or {}).get('internal_port') == srv_b,
              f'PUT /api/forwards/web to server B -> 200 the new rule (got {r})')
        check(tcp_banner(web) == 'B', 'a new connection reaches server B')
        check(old.echo(b'still here'), 'the connection opened before the PUT still echoes')
        old.close()
        check((api.rule('web') or {}).get('internal_port') == srv_b, 'GET shows the new target')

        # GET -> edit -> PUT, with read_only, origin and counters in the body, "name" omitted.
        got = api.rule('web') or {}
        got['internal_port'] = srv_a
        del got['name']
        r = api('PUT', '/api/forwards/web', got)
        check(r.status == 200 and (r.json or {}).get('internal_port') == srv_a and
              (r.json or {}).get('name') == 'web',
              f'PUT of a GET\'s object (read_only, origin, counters in it, no name) -> 200 (got {r})')
        check(tcp_banner(web) == 'A', 'new connections reach server A again')

        # Rename.
        r = api('PUT', '/api/forwards/web', tcp_rule('web2', web, srv_b))
        check(r.status == 200 and (r.json or {}).get('name') == 'web2',
              f'PUT renaming web to web2 -> 200 (got {r})')
        check(api('GET', '/api/forwards/web').status == 404, 'GET /api/forwards/web -> 404 after the rename')
        check(api('GET', '/api/forwards/web2').status == 200, 'GET /api/forwards/web2 -> 200')
        check(tcp_banner(web) == 'B', 'the port works under the new name')
        names = [x['name'] for x in api.rules() or []]
        check('web' not in names and names.count('web2') == 1, f'the list has web2 once, no web ({names})')

        # Disable / enable (idempotent).
        r = api('POST', '/api/forwards/web2/disable')
        check(r.status == 200 and (r.json or {}).get('enabled') is False,
              f'POST .../web2/disable -> 200, enabled false (got {r})')
        check(tcp_refused(web), 'the disabled rule\'s port refuses TCP connections')
        got = api.rule('web2') or {}
        check(got.get('enabled') is False and all(got.get('counters', {}).get(k) == 0 for k in COUNTER_KEYS),
              f'GET shows it disabled with zero counters (got {got})')
        r = api('POST', '/api/forwards/web2/disable')
        check(r.status == 200 and tcp_refused(web), f'disable again -> 200, still refused (got {r})')
        r = api('POST', '/api/forwards/web2/enable')
        check(r.status == 200 and (r.json or {}).get('enabled') is True,
              f'POST .../web2/enable -> 200, enabled true (got {r})')
        check(tcp_banner(web) == 'B', 'enabled again, the port works')
        r = api('POST', '/api/forwards/web2/enable')
        check(r.status == 200 and tcp_banner(web) == 'B', f'enable again -> 200, still works (got {r})')
        # A disabled UDP rule: a new client gets no answer (the socket may stay while the
        # flow above drains, or be closed) and its datagram never reaches the server.
        r = api('POST', '/api/forwards/dns/disable')
        check(r.status == 200 and (r.json or {}).get('enabled') is False,
              f'the UDP rule (a flow live through it) disabled: 200 (got {r})')
        got = udp_ask(dns, b'while disabled', tries=1)
        check(got in (None, 'refused') and b'while disabled' not in heard,
              f'a new client of the disabled UDP rule gets no answer ({got!r}) and the server nothing')
        r = api('POST', '/api/forwards/dns/enable')
        check(r.status == 200 and (r.json or {}).get('enabled') is True,
              f'the UDP rule enabled again at once (its flow still draining): 200 (got {r})')
        check(udp_ask(dns, b'back') == b'back', 'enabled: answered again')
        # Again, a few times: a flow live each time, disable and enable at once.
        rounds = []
        for i in range(5):
            asked = udp_ask(dns, b'round %d' % i)
            off = api('POST', '/api/forwards/dns/disable').status
            on = api('POST', '/api/forwards/dns/enable')
            rounds.append((asked == b'round %d' % i, off, on.status, udp_ask(dns, b'after %d' % i) == b'after %d' % i))
            if on.status != 200:
                print(f'       round {i}: enable -> {on}')
        check(all(r == (True, 200, 200, True) for r in rounds),
              f'5 rounds of a live UDP flow, disable, enable: each 200 and answered after '
              f'(answered before, disable, enable, answered after: {rounds})')

        # DELETE.
        r = api('DELETE', '/api/forwards/web2')
        check(r.status == 200 and (r.json or {}).get('name') == 'web2',
              f'DELETE /api/forwards/web2 -> 200, the removed rule (got {r})')
        check(tcp_refused(web), 'the deleted rule\'s port refuses TCP connections')
        check(api('GET', '/api/forwards/web2').status == 404, 'GET /api/forwards/web2 -> 404')
        r = api('DELETE', '/api/forwards/dns')
        check(r.status == 200, f'DELETE the UDP rule: 200 (got {r})')
        got = udp_ask(dns, b'after delete', tries=1)
        check(got in (None, 'refused') and b'after delete' not in heard,
              f'a new client of the deleted UDP rule gets no answer ({got!r}) and the server nothing')
        r = api('POST', '/api/forwards', tcp_rule('web3', web, srv_a))
        check(r.status == 201 and tcp_banner(web) == 'A', f'the freed port can be taken by a new rule (got {r})')

        # PUT moving a rule to another external port, then to UDP on it.
        moved = free_port()
        r = api('PUT', '/api/forwards/web3', tcp_rule('web3', moved, srv_a))
        check(r.status == 200 and tcp_refused(web) and tcp_banner(moved) == 'A',
              f'PUT to another external port: the old port refuses, the new one works (got {r})')
        r = api('PUT', '/api/forwards/web3', udp_rule('web3', moved, s.uecho))
        check(r.status == 200 and tcp_refused(moved) and udp_ask(moved, b'now udp') == b'now udp',
              f'PUT from tcp to udp: TCP refused, datagrams answered (got {r})')
        r = api('PUT', '/api/forwards/web3', tcp_rule('web3', web, srv_a, protocol='tcp'))
        check(r.status == 200 and tcp_banner(web) == 'A', f'and back to tcp on the first port (got {r})')

        # A name with spaces, a slash and markup, through percent-encoding.
        odd = 'a b/c <img src=x onerror=alert(1)>'
        port = free_port()
        r = api('POST', '/api/forwards', tcp_rule(odd, port, srv_b))
        check(r.status == 201 and (r.json or {}).get('name') == odd, f'POST a rule named {odd!r} -> 201 (got {r})')
        loc = r.headers.get('Location') or ''
        check(loc == path_of(odd), f'Location is the percent-encoded path {path_of(odd)!r} (got {loc!r})')
        r = api('GET', loc or path_of(odd))
        check(r.status == 200 and (r.json or {}).get('name') == odd, f'GET the Location -> 200, the same name (got {r})')
        check(by_name(api.rules()).get(odd, {}).get('external_port') == port, 'the list has it, name unchanged')
        check(tcp_banner(port) == 'B', 'its port works')
        r = api('POST', path_of(odd, 'disable'))
        check(r.status == 200 and tcp_refused(port), f'disable through the encoded path (got {r})')
        r = api('POST', path_of(odd, 'enable'))
        check(r.status == 200 and tcp_banner(port) == 'B', f'enable through the encoded path (got {r})')
        r = api('PUT', path_of(odd), tcp_rule(odd, port, srv_a))
        check(r.status == 200 and tcp_banner(port) == 'A', f'PUT through the encoded path (got {r})')
        r = api('DELETE', path_of(odd))
        check(r.status == 200 and tcp_refused(port), f'DELETE through the encoded path (got {r})')
        check(api('GET', path_of(odd)).status == 404, 'then GET -> 404')

        # A name ending in /disable is a name: its path is not the disable action of
        # another rule (the path is split before it is decoded).
        plain, tricky = free_port(), free_port()
        must_post(api, tcp_rule('x', plain, srv_a), 'a rule x')
        must_post(api, tcp_rule('x/disable', tricky, srv_b), 'a rule named "x/disable"')
        r = api('GET', path_of('x/disable'))
        check(r.status == 200 and (r.json or {}).get('external_port') == tricky,
              f'GET /api/forwards/x%2Fdisable is the rule "x/disable" (got {r})')
        r = api('POST', path_of('x/disable'))
        check(r.status == 405, f'POST /api/forwards/x%2Fdisable: 405 (a rule\'s path), not a disable of x (got {r})')
        check((api.rule('x') or {}).get('enabled') is True and tcp_banner(plain) == 'A', '... x still enabled')
        r = api('DELETE', path_of('x/disable'))
        check(r.status == 200 and (r.json or {}).get('name') == 'x/disable' and tcp_refused(tricky)
              and tcp_banner(plain) == 'A', f'DELETE /api/forwards/x%2Fdisable deletes "x/disable", not x (got {r})')
        check(api('DELETE', '/api/forwards/x').status == 200, 'DELETE x')

        # internal_port omitted: external_port's (to ::1, so no loop; nothing is sent).
        port = free_port()
        r = api('POST', '/api/forwards', {'name': 'default-port', 'protocol': 'tcp', 'external_port': port,
                                          'internal_ip': '::1'})
        check(r.status == 201 and (r.json or {}).get('internal_port') == port and
              (r.json or {}).get('enabled') is True,
              f'internal_port omitted: it is external_port\'s, enabled by default (got {r})')
        check(api('DELETE', '/api/forwards/default-port').status == 200, 'DELETE default-port')

        final = [x['name'] for x in api.rules() or []]
        check(final[:2] == ['ro-tcp', 'ro-udp'] and final[3:] == ['range', 'web3'],
              f'the final list: read-only rules, then range and web3 (got {final})')
        check(os.listdir(s.rules_dir) == ['forwards.conf'],
              f'no temporary file left beside the rules file (got {os.listdir(s.rules_dir)})')
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')


# ---- errors --------------------------------------------------------------------------

def test_errors(tmp):
    s = Setup(tmp)
    relay = s.start()
    api = Api(s.admin_port)
    srv = banner_echo_server('E')
    try:
        api1 = free_port()
        must_post(api, tcp_rule('api1', api1, srv), 'setup')
        api2 = free_port()
        must_post(api, tcp_rule('api2', api2, srv, enabled=False), 'setup: a disabled rule')

        headers_seen = set()

        def expect(what, method, path, body, status, field, fresh_port=None, allow=None):
            """One erroneous request: its status, its field (None: no field) and nothing
            changed (list, rules file, fresh_port not opened)."""
            before = state(api, s)
            r = api(method, path, body)
            after = state(api, s)
            ok = check(r.status == status, f'{what}: {status} (got {r})')
            if r.status not in headers_seen:
                headers_seen.add(r.status)
                security_headers(r, f'a {r.status} reply ({what})')
            if ok and status != 405:
                check(isinstance(r.json, dict) and isinstance(r.json.get('error'), str) and r.json['error'],
                      f'{what}: a JSON body with an "error" message (got {r.body[:200]!r})')
                check(r.field() == field,
                      f'{what}: field {field!r} (got {r.field()!r})')
            if allow is not None:
                got = {m.strip() for m in (r.headers.get('Allow') or '').split(',') if m.strip()}
                check(set(allow) <= got and method not in got,
                      f'{what}: Allow lists {sorted(allow)}, not {method} (got {r.headers.get("Allow")!r})')
            check(unchanged(before, after),
                  f'{what}: nothing changed (the list and the rules file are the same)')
            if fresh_port is not None:
                check(tcp_refused(fresh_port), f'{what}: port {fresh_port} not opened')
            return r

        def rule(**fields):
            base = tcp_rule('new', free_port(), srv)
            base.update(fields)
            return {k: v for k, v in base.items() if v is not ...}

        def post(what, body, status, field, port=None):
            """port: the one not to be opened (default: the body's external_port when a
            number; NO_PORT: none to check)."""
            if port is None and isinstance(body, dict) and type(body.get('external_port')) is int \
                    and 0 < body['external_port'] < 65536:
                port = body['external_port']
            return expect(what, 'POST', '/api/forwards', body, status, field,
                          fresh_port=None if port is NO_PORT else port)

        # 400: the body.
        for raw in ['{"name": "x", ', 'not json at all', '{"name": "x"} trailing', '\xff']:
            post(f'POST a body that is not JSON {raw!r}', raw, 400, None)
        post('POST an empty body', '', 400, None)
        for raw in ['[]', '"a rule"', '42', 'null', 'true']:
            post(f'POST JSON that is not an object ({raw})', raw, 400, None)

        # 400: missing fields.
        for name in ('protocol', 'external_port', 'internal_ip', 'name'):
            post(f'POST without {name}', rule(**{name: ...}), 400, name)

        # 400: fields out of range or of the wrong type.
        for value in (0, 70000, 65536, -1, '10-5', '5-', 'abc', 1.5, '', None, True):
            post(f'POST external_port {value!r}', rule(external_port=value), 400, 'external_port')
        for value in (0, 70000, 'x'):
            post(f'POST internal_port {value!r}', rule(internal_port=value), 400, 'internal_port')
        a, b = free_range(2), free_range(3)
        post('POST ranges of different widths (2 external, 3 internal ports)',
             rule(external_port=f'{a}-{a + 1}', internal_port=f'{b}-{b + 2}'), 400, 'internal_port')
        post('POST an unknown field', dict(rule(), colour='red'), 400, 'colour')
        post('POST "enabled": "yes"', rule(enabled='yes'), 400, 'enabled')
        post('POST "protocol": "sctp"', rule(protocol='sctp'), 400, 'protocol')
        post('POST "protocol": 6', rule(protocol=6), 400, 'protocol')
        post('POST "internal_ip": 5', rule(internal_ip=5), 400, 'internal_ip')
        post('POST "name": 5', rule(name=5), 400, 'name')
        post('POST an internal_ip that does not resolve', rule(internal_ip='no-such-host.invalid'), 400,
             'internal_ip')
        post('POST an external_address that is not a numeric IP', rule(external_address='not an ip'), 400,
             'external_address')
        post('POST "ftp": true on udp', rule(protocol='udp', ftp=True), 400, 'ftp')
        post('POST "max_connections": "many"', rule(max_connections='many'), 400, 'max_connections')
        for bad in ('a\x01b', 'line\nbreak', 'tab\there', 'del\x7f', '', 'n' * 64):
            post(f'POST the name {bad[:20]!r}{"..." if len(bad) > 20 else ""} (len {len(bad)})',
                 rule(name=bad), 400, 'name')

        # 409: names and ports taken.
        post('POST a name an API rule has', rule(name='api1'), 409, 'name')
        post('POST a name a read-only rule has', rule(name='ro-tcp'), 409, 'name')
        # (These ports are open already: nothing to check about them but the rest.)
        post('POST the port of a read-only TCP forward', rule(external_port=s.ro_tcp), 409, 'external_port',
             port=NO_PORT)
        post('POST the port of the -L forward', rule(external_port=s.ro_cli), 409, 'external_port',
             port=NO_PORT)
        post('POST UDP on the read-only UDP forward\'s port', rule(protocol='udp', external_port=s.ro_udp,
             internal_port=s.uecho), 409, 'external_port', port=NO_PORT)
        post('POST "both" on the read-only TCP forward\'s port',
             rule(protocol='both', external_port=s.ro_tcp), 409, 'external_port', port=NO_PORT)
        post('POST a range over a read-only forward\'s port',
             rule(external_port=f'{s.ro_tcp - 1}-{s.ro_tcp + 1}',
                  internal_port=f'{srv - 1}-{srv + 1}'), 409, 'external_port')
        post('POST the wildcard address on a read-only forward\'s port',
             rule(external_address='0.0.0.0', external_port=s.ro_tcp), 409, 'external_port', port=NO_PORT)
        post('POST the port of an API rule', rule(external_port=api1), 409, 'external_port', port=NO_PORT)
        held = free_port()
        with socket.socket() as hold:
            hold.bind(('127.0.0.1', held))
            hold.listen(1)
            post('POST a TCP port another program listens on', rule(external_port=held), 409,
                 'external_port', port=NO_PORT)
        uheld = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hold:
            hold.bind(('127.0.0.1', uheld))
            post('POST a UDP port another program holds', rule(protocol='udp', external_port=uheld,
                 internal_port=s.uecho), 409, 'external_port', port=NO_PORT)
        with socket.socket() as hold:
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind(('127.0.0.1', api2))
            hold.listen(1)
            expect('enable the disabled api2 while another program listens on its port', 'POST',
                   '/api/forwards/api2/enable', None, 409, 'external_port')
            expect('PUT api1 onto a port another program listens on', 'PUT', '/api/forwards/api1',
                   tcp_rule('api1', api2, srv), 409, 'external_port')
        expect('PUT api1 onto the read-only forward\'s port', 'PUT', '/api/forwards/api1',
               tcp_rule('api1', s.ro_tcp, srv), 409, 'external_port')
        expect('PUT renaming api1 to api2', 'PUT', '/api/forwards/api1', tcp_rule('api2', api1, srv),
               409, 'name')
        expect('PUT renaming api1 to ro-udp', 'PUT', '/api/forwards/api1', tcp_rule('ro-udp', api1, srv),
               409, 'name')
        expect('PUT api1 with external_port 0', 'PUT', '/api/forwards/api1', tcp_rule('api1', 0, srv),
               400, 'external_port')
        expect('PUT api1 with an unknown field', 'PUT', '/api/forwards/api1',
               dict(tcp_rule('api1', api1, srv), colour='red'), 400, 'colour')
        expect('PUT api1 with a body that is not JSON', 'PUT', '/api/forwards/api1', '{', 400, None)
        expect('PUT api1 with enabled "no"', 'PUT', '/api/forwards/api1',
               tcp_rule('api1', api1, srv, enabled='no'), 400, 'enabled')

        # 403: read-only rules.
        for name in ('ro-tcp', 'ro-udp', f'tcp:{s.ro_cli}'):
            cur = api.rule(name)
            if cur is None:
                check(False, f'GET read-only rule {name!r}')
                continue
            expect(f'PUT the read-only {name}', 'PUT', path_of(name), without_counters([cur])[0], 403, None)
            expect(f'DELETE the read-only {name}', 'DELETE', path_of(name), None, 403, None)
            expect(f'disable the read-only {name}', 'POST', path_of(name, 'disable'), None, 403, None)
            expect(f'enable the read-only {name}', 'POST', path_of(name, 'enable'), None, 403, None)
        c = Conn(s.ro_tcp, banner=False)
        check(c.echo(b'read-only'), 'ro-tcp still forwards')
        c.close()

        # 404: no such rule, no such path.
        for method, path, body in [('GET', '/api/forwards/nope', None),
                                   ('PUT', '/api/forwards/nope', tcp_rule('nope', free_port(), srv)),
                                   ('DELETE', '/api/forwards/nope', None),
                                   ('POST', '/api/forwards/nope/enable', None),
                                   ('POST', '/api/forwards/nope/disable', None),
                                   ('GET', '/api/nothing', None),
                                   ('POST', '/api/forwards/api1/frobnicate', None),
                                   ('GET', '/api/forwards/api1/enable/more', None)]:
            expect(f'{method} {path}', method, path, body, 404, None)

        # 405, with Allow.
        expect('PATCH /api/forwards', 'PATCH', '/api/forwards', rule(), 405, None, allow={'GET', 'POST'})
        expect('DELETE /api/forwards', 'DELETE', '/api/forwards', None, 405, None, allow={'GET', 'POST'})
        expect('PUT /api/forwards', 'PUT', '/api/forwards', rule(), 405, None, allow={'GET', 'POST'})
        expect('POST /api/forwards/api1', 'POST', '/api/forwards/api1', rule(), 405, None,
               allow={'GET', 'PUT', 'DELETE'})
        expect('GET /api/forwards/api1/enable', 'GET', '/api/forwards/api1/enable', None, 405, None,
               allow={'POST'})
        expect('DELETE /api/forwards/api1/disable', 'DELETE', '/api/forwards/api1/disable', None, 405, None,
               allow={'POST'})

        # 413: a body over 64 KiB (sent whole), and a Content-Length over it (answered
        # without waiting for the body).
        big = json.dumps(rule(name='big')).encode()
        big = big[:-1] + b' ' * (65537 - len(big)) + b'}'
        expect('POST a 65,537-byte body', 'POST', '/api/forwards', big, 413, None)
        before = state(api, s)
        with socket.create_connection(('127.0.0.1', s.admin_port), timeout=IO_TIMEOUT) as raw:
            raw.sendall(f'POST /api/forwards HTTP/1.1\r\nHost: 127.0.0.1:{s.admin_port}\r\n'
                        f'Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n'
                        f'Content-Length: 10000000\r\n\r\n{{"name": '.encode())
            try:
                head = raw.recv(4096).decode(errors='replace')
            except OSError as e:
                head = str(e)
        check(head.startswith('HTTP/1.') and head.split()[1:2] == ['413'],
              f'a Content-Length of 10,000,000: 413 before the body is sent (got {head[:80]!r})')
        check(unchanged(before, state(api, s)), 'nothing changed')

        # Everything still as before the errors.
        check(tcp_banner(api1) == 'E', 'api1 still forwards after all that')
        check(tcp_refused(api2), 'api2 still disabled')

        # The limits themselves are accepted: 63 characters, a 65,536-byte body.
        r = api('POST', '/api/forwards', rule(name='n' * 63))
        check(r.status == 201, f'a 63-character name -> 201 (got {r})')
        ok = json.dumps(rule(name='exactly 64 KiB')).encode()
        ok = ok[:-1] + b' ' * (65536 - len(ok)) + b'}'
        r = api('POST', '/api/forwards', ok)
        check(len(ok) == 65536 and r.status == 201, f'a body of exactly 65,536 bytes -> 201 (got {r})')
        r = api('POST', '/api/forwards', rule(name='udp-on-tcp-port', protocol='udp',
                                              external_port=s.ro_tcp, internal_port=s.uecho))
        check(r.status == 201, f'UDP on a read-only TCP forward\'s port does not overlap: 201 (got {r})')
        # A disabled rule may share a port (only enabled forwards overlap); enabling it is 409.
        r = api('POST', '/api/forwards', rule(name='shadow', external_port=s.ro_tcp, enabled=False))
        check(r.status == 201, f'a disabled rule on the read-only forward\'s port: 201 (got {r})')
        expect('enable it while the read-only forward holds the port', 'POST', '/api/forwards/shadow/enable',
               None, 409, 'external_port')
        check(os.listdir(s.rules_dir) == ['forwards.conf'],
              f'no temporary file left beside the rules file (got {os.listdir(s.rules_dir)})')
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')


# ---- auth ----------------------------------------------------------------------------

def parse_cookie(set_cookie):
    """(name, value, {attribute lowercased: value or True}) of one Set-Cookie header."""
    parts = [p.strip() for p in (set_cookie or '').split(';')]
    name, _, value = parts[0].partition('=')
    attrs = {}
    for p in parts[1:]:
        k, eq, v = p.partition('=')
        attrs[k.strip().lower()] = v.strip() if eq else True
    return name, value, attrs


def login(api, token, origin=None):
    return api('POST', '/login', 'token=' + urllib.parse.quote(token), token=None, origin=origin,
               headers={'Content-Type': 'application/x-www-form-urlencoded'})


def test_auth(tmp):
    s = Setup(tmp)
    relay = s.start()
    api = Api(s.admin_port)
    anon = Api(s.admin_port, token=None)
    srv = banner_echo_server('C')
    try:
        # No credentials.
        r = anon('GET', '/api/forwards')
        check(r.status == 401 and isinstance(r.json, dict) and 'error' in r.json,
              f'GET /api/forwards without credentials: 401 JSON (got {r})')
        check(r.elapsed < 0.9, f'... at once ({r.elapsed:.2f} s)')
        security_headers(r, 'a 401 of the API')
        r = anon('POST', '/api/forwards', tcp_rule('anon', free_port(), srv))
        check(r.status == 401, f'POST without credentials: 401 (got {r})')
        r = anon('GET', '/')
        body = r.body.decode(errors='replace')
        check(r.status == 200 and 'id="login"' in body and 'action="/login"' in body and
              re.search(r'<input[^>]*type="password"[^>]*', body) and 'name="token"' in body,
              f'GET / without a session: 200, the login form (got {r.status})')
        check('/app.js' not in body and 'id="forwards"' not in body, '... and nothing of the page itself')
        security_headers(r, 'the login page')
        check(not re.search(r'<script(?![^>]*\bsrc=)[^>]*>', body) and not re.search(r'\son[a-z]+=', body),
              'the login page has no inline script or event handler')
        r = anon('GET', '/app.js')
        check(r.status == 401, f'GET /app.js without a session: 401 (got {r.status})')
        for public in ('/style.css', '/favicon.svg'):
            r = anon('GET', public)
            check(r.status == 200, f'GET {public} without a session: 200 (got {r.status})')

        # A wrong bearer token: slow, logged.
        wrongs = relay.count(r'admin: wrong token from 127\.0\.0\.1')
        r = api('GET', '/api/forwards', token='0' * len(TOKEN))
        check(r.status == 401, f'a wrong bearer token: 401 (got {r})')
        check(r.elapsed >= 1.0, f'... answered after >= 1 s ({r.elapsed:.2f} s)')
        check(wait_for(lambda: relay.count(r'admin: wrong token from 127\.0\.0\.1') > wrongs),
              'the relay logs "admin: wrong token from 127.0.0.1"')
        r = api('POST', '/api/forwards', tcp_rule('wrongtok', free_port(), srv), token=TOKEN + 'x')
        check(r.status == 401 and r.elapsed >= 1.0, f'a POST with a longer token: 401 after >= 1 s (got {r}, '
              f'{r.elapsed:.2f} s)')

        # A wrong login: slow, the login page with its error, logged.
        wrongs = relay.count(r'admin: wrong token from 127\.0\.0\.1')
        r = login(api, 'not-the-token')
        body = r.body.decode(errors='replace')
        check(r.status == 401 and 'id="login-error"' in body and 'id="login"' in body,
              f'a wrong login: 401, the login page with id="login-error" (got {r.status})')
        check(r.elapsed >= 1.0, f'... after >= 1 s ({r.elapsed:.2f} s)')
        check(not r.headers.get('Set-Cookie'), '... and no cookie')
        check(wait_for(lambda: relay.count(r'admin: wrong token from 127\.0\.0\.1') > wrongs),
              'the wrong login is logged')

        # Login from another origin: refused, no cookie.
        r = login(api, TOKEN, origin=EVIL)
        check(r.status == 403 and not r.headers.get('Set-Cookie'),
              f'the right token posted to /login from {EVIL}: 403, no cookie (got {r})')

        # The login form.
        r = login(api, TOKEN, origin=api.same_origin())
        check(r.status == 303 and r.headers.get('Location') == '/',
              f'POST /login with the token: 303 to / (got {r.status} {r.headers.get("Location")!r})')
        name, value, attrs = parse_cookie(r.headers.get('Set-Cookie'))
        check(name == 'portrelay_session' and re.fullmatch(r'[0-9a-f]{64}', value),
              f'Set-Cookie portrelay_session=<64 hex> (got {r.headers.get("Set-Cookie")!r})')
        check(attrs.get('httponly') is True, 'the cookie is HttpOnly')
        check(str(attrs.get('samesite', '')).lower() == 'strict', 'the cookie is SameSite=Strict')
        check(attrs.get('path') == '/', 'the cookie has Path=/')
        check(attrs.get('max-age') == '43200', f'the cookie has Max-Age=43200 (got {attrs.get("max-age")!r})')
        security_headers(r, 'the login\'s 303')
        cookie = f'portrelay_session={value}'
        r2 = login(api, TOKEN)
        other = parse_cookie(r2.headers.get('Set-Cookie'))[1]
        check(r2.status == 303 and other and other != value, 'a second login gets a session of its own')

        r = anon('GET', '/api/forwards', cookie=cookie)
        check(r.status == 200 and isinstance(r.json, list), f'GET /api/forwards with the cookie: 200 (got {r})')
        security_headers(r, 'GET /api/forwards')
        r = anon('GET', '/', cookie=cookie)
        page = r.body.decode(errors='replace')
        check(r.status == 200 and 'src="/app.js"' in page and 'id="login"' not in page,
              f'GET / with the cookie: the page with /app.js, not the login form (got {r.status})')
        check(not re.search(r'<script(?![^>]*\bsrc=)[^>]*>', page) and not re.search(r'\son[a-z]+=', page)
              and not re.search(r'\sstyle=', page), 'the page has no inline script, handler or style')
        security_headers(r, 'the page')
        r = anon('GET', '/app.js', cookie=cookie)
        check(r.status == 200 and 'javascript' in (r.headers.get('Content-Type') or ''),
              f'GET /app.js with the cookie: 200, JavaScript (got {r.status} {r.headers.get("Content-Type")!r})')
        security_headers(r, '/app.js')
        r = anon('GET', '/api/forwards', cookie=f'theme=dark; {cookie}; other="x y"')
        check(r.status == 200, f'the session cookie among others in one Cookie header: 200 (got {r.status})')
        r = anon('GET', '/api/forwards', cookie='portrelay_session=' + '%064x' % random.getrandbits(256))
        check(r.status == 401, f'a made-up session: 401 (got {r.status})')

        port = free_port()
        r = anon('POST', '/api/forwards', tcp_rule('by-cookie', port, srv), cookie=cookie,
                 origin=api.same_origin())
        check(r.status == 201 and tcp_banner(port) == 'C',
              f'a same-origin POST with the cookie: 201, the rule works (got {r})')
        security_headers(r, 'a 201')
        port2 = free_port()
        r = anon('POST', '/api/forwards', tcp_rule('by-cookie-sfs', port2, srv), cookie=cookie,
                 headers={'Sec-Fetch-Site': 'same-origin', 'Origin': api.same_origin()})
        check(r.status == 201, f'... and with Sec-Fetch-Site: same-origin (got {r})')

        # CSRF: refused whatever the credentials; nothing changes.
        def refused(what, method, path, body=None, **kw):
            before = state(api, s)
            r = anon(method, path, body, **kw)
            check(r.status == 403 and isinstance(r.json, dict) and 'error' in r.json,
                  f'{what}: 403 JSON (got {r})')
            check(unchanged(before, state(api, s)), f'{what}: nothing changed')
        fresh = free_port()
        bearer = {'Authorization': 'Bearer ' + TOKEN}
        for label, kw in [('cookie, Origin ' + EVIL, dict(cookie=cookie, origin=EVIL)),
                          ('bearer, Origin ' + EVIL, dict(headers=bearer, origin=EVIL)),
                          ('cookie, Origin null', dict(cookie=cookie, origin='null')),
                          ('cookie, Origin of another port',
                           dict(cookie=cookie, origin=f'http://127.0.0.1:{s.admin_port + 1}')),
                          ('cookie, Sec-Fetch-Site: cross-site', dict(cookie=cookie, headers={'Sec-Fetch-Site': 'cross-site'})),
                          ('bearer, Sec-Fetch-Site: cross-site',
                           dict(headers=dict(bearer, **{'Sec-Fetch-Site': 'cross-site'}))),
                          ('cookie, Sec-Fetch-Site: same-site', dict(cookie=cookie, headers={'Sec-Fetch-Site': 'same-site'}))]:
            refused(f'POST a rule ({label})', 'POST', '/api/forwards', tcp_rule('csrf', fresh, srv), **kw)
        check(tcp_refused(fresh), 'no CSRF rule opened its port')
        for label, kw in [('cookie, Origin ' + EVIL, dict(cookie=cookie, origin=EVIL)),
                          ('bearer, Sec-Fetch-Site: cross-site',
                           dict(headers=dict(bearer, **{'Sec-Fetch-Site': 'cross-site'})))]:
            refused(f'PUT ({label})', 'PUT', '/api/forwards/by-cookie', tcp_rule('by-cookie', fresh, srv), **kw)
            refused(f'DELETE ({label})', 'DELETE', '/api/forwards/by-cookie', **kw)
            refused(f'disable ({label})', 'POST', '/api/forwards/by-cookie/disable', **kw)
            refused(f'logout ({label})', 'POST', '/logout', **kw)
        check(tcp_banner(port) == 'C', 'the rule still works after the refused requests')
        check(anon('GET', '/api/forwards', cookie=cookie).status == 200,
              'the session survived the refused logouts')

        # Logout.
        r = anon('POST', '/logout', cookie=cookie, origin=api.same_origin())
        _, cleared, cattrs = parse_cookie(r.headers.get('Set-Cookie'))
        check(r.status == 303 and r.headers.get('Location') == '/',
              f'POST /logout: 303 to / (got {r.status} {r.headers.get("Location")!r})')
        check(cattrs.get('max-age') == '0', f'... clearing the cookie, Max-Age=0 (got {r.headers.get("Set-Cookie")!r})')
        r = anon('GET', '/api/forwards', cookie=cookie)
        check(r.status == 401, f'the old cookie after logout: 401 (got {r.status})')
        r = anon('GET', '/', cookie=cookie)
        check(r.status == 200 and 'id="login"' in r.body.decode(errors='replace'),
              'the old cookie on /: the login page')
        check(anon('GET', '/api/forwards', cookie=f'portrelay_session={other}').status == 200,
              'the other session is not ended by this logout')

        # Many wrong tokens at once (the last checks: they spend the guessing credit).
        # Each is refused, 401 or 429; few are compared at all (a burst of about ten,
        # then one a second), so that guessing is hopeless however many connections
        # try. While the credit is spent every token is refused unchecked, the right one
        # too (comparing it would tell a guesser that it is right), but an open session
        # goes on working; once the credit refills the token works again.
        session = f'portrelay_session={other}'
        flood = []
        flooders = [threading.Thread(target=lambda i=i: flood.append(
            api('GET', '/api/forwards', token='%032x' % i))) for i in range(40)]
        for f in flooders:
            f.start()
        # The unchecked 429s come at once, the compared ones after a second: meanwhile
        wait_for(lambda: len(flood) >= 30, timeout=LINE_TIMEOUT)
        r = api('GET', '/api/forwards')
        check(r.status in (200, 429), f'the right token meanwhile: 200, or 429 unchecked (got {r.status})')
        r = anon('GET', '/api/forwards', cookie=session)
        check(r.status == 200 and r.elapsed < 0.9,
              f'an open session meanwhile: 200 at once ({r.status}, {r.elapsed:.2f} s)')
        for f in flooders:
            f.join(60)
        statuses = sorted(x.status for x in flood)
        check(len(flood) == 40 and all(x in (401, 429) for x in statuses),
              f'40 wrong tokens at once: each 401 or 429 (got {statuses})')
        compared = statuses.count(401)
        check(1 <= compared <= 12, f'... at most a burst of about ten compared (401), the rest 429 unchecked '
              f'({compared} were 401)')
        check(all(x.headers.get('Retry-After') for x in flood if x.status == 429), '... each 429 with Retry-After')
        check(wait_for(lambda: api('GET', '/api/forwards').status == 200, timeout=LINE_TIMEOUT),
              'the right token works again once the credit refills')
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')

    # Without token_file (loopback only): no login, but the Host header is checked
    # (DNS rebinding); without rules_file a change is 409.
    t2 = os.path.join(tmp, 'open')
    os.mkdir(t2)
    s2 = Setup(t2, token=False, rules=False)
    relay = s2.start()
    api = Api(s2.admin_port, token=None)
    try:
        r = api('GET', '/api/forwards')
        check(r.status == 200 and isinstance(r.json, list), f'no token_file: GET /api/forwards 200 (got {r})')
        r = api('GET', '/api/forwards', headers={'Host': f'localhost:{s2.admin_port}'})
        check(r.status == 200, f'... with Host: localhost:PORT, 200 (got {r.status})')
        r = api('GET', '/api/forwards', headers={'Host': 'evil.example'})
        check(r.status == 403, f'... with Host: evil.example, 403 (got {r.status})')
        r = api('GET', '/', headers={'Host': f'evil.example:{s2.admin_port}'})
        check(r.status == 403, f'... the page with Host: evil.example:PORT, 403 (got {r.status})')
        # No credentials at all here, so the CSRF and Host checks are all that stop a web
        # page in the owner's browser.
        r = api('POST', '/api/forwards', tcp_rule('csrf', free_port(), srv), origin=EVIL,
                headers={'Content-Type': 'text/plain'})
        check(r.status == 403, f'no token_file: a POST from {EVIL}: 403 (got {r})')
        r = api('POST', '/api/forwards', tcp_rule('rebind', free_port(), srv), origin='http://evil.example',
                headers={'Host': 'evil.example'})
        check(r.status == 403, f'no token_file: a POST with Host and Origin evil.example (DNS rebinding): 403 (got {r})')
        before = without_counters(api.rules())
        port = free_port()
        r = api('POST', '/api/forwards', tcp_rule('no-file', port, srv), origin=api.same_origin())
        check(r.status == 409 and isinstance(r.json, dict) and 'error' in r.json,
              f'no rules_file: POST -> 409 (got {r})')
        check(before is not None and without_counters(api.rules()) == before and tcp_refused(port), '... nothing changed')
        check(os.listdir(s2.rules_dir) == [], 'no rules file written')
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')


# ---- persistence and a rules file that cannot be written -------------------------------

def make_unwritable(path):
    """Makes directory `path` refuse new files even to root: chattr +i, else a
    read-only bind mount on itself. Returns an undo function, or None."""
    if shutil.which('chattr') and subprocess.run(['chattr', '+i', path], capture_output=True).returncode == 0:
        return lambda: subprocess.run(['chattr', '-i', path], capture_output=True)
    if (subprocess.run(['mount', '--bind', path, path], capture_output=True).returncode == 0):
        if subprocess.run(['mount', '-o', 'remount,bind,ro', path, path],
                          capture_output=True).returncode == 0:
            return lambda: subprocess.run(['umount', path], capture_output=True)
        subprocess.run(['umount', path], capture_output=True)
    return None


def test_persist(tmp):
    s = Setup(tmp)
    relay = s.start()
    api = Api(s.admin_port)
    srv = banner_echo_server('P')
    odd = 'q"uote\\back é <b>x</b>'
    ports = {'keep-tcp': free_port(), 'keep-udp': free_port(), 'keep-off': free_port(), odd: free_port(),
             'renamed': free_port()}
    try:
        must_post(api, tcp_rule('keep-tcp', ports['keep-tcp'], srv), 'persist')
        must_post(api, udp_rule('keep-udp', ports['keep-udp'], s.uecho), 'persist')
        must_post(api, tcp_rule('keep-off', ports['keep-off'], srv, enabled=False), 'persist')
        must_post(api, tcp_rule(odd, ports[odd], srv), 'persist: quotes, a backslash, UTF-8')
        must_post(api, tcp_rule('to-rename', ports['renamed'], srv), 'persist')
        r = api('PUT', '/api/forwards/to-rename', tcp_rule('renamed', ports['renamed'], srv))
        require(r.status == 200, f'persist: rename -> 200 (got {r})')
        must_post(api, tcp_rule('gone', free_port(), srv), 'persist')
        require(api('DELETE', '/api/forwards/gone').status == 200, 'persist: DELETE gone')
        before = without_counters(api.rules())
        require(before is not None, 'persist: the list')

        # SIGTERM with a connection open: while it may finish, a change is 503.
        conn = Conn(s.ro_tcp, banner=False)
        check(conn.echo(), 'a connection through ro-tcp is open')
        file_before = s.rules_bytes()
        relay.proc.send_signal(signal.SIGTERM)
        check(relay.wait_line('SIGTERM'), 'SIGTERM logged')
        r = api('POST', '/api/forwards', tcp_rule('too-late', free_port(), srv))
        check(r.status == 503 and s.rules_bytes() == file_before,
              f'a POST while the relay stops: 503, the rules file unchanged (got {r})')
        conn.close()
    finally:
        code = relay.stop()
    check(code == 0, f'SIGTERM: the relay exits 0 (got {code})')
    check(os.listdir(s.rules_dir) == ['forwards.conf'],
          f'the rules file\'s directory holds the rules file alone (got {os.listdir(s.rules_dir)})')
    with open(s.conf_path, 'rb') as f:
        check(f.read() == s.conf_bytes, 'the hand-written file is byte-identical to what the test wrote')

    relay = s.start()
    try:
        after = without_counters(api.rules())
        check(after == before, 'after a restart the list is the same (names, fields, order, read_only, origin)'
              + ('' if after == before else f'\n  before {before}\n  after  {after}'))
        named = by_name(after)
        check(all(named.get(n, {}).get('read_only') is True for n in ('ro-tcp', 'ro-udp')),
              'the read-only rules are still read-only')
        check(all(named.get(n, {}).get('read_only') is False for n in ports), 'the API\'s rules are not')
        check(tcp_banner(ports['keep-tcp']) == 'P', 'keep-tcp works after the restart')
        check(tcp_banner(ports[odd]) == 'P' and api('GET', path_of(odd)).status == 200,
              f'{odd!r} works after the restart, found by its name')
        check(tcp_banner(ports['renamed']) == 'P', 'the renamed rule works under its new name')
        check(udp_ask(ports['keep-udp'], b'after restart') == b'after restart', 'keep-udp answers after the restart')
        check(tcp_refused(ports['keep-off']) and named.get('keep-off', {}).get('enabled') is False,
              'keep-off is still disabled')
        check('gone' not in named and 'to-rename' not in named, 'the deleted and the old name are not back')
        check(api('PUT', '/api/forwards/ro-tcp', without_counters([named['ro-tcp']])[0]).status == 403,
              'PUT ro-tcp is still 403')

        # The rules file is read at every reload too: a rule added to it by hand appears
        # at SIGHUP, as one of the API's, and the next API change keeps it.
        hand = free_port()
        text = s.rules_bytes().decode()
        end = text.rindex(')')        # the end of the forwards list
        with open(s.rules_path, 'w') as f:
            f.write(text[:end] + f', {{ name = "by-hand"; protocol = "tcp"; external_port = {hand}; '
                    f'internal_ip = "127.0.0.1"; internal_port = {srv}; }} ' + text[end:])
        applied = relay.count(r'reload \d+: applied: ')
        relay.proc.send_signal(signal.SIGHUP)
        check(wait_for(lambda: relay.count(r'reload \d+: (applied: |failed)') > applied, timeout=LINE_TIMEOUT)
              and relay.count(r'reload \d+: failed') == 0, 'SIGHUP after a rule was added to the rules file by hand: applied')
        got = api.rule('by-hand') or {}
        check(got.get('read_only') is False and tcp_banner(hand) == 'P',
              f'the hand-added rule is listed as the API\'s (read_only false) and works (got {got})')
        r = api('POST', '/api/forwards/keep-off/disable')
        check(r.status == 200 and (api.rule('by-hand') or {}).get('external_port') == hand and tcp_banner(hand) == 'P',
              f'the next API change keeps it (got {r})')
        r = api('DELETE', '/api/forwards/by-hand')
        check(r.status == 200 and tcp_refused(hand), f'and the API can delete it (got {r})')

        # A rules file that cannot be written: 500, nothing changed.
        undo = make_unwritable(s.rules_dir)
        if undo is None:
            print('SKIP   the rules file\'s directory cannot be made unwritable here (no chattr +i, no mount)')
        else:
            try:
                for what, method, path, body in [
                        ('POST', 'POST', '/api/forwards', tcp_rule('unwritten', free_port(), srv)),
                        ('PUT', 'PUT', '/api/forwards/keep-tcp', tcp_rule('keep-tcp', ports['keep-tcp'], s.echo)),
                        ('disable', 'POST', '/api/forwards/keep-tcp/disable', None),
                        ('enable', 'POST', '/api/forwards/keep-off/enable', None),
                        ('DELETE', 'DELETE', '/api/forwards/keep-tcp', None)]:
                    before = state(api, s)
                    r = api(method, path, body)
                    check(r.status == 500 and isinstance(r.json, dict) and 'error' in r.json,
                          f'{what} while the rules file cannot be written: 500 JSON (got {r})')
                    check(unchanged(before, state(api, s)), '... nothing changed (list and rules file)')
                check(tcp_banner(ports['keep-tcp']) == 'P', 'keep-tcp still reaches its server')
                check(tcp_refused(ports['keep-off']), 'keep-off still disabled')
            finally:
                undo()
            r = api('POST', '/api/forwards', tcp_rule('writable-again', free_port(), srv))
            check(r.status == 201, f'writable again: POST -> 201 (got {r})')
            check(os.listdir(s.rules_dir) == ['forwards.conf'],
                  f'no temporary file left beside the rules file (got {os.listdir(s.rules_dir)})')
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')
    with open(s.conf_path, 'rb') as f:
        check(f.read() == s.conf_bytes, 'the hand-written file is still byte-identical')


# ---- concurrent edits ----------------------------------------------------------------

def test_concurrent(tmp):
    s = Setup(tmp)
    relay = s.start()
    api = Api(s.admin_port)
    srv = banner_echo_server('K')
    threads_n, per_thread = 8, 10
    distinct = [[tcp_rule(f't{t}-r{i}', free_port(), srv) for i in range(per_thread)]
                for t in range(threads_n)]
    dup_names = ['dup-a', 'dup-b', 'dup-c']
    dups = [[tcp_rule(n, free_port(), srv) for n in dup_names] for _ in range(threads_n)]
    raced = free_port()
    port_race = [tcp_rule(f'race-{t}', raced, srv) for t in range(threads_n)]
    results = []          # (rule, Reply)
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n)

    def worker(t):
        mine = distinct[t] + dups[t] + [port_race[t]]
        random.Random(t).shuffle(mine)
        barrier.wait()
        for rule in mine:
            r = api('POST', '/api/forwards', rule, timeout=60)
            with lock:
                results.append((rule, r))
    try:
        t0 = time.monotonic()
        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        elapsed = time.monotonic() - t0
        total = threads_n * (per_thread + len(dup_names) + 1)
        require(len(results) == total, f'all {total} POSTs answered (got {len(results)})')
        print(f'       {total} concurrent POSTs in {elapsed:.1f} s')
        bad = [(rule['name'], r) for rule, r in results if r.status not in (201, 409)]
        check(not bad, f'every reply is 201 or 409 (others: {bad[:5]})')
        won = {rule['name']: rule for rule, r in results if r.status == 201}
        lost = [(rule['name'], r) for rule, r in results if rule['name'].startswith('t') and r.status != 201]
        check(not lost, f'all {threads_n * per_thread} rules without a conflict -> 201 (others: {lost[:5]})')
        for n in dup_names:
            replies = [r for rule, r in results if rule['name'] == n]
            check(sum(r.status == 201 for r in replies) == 1 and
                  all(r.field() == 'name' for r in replies if r.status == 409),
                  f'{n}: one 201, the others 409 field name '
                  f'(got {sorted((r.status, r.field()) for r in replies)})')
        replies = [r for rule, r in results if rule['name'].startswith('race-')]
        check(sum(r.status == 201 for r in replies) == 1 and
              all(r.field() == 'external_port' for r in replies if r.status == 409),
              f'port {raced} raced by {threads_n} names: one 201, the others 409 field external_port '
              f'(got {sorted((r.status, r.field()) for r in replies)})')

        listed = api.rules()
        got = {r['name']: r for r in listed or [] if r.get('read_only') is False}
        check(set(got) == set(won), f'the list holds exactly the {len(won)} rules that got 201 '
              f'(missing {sorted(set(won) - set(got))[:5]}, extra {sorted(set(got) - set(won))[:5]})')
        check(all(got[n].get('external_port') == won[n]['external_port'] for n in set(got) & set(won)),
              'each with the port of the request that won')
        working = sum(tcp_banner(rule['external_port']) == 'K' for rule in won.values())
        check(working == len(won), f'every winner\'s port forwards ({working} of {len(won)})')
        check(os.listdir(s.rules_dir) == ['forwards.conf'],
              f'no temporary file left beside the rules file (got {os.listdir(s.rules_dir)})')

        # Racing on one rule: 8 DELETEs of the same rule (one 200, the rest 404), 8 renames of
        # another to 8 new names (one 200, the rest 404: the old name is gone).
        def race(requests):
            out = [None] * len(requests)
            gate = threading.Barrier(len(requests))

            def one(i):
                gate.wait()
                out[i] = api(*requests[i], timeout=60)
            ts = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
            for x in ts:
                x.start()
            for x in ts:
                x.join(120)
            return out
        victim = distinct[0][0]
        got = race([('DELETE', path_of(victim['name']))] * threads_n)
        check(sorted(r.status for r in got) == [200] + [404] * (threads_n - 1),
              f'{threads_n} DELETEs of one rule at once: one 200, the rest 404 (got {sorted(r.status for r in got)})')
        check(tcp_refused(victim['external_port']), '... its port refuses')
        moved = distinct[1][0]
        got = race([('PUT', path_of(moved['name']), dict(moved, name=f'moved-{i}')) for i in range(threads_n)])
        check(sorted(r.status for r in got) == [200] + [404] * (threads_n - 1),
              f'{threads_n} renames of one rule at once: one 200, the rest 404 (got {sorted(r.status for r in got)})')
        winner = [r.json.get('name') for r in got if r.status == 200 and isinstance(r.json, dict)]
        names = api_names(api.rules())
        check(len(winner) == 1 and names.count(winner[0]) == 1 and moved['name'] not in names and
              not any(n.startswith('moved-') and n != winner[0] for n in names),
              f'... the list has the winner\'s name alone (winner {winner})')
        check(tcp_banner(moved['external_port']) == 'K', '... its port still forwards')
        del won[victim['name']]
        won[winner[0] if winner else '?'] = won.pop(moved['name'])
        before = without_counters(api.rules())
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')
    relay = s.start()
    try:
        after = without_counters(api.rules())
        check(before is not None and after == before, 'after a restart the rules file gives the same list')
        check(set(api_names(after)) == set(won), 'holding exactly the winners')
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')


# ---- reload while editing ------------------------------------------------------------

def test_reload(tmp):
    s = Setup(tmp)
    relay = s.start()
    api = Api(s.admin_port)
    srv_a, srv_b = banner_echo_server('A'), banner_echo_server('B')
    long_lived = Conn(s.ro_tcp, banner=False)
    check(long_lived.echo(b'opened at the start'), 'a connection through ro-tcp echoes at the start')
    stop = threading.Event()
    tick = threading.Condition()
    sent = [0]

    def hup():
        while not stop.is_set():
            relay.proc.send_signal(signal.SIGHUP)
            with tick:
                sent[0] += 1
                tick.notify_all()
            stop.wait(0.05)

    def next_hup():
        """Returns just after the next SIGHUP was sent, so that the edit races its reload."""
        with tick:
            n = sent[0]
            tick.wait_for(lambda: sent[0] > n, timeout=5)

    ports = {f'r{i}': free_port() for i in range(8)}
    reach = {'A': lambda n: tcp_banner(ports[n]) == 'A', 'B': lambda n: tcp_banner(ports[n]) == 'B',
             'refused': lambda n: tcp_refused(ports[n])}
    ops = []        # (method, path, body, status wanted, rule, what its port does after)
    for i in range(6):
        n = f'r{i}'
        ops += [('POST', '/api/forwards', tcp_rule(n, ports[n], srv_a), 201, n, 'A'),
                ('POST', f'/api/forwards/{n}/disable', None, 200, n, 'refused'),
                ('POST', f'/api/forwards/{n}/enable', None, 200, n, 'A'),
                ('PUT', f'/api/forwards/{n}', tcp_rule(n, ports[n], srv_b), 200, n, 'B')]
    ops += [('DELETE', '/api/forwards/r0', None, 200, 'r0', 'refused'),
            ('DELETE', '/api/forwards/r1', None, 200, 'r1', 'refused'),
            ('DELETE', '/api/forwards/r2', None, 200, 'r2', 'refused'),
            ('POST', '/api/forwards/r3/disable', None, 200, 'r3', 'refused'),
            ('POST', '/api/forwards', tcp_rule('r6', ports['r6'], srv_a), 201, 'r6', 'A'),
            ('POST', '/api/forwards', tcp_rule('r7', ports['r7'], srv_a), 201, 'r7', 'A')]
    assert len(ops) == 30
    hup_applied = r'reload \d+: applied: '       # a SIGHUP's (the API's say "applied (a change ...")
    applied_before = relay.count(hup_applied)
    hupper = threading.Thread(target=hup, daemon=True)
    hupper.start()
    wrong = []
    try:
        t0 = time.monotonic()
        for method, path, body, want, name, after in ops:
            next_hup()
            r = api(method, path, body)
            if r.status != want:
                wrong.append(f'{method} {path} -> {r} (want {want})')
            elif not reach[after](name):
                wrong.append(f'{method} {path} -> {r.status}, but then {name}\'s port is not "{after}"')
            if not long_lived.echo(b'%d' % len(wrong)):
                wrong.append(f'after {method} {path} the long-lived connection does not echo')
        elapsed = time.monotonic() - t0
        stop.set()
        hupper.join(5)
        print(f'       30 edits in {elapsed:.1f} s, each just after one of {sent[0]} SIGHUPs')
        check(not wrong, 'every edit during the reloads succeeded and took effect at once'
              + ''.join('\n  ' + w for w in wrong))
        check(wait_for(lambda: relay.count(hup_applied) - applied_before >= 10, timeout=LINE_TIMEOUT),
              f'the SIGHUPs were applied too ({relay.count(hup_applied) - applied_before} "reload N: applied:" '
              f'lines for {sent[0]} SIGHUPs, at least 10 wanted; signals may coalesce)')
        listed = api.rules() or []
        named = by_name(listed)
        want = {'r3': (False, srv_b), 'r4': (True, srv_b), 'r5': (True, srv_b), 'r6': (True, srv_a),
                'r7': (True, srv_a)}
        got = {n: (r.get('enabled'), r.get('internal_port')) for n, r in named.items() if r.get('read_only') is False}
        check(got == want, f'the final rules are what the edits imply (got {got})')
        check([r['name'] for r in listed][:2] == ['ro-tcp', 'ro-udp'], 'the read-only rules are still listed first')
        for n in ('r0', 'r1', 'r2', 'r3'):
            check(tcp_refused(ports[n]), f'{n}\'s port refuses')
        for n, (_, target) in want.items():
            if n != 'r3':
                check(tcp_banner(ports[n]) == ('B' if target == srv_b else 'A'), f'{n} reaches its server')
        check(long_lived.echo(b'still open at the end'), 'the connection opened at the start still echoes')
        check(relay.count(r'reload \d+: failed') == 0, 'no reload failed (no "reload N: failed" line)')
        check(relay.proc.poll() is None, 'the relay is still running')
    finally:
        stop.set()
        long_lived.close()
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')


# ---- no forward yet -------------------------------------------------------------------

def test_empty(tmp):
    """The page is how an owner manages forwards without editing files: a configuration
    with an admin listener and a rules file but no forward yet starts, takes its first
    rule through the API, and lets the last one be disabled and deleted."""
    admin_port = free_port()
    token_path = os.path.join(tmp, 'admin.token')
    with open(token_path, 'w') as f:
        f.write(TOKEN + '\n')
    rules_path = os.path.join(tmp, 'forwards.conf')
    conf_path = os.path.join(tmp, 'portrelay.conf')
    with open(conf_path, 'w') as f:
        f.write('wan_address = "127.0.0.1";\n'
                f'admin = {{ listen = "127.0.0.1:{admin_port}"; token_file = "{token_path}"; '
                f'rules_file = "{rules_path}"; }};\n')
    api = Api(admin_port)
    srv = banner_echo_server('F')
    port = free_port()
    try:
        relay = Relay(conf_path)
    except Abort as e:
        check(False, f'a configuration with an admin listener and no forward yet starts ({e.args[0].strip()!r})')
        # The rest with a first rule put into the rules file by hand.
        with open(rules_path, 'w') as f:
            f.write(f'forwards = ( {{ name = "first"; protocol = "tcp"; external_port = {port}; '
                    f'internal_ip = "127.0.0.1"; internal_port = {srv}; }} );\n')
        relay = Relay(conf_path)
    try:
        if relay.count('forward first') == 0:
            r = api('GET', '/api/forwards')
            check(r.status == 200 and r.json == [], f'the list is empty (got {r})')
            r = api('POST', '/api/forwards', tcp_rule('first', port, srv))
            check(r.status == 201 and tcp_banner(port) == 'F', f'the first rule: 201, it works (got {r})')
        r = api('POST', '/api/forwards/first/disable')
        check(r.status == 200 and tcp_refused(port), f'the only rule disabled: 200, its port refuses (got {r})')
        r = api('POST', '/api/forwards/first/enable')
        check(r.status == 200 and tcp_banner(port) == 'F', f'enabled again: 200, it works (got {r})')
        r = api('DELETE', '/api/forwards/first')
        check(r.status == 200 and tcp_refused(port), f'the last rule deleted: 200, its port refuses (got {r})')
        check(api.rules() == [], 'the list is empty again')
    finally:
        code = relay.stop()
        check(code == 0, f'the relay exits 0 after SIGTERM (got {code})')


# ---- main ----------------------------------------------------------------------------

PARTS = {'endpoints': test_endpoints, 'errors': test_errors, 'auth': test_auth,
         'persist': test_persist, 'concurrent': test_concurrent, 'reload': test_reload,
         'empty': test_empty}


def main():
    if not BIN:
        print('SKIP: PORTRELAY_BIN not set')
        return SKIP
    which = sys.argv[1:] or list(PARTS)
    unknown = [w for w in which if w not in PARTS]
    if unknown:
        print(f'usage: {sys.argv[0]} [{"|".join(PARTS)}]...', file=sys.stderr)
        return 2
    for name in which:
        with tempfile.TemporaryDirectory(prefix='portrelay-api-') as tmp:
            print(f'== {name}', flush=True)
            t0 = time.monotonic()
            try:
                PARTS[name](tmp)
            except Abort as e:
                print(f'ABORT  {name}: {e}', flush=True)
            print(f'   {name}: {time.monotonic() - t0:.1f} s', flush=True)
    status = exit_status()
    if status == 0:
        print('all checks passed')
    return status


if __name__ == '__main__':
    sys.exit(main())
