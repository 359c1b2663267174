#!/usr/bin/env python3
"""Many DNS clients at once, each on its own socket, for the e2e scenarios.

    dns_clients.py SERVER PORT --udp N [--tcp M] [--first K]

Opens N UDP sockets (each bound to its own ephemeral port) and M TCP
connections, all to SERVER:PORT. Client i (i = K, K+1, ...) asks for
h<i>.lan.test A, with its own query ID, and must get back, on its own socket,
a reply with that ID and name whose answer is 198.18.<i/256>.<i%256> (the
records start_dnsmasq in lib.sh serves). UDP replies must come from
SERVER:PORT. UDP queries are sent again (same ID, same socket) if unanswered
after half a second, at most 5 times, as a resolver would; each socket keeps its
port throughout, so every reply still has to find the socket that asked.

Prints one summary line; exit status 0 only if every client got its answer.
Standard library only.
"""

import argparse
import random
import selectors
import socket
import struct
import sys
import time


def query(qid, name):
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD, one question
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)  # A, IN


def read_name(msg, off):
    labels = []
    jumped = False
    end = off
    for _ in range(128):
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            jumped = True
            continue
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode())
        off += n
    if not jumped:
        end = off
    return ".".join(labels), end


def parse(msg):
    """(id, rcode, question name, [A addresses])"""
    qid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    if not flags & 0x8000:
        raise ValueError("not a response")
    off = 12
    qname = None
    for _ in range(qd):
        qname, off = read_name(msg, off)
        off += 4
    addrs = []
    for _ in range(an):
        _name, off = read_name(msg, off)
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[off:off + 4]))
        off += rdlen
    return qid, flags & 0xF, qname, addrs


def expected(i):
    return "h%d.lan.test" % i, "198.18.%d.%d" % (i // 256, i % 256)


class Client:
    def __init__(self, i, qid, proto):
        self.i, self.qid, self.proto = i, qid, proto
        self.name, self.addr = expected(i)
        self.msg = query(qid, self.name)
        self.done = False
        self.sends = 0
        self.buf = b""


def check(c, reply, errors):
    try:
        qid, rcode, qname, addrs = parse(reply)
    except Exception as e:  # noqa: BLE001
        errors.append("%s client %d: unparsable reply: %s" % (c.proto, c.i, e))
        return
    if qid != c.qid or (qname or "").lower() != c.name:
        errors.append("%s client %d (id %d, %s) got the reply for id %d, %s"
                      % (c.proto, c.i, c.qid, c.name, qid, qname))
    elif rcode != 0 or addrs != [c.addr]:
        errors.append("%s client %d: rcode %d, answer %s, expected %s"
                      % (c.proto, c.i, rcode, addrs, c.addr))
    else:
        c.done = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("port", type=int)
    ap.add_argument("--udp", type=int, default=0)
    ap.add_argument("--tcp", type=int, default=0)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=15.0)
    a = ap.parse_args()
    dest = (a.server, a.port)
    sel = selectors.DefaultSelector()
    ids = random.sample(range(1, 65536), a.udp + a.tcp)
    errors = []
    clients = []
    ports = set()
    i = a.first
    for k in range(a.udp):
        c = Client(i, ids[k], "udp")
        i += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("", 0))
        s.setblocking(False)
        ports.add(s.getsockname()[1])
        c.sock = s
        sel.register(s, selectors.EVENT_READ, c)
        clients.append(c)
    for k in range(a.tcp):
        c = Client(i, ids[a.udp + k], "tcp")
        i += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(dest)
        c.sock = s
        c.out = struct.pack("!H", len(c.msg)) + c.msg
        sel.register(s, selectors.EVENT_WRITE, c)
        clients.append(c)
    if len(ports) != a.udp:
        print("only %d distinct source ports for %d UDP sockets" % (len(ports), a.udp))
        return 1

    start = time.monotonic()
    deadline = start + a.deadline
    for c in clients:
        if c.proto == "udp":
            c.sock.sendto(c.msg, dest)
            c.sends = 1
            c.sent_at = start
    retries = 0
    while time.monotonic() < deadline and not all(c.done for c in clients):
        now = time.monotonic()
        for c in clients:
            if c.proto == "udp" and not c.done and now - c.sent_at > 0.5 and c.sends < 6:
                c.sock.sendto(c.msg, dest)
                c.sends += 1
                c.sent_at = now
                retries += 1
        for key, ev in sel.select(timeout=0.2):
            c = key.data
            if c.done:
                continue
            try:
                if c.proto == "udp":
                    reply, src = c.sock.recvfrom(4096)
                    if src != dest:
                        errors.append("udp client %d: reply from %s:%d, expected %s:%d"
                                      % (c.i, src[0], src[1], dest[0], dest[1]))
                        continue
                    check(c, reply, errors)
                elif ev & selectors.EVENT_WRITE:
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    if not c.out:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                else:
                    data = c.sock.recv(4096)
                    if not data:
                        errors.append("tcp client %d: connection closed before the reply" % c.i)
                        sel.unregister(c.sock)
                        c.done = None
                        continue
                    c.buf += data
                    if len(c.buf) >= 2 and len(c.buf) >= 2 + struct.unpack("!H", c.buf[:2])[0]:
                        check(c, c.buf[2:], errors)
            except OSError as e:
                errors.append("%s client %d: %s" % (c.proto, c.i, e))
                sel.unregister(c.sock)
                c.done = None
            if c.done:
                sel.unregister(c.sock)
                c.sock.close()
    elapsed = time.monotonic() - start
    ok_udp = sum(1 for c in clients if c.proto == "udp" and c.done)
    ok_tcp = sum(1 for c in clients if c.proto == "tcp" and c.done)
    print("udp %d/%d answered (%d distinct source ports, %d queries resent), tcp %d/%d answered, in %.2f s"
          % (ok_udp, a.udp, len(ports), retries, ok_tcp, a.tcp, elapsed))
    for c in clients:
        if not c.done and c.done is not None:
            errors.append("%s client %d (%s): no answer" % (c.proto, c.i, c.name))
    for e in errors[:20]:
        print("  " + e)
    if len(errors) > 20:
        print("  ... and %d more" % (len(errors) - 20))
    return 0 if ok_udp == a.udp and ok_tcp == a.tcp and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
