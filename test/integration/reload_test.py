#!/usr/bin/env python3
"""Integration tests of SIGHUP configuration reload, through the real binary on loopback.

    reload_test.py under_load  workers = 2; TCP streams and UDP ping-pong run
                               through an unchanged forward (and TCP streams
                               through one whose target changes) while rounds
                               of reloads add a forward, change a target,
                               remove the added forward and try a bad file;
                               every byte, every datagram, one relay source
                               port per UDP client, listeners kept, metrics
    reload_test.py rules       a bind failure rolls the whole reload back;
                               drain_timeout (set: closed after about 1 s;
                               unset: still open after 3 s); a `workers`
                               change warns "needs a restart" and applies; -L
                               forwards survive a reload; a deleted or
                               unreadable file fails and changes nothing

PORTRELAY_BIN names the binary (meson sets it); without it the test skips
(exit 77). PORTRELAY_TEST_QUIET=1 stops echoing the relay's stderr.

Waits are on log lines or socket events, each bounded by a deadline that only
stops a hang; the few sleeps pace traffic or poll with a bound.
"""
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from itest_lib import check, echoes, exit_status, failures, free_port, sample

BIN = os.environ.get('PORTRELAY_BIN')
QUIET = os.environ.get('PORTRELAY_TEST_QUIET') == '1'
SKIP = 77
LINE_TIMEOUT = 15.0      # bounds a wait for one log line (a hang, not a latency)
IO_TIMEOUT = 10.0        # bounds one socket operation


class Abort(Exception):
    """A step the rest of a test depends on did not happen."""


def require(cond, what):
    if not check(cond, what):
        raise Abort(what)


# ---- the relay ---------------------------------------------------------------------

class Relay:
    """The relay on a config file (plus -L specs), started on its `ready` line,
    stopped by PID. Every stderr line is kept with the monotonic time it was read."""

    def __init__(self, config_text, tmp, specs=(), expect_ready=True):
        self.path = os.path.join(tmp, 'portrelay.conf')
        self.write(config_text)
        args = [BIN, '-c', self.path]
        for spec in specs:
            args += ['-L', spec]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.log = []            # (monotonic time read, line)
        self.cond = threading.Condition()
        self.reloads = 0         # SIGHUPs sent
        self.last_sent = None    # monotonic time of the last SIGHUP
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if expect_ready and self.wait_line(lambda l: ' ready: ' in l, 0, LINE_TIMEOUT) is None:
            self.stop()
            raise Abort('relay not ready:\n' + self.text())

    def write(self, config_text):
        """Replace the file in one step, so a reload never reads half of it."""
        tmp_path = self.path + '.new'
        with open(tmp_path, 'w') as f:
            f.write(config_text)
        os.replace(tmp_path, self.path)

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.log.append((time.monotonic(), line))
                self.cond.notify_all()
            if not QUIET:
                sys.stderr.write('relay| ' + line)
        with self.cond:
            self.cond.notify_all()

    def text(self, start=0):
        with self.cond:
            return ''.join(line for _, line in self.log[start:])

    def mark(self):
        with self.cond:
            return len(self.log)

    def wait_line(self, pred, start, timeout):
        """The first (index, time, line) from log index `start` on that satisfies
        pred, waiting up to `timeout` seconds; None if none came."""
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.log):
                    t, line = self.log[i]
                    if pred(line):
                        return i, t, line
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    return None
                self.cond.wait(min(left, 0.5))

    def reload(self, on_sent=None):
        """SIGHUP; wait for this attempt's `reload N:` line. Returns (outcome, line,
        latency, mark) where outcome is 'applied', 'failed' or None (no line)."""
        self.reloads += 1
        n = self.reloads
        start = self.mark()
        t0 = self.last_sent = time.monotonic()
        self.proc.send_signal(signal.SIGHUP)
        if on_sent is not None:
            on_sent()
        got = self.wait_line(lambda l: re.search(f'reload {n}: (applied|failed)', l), start,
                             LINE_TIMEOUT)
        if got is None:
            return None, None, None, start
        _, t, line = got
        if f'reload {n}: applied:' in line:
            outcome = 'applied'
        elif f'reload {n}: failed, the running rules stay: ' in line:
            outcome = 'failed'
        else:
            outcome = 'other'
        return outcome, line.rstrip('\n'), t - t0, start

    def must_reload(self, expect, what):
        outcome, line, latency, start = self.reload()
        if outcome is None:
            raise Abort(f'{what}: no "reload {self.reloads}: applied|failed" line within {LINE_TIMEOUT:.0f} s '
                        f'after SIGHUP; log since:\n' + self.text(start))
        require(outcome == expect, f'{what}: reload {self.reloads} {expect}: {line}')
        return line, latency, start

    def wait_exit(self, timeout=15):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = 'killed: no exit within %d s' % timeout
        self.reader.join(5)
        return code

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait_exit()


def conf(forwards, workers=None, admin=None, extra=''):
    """A config file's text. forwards: (name, protocol, external_port, internal_port)
    tuples, each field on a line of its own so that an error names one field."""
    text = ''
    if workers is not None:
        text += f'workers = {workers};\n'
    if admin is not None:
        text += f'admin = {{ listen = "127.0.0.1:{admin}"; }};\n'
    text += extra
    text += 'forwards = (\n'
    items = []
    for name, proto, ext, internal in forwards:
        items.append(f'''  {{
    name = "{name}";
    protocol = "{proto}";
    external_address = "127.0.0.1";
    external_port = {ext};
    internal_ip = "127.0.0.1";
    internal_port = {internal};
  }}''')
    text += ',\n'.join(items) + '\n);\n'
    return text


def line_of(text, needle):
    """The 1-based number of the line of `text` containing needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise ValueError(needle)


def bad_syntax(text):
    """text with a syntax error inserted before the closing `);`; (text, line)."""
    lines = text.splitlines()
    at = len(lines) - 1
    lines.insert(at, '  this is not libconfig')
    return '\n'.join(lines) + '\n', at + 1


def bad_value(forwards, **kw):
    """A config whose last forward has an out-of-range internal_port; (text, line)."""
    name, proto, ext, _ = forwards[-1]
    text = conf(forwards[:-1] + [(name, proto, ext, 70000)], **kw)
    return text, line_of(text, 'internal_port = 70000;')


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=IO_TIMEOUT) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def reload_metrics(admin):
    _, text = http_get(f'http://127.0.0.1:{admin}/metrics')
    return (sample(text, 'portrelay_reloads_total', result='success'),
            sample(text, 'portrelay_reloads_total', result='failure'))


def socket_inodes(pid, port, kinds=('tcp', 'udp')):
    """{kind: set of socket inodes} of the process's sockets whose local port is
    `port` (TCP: listening ones only)."""
    inodes = set()
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try:
            target = os.readlink(f'/proc/{pid}/fd/{fd}')
        except OSError:
            continue
        m = re.match(r'socket:\[(\d+)\]', target)
        if m:
            inodes.add(m.group(1))
    found = {}
    for kind in kinds:
        found[kind] = set()
        with open(f'/proc/{pid}/net/{kind}') as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].split(':')[1], 16) != port or fields[9] not in inodes:
                    continue
                if kind == 'tcp' and fields[3] != '0A':
                    continue
                found[kind].add(fields[9])
    return found


# ---- servers and clients ---------------------------------------------------------

class TcpServer:
    """A TCP echo server on 127.0.0.1:0: sends a banner line `TAG SERIAL\\n`,
    then echoes everything, hashing what it receives and what it sends."""

    def __init__(self, tag):
        self.tag = tag
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.serial = 0
        self.done = {}           # serial -> (rx sha256, tx sha256, bytes)
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.serial += 1
                serial = self.serial
            threading.Thread(target=self._serve, args=(conn, serial), daemon=True).start()

    def _serve(self, conn, serial):
        rx, tx, n = hashlib.sha256(), hashlib.sha256(), 0
        try:
            with conn:
                conn.settimeout(120)
                conn.sendall(f'{self.tag} {serial}\n'.encode())
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    rx.update(data)
                    n += len(data)
                    conn.sendall(data)
                    tx.update(data)
                # Recorded before the client can see the end of the echo.
                with self.lock:
                    self.done[serial] = (rx.hexdigest(), tx.hexdigest(), n)
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            return


class UdpServer:
    """A UDP echo server on 127.0.0.1:0 answering `TAG PAYLOAD`; records, per
    client id (the payload's first word), the source addresses it came from."""

    def __init__(self, tag):
        self.tag = tag.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(('127.0.0.1', 0))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.sources = {}        # client id -> set of (addr, port)
        self.count = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            cid = data.split(b' ', 1)[0].decode(errors='replace')
            with self.lock:
                self.sources.setdefault(cid, set()).add(peer)
                self.count += 1
            try:
                self.sock.sendto(self.tag + b' ' + data, peer)
            except OSError:
                pass


def read_banner(sock):
    """The banner line (without its newline) the server sent first."""
    data = b''
    while not data.endswith(b'\n') and len(data) < 200:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors='replace').strip()


def tcp_probe(port, payload=b'probe'):
    """Connect, read the banner, echo a payload once. Returns the banner's tag;
    raises OSError (ConnectionRefusedError when refused)."""
    with socket.create_connection(('127.0.0.1', port), timeout=IO_TIMEOUT) as c:
        banner = read_banner(c)
        c.sendall(payload)
        got = b''
        while len(got) < len(payload):
            chunk = c.recv(len(payload) - len(got))
            if not chunk:
                break
            got += chunk
        if got != payload:
            raise OSError(f'echo through port {port}: sent {payload!r}, got {got!r}')
        return banner.split(' ')[0]


def tcp_refused(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=IO_TIMEOUT):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def udp_probe(port, cid='probe', sock=None):
    """One datagram through a UDP forward, one answer; the answering server's tag,
    or None without an answer (bounded resends)."""
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(('127.0.0.1', 0))
    try:
        sock.settimeout(1.0)
        payload = f'{cid} {time.monotonic_ns()}'.encode()
        for _ in range(5):
            sock.sendto(payload, ('127.0.0.1', port))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    data, _ = sock.recvfrom(65536)
                except (socket.timeout, ConnectionRefusedError):
                    break
                tag, _, rest = data.partition(b' ')
                if rest == payload:
                    return tag.decode()
        return None
    finally:
        if own:
            sock.close()


def udp_unanswered(port, cid, wait=0.5):
    """True when a datagram from a new client gets no answer within `wait` s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(('127.0.0.1', 0))
        u.settimeout(wait)
        u.sendto(f'{cid} x'.encode(), ('127.0.0.1', port))
        try:
            u.recvfrom(65536)
            return False
        except socket.timeout:
            return True
        except ConnectionRefusedError:
            return True


def wait_progress(streams, pingers, nbytes, ndatagrams, timeout=30):
    """Wait (polling, bounded) until every stream has had another nbytes echoed
    and every UDP client another ndatagrams answered. False on timeout."""
    base_s = [s.received for s in streams]
    base_p = [p.answered for p in pingers]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (all(s.received >= b + nbytes or s.error for s, b in zip(streams, base_s)) and
                all(p.answered >= b + ndatagrams or p.lost for p, b in zip(pingers, base_p))):
            return True
        time.sleep(0.01)
    return False


def udp_port_free(port):
    """True when nothing holds UDP 127.0.0.1:port (we can bind it ourselves)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(('127.0.0.1', port))
            return True
    except OSError:
        return False


class Streamer:
    """One TCP connection streaming random chunks, paced, until `stop` (bounded in
    chunks and time), then one more chunk, then a half-close; the echo is read by a
    thread of its own and both directions are hashed."""

    CHUNK = 16384
    MAX_CHUNKS = 4000            # 64 MiB at most
    PACE = 0.01
    POOL = os.urandom(1 << 20)

    def __init__(self, port, stop, deadline):
        self.port, self.stop, self.deadline = port, stop, deadline
        self.sent, self.received = 0, 0
        self.tx, self.rx = hashlib.sha256(), hashlib.sha256()
        self.banner = None
        self.error = None
        self.eof = False
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=IO_TIMEOUT)
        self.sock.settimeout(60)
        self.banner = read_banner(self.sock)
        self.reader = threading.Thread(target=self._recv, daemon=True)
        self.writer = threading.Thread(target=self._send, daemon=True)
        self.reader.start()
        self.writer.start()

    def _send(self):
        try:
            i = 0
            while (not self.stop.is_set() and i < self.MAX_CHUNKS and
                   time.monotonic() < self.deadline):
                self._chunk(i)
                i += 1
                time.sleep(self.PACE)
            self.stop.wait(max(0.0, self.deadline - time.monotonic()))
            self._chunk(i)        # after every reload
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = f'send after {self.sent} bytes: {e!r}'

    def _chunk(self, i):
        off = (i * 7919) % (len(self.POOL) - self.CHUNK)
        data = self.POOL[off:off + self.CHUNK]
        self.sock.sendall(data)
        self.tx.update(data)
        self.sent += len(data)

    def _recv(self):
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.eof = True
                    return
                self.rx.update(data)
                self.received += len(data)
        except OSError as e:
            self.error = f'recv after {self.received} bytes: {e!r}'

    def join(self, timeout):
        end = time.monotonic() + timeout
        self.writer.join(max(0.1, end - time.monotonic()))
        self.reader.join(max(0.1, end - time.monotonic()))
        self.sock.close()
        return not self.writer.is_alive() and not self.reader.is_alive()


class Pinger:
    """A UDP client on its own socket: sequence-numbered datagrams one at a time,
    each awaited (1 s) and resent at most 5 times; until `stop` (bounded)."""

    MAX_SEQ = 50000

    def __init__(self, cid, port, stop, deadline):
        self.cid, self.port, self.stop, self.deadline = cid, port, stop, deadline
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.settimeout(1.0)
        self.answered, self.resends, self.lost = 0, 0, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        seq = 0
        while not self.stop.is_set() and seq < self.MAX_SEQ and time.monotonic() < self.deadline:
            payload = f'{self.cid} {seq}'.encode()
            ok = False
            for attempt in range(6):
                if attempt:
                    self.resends += 1
                self.sock.sendto(payload, ('127.0.0.1', self.port))
                until = time.monotonic() + 1.0
                while time.monotonic() < until:
                    try:
                        data, _ = self.sock.recvfrom(65536)
                    except (socket.timeout, ConnectionRefusedError):
                        break
                    if data.partition(b' ')[2] == payload:
                        ok = True
                        break
                if ok:
                    break
            if not ok:
                self.lost.append(seq)
                if len(self.lost) > 3:
                    return
            else:
                self.answered += 1
            seq += 1
            time.sleep(0.002)
        # One more after every reload.
        if self.stop.is_set() and udp_probe(self.port, self.cid, self.sock) is not None:
            self.answered += 1
        else:
            self.lost.append('final')

    def join(self, timeout):
        self.thread.join(timeout)
        self.sock.close()
        return not self.thread.is_alive()


class Burst:
    """Connections to a port from two threads, one after another in each, while
    a reload runs: each must be accepted and relayed (the banner read). Each
    thread stops a few connections after `done` is set, or at MAX connections."""

    MAX = 200

    def __init__(self, port):
        self.port = port
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.ok, self.errors, self.spans = 0, [], []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
        for t in self.threads:
            t.start()

    def _run(self):
        after = 0
        for _ in range(self.MAX):
            if self.done.is_set():
                after += 1
                if after > 3:
                    return
            t0 = time.monotonic()
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=IO_TIMEOUT) as c:
                    banner = read_banner(c)
                with self.lock:
                    if banner:
                        self.ok += 1
                        self.spans.append((t0, time.monotonic()))
                    else:
                        self.errors.append('closed before the banner')
            except OSError as e:
                with self.lock:
                    self.errors.append(repr(e))

    def during(self, start, end):
        """How many connections were under way at some moment of [start, end]."""
        with self.lock:
            return sum(1 for a, b in self.spans if a <= end and b >= start)

    def finish(self):
        self.done.set()
        for t in self.threads:
            t.join(30)
        return not any(t.is_alive() for t in self.threads)


# ---- under load ------------------------------------------------------------------

def test_under_load(tmp):
    rounds = 6
    a_srv = TcpServer('a')                      # the unchanged TCP forward's target
    u_srv = UdpServer('u')                      # the unchanged UDP forward's target
    c_tcp = [TcpServer(f'c{k}') for k in range(rounds + 2)]   # c's successive targets
    c_udp = [UdpServer(f'c{k}') for k in range(rounds + 2)]
    x_tcp, x_udp = TcpServer('x'), UdpServer('x')  # the added forward's target
    a_port, u_port, c_port, admin = free_port(), free_port(), free_port(), free_port()
    # The rules' target ports must match for 'both': give c's servers equal ports
    # on both protocols by forwarding TCP and UDP as two forwards.
    def rules(c_target, added=None):
        fw = [('a', 'tcp', a_port, a_srv.port),
              ('u', 'udp', u_port, u_srv.port),
              ('c', 'tcp', c_port, c_tcp[c_target].port),
              ('cu', 'udp', c_port, c_udp[c_target].port)]
        if added is not None:
            fw += [('x', 'tcp', added, x_tcp.port), ('xu', 'udp', added, x_udp.port)]
        return fw

    relay = Relay(conf(rules(0), workers=2, admin=admin), tmp)
    stop = threading.Event()
    deadline = time.monotonic() + 90
    streams, pingers = [], []
    expect_ok = expect_fail = 0
    latencies = []
    bursts_ok = 0
    overlapping = []         # per reload: burst connections under way between SIGHUP and its line
    unanswered = []          # UDP client ids the removed forward must not have relayed
    try:
        a_inodes = socket_inodes(relay.proc.pid, a_port)
        u_inodes = socket_inodes(relay.proc.pid, u_port)
        require(len(a_inodes['tcp']) >= 1 and len(u_inodes['udp']) >= 1,
                f'the relay listens on a ({a_inodes}) and u ({u_inodes})')
        for _ in range(4):
            streams.append(Streamer(a_port, stop, deadline))
        for _ in range(2):
            streams.append(Streamer(c_port, stop, deadline))
        for i in range(4):
            pingers.append(Pinger(f'p{i}', u_port, stop, deadline))
        c_keep = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # a flow of cu on c0
        c_keep.bind(('127.0.0.1', 0))
        require(udp_probe(c_port, 'ckeep', c_keep) == 'c0', 'a UDP flow through cu reaches c0')
        check([(s.banner.split() or ['?'])[0] for s in streams] == ['a'] * 4 + ['c0'] * 2,
              'the streams reach a (4) and c0 (2): ' + ', '.join(s.banner for s in streams))

        def reload(expect, what):
            nonlocal bursts_ok
            # Traffic moves between any two reloads: 256 KiB on every stream,
            # 20 datagrams for every UDP client.
            require(wait_progress(streams, pingers, 256 * 1024, 20),
                    f'before "{what}": every stream and UDP client made progress')
            burst = Burst(a_port)
            line, latency, start = relay.must_reload(expect, what)
            require(burst.finish(), f'{what}: the burst of connections to a ended')
            overlapping.append(burst.during(relay.last_sent, relay.last_sent + latency))
            check(not burst.errors and burst.ok > 0,
                  f'{what}: {burst.ok} connections to the unchanged forward during the reload, '
                  f'none failed {burst.errors[:3]}')
            bursts_ok += burst.ok
            latencies.append((expect, latency))
            return line, start

        require(wait_progress(streams, pingers, 1 << 20, 100),
                'warm-up: 1 MiB echoed on every stream, 100 datagrams per UDP client')
        current = 0
        for r in range(1, rounds + 1):
            print(f'-- round {r}', flush=True)
            # 1. Add a forward on a new port, TCP and UDP.
            added = free_port()
            relay.write(conf(rules(current, added), workers=2, admin=admin))
            line, _ = reload('applied', f'round {r}: add x on {added}')
            expect_ok += 1
            if r == 1:
                check('2 added' in line and '0 removed' in line,
                      f'the applied line counts 2 added, 0 removed: {line}')
            check(tcp_probe(added) == 'x', f'round {r}: TCP through the added port {added}')
            check(udp_probe(added) == 'x', f'round {r}: UDP through the added port {added}')
            # 2. Change c's target.
            current = r
            relay.write(conf(rules(current, added), workers=2, admin=admin))
            line, _ = reload('applied', f'round {r}: c -> c{current}')
            expect_ok += 1
            if r == 1:
                check('2 changed' in line and '0 added' in line,
                      f'the applied line counts 2 changed, 0 added: {line}')
            check(tcp_probe(c_port) == f'c{current}',
                  f'round {r}: a new TCP connection to c reaches c{current}')
            check(udp_probe(c_port, f'new{r}') == f'c{current}',
                  f'round {r}: a new UDP client of c reaches c{current}')
            check(udp_probe(c_port, 'ckeep', c_keep) == 'c0',
                  f'round {r}: the UDP flow of c from before every change still reaches c0')
            # 3. Remove the added forward.
            relay.write(conf(rules(current), workers=2, admin=admin))
            line, _ = reload('applied', f'round {r}: remove x')
            expect_ok += 1
            if r == 1:
                check('2 removed' in line, f'the applied line counts 2 removed: {line}')
            check(tcp_refused(added), f'round {r}: the removed port {added} refuses TCP')
            # The relay may keep the UDP socket for the flow the probe opened
            # (a removed forward serves its open flows): a new client gets nothing.
            check(udp_unanswered(added, f'gone{r}'),
                  f'round {r}: a new UDP client of the removed port {added} gets no answer')
            unanswered.append(f'gone{r}')
            # 4. A bad file that would add x again and move c on: nothing changes.
            if r % 2:
                text, bad_line = bad_syntax(conf(rules(current + 1, added), workers=2,
                                                 admin=admin))
            else:
                text, bad_line = bad_value(rules(current + 1, added), workers=2, admin=admin)
            relay.write(text)
            line, _ = reload('failed', f'round {r}: a bad file ({"syntax" if r % 2 else "value"})')
            expect_fail += 1
            check(f'{relay.path}:{bad_line}:' in line,
                  f'round {r}: the failure names {os.path.basename(relay.path)}:{bad_line}')
            check(tcp_refused(added), f'round {r}: after the bad file {added} still refuses')
            check(tcp_probe(c_port) == f'c{current}',
                  f'round {r}: after the bad file c still reaches c{current}')
            check(udp_probe(c_port, f'bad{r}') == f'c{current}',
                  f'round {r}: after the bad file a new UDP client of c reaches c{current}')
            check(tcp_probe(a_port) == 'a', f'round {r}: after the bad file a still works')
            live = [s for s in streams if s.error is None]
            require(len(live) == len(streams),
                    f'round {r}: every stream still running ' +
                    '; '.join(s.error for s in streams if s.error))
        # Leave a good file behind.
        relay.write(conf(rules(current), workers=2, admin=admin))

        check(socket_inodes(relay.proc.pid, a_port) == a_inodes,
              'a keeps its listening sockets through every reload (same inodes)')
        check(socket_inodes(relay.proc.pid, u_port) == u_inodes,
              'u keeps its UDP sockets through every reload (same inodes)')
        stop.set()
        for s in streams:
            require(s.join(60), f'stream through port {s.port} ended')
        for p in pingers:
            require(p.join(30), f'UDP client {p.cid} ended')

        moved = 0
        for i, s in enumerate(streams):
            tag, _, serial = s.banner.partition(' ')
            srv = a_srv if tag == 'a' else c_tcp[0]
            rec = srv.done.get(int(serial)) if serial.isdigit() else None
            ok = (s.error is None and s.eof and s.sent == s.received and
                  s.tx.hexdigest() == s.rx.hexdigest() and rec is not None and
                  rec[0] == s.tx.hexdigest() and rec[1] == s.tx.hexdigest())
            check(ok, f'stream {i} via {tag} ({s.banner}): {s.sent} bytes sent, '
                      f'{s.received} echoed, sha256 equal at client and server'
                      + (f'; error {s.error}' if s.error else '')
                      + ('' if rec else '; the server has no record of it'))
            moved += s.sent + s.received
        datagrams = 0
        for p in pingers:
            sources = u_srv.sources.get(p.cid, set())
            check(not p.lost and p.answered > 0,
                  f'UDP client {p.cid}: {p.answered} datagrams answered, lost {p.lost[:4]}')
            check(len(sources) == 1,
                  f'UDP client {p.cid} reached the server from one relay port: {sorted(sources)}')
            datagrams += p.answered
        check(udp_probe(c_port, 'ckeep', c_keep) == 'c0' and
              len(c_udp[0].sources.get('ckeep', ())) == 1,
              'the kept UDP flow of c: still c0, from one relay port')
        c_keep.close()
        relayed = [cid for cid in unanswered if cid in x_udp.sources]
        check(not relayed, f'no datagram of a new client of a removed port reached its '
                           f'server: {relayed}')
        succ, fail = reload_metrics(admin)
        check(succ == expect_ok and fail == expect_fail,
              f'reloads_total success {succ} (expected {expect_ok}), '
              f'failure {fail} (expected {expect_fail})')
        log = relay.text()
        lines = re.findall(r'reload (\d+): (applied|failed)', log)
        check([int(n) for n, _ in lines] == list(range(1, relay.reloads + 1)),
              f'one reload line per SIGHUP, numbered 1-{relay.reloads}')
        check('needs a restart' not in log, 'no "needs a restart" while workers stays')
        check(sum(overlapping) > 0, f'burst connections were under way during reloads '
                                    f'({sum(overlapping)}), so "none failed" means something')
        applied = sorted(t for e, t in latencies if e == 'applied')
        failed = sorted(t for e, t in latencies if e == 'failed')
        print(f'FIGURES under_load: {relay.reloads} reloads ({expect_ok} applied, {expect_fail} '
              f'failed); TCP {moved} bytes over {len(streams)} streams (both ways); '
              f'UDP {datagrams} datagrams answered, '
              f'{sum(p.resends for p in pingers)} resends; {bursts_ok} burst connections, '
              f'{sum(overlapping)} of them under way between a SIGHUP and its line '
              f'({sum(1 for n in overlapping if n)} of {len(overlapping)} reloads); SIGHUP to "applied": worst {max(applied) * 1000:.1f} ms, '
              f'median {applied[len(applied) // 2] * 1000:.1f} ms; SIGHUP to "failed": worst '
              f'{max(failed) * 1000:.1f} ms', flush=True)
    finally:
        stop.set()
        for s in streams:
            # shutdown, unlike close, ends the connection under a blocked recv.
            try:
                s.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.sock.close()
        code = relay.stop()
        check(code == 0, f'relay exits 0 ({code})')


# ---- rules -----------------------------------------------------------------------

def test_bind_failure_rolls_back(tmp):
    echo = TcpServer('keep')
    new_srv, new_udp = TcpServer('new'), UdpServer('new')
    keep, new, held_port, admin = free_port(), free_port(), free_port(), free_port()
    base = [('keep', 'tcp', keep, echo.port)]
    relay = Relay(conf(base, admin=admin), tmp)
    held = socket.socket()
    try:
        held.bind(('127.0.0.1', held_port))
        held.listen(1)
        # The forward that could bind comes first, the one that cannot last.
        relay.write(conf(base + [('new', 'tcp', new, new_srv.port),
                                 ('newu', 'udp', new, new_udp.port),
                                 ('clash', 'tcp', held_port, echo.port)], admin=admin))
        line, _, _ = relay.must_reload('failed', 'a port held by another socket')
        check(f'cannot listen on 127.0.0.1:{held_port}' in line,
              f'the failure names 127.0.0.1:{held_port}')
        check(tcp_refused(new), f'the other added forward ({new}) refuses TCP: rolled back')
        check(udp_port_free(new), f'nothing holds UDP {new}: rolled back')
        check(tcp_probe(keep) == 'keep', 'the old forward still works')
        held.close()
        line, _, _ = relay.must_reload('applied', 'the same file once the port is free')
        check(tcp_probe(new) == 'new' and udp_probe(new) == 'new' and
              tcp_probe(held_port) == 'keep' and tcp_probe(keep) == 'keep',
              'then all three forwards work')
        check(reload_metrics(admin) == (1, 1), 'reloads_total: 1 success, 1 failure')
    finally:
        held.close()
        check(relay.stop() == 0, 'relay exits 0')


def test_drain_timeout(tmp):
    """Two relays side by side: one with drain_timeout = 1, one without."""
    echo = TcpServer('d')
    relays, conns = {}, {}
    try:
        for label, extra in (('drain', 'drain_timeout = 1;\n'), ('forever', '')):
            keep, gone = free_port(), free_port()
            sub = os.path.join(tmp, label)
            os.mkdir(sub)
            fw = [('keep', 'tcp', keep, echo.port), ('gone', 'tcp', gone, echo.port)]
            relay = Relay(conf(fw, extra=extra), sub)
            relays[label] = (relay, fw, gone)
            c = socket.create_connection(('127.0.0.1', gone), timeout=IO_TIMEOUT)
            c.settimeout(IO_TIMEOUT)
            read_banner(c)
            conns[label] = c
        for label, (relay, fw, gone) in relays.items():
            relay.write(conf(fw[:1], extra='drain_timeout = 1;\n' if label == 'drain' else ''))
        applied_at = {}
        for label, (relay, fw, gone) in relays.items():
            line, _, _ = relay.must_reload('applied', f'{label}: remove "gone"')
            applied_at[label] = relay_time(line)
        for label, (relay, fw, gone) in relays.items():
            c = conns[label]
            check(echoes(c, b'right after'),
                  f'{label}: the connection of the removed forward still echoes after applied')
            check(tcp_refused(gone), f'{label}: the removed port refuses new connections')
        # drain: the relay closes the connection about 1 s after the reload.
        c = conns['drain']
        c.settimeout(10)
        try:
            closed = c.recv(1) == b''
        except socket.timeout:
            closed = False
        except OSError:       # a reset is a close too
            closed = True
        after = time.time() - applied_at['drain']
        check(closed and 0.8 <= after <= 4.0,
              f'drain_timeout = 1: closed by the relay {after:.2f} s after the applied line '
              '(0.8-4 s)' if closed else
              f'drain_timeout = 1: still open {after:.2f} s after the applied line')
        # forever: still echoing 3 s after the reload (polled every 0.5 s).
        c = conns['forever']
        alive = True
        end = applied_at['forever'] + 3.0
        for _ in range(20):
            alive = echoes(c, b'still here')
            if not alive or time.time() > end:
                break
            time.sleep(0.5)
        check(alive and time.time() > end,
              f'no drain_timeout: the connection still echoes '
              f'{time.time() - applied_at["forever"]:.1f} s after the reload')
    finally:
        for c in conns.values():
            c.close()
        for label, (relay, _, _) in relays.items():
            check(relay.stop() == 0, f'{label}: relay exits 0')


def relay_time(line):
    """The wall-clock time (seconds since the epoch) a relay log line was stamped."""
    import datetime
    stamp = line.split()[0].rstrip('Z')
    return datetime.datetime.fromisoformat(stamp).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def test_workers_change(tmp):
    echo, echo2, echo3 = TcpServer('w1'), TcpServer('w2'), TcpServer('w3')
    p1, p2, p3 = free_port(), free_port(), free_port()
    relay = Relay(conf([('one', 'tcp', p1, echo.port)], workers=1), tmp)
    try:
        # workers as it runs: no warning.
        relay.write(conf([('one', 'tcp', p1, echo.port), ('two', 'tcp', p2, echo2.port)],
                         workers=1))
        _, _, start = relay.must_reload('applied', 'workers 1 as running, "two" added')
        check(tcp_probe(p2) == 'w2', '"two" works')
        check('needs a restart' not in relay.text(start),
              'workers unchanged: no "needs a restart"')
        # workers 1 -> 2, "two" removed and "three" added in the same reload.
        relay.write(conf([('one', 'tcp', p1, echo.port), ('three', 'tcp', p3, echo3.port)],
                         workers=2))
        line, _, start = relay.must_reload('applied', 'workers 1 -> 2, "two" -> "three"')
        warn = relay.wait_line(lambda l: 'needs a restart' in l, start, 5)
        check(warn is not None and 'workers' in warn[2],
              'a "needs a restart" warning naming workers: ' +
              (warn[2].strip() if warn else 'none'))
        check(tcp_probe(p3) == 'w3' and tcp_refused(p2) and tcp_probe(p1) == 'w1',
              'the reload still applied: "three" works, "two" refuses, "one" works')
    finally:
        check(relay.stop() == 0, 'relay exits 0')


def test_cli_forwards_kept(tmp):
    echo, echo_l, echo_n = TcpServer('file'), TcpServer('flag'), TcpServer('new')
    pf, pl, pn = free_port(), free_port(), free_port()
    spec = f'tcp:127.0.0.1:{pl}:127.0.0.1:{echo_l.port}'
    relay = Relay(conf([('file', 'tcp', pf, echo.port)]), tmp, specs=[spec])
    try:
        before = socket_inodes(relay.proc.pid, pl, ('tcp',))
        relay.write(conf([('file', 'tcp', pf, echo.port), ('new', 'tcp', pn, echo_n.port)]))
        relay.must_reload('applied', f'a forward added to the file; -L {spec}')
        check(tcp_probe(pl) == 'flag', 'the -L forward still works after the reload')
        check(socket_inodes(relay.proc.pid, pl, ('tcp',)) == before,
              'the -L forward kept its listening socket')
        check(tcp_probe(pn) == 'new' and tcp_probe(pf) == 'file',
              'the file\'s forwards: the added one and the old one work')
        relay.write(conf([('new', 'tcp', pn, echo_n.port)]))
        relay.must_reload('applied', '"file" removed from the file')
        check(tcp_refused(pf) and tcp_probe(pl) == 'flag',
              'the removed file forward refuses; the -L forward still works')
    finally:
        check(relay.stop() == 0, 'relay exits 0')


def test_missing_file(tmp):
    echo = TcpServer('m')
    p, admin = free_port(), free_port()
    text = conf([('m', 'tcp', p, echo.port)], admin=admin)
    relay = Relay(text, tmp)
    try:
        os.unlink(relay.path)
        line, _, _ = relay.must_reload('failed', 'the file deleted')
        check(relay.path in line, 'the failure names the file: ' + line)
        check(tcp_probe(p) == 'm', 'the rules stay: the forward works')
        # Unreadable: a mode of 000 does not stop root, a directory in its place does.
        if os.geteuid() != 0:
            relay.write(text)
            os.chmod(relay.path, 0)
            what = 'the file unreadable (mode 000)'
        else:
            os.mkdir(relay.path)
            what = 'a directory in place of the file'
        line, _, _ = relay.must_reload('failed', what)
        check(relay.path in line, 'the failure names the file: ' + line)
        check(tcp_probe(p) == 'm', 'the rules stay: the forward works')
        if os.path.isdir(relay.path):
            os.rmdir(relay.path)
        relay.write(text)
        relay.must_reload('applied', 'the file back')
        check(tcp_probe(p) == 'm' and relay.proc.poll() is None, 'and the relay runs on')
        check(reload_metrics(admin) == (1, 2), 'reloads_total: 1 success, 2 failures')
    finally:
        check(relay.stop() == 0, 'relay exits 0')


def main():
    if not BIN:
        print('SKIP: PORTRELAY_BIN not set')
        return SKIP
    which = sys.argv[1] if len(sys.argv) > 1 else 'rules'
    tests = {
        'under_load': [test_under_load],
        'rules': [test_bind_failure_rolls_back, test_drain_timeout, test_workers_change,
                  test_cli_forwards_kept, test_missing_file],
    }[which]
    started = time.monotonic()
    for test in tests:
        with tempfile.TemporaryDirectory(prefix='portrelay-reload-') as tmp:
            print(f'== {test.__name__}', flush=True)
            t0 = time.monotonic()
            try:
                test(tmp)
            except Abort as e:
                check(False, f'{test.__name__} stopped: {e}')
            print(f'   {test.__name__}: {time.monotonic() - t0:.1f} s', flush=True)
    print(f'{which}: {time.monotonic() - started:.1f} s', flush=True)
    return exit_status()


if __name__ == '__main__':
    sys.exit(main())
