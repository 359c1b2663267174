#!/usr/bin/env python3
"""A bounded soak test: the real binary under mixed TCP and UDP fates for
PORTRELAY_SOAK_SECONDS (default 60), with RSS and descriptors required flat.

    PORTRELAY_BIN=build-san/portrelay PORTRELAY_SOAK_SECONDS=600 test/integration/soak_test.py

The relay runs with `workers = 2`, keepalive 2 s, `udp.unreplied_timeout = 1`,
`udp.idle_timeout = 2`, `drain_timeout = 3` and an admin endpoint, on 127.0.0.1
only. Threads of this process, all at once, until the time is up:

    echo        TCP connections that send 1-32 KiB, get it echoed and close
    half_close  send, shutdown(SHUT_WR), read the echo to EOF
    reset       send 8 KiB, read some, reset (SO_LINGER 0) mid-transfer
    server_rst  a forward whose server reads 1 KiB and resets the connection
    refused     a forward to a port where nothing listens (the client is reset)
    limited     5 connections at once from 127.0.0.77 to a forward with
                max_connections_per_source = 3 (2 in the other configuration)
    udp_reply   UDP flows that get replies (a few exchanges, then a new socket)
    udp_silent  UDP flows to a server that never answers (expire after 1 s)
    flood       new UDP sources (ports and 127.x.y.z addresses) and TCP
                connections from new 127.x.y.z addresses
    scrape      GET /metrics every second (200 each time)
    reload      SIGHUP every 3 s, alternating two configurations: the other one
                lowers a limit, moves the UDP forward to a second server (its
                flows drain under the old rule) and adds a TCP+UDP forward
    sample      the relay's RSS (VmRSS) and descriptors (/proc/PID/fd) every second

Checks: every fate happened (counts > 0); echoes and half-closes returned
every byte; every reload applied; RSS and descriptors flat after warm-up
(below); once the load stops and the flows have expired, the relay holds
exactly the sockets it held after start-up (pipes: at most the splice pool
more); the relay exits 0 after SIGTERM; its stderr has no
"ERROR: AddressSanitizer" and no "LeakSanitizer" (the sanitizer build).

Flatness. The first 30% of the run is warm-up (splice pipe pools, malloc
arenas and ASan's quarantine fill; the relay's quarantine is capped at 4 MiB
by adding quarantine_size_mb=4 to its ASAN_OPTIONS, or it grows RSS by a MiB
a second for half a minute). The rest is cut into two halves, "middle" and
"last" (at least 10 samples in all):
  RSS: max(last) <= max(middle) + max(4 MiB, 5% of max(middle)). Measured,
       the plain build moves by tens of KiB (3.3 MiB in all), the sanitizer
       build by about 1 MiB (23-26 MiB). At the ~700 connections a second
       of this load, 1 KiB kept per connection adds 14 MiB a half of a 60 s
       run and fails; 100 bytes (1.4 MiB) passes at 60 s and fails a run of
       a few minutes (LeakSanitizer catches it anyway when unreachable).
  descriptors: max(last) <= max(middle) + max(64, 25% of max(middle)). A
       sample catches whatever connections and flows are in flight at that
       instant (600-950 here), which swings by a hundred; a descriptor leaked
       per connection adds thousands a half. The exact check is the
       quiescent one above.
The figures are printed either way.

PORTRELAY_BIN names the binary (meson sets it); without it the test skips
(exit 77). Traffic goes to 127.0.0.0/8 only; every loop is bounded in time
(and the flood in count); processes are stopped by PID.
"""
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from itest_lib import check, exit_status, failures, free_port, proc_fds, proc_rss_kib

BIN = os.environ.get('PORTRELAY_BIN')
SKIP = 77
SECONDS = float(os.environ.get('PORTRELAY_SOAK_SECONDS', '60'))
WORKERS = 2
RELOAD_EVERY = float(os.environ.get('PORTRELAY_SOAK_RELOAD_EVERY', '3'))
LOG_LEVEL = os.environ.get('PORTRELAY_SOAK_LOG_LEVEL', 'info')
IO_TIMEOUT = 10.0
LINE_TIMEOUT = 15.0
WARMUP_SHARE = 0.3


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def add(self, key, n=1):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + n

    def get(self, key):
        with self.lock:
            return self.c.get(key, 0)


counts = Counts()
stop = threading.Event()            # the load stops
servers_stop = threading.Event()    # the test's servers stop: only after the load and the relay
last_reload = [0, 0.0]      # the last SIGHUP's number and monotonic time, for error reports


# ---- servers -------------------------------------------------------------------

def serve_forever(lsock, handler):
    def loop():
        while not servers_stop.is_set():
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    lsock.settimeout(0.5)
    threading.Thread(target=loop, daemon=True).start()


def tcp_server(handler):
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(1024)
    serve_forever(lsock, handler)
    return lsock.getsockname()[1]


def echo_handler(conn):
    conn.settimeout(30)
    with conn:
        while True:
            try:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
            except OSError:
                return


def reset_handler(conn):
    """Reads about 1 KiB, then resets the connection."""
    conn.settimeout(10)
    try:
        got = 0
        while got < 1024:
            data = conn.recv(1024 - got)
            if not data:
                break
            got += len(data)
    except OSError:
        pass
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    conn.close()


def udp_server(reply):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(('127.0.0.1', 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.settimeout(0.5)

    def loop():
        while not servers_stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if reply:
                try:
                    sock.sendto(data, peer)
                except OSError:
                    pass
    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1]


# ---- the relay -------------------------------------------------------------------

class Relay:
    """The relay on a config file, started on its `ready` line, stopped by PID."""

    def __init__(self, path):
        env = dict(os.environ)
        # ASan keeps freed memory in quarantine (256 MiB by default): capped, it
        # fills during warm-up instead of growing RSS through the whole run.
        asan = env.get('ASAN_OPTIONS', '')
        env['ASAN_OPTIONS'] = (asan + ':' if asan else '') + 'quarantine_size_mb=4'
        self.proc = subprocess.Popen([BIN, '-c', path], stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.log = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.wait_line(lambda l: ' ready: ' in l):
            self.kill()
            raise RuntimeError('relay not ready:\n' + ''.join(self.log))

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.log.append(line)
                self.cond.notify_all()
            # Warnings, errors, reloads and sanitizer reports; not every refusal.
            if os.environ.get('PORTRELAY_TEST_QUIET') != '1' and (
                    (' info ' not in line and ' debug ' not in line) or 'reload' in line
                    or 'ready' in line or 'stopped' in line):
                sys.stderr.write('relay| ' + line)
        with self.cond:
            self.cond.notify_all()

    def text(self):
        with self.cond:
            return ''.join(self.log)

    def wait_line(self, pred, start=0, timeout=LINE_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.log[start:]:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    return None
                self.cond.wait(min(left, 0.2))

    def mark(self):
        with self.cond:
            return len(self.log)

    def fd_kinds(self):
        """(sockets, pipes, others) among the relay's descriptors."""
        sockets = pipes = others = 0
        base = '/proc/%d/fd' % self.proc.pid
        for name in os.listdir(base):
            try:
                target = os.readlink(os.path.join(base, name))
            except OSError:
                continue
            if target.startswith('socket:'):
                sockets += 1
            elif target.startswith('pipe:'):
                pipes += 1
            else:
                others += 1
        return sockets, pipes, others

    def fds(self):
        return proc_fds(self.proc.pid)

    def rss_kib(self):
        return proc_rss_kib(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            code = 'killed after 30 s'
        self.reader.join(10)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


# ---- configurations --------------------------------------------------------------

def forward(name, proto, ext_port, int_port, extra=''):
    return ('  { name = "%s"; protocol = "%s"; external_address = "127.0.0.1"; '
            'external_port = %d; internal_ip = "127.0.0.1"; internal_port = %d; %s }'
            % (name, proto, ext_port, int_port, extra))


def config_text(ports, servers, variant):
    a = variant == 'A'
    fwds = [
        forward('echo', 'tcp', ports['echo'], servers['echo'], 'max_connections_per_source = 0;'),
        forward('rst', 'tcp', ports['rst'], servers['rst']),
        forward('refused', 'tcp', ports['refused'], servers['refused']),
        forward('limited', 'tcp', ports['limited'], servers['echo'],
                'max_connections_per_source = %d;' % (3 if a else 2)),
        forward('uecho', 'udp', ports['uecho'], servers['uecho'] if a else servers['uecho2']),
        forward('usilent', 'udp', ports['usilent'], servers['usilent']),
    ]
    if not a:
        fwds.append(forward('extra', 'both', ports['extra'], servers['echo']))
    return ('workers = %d;\nlog_level = "%s";\nshutdown_timeout = 2.0;\ndrain_timeout = 3.0;\n'
            'tcp = { keepalive = 2; connect_timeout = 10.0; };\n'
            'udp = { idle_timeout = 2.0; unreplied_timeout = 1.0; };\n'
            'admin = { listen = "127.0.0.1:%d"; };\n'
            'forwards = (\n%s\n);\n' % (WORKERS, LOG_LEVEL, ports['admin'], ',\n'.join(fwds)))


# ---- fates ------------------------------------------------------------------------

def connect(port, source='127.0.0.1'):
    s = socket.socket()
    s.settimeout(IO_TIMEOUT)
    s.bind((source, 0))
    s.connect(('127.0.0.1', port))
    return s


def recv_exactly(s, n):
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(min(65536, n - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def fate_loop(name, body, pause):
    """Runs body() until stop; an exception counts as an error of that fate."""
    def run():
        while not stop.is_set():
            try:
                body()
            except Exception as e:          # counted, and the first few shown
                n = counts.get(name + '_error')
                counts.add(name + '_error')
                if n < 3:
                    print('%s: %r, %.2f s after SIGHUP %d' % (name, e, time.monotonic() - last_reload[1],
                                                           last_reload[0]), flush=True)
            stop.wait(pause)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def echo_fate(ports):
    def body():
        payload = os.urandom(random.randint(1, 32 << 10))
        with connect(ports['echo']) as s:
            s.sendall(payload)
            back = recv_exactly(s, len(payload))
        counts.add('echo_ok' if back == payload else 'echo_bad')
    return body


def half_close_fate(ports):
    def body():
        payload = os.urandom(random.randint(1, 16 << 10))
        with connect(ports['echo']) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            back = recv_exactly(s, len(payload) + 1)
        counts.add('half_close_ok' if back == payload else 'half_close_bad')
    return body


def reset_fate(ports):
    def body():
        s = connect(ports['echo'])
        try:
            s.sendall(os.urandom(8192))
            s.recv(1024)
        finally:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            s.close()
        counts.add('reset_done')
    return body


def server_reset_fate(ports):
    def body():
        with connect(ports['rst']) as s:
            try:
                s.sendall(os.urandom(4096))
                end = s.recv(100)
                counts.add('server_rst_ended' if not end else 'server_rst_data')
            except (ConnectionResetError, BrokenPipeError):
                counts.add('server_rst_ended')
    return body


def refused_fate(ports):
    def body():
        try:
            with connect(ports['refused']) as s:
                s.sendall(b'anyone?')
                end = s.recv(100)
                counts.add('refused_ended' if not end else 'refused_data')
        except (ConnectionResetError, BrokenPipeError, ConnectionRefusedError):
            counts.add('refused_ended')
    return body


def limited_fate(ports):
    def body():
        held = []
        try:
            for _ in range(5):
                try:
                    s = connect(ports['limited'], '127.0.0.77')
                    held.append(s)
                    s.sendall(b'x')
                    ok = s.recv(1) == b'x'
                except OSError:
                    ok = False
                counts.add('limited_ok' if ok else 'limited_refused')
        finally:
            for s in held:
                s.close()
    return body


def udp_reply_fate(ports):
    def body():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            # Bound to 127.0.0.1, not the wildcard a bare sendto() takes: then a reply
            # to a flood source (127.x.y.z) with the same port cannot land here.
            s.bind(('127.0.0.1', 0))
            s.settimeout(2.0)
            for i in range(random.randint(1, 5)):
                payload = b'u%d-%s' % (i, os.urandom(8).hex().encode())
                s.sendto(payload, ('127.0.0.1', ports['uecho']))
                try:
                    # Before this reply may come a late one: of an earlier datagram whose
                    # wait ran out, or of a closed socket whose port this one got again
                    # while the relay's flow for that port lived on (the same address).
                    for _ in range(8):
                        data = s.recv(65536)
                        if data == payload or not data.startswith(b'u'):
                            break
                        counts.add('udp_reply_late')
                    if data == payload:
                        counts.add('udp_reply_ok')
                    else:
                        counts.add('udp_reply_bad')
                        if counts.get('udp_reply_bad') <= 3:
                            print('udp_reply: sent %r from %s, got %r' % (payload, s.getsockname(),
                                                                         data[:64]), flush=True)
                except socket.timeout:
                    counts.add('udp_reply_lost')
    return body


def udp_silent_fate(ports):
    def body():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b'hello?', ('127.0.0.1', ports['usilent']))
        counts.add('udp_silent_sent')
    return body


def flood_fate(ports, limit):
    def body():
        if counts.get('flood_udp') >= limit:
            return
        socks = []
        for _ in range(50):
            src = '127.%d.%d.%d' % (random.randint(2, 250), random.randint(0, 255),
                                    random.randint(1, 254))
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            try:
                s.bind((src, 0))
                s.sendto(b'flood', ('127.0.0.1', random.choice((ports['uecho'], ports['usilent']))))
                counts.add('flood_udp')
            except OSError:
                pass
        for s in socks:
            s.close()
        for _ in range(5):
            src = '127.%d.%d.%d' % (random.randint(2, 250), random.randint(0, 255),
                                    random.randint(1, 254))
            try:
                with connect(ports['echo'], src) as s:
                    s.sendall(b'f')
                    counts.add('flood_tcp_ok' if s.recv(1) == b'f' else 'flood_tcp_bad')
            except OSError:
                counts.add('flood_tcp_failed')
    return body


def scrape_fate(ports):
    def body():
        with socket.create_connection(('127.0.0.1', ports['admin']), timeout=IO_TIMEOUT) as s:
            s.sendall(b'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n')
            data = b''
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        counts.add('scrape_ok' if data.startswith(b'HTTP/1.0 200') or
                   data.startswith(b'HTTP/1.1 200') else 'scrape_bad')
    return body


# ---- the run -----------------------------------------------------------------------

def flatness(samples, index, what, unit, abs_bound, rel_bound):
    """Checks that the last half of the post-warm-up samples stays within the bound
    over the max of the middle half."""
    t_end = samples[-1][0]
    after = [s for s in samples if s[0] >= WARMUP_SHARE * t_end]
    if not check(len(after) >= 10, '%s: at least 10 samples after warm-up (%d)' % (what, len(after))):
        return
    mid, last = after[:len(after) // 2], after[len(after) // 2:]
    mid_max = max(s[index] for s in mid)
    last_max = max(s[index] for s in last)
    bound = max(abs_bound, rel_bound * mid_max)
    check(last_max <= mid_max + bound,
          '%s flat: max of the last half %d %s <= max of the middle half %d %s + %d'
          % (what, last_max, unit, mid_max, unit, bound))


def soak(tmp):
    servers = {
        'echo': tcp_server(echo_handler),
        'rst': tcp_server(reset_handler),
        'uecho': udp_server(True),
        'uecho2': udp_server(True),
        'usilent': udp_server(False),
    }
    # A port nothing listens on: bound, then closed.
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        servers['refused'] = s.getsockname()[1]
    ports = {}
    for name in ('echo', 'rst', 'refused', 'limited', 'uecho', 'usilent', 'extra', 'admin'):
        for _ in range(50):
            p = free_port()
            if p not in ports.values():
                ports[name] = p
                break
        else:
            raise RuntimeError('no free port for %s' % name)
    path = os.path.join(tmp, 'portrelay.conf')
    texts = {v: config_text(ports, servers, v) for v in 'AB'}
    with open(path, 'w') as f:
        f.write(texts['A'])
    relay = Relay(path)
    code = None
    try:
        time.sleep(0.5)
        start_kinds = relay.fd_kinds()
        print('after start-up: %d sockets, %d pipes, %d others; RSS %d KiB'
              % (start_kinds + (relay.rss_kib(),)), flush=True)

        samples = []            # (seconds since start, rss KiB, descriptors)
        t0 = time.monotonic()
        deadline = t0 + SECONDS
        threads = [
            fate_loop('echo', echo_fate(ports), 0.005),
            fate_loop('echo', echo_fate(ports), 0.005),
            fate_loop('half_close', half_close_fate(ports), 0.01),
            fate_loop('reset', reset_fate(ports), 0.01),
            fate_loop('server_rst', server_reset_fate(ports), 0.01),
            fate_loop('refused', refused_fate(ports), 0.02),
            fate_loop('limited', limited_fate(ports), 0.05),
            fate_loop('udp_reply', udp_reply_fate(ports), 0.005),
            fate_loop('udp_silent', udp_silent_fate(ports), 0.005),
            fate_loop('flood', flood_fate(ports, limit=int(400 * SECONDS)), 0.2),
            fate_loop('scrape', scrape_fate(ports), 1.0),
        ]
        variant = 'A'
        next_reload = t0 + RELOAD_EVERY
        next_sample = t0
        reloads = applied = 0
        while time.monotonic() < deadline and relay.proc.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, relay.rss_kib(), relay.fds()))
                next_sample += 1.0
            if now >= next_reload:
                variant = 'B' if variant == 'A' else 'A'
                with open(path, 'w') as f:
                    f.write(texts[variant])
                mark = relay.mark()
                reloads += 1
                last_reload[:] = [reloads, time.monotonic()]
                relay.proc.send_signal(signal.SIGHUP)
                line = relay.wait_line(lambda l, n=reloads: re.search(r'reload %d: (applied|failed)' % n, l),
                                       mark)
                if line is not None and 'applied' in line:
                    applied += 1
                else:
                    print('reload %d: %s' % (reloads, line.strip() if line else 'no line in 15 s'),
                          flush=True)
                next_reload = time.monotonic() + RELOAD_EVERY
            time.sleep(max(0.0, min(next_sample, next_reload, deadline) - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(IO_TIMEOUT + 5)
        check(relay.proc.poll() is None, 'the relay ran the whole soak (%.0f s)' % SECONDS)
        check(not any(t.is_alive() for t in threads), 'every load thread stopped')

        # Back to configuration A (the one of start-up) for the quiescent count.
        if variant != 'A':
            with open(path, 'w') as f:
                f.write(texts['A'])
            mark = relay.mark()
            reloads += 1
            relay.proc.send_signal(signal.SIGHUP)
            line = relay.wait_line(lambda l, n=reloads: re.search(r'reload %d: (applied|failed)' % n, l),
                                   mark)
            applied += line is not None and 'applied' in line

        # Quiescent: flows expire (2 s), drained ones close (3 s); bounded wait.
        quiet_deadline = time.monotonic() + 20
        kinds = relay.fd_kinds()
        while kinds[0] > start_kinds[0] and time.monotonic() < quiet_deadline:
            time.sleep(0.25)
            kinds = relay.fd_kinds()
        rss_end = relay.rss_kib()
        # The relay's own account of failures, from /metrics (connect failures by reason, resets).
        try:
            with socket.create_connection(('127.0.0.1', ports['admin']), timeout=IO_TIMEOUT) as s:
                s.sendall(b'GET /metrics HTTP/1.0\r\n\r\n')
                page = b''
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    page += chunk
            for line in page.decode('utf-8', 'replace').splitlines():
                if re.match(r'portrelay_(tcp_connect_failures_total|tcp_resets_total|'
                            r'udp_dropped_datagrams_total|fd_exhaustions_total)\S* [1-9]', line):
                    print('metrics: ' + line, flush=True)
        except OSError as e:
            print('metrics: cannot scrape: %r' % (e,), flush=True)
        # At log level debug, the relay's lines of connects refused on forwards that should not.
        shown = 0
        for line in relay.text().splitlines():
            if 'refused' in line and '[refused]' not in line and '[limited]' not in line and \
                    'max_connections' not in line and shown < 10:
                print('relay: ' + line, flush=True)
                shown += 1

        c = counts.c
        print('soak %.0f s: %s' % (SECONDS, ', '.join('%s %d' % kv for kv in sorted(c.items()))),
              flush=True)
        print('reloads: %d sent, %d applied' % (reloads, applied), flush=True)
        print('samples (s, RSS KiB, fds): ' + ' '.join('%d:%d:%d' % s for s in samples), flush=True)
        print('quiescent: %d sockets (%d after start-up), %d pipes (%d), %d others (%d); RSS %d KiB'
              % (kinds[0], start_kinds[0], kinds[1], start_kinds[1], kinds[2], start_kinds[2],
                 rss_end), flush=True)

        for fate in ('echo_ok', 'half_close_ok', 'reset_done', 'server_rst_ended',
                     'refused_ended', 'limited_ok', 'limited_refused', 'udp_reply_ok',
                     'udp_silent_sent', 'flood_udp', 'flood_tcp_ok', 'scrape_ok'):
            check(counts.get(fate) > 0, 'fate happened: %s (%d)' % (fate, counts.get(fate)))
        for bad in ('echo_bad', 'echo_error', 'half_close_bad', 'half_close_error',
                    'udp_reply_bad', 'scrape_bad', 'scrape_error', 'refused_data',
                    'server_rst_data', 'flood_tcp_bad'):
            check(counts.get(bad) == 0, 'never: %s (%d)' % (bad, counts.get(bad)))
        check(reloads >= 1 and applied == reloads, 'every reload applied (%d of %d)'
              % (applied, reloads))
        flatness(samples, 1, 'RSS', 'KiB', 4096, 0.05)
        flatness(samples, 2, 'descriptors', 'fds', 64, 0.25)
        # The splice pool keeps up to 64 idle pipes (2 descriptors) per worker.
        check(kinds[0] == start_kinds[0],
              'quiescent: the relay holds the sockets it held after start-up (%d, then %d)'
              % (start_kinds[0], kinds[0]))
        check(kinds[1] <= start_kinds[1] + 2 * 64 * WORKERS,
              'quiescent: pipes within the splice pools (%d, then %d)' % (start_kinds[1], kinds[1]))
        check(kinds[2] == start_kinds[2],
              'quiescent: other descriptors as after start-up (%d, then %d)'
              % (start_kinds[2], kinds[2]))
    finally:
        stop.set()
        code = relay.stop()
        servers_stop.set()
    check(code == 0, 'the relay exits 0 after SIGTERM (%s)' % code)
    log = relay.text()
    check('ERROR: AddressSanitizer' not in log, 'no AddressSanitizer report')
    check('LeakSanitizer' not in log, 'no LeakSanitizer report')
    check('runtime error:' not in log, 'no UndefinedBehaviorSanitizer report')


def main():
    if not BIN:
        print('PORTRELAY_BIN is not set; skipping')
        return SKIP
    with tempfile.TemporaryDirectory(prefix='portrelay-soak-') as tmp:
        try:
            soak(tmp)
        except Exception as e:      # a step failed in a way the test did not expect
            check(False, 'soak: %r' % (e,))
    return exit_status()


if __name__ == '__main__':
    sys.exit(main())
