"""Helpers shared by the Python integration tests (admin_test.py, admission_test.py):
check() and its failures, a free port, echo servers, an HTTP GET, a Prometheus sample.
Traffic goes to 127.0.0.1 only."""
import random
import re
import socket
import threading
import urllib.error
import urllib.request

failures = []


def check(cond, what):
    """Prints ok or FAILED for one observation; a failure is kept in `failures`."""
    print(('ok     ' if cond else 'FAILED ') + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def free_port():
    """A port free for TCP and UDP on 127.0.0.1, below the ephemeral range."""
    for _ in range(200):
        port = random.randint(20000, 31999)
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(('127.0.0.1', port))
                u.bind(('127.0.0.1', port))
                return port
        except OSError:
            continue
    raise RuntimeError('no free port')


def tcp_echo_server(host='127.0.0.1'):
    """A TCP echo server in a thread; returns its port."""
    lsock = socket.socket()
    lsock.bind((host, 0))
    lsock.listen(512)

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

    def loop():
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return lsock.getsockname()[1]


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
