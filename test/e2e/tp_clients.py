#!/usr/bin/env python3
"""Clients of transparent_limits.sh: many UDP flows, or many short TCP connections.

    tp_clients.py udp LOCAL SERVER PORT N
    tp_clients.py tcp LOCAL SERVER PORT N

udp: N sockets, each bound to LOCAL on its own ephemeral port (so N flows),
each sends one datagram naming itself to SERVER:PORT, expecting it back
(an echo) from SERVER:PORT; unanswered sockets send again after a second, at
most 5 rounds. The sockets stay open until the end. Prints
"udp answered A/N sent S rounds R T s".

tcp: N connections one after the other from LOCAL (ephemeral ports) to
SERVER:PORT, each sends an HTTP/1.1 request (keep-alive, so the server waits
for the client to close), reads the response (Content-Length), and closes
first. Prints "tcp ok A/N failed F first_failure I T s", then the rate of each
block of 500 connections ("block K: C/s, ok O"), then the failures by kind.

Standard library only; exit status 0 (figures, not checks).
"""

import collections
import selectors
import socket
import sys
import time


def udp(local, server, port, n):
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind((local, 0))
        socks.append(s)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    want = {i: b"flow %d from %s:%d" % (i, local.encode(), s.getsockname()[1]) for i, s in enumerate(socks)}
    answered = set()
    wrong = 0
    sent = 0
    t0 = time.monotonic()

    def drain(timeout):
        nonlocal wrong
        for key, _ in sel.select(timeout):
            i = key.data
            try:
                data, src = socks[i].recvfrom(2048)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            if data == want[i] and src == (server, port):
                answered.add(i)
            else:
                wrong += 1

    rounds = 0
    for rounds in range(1, 6):
        todo = [i for i in range(n) if i not in answered]
        if not todo:
            rounds -= 1
            break
        for k, i in enumerate(todo):
            try:
                socks[i].sendto(want[i], (server, port))
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
            if k % 100 == 99:  # pace: let replies in, keep queues short
                drain(0.01)
        end = time.monotonic() + 1.0
        while time.monotonic() < end and len(answered) < n:
            drain(0.1)
    print("udp answered %d/%d sent %d rounds %d wrong %d %.2f s"
          % (len(answered), n, sent, rounds, wrong, time.monotonic() - t0))
    sys.stdout.flush()
    for s in socks:
        s.close()


def tcp(local, server, port, n):
    req = b"GET /s HTTP/1.1\r\nHost: relay\r\n\r\n"
    ok = 0
    first = None
    kinds = collections.Counter()
    blocks = []
    t0 = tb = time.monotonic()
    okb = 0
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        good = False
        try:
            s.bind((local, 0))
            s.connect((server, port))
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(4096)
                if not d:
                    raise EOFError("eof before the headers")
                buf += d
            head, _, body = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(body) < length:
                d = s.recv(4096)
                if not d:
                    raise EOFError("eof in the body")
                body += d
            good = head.startswith(b"HTTP/1.1 200") and body == b"ok\n"
            if not good:
                kinds["wrong answer"] += 1
        except (OSError, EOFError) as e:
            kinds[type(e).__name__ + (": " + e.strerror if getattr(e, "strerror", None) else "")] += 1
        finally:
            s.close()
        if good:
            ok += 1
            okb += 1
        elif first is None:
            first = i
        if i % 500 == 499 or i == n - 1:
            now = time.monotonic()
            blocks.append(((i % 500) + 1, now - tb, okb))
            tb, okb = now, 0
    print("tcp ok %d/%d failed %d first_failure %s %.2f s"
          % (ok, n, n - ok, "none" if first is None else first, time.monotonic() - t0))
    for k, (count, secs, good) in enumerate(blocks):
        print("block %d: %d/s, ok %d" % (k + 1, count / secs if secs > 0 else 0, good))
    for kind, count in kinds.most_common():
        print("failure: %s x%d" % (kind, count))


if __name__ == "__main__":
    mode, local, server, port, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    (udp if mode == "udp" else tcp)(local, server, port, n)
