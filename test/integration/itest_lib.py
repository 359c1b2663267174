"""Helpers shared by the Python integration tests: check() and its failures, the relay
as a process (Relay), a free port, echo servers, an HTTP GET, a Prometheus sample.
Traffic goes to 127.0.0.1 only."""
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

failures = []
LINE_TIMEOUT = 15.0      # bounds a wait for one log line (a hang, not a latency)


def check(cond, what):
    """Prints ok or FAILED for one observation; a failure is kept in `failures`."""
    print(('ok     ' if cond else 'FAILED ') + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def exit_status():
    """A test's exit status: 0, or 1 after listing the checks that failed."""
    if not failures:
        return 0
    print('%d check(s) failed:' % len(failures))
    for what in failures:
        print('  ' + what)
    return 1


# Ports free_port has handed out in this process: the relay may hold one only later.
taken_ports = set()


def free_port():
    """A port free for TCP and UDP on 127.0.0.1, below the ephemeral range, never handed
    out twice in this process (a port given to a relay that has not bound it yet looks
    free)."""
    for _ in range(1000):
        port = random.randint(20000, 31999)
        if port in taken_ports:
            continue
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(('127.0.0.1', port))
                u.bind(('127.0.0.1', port))
        except OSError:
            continue
        taken_ports.add(port)
        return port
    raise RuntimeError('no free port')


def tcp_server(serve, host='127.0.0.1', port=0):
    """A TCP server in a thread: serve(conn) for each connection, in a thread of its
    own; returns its port (port 0: the kernel picks)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(512)

    def loop():
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return lsock.getsockname()[1]


def tcp_echo_server(host='127.0.0.1'):
    """A TCP echo server in a thread; returns its port."""
    def serve(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)
    return tcp_server(serve, host)


def echoes(sock, payload=b'ping'):
    """Whether the connection relays: the echo of payload comes back (False on a reset
    or EOF)."""
    try:
        sock.sendall(payload)
        got = b''
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == payload
    except OSError:
        return False


def proc_fds(pid):
    """How many descriptors process pid holds."""
    return len(os.listdir('/proc/%d/fd' % pid))


def proc_rss_kib(pid):
    """Process pid's resident memory (VmRSS), KiB; -1 if unknown."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return -1


def udp_echo_server():
    """A UDP echo server on 127.0.0.1 in a thread; returns its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(('127.0.0.1', 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def loop():
        while True:
            data, peer = sock.recvfrom(65536)
            try:
                sock.sendto(data, peer)
            except OSError:
                pass
    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1]


def http_get(url, token=None, unix=None):
    """(status, body) of a GET; unix: a Unix socket path to go through."""
    if unix is not None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(unix)
            s.sendall(b'GET ' + url.encode() + b' HTTP/1.0\r\nHost: localhost\r\n\r\n')
            data = b''
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b'\r\n\r\n')
        return int(head.split()[1]), body.decode()
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header('Authorization', 'Bearer ' + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(text, name, **labels):
    """The value of one sample in a Prometheus text page, or None."""
    for line in text.splitlines():
        if line.startswith('#'):
            continue
        m = re.match(r'([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ''))
        if got == labels:
            return float(m.group(3))
    return None


class Relay:
    """The relay (PORTRELAY_BIN) on a config text written to TMP/portrelay.conf, with
    extra arguments, started on its `ready` line, stopped by PID; its log kept."""

    def __init__(self, tmp, config_text, args=(), expect_ready=True):
        self.path = os.path.join(tmp, 'portrelay.conf')
        with open(self.path, 'w') as f:
            f.write(config_text)
        self.proc = subprocess.Popen([os.environ['PORTRELAY_BIN'], '-c', self.path, *args], stderr=subprocess.PIPE,
                                     text=True)
        self.log = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if expect_ready and not self.wait_line(' ready: '):
            self.stop()
            raise RuntimeError('relay not ready:\n' + ''.join(self.log))

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.log.append(line)
                self.cond.notify_all()
            if os.environ.get('PORTRELAY_TEST_QUIET') != '1':
                sys.stderr.write('relay| ' + line)
        with self.cond:
            self.cond.notify_all()

    def count(self, needle):
        with self.cond:
            return sum(needle in line for line in self.log)

    def wait_line(self, needle, count=1, timeout=LINE_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(needle in line for line in self.log) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def fds(self):
        return proc_fds(self.proc.pid)

    def rss_kib(self):
        return proc_rss_kib(self.proc.pid)

    def stop(self, graceful=False):
        """Its exit status; graceful: one SIGINT (open connections may finish for
        up to shutdown_timeout), else two (at once)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            if not graceful:
                self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        self.reader.join(5)
        return code
