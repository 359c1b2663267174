#!/usr/bin/env python3
"""Integration tests of proxy_protocol, through the real binary on loopback.

    proxy_test.py tcp     v1 and v2 over TCP: the header carries exactly the
                          client's address and port and the external address
                          and port it connected to (client 127.0.0.5, relay
                          127.0.0.3, server 127.0.0.1: three different
                          addresses); IPv6 (TCP6 ::1); an IPv6 client to an
                          IPv4 server (TCP6); a dual-stack "::" listener
                          reached over IPv4 (TCP4) and over ::1 (TCP6); the
                          header once, first, in the connection it describes:
                          40 concurrent clients, a 4 MB burst sent at connect
                          (sink and echo), a client that half-closes at once,
                          a client that sends nothing while the server speaks
                          first, a slow internal connect with 1 MB waiting;
                          a forward without proxy_protocol sends no header
    proxy_test.py udp     v2 DGRAM: every datagram of several clients (1 byte
                          to the largest that fits with the header) arrives
                          with a header naming its client, replies come back
                          without one; IPv6, IPv6 client to IPv4 server,
                          dual stack, `both`; a datagram too large to carry
                          the header is dropped whole and the flow goes on
    proxy_test.py config  v1 with udp or both, v1/v2 with ftp, "v3", a number:
                          exit 1 naming file:line; SIGHUP turning "v2" on
                          and off: open connections and UDP flows keep the
                          rule they started with, new ones take the new one

The servers parse the header themselves (parse_proxy: HAProxy's specification,
strict). PORTRELAY_BIN names the binary (meson sets it); without it the test
skips (exit 77). Traffic goes to 127.0.0.0/8 and ::1 only; every loop is
bounded; waits have deadlines that only stop a hang.
"""
import hashlib
import ipaddress
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import itest_lib
from itest_lib import check, exit_status, free_port

BIN = os.environ.get('PORTRELAY_BIN')
SKIP = 77
LINE_TIMEOUT = 15.0
IO_TIMEOUT = 10.0

CLIENT4 = '127.0.0.5'       # the client's own address
CLIENT4B = '127.0.0.6'      # a second client address (UDP)
EXTERNAL4 = '127.0.0.3'     # the relay's external address
SERVER4 = '127.0.0.1'       # the internal server (the relay's source is 127.0.0.1 too)

# ---- the PROXY protocol, as a server reads it ----------------------------------

V2_SIG = b'\r\n\r\n\x00\r\nQUIT\n'
V1_MAX = 107
V2_FAMILIES = {0x00: ('UNSPEC', 0), 0x11: ('TCP4', 12), 0x12: ('UDP4', 12),
               0x21: ('TCP6', 36), 0x22: ('UDP6', 36)}
PORT_RE = re.compile(r'(0|[1-9][0-9]{0,4})$')


class ProxyError(Exception):
    """The bytes are not a valid PROXY header: a server must close the connection."""


def _v1_port(text):
    if not PORT_RE.match(text) or int(text) > 65535:
        raise ProxyError('v1: bad port %r' % text)
    return int(text)


def _v1_addr(text, family):
    try:
        addr = ipaddress.IPv4Address(text) if family == 'TCP4' else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyError('v1: bad %s address %r' % (family, text)) from None
    if family == 'TCP4' and str(addr) != text:
        raise ProxyError('v1: TCP4 address not in dotted-quad form: %r' % text)
    return str(addr)


def parse_v1(buf):
    """(header, length) of a version 1 header at the start of buf, None if incomplete."""
    end = buf.find(b'\r\n', 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyError('v1: no CRLF in the first %d bytes' % V1_MAX)
        if b'\n' in buf or b'\r' in buf[:-1]:
            raise ProxyError('v1: stray CR or LF in %r' % buf)
        return None
    try:
        line = buf[:end].decode('ascii')
    except UnicodeDecodeError:
        raise ProxyError('v1: not ASCII: %r' % buf[:end]) from None
    if '\r' in line or '\n' in line:
        raise ProxyError('v1: stray CR or LF in %r' % line)
    parts = line.split(' ')
    if parts[0] != 'PROXY' or len(parts) < 2:
        raise ProxyError('v1: %r' % line)
    family = parts[1]
    hdr = {'version': 1, 'command': 'PROXY', 'family': family, 'src': None, 'dst': None,
           'raw': buf[:end + 2]}
    if family == 'UNKNOWN':
        return hdr, end + 2
    if family not in ('TCP4', 'TCP6') or len(parts) != 6:
        raise ProxyError('v1: %r' % line)
    hdr['src'] = (_v1_addr(parts[2], family), _v1_port(parts[4]))
    hdr['dst'] = (_v1_addr(parts[3], family), _v1_port(parts[5]))
    return hdr, end + 2


def parse_v2(buf):
    """(header, length) of a version 2 header at the start of buf, None if incomplete."""
    if len(buf) < 16:
        return None
    ver_cmd, fam, length = buf[12], buf[13], struct.unpack('!H', buf[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyError('v2: version %d' % (ver_cmd >> 4))
    if ver_cmd & 0xf not in (0, 1):
        raise ProxyError('v2: command %d' % (ver_cmd & 0xf))
    if fam not in V2_FAMILIES:
        raise ProxyError('v2: family/transport 0x%02x' % fam)
    family, need = V2_FAMILIES[fam]
    if length < need:
        raise ProxyError('v2: length %d for %s (needs %d)' % (length, family, need))
    if len(buf) < 16 + length:
        return None
    body = buf[16:16 + length]
    hdr = {'version': 2, 'command': 'PROXY' if ver_cmd & 0xf else 'LOCAL', 'family': family,
           'fam_byte': fam, 'ver_cmd': ver_cmd, 'src': None, 'dst': None, 'tlvs': [],
           'raw': buf[:16 + length]}
    if need == 12:
        src, dst, sp, dp = struct.unpack('!4s4sHH', body[:12])
        hdr['src'] = (socket.inet_ntop(socket.AF_INET, src), sp)
        hdr['dst'] = (socket.inet_ntop(socket.AF_INET, dst), dp)
    elif need == 36:
        src, dst, sp, dp = struct.unpack('!16s16sHH', body[:36])
        hdr['src'] = (socket.inet_ntop(socket.AF_INET6, src), sp)
        hdr['dst'] = (socket.inet_ntop(socket.AF_INET6, dst), dp)
    tlv = body[need:]
    while tlv:                  # TLVs must fill the rest exactly
        if len(tlv) < 3 or 3 + struct.unpack('!H', tlv[1:3])[0] > len(tlv):
            raise ProxyError('v2: a TLV runs past the header: %r' % tlv)
        n = struct.unpack('!H', tlv[1:3])[0]
        hdr['tlvs'].append((tlv[0], tlv[3:3 + n]))
        tlv = tlv[3 + n:]
    return hdr, 16 + length


def parse_proxy(buf):
    """(header, length) at the start of buf, None if more bytes are needed; ProxyError
    if buf cannot start a PROXY header (version 1 or 2)."""
    n = min(len(buf), len(V2_SIG))
    if n and buf[:n] == V2_SIG[:n]:
        return parse_v2(buf) if len(buf) >= len(V2_SIG) else None
    n = min(len(buf), 6)
    if n and buf[:n] == b'PROXY '[:n]:
        return parse_v1(buf) if len(buf) >= 6 else None
    if not buf:
        return None
    raise ProxyError('no PROXY header at the start: %r' % buf[:32])


def self_test_parser():
    """The parser against the specification's own forms (and what it must refuse)."""
    good = [
        (b'PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET', 'TCP4',
         ('192.168.0.1', 56324), ('192.168.0.11', 443)),
        (b'PROXY TCP6 ffff:f::1 ::1 65535 0\r\n', 'TCP6', ('ffff:f::1', 65535), ('::1', 0)),
        (b'PROXY UNKNOWN\r\n', 'UNKNOWN', None, None),
        (b'PROXY UNKNOWN ffff:f::1 ::1 65535 0\r\n', 'UNKNOWN', None, None),
        (V2_SIG + b'\x21\x11\x00\x0c' + bytes([172, 16, 2, 100, 172, 16, 2, 5]) +
         struct.pack('!HH', 0x1234, 21), 'TCP4', ('172.16.2.100', 0x1234), ('172.16.2.5', 21)),
        (V2_SIG + b'\x21\x22\x00\x24' + socket.inet_pton(socket.AF_INET6, '::1') * 2 +
         struct.pack('!HH', 1, 2), 'UDP6', ('::1', 1), ('::1', 2)),
        (V2_SIG + b'\x20\x00\x00\x00', 'UNSPEC', None, None),
    ]
    ok = True
    for raw, family, src, dst in good:
        try:
            got = parse_proxy(raw)
        except ProxyError as e:
            print('parser refused %r: %s' % (raw, e))
            got = None
        ok &= got is not None and got[0]['family'] == family and got[0]['src'] == src \
            and got[0]['dst'] == dst
    bad = [b'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', b'PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n',
           b'PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n', b'PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n',
           b'PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n', b'PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n',
           b'PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n', b'PROXY UNKNOWN ' + b'x' * 100,
           b'GET / HTTP/1.0\r\n', V2_SIG + b'\x11\x11\x00\x0c' + b'\0' * 12,
           V2_SIG + b'\x22\x11\x00\x0c' + b'\0' * 12, V2_SIG + b'\x21\x11\x00\x08' + b'\0' * 8,
           V2_SIG + b'\x21\x31\x00\x0c' + b'\0' * 12,
           V2_SIG + b'\x21\x11\x00\x0e' + b'\0' * 12 + b'\x01\x00']
    for raw in bad:
        try:
            parse_proxy(raw)
            ok = False
            print('parser accepted %r' % raw)
        except ProxyError:
            pass
    ok &= parse_proxy(b'PROXY TCP4 1.2.3.4') is None and parse_proxy(V2_SIG[:5]) is None
    check(ok, 'parser: accepts the specification\'s forms, refuses malformed ones')


# ---- servers ----------------------------------------------------------------------

def family_of(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET


class TcpServer:
    """A TCP server on host that reads a PROXY header first (unless header=False), then:
    mode 'echo' echoes what follows, 'sink' reads to EOF and answers b'<length> <sha256>\\n',
    'banner' sends b'220 ready\\r\\n' once the header is read, then echoes.
    One record per accepted connection; a connection whose header is invalid is closed.
    skip_ports: peer ports of connections to close unread (fillers)."""

    def __init__(self, host, mode='echo', header=True, backlog=128, start=True, port=0):
        self.mode, self.header = mode, header
        self.lsock = socket.socket(family_of(host))
        self.lsock.bind((host, port))
        self.lsock.listen(backlog)
        self.port = self.lsock.getsockname()[1]
        self.records = []
        self.skip_ports = set()
        self.cond = threading.Condition()
        if start:
            self.start()

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, peer = self.lsock.accept()
            except OSError:
                return
            if peer[1] in self.skip_ports:
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn, peer):
        rec = {'peer': peer, 'header': None, 'error': None, 'first': b'', 'length': 0,
               'done': False, 't_accept': time.monotonic(), 't_header': None}
        sha = hashlib.sha256()
        with self.cond:
            self.records.append(rec)
        conn.settimeout(IO_TIMEOUT)

        def data(chunk):
            if len(rec['first']) < 64:
                rec['first'] += chunk[:64 - len(rec['first'])]
            rec['length'] += len(chunk)
            sha.update(chunk)
            if self.mode in ('echo', 'banner') and chunk:
                conn.sendall(chunk)
        try:
            with conn:
                rest = b''
                if self.header:
                    buf = b''
                    for _ in range(1000):
                        got = parse_proxy(buf)
                        if got is not None:
                            break
                        chunk = conn.recv(4096)
                        if not chunk:
                            raise ProxyError('EOF before a complete header: %r' % buf)
                        buf += chunk
                    else:
                        raise ProxyError('no complete header in 1000 reads')
                    rec['header'], n = got
                    rec['t_header'] = time.monotonic()
                    rest = buf[n:]
                if self.mode == 'banner':
                    conn.sendall(b'220 ready\r\n')
                data(rest)
                while True:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    data(chunk)
                rec['sha'] = sha.hexdigest()
                if self.mode == 'sink':
                    conn.sendall(b'%d %s\n' % (rec['length'], rec['sha'].encode()))
        except (OSError, ProxyError) as e:
            rec['error'] = repr(e)
        with self.cond:
            rec['done'] = True
            self.cond.notify_all()

    def wait(self, count, timeout=IO_TIMEOUT):
        """The first `count` records once all are done (bounded)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.records) < count or not all(r['done'] for r in self.records[:count]):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.2))
            return list(self.records)

    def close(self):
        self.lsock.close()


class UdpServer:
    """A UDP server on host: each datagram is parsed (a v2 header, then the payload,
    unless header=False) and recorded; the payload alone goes back to its sender.
    A datagram without a valid header is recorded with its error and not answered."""

    def __init__(self, host, header=True):
        self.header = header
        self.sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.records = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                dgram, peer = self.sock.recvfrom(1 << 17)
            except OSError:
                return
            rec = {'peer': peer, 'header': None, 'error': None, 'payload': dgram,
                   'size': len(dgram)}
            if self.header:
                try:
                    got = parse_proxy(dgram)
                    if got is None:
                        raise ProxyError('a datagram shorter than its header: %r' % dgram[:60])
                    rec['header'], n = got
                    rec['payload'] = dgram[n:]
                except ProxyError as e:
                    rec['error'] = repr(e)
            self.records.append(rec)
            if rec['error'] is None:
                try:
                    self.sock.sendto(rec['payload'], peer)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


# ---- the relay ----------------------------------------------------------------------

class Relay(itest_lib.Relay):
    """The relay at debug level, so that its log shows each session."""

    def __init__(self, tmp, config_text):
        super().__init__(tmp, config_text, args=('-l', 'debug'))


def fwd(name, proto, ext_addr, ext_port, int_ip, int_port, proxy=None, extra=''):
    pp = 'proxy_protocol = "%s"; ' % proxy if proxy else ''
    return ('  { name = "%s"; protocol = "%s"; external_address = "%s"; external_port = %d;\n'
            '    internal_ip = "%s"; internal_port = %d; %s%s}'
            % (name, proto, ext_addr, ext_port, int_ip, int_port, pp, extra))


def conf(forwards, extra=''):
    return '%s\nforwards = (\n%s\n);\n' % (extra, ',\n'.join(forwards))


_taken = set()


def fresh_port():
    """A port free for TCP and UDP on every address, IPv4 and IPv6 (a dual-stack "::"
    bind), and not handed out before by this run: the forwards of one relay must not
    share one."""
    for _ in range(100):
        port = free_port()
        if port in _taken:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET6, kind) as t:
                    t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    t.bind(('::', port))
        except OSError:
            continue
        _taken.add(port)
        return port
    raise RuntimeError('no free port')


# ---- clients --------------------------------------------------------------------------

def connect(dest, source=None):
    s = socket.socket(family_of(dest[0]))
    s.settimeout(IO_TIMEOUT)
    if source is not None:
        s.bind((source, 0))
    s.connect(dest)
    return s


def recv_exact(s, n):
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(min(n - len(got), 1 << 16))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def recv_all(s):
    got = bytearray()
    for _ in range(100000):
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def norm(addr):
    """An address as ipaddress writes it (the parser's form)."""
    return str(ipaddress.ip_address(addr))


def header_is(rec, version, family, src, dst, what):
    """Checks one server record: no error, the header of `version` with PROXY, `family`,
    exactly src and dst ((address, port) each)."""
    h = rec['header']
    if rec['error'] is not None or h is None:
        return check(False, '%s: the server read a valid header (error %s)' % (what, rec['error']))
    want = (version, 'PROXY', family, (norm(src[0]), src[1]), (norm(dst[0]), dst[1]))
    got = (h['version'], h['command'], h['family'], h['src'], h['dst'])
    ok = got == want
    if version == 2:
        ok &= h['ver_cmd'] == 0x21 and not h['tlvs']
    return check(ok, '%s: header %r' % (what, h['raw']) if ok else
                 '%s: header %r, expected %r' % (what, got, want))


# ---- TCP ----------------------------------------------------------------------------------

def test_parser(tmp):
    self_test_parser()


def test_tcp_addresses(tmp):
    """v1 and v2 over IPv4 (three distinct addresses), IPv6, IPv6 client to IPv4 server,
    dual stack reached over 127.0.0.5 and over ::1; each header names its own connection."""
    servers = {k: TcpServer(host) for k, host in
               [('v1', SERVER4), ('v2', SERVER4), ('v1_6', '::1'), ('v2_6', '::1'),
                ('v1_64', SERVER4), ('v2_64', SERVER4), ('v1_ds', SERVER4), ('v2_ds', SERVER4)]}
    ports = {k: fresh_port() for k in servers}
    fwds = []
    for k, srv in servers.items():
        version = k[:2]
        ext = {'': EXTERNAL4, '_6': '::1', '_64': '::1', '_ds': '::'}[k[2:]]
        fwds.append(fwd(k, 'tcp', ext, ports[k], SERVER4 if ':' not in srv.lsock.getsockname()[0]
                        else '::1', srv.port, version))
    relay = Relay(tmp, conf(fwds))
    try:
        cases = [('v1', CLIENT4, EXTERNAL4, 1, 'TCP4'), ('v2', CLIENT4, EXTERNAL4, 2, 'TCP4'),
                 ('v1_6', '::1', '::1', 1, 'TCP6'), ('v2_6', '::1', '::1', 2, 'TCP6'),
                 ('v1_64', '::1', '::1', 1, 'TCP6'), ('v2_64', '::1', '::1', 2, 'TCP6'),
                 ('v1_ds', CLIENT4, EXTERNAL4, 1, 'TCP4'), ('v2_ds', CLIENT4, EXTERNAL4, 2, 'TCP4'),
                 ('v1_ds', '::1', '::1', 1, 'TCP6'), ('v2_ds', '::1', '::1', 2, 'TCP6')]
        seen = {}
        for k, client, ext, version, family in cases:
            what = '%s: client %s -> %s (%s)' % (k, client, ext, {
                '': 'IPv4', '_6': 'IPv6', '_64': 'IPv6 client, IPv4 server',
                '_ds': 'dual-stack "::" listener'}[k[2:]])
            s = connect((ext, ports[k]), client)
            cport = s.getsockname()[1]
            payload = b'hello from %d\n' % cport
            s.sendall(payload)
            echo = recv_exact(s, len(payload))
            s.close()
            seen[k] = seen.get(k, 0) + 1
            recs = servers[k].wait(seen[k])
            rec = recs[seen[k] - 1] if len(recs) >= seen[k] else {'error': 'no connection',
                                                                 'header': None}
            header_is(rec, version, family, (client, cport), (ext, ports[k]), what)
            check(echo == payload and rec.get('first') == payload and
                  rec.get('length') == len(payload),
                  '%s: after the header exactly the client\'s bytes, echoed back' % what)

        # 40 connections at once to v1 and v2: each header names the connection it came in.
        for k, version in (('v1', 1), ('v2', 2)):
            base = len(servers[k].records)
            socks = [connect((EXTERNAL4, ports[k]), CLIENT4) for _ in range(40)]
            payloads = {}
            for s in socks:
                p = s.getsockname()[1]
                payloads[p] = b'conn %d ' % p * 50
                s.sendall(payloads[p])
            ok_echo = all(recv_exact(s, len(payloads[s.getsockname()[1]])) ==
                          payloads[s.getsockname()[1]] for s in socks)
            for s in socks:
                s.close()
            recs = servers[k].wait(base + 40)[base:]
            matched = sum(1 for r in recs if r['error'] is None and r['header'] and
                          r['header']['src'][0] == CLIENT4 and
                          r['header']['dst'] == (EXTERNAL4, ports[k]) and
                          payloads.get(r['header']['src'][1]) is not None and
                          r['length'] == len(payloads[r['header']['src'][1]]) and
                          r['first'] == payloads[r['header']['src'][1]][:64])
            check(ok_echo and len(recs) == 40 and matched == 40,
                  '%s: 40 concurrent connections, 40 server connections, each header naming '
                  'the client port whose bytes follow it (%d of %d)' % (k, matched, len(recs)))
    finally:
        check(relay.stop(graceful=True) == 0, 'addresses: the relay exits 0')
        for srv in servers.values():
            srv.close()


def test_tcp_ordering(tmp):
    """The header once and first: a 4 MB burst at connect (sink and echo), a half-close
    at once, a silent client while the server speaks first; and no header without it."""
    sink = {v: TcpServer(SERVER4, 'sink') for v in ('v1', 'v2')}
    echo = {v: TcpServer(SERVER4, 'echo') for v in ('v1', 'v2')}
    banner = {v: TcpServer(SERVER4, 'banner') for v in ('v1', 'v2')}
    plain_sink = TcpServer(SERVER4, 'sink', header=False)
    plain_banner = TcpServer(SERVER4, 'banner', header=False)
    ports = {}
    fwds = []
    for group, servers in (('sink', sink), ('echo', echo), ('banner', banner)):
        for v, srv in servers.items():
            ports[group + v] = fresh_port()
            fwds.append(fwd(group + v, 'tcp', EXTERNAL4, ports[group + v], SERVER4, srv.port, v))
    ports['plain_sink'], ports['plain_banner'] = fresh_port(), fresh_port()
    fwds.append(fwd('plain_sink', 'tcp', EXTERNAL4, ports['plain_sink'], SERVER4, plain_sink.port))
    fwds.append(fwd('plain_banner', 'tcp', EXTERNAL4, ports['plain_banner'], SERVER4,
                    plain_banner.port))
    relay = Relay(tmp, conf(fwds))
    big = os.urandom(4 << 20)
    big_sha = hashlib.sha256(big).hexdigest()
    try:
        for v, version in (('v1', 1), ('v2', 2)):
            # 4 MB in one sendall right after connect, then EOF: the server gets the
            # header, then exactly the 4 MB, once; its summary comes back.
            s = connect((EXTERNAL4, ports['sink' + v]), CLIENT4)
            cport = s.getsockname()[1]
            s.sendall(big)
            s.shutdown(socket.SHUT_WR)
            answer = recv_all(s)
            s.close()
            rec = sink[v].wait(1)[0]
            what = '%s burst of 4 MB at connect' % v
            header_is(rec, version, 'TCP4', (CLIENT4, cport), (EXTERNAL4, ports['sink' + v]), what)
            check(rec['error'] is None and rec['length'] == len(big) and rec['sha'] == big_sha and
                  answer == b'%d %s\n' % (len(big), big_sha.encode()),
                  '%s: after the header exactly the 4 MB (length %d, sha256 %s), no second '
                  'header' % (what, rec['length'], 'equal' if rec.get('sha') == big_sha else 'DIFFERS'))

            # 4 MB echoed while it is still being sent: both directions on the splice path.
            s = connect((EXTERNAL4, ports['echo' + v]), CLIENT4)
            cport = s.getsockname()[1]
            writer = threading.Thread(target=s.sendall, args=(big,), daemon=True)
            writer.start()
            back = recv_exact(s, len(big))
            writer.join(IO_TIMEOUT)
            s.close()
            rec = echo[v].wait(1)[0]
            what = '%s 4 MB echoed while sent' % v
            header_is(rec, version, 'TCP4', (CLIENT4, cport), (EXTERNAL4, ports['echo' + v]), what)
            check(hashlib.sha256(back).hexdigest() == big_sha and rec['length'] == len(big),
                  '%s: the echo is the 4 MB (sha256 equal), the server read exactly 4 MB' % what)

            # A few bytes and a half-close at once, before the relay can have connected.
            s = connect((EXTERNAL4, ports['sink' + v]), CLIENT4)
            cport = s.getsockname()[1]
            s.sendall(b'one line\r\n')
            s.shutdown(socket.SHUT_WR)
            answer = recv_all(s)
            s.close()
            rec = sink[v].wait(2)[1]
            what = '%s half-close at connect' % v
            header_is(rec, version, 'TCP4', (CLIENT4, cport), (EXTERNAL4, ports['sink' + v]), what)
            check(rec['first'] == b'one line\r\n' and rec['length'] == 10 and
                  answer.startswith(b'10 '),
                  '%s: header, the 10 bytes, EOF; the answer comes back (%r)' % (what, answer))

            # The client says nothing: the header comes anyway, and the server speaks first.
            s = connect((EXTERNAL4, ports['banner' + v]), CLIENT4)
            cport = s.getsockname()[1]
            t0 = time.monotonic()
            first = recv_exact(s, 11)
            ms = (time.monotonic() - t0) * 1000
            s.sendall(b'QUIT\r\n')
            rest = recv_exact(s, 6)
            s.close()
            rec = banner[v].wait(1)[0]
            what = '%s server speaks first' % v
            header_is(rec, version, 'TCP4', (CLIENT4, cport), (EXTERNAL4, ports['banner' + v]), what)
            check(first == b'220 ready\r\n' and rest == b'QUIT\r\n' and rec['first'] == b'QUIT\r\n'
                  and rec['length'] == 6,
                  '%s: the header came without a client byte, the banner reached the client '
                  '(%.0f ms), then the client\'s line alone' % (what, ms))

        # Without proxy_protocol: the server's first bytes are the client's.
        s = connect((EXTERNAL4, ports['plain_sink']), CLIENT4)
        s.sendall(big)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s)
        s.close()
        rec = plain_sink.wait(1)[0]
        check(rec['error'] is None and rec['first'] == big[:64] and rec['length'] == len(big) and
              rec['sha'] == big_sha and answer.startswith(b'%d ' % len(big)),
              'no proxy_protocol: the server\'s first bytes are the client\'s, 4 MB exactly')
        s = connect((EXTERNAL4, ports['plain_banner']), CLIENT4)
        first = recv_exact(s, 11)
        s.sendall(b'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n')   # the client's own bytes, passed as is
        rest = recv_exact(s, 32)
        s.close()
        rec = plain_banner.wait(1)[0]
        check(first == b'220 ready\r\n' and rec['first'] == b'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'
              and rec['length'] == 32 and rest == rec['first'],
              'no proxy_protocol: a silent client gets the banner; a client\'s own "PROXY" line '
              'reaches the server unchanged and alone')
    finally:
        check(relay.stop(graceful=True) == 0, 'ordering: the relay exits 0')


def test_tcp_slow_connect(tmp):
    """The internal server's accept queue is full when the client arrives with 1 MB:
    the relay's SYN goes unanswered and is retried (after 1 s); the client's bytes wait.
    The header still comes first, then the 1 MB exactly."""
    for v, version in (('v1', 1), ('v2', 2)):
        srv = TcpServer(SERVER4, 'sink', backlog=0, start=False)
        # One connection, established, fills the accept queue of a backlog-0 listener:
        # the kernel then drops SYNs. (More fillers would retry their own SYNs when the
        # queue frees and race the relay's, at times into a reset: the kernel's doing.)
        filler = socket.socket()
        filler.settimeout(IO_TIMEOUT)
        filler.connect((SERVER4, srv.port))
        fillers = [filler]
        port = fresh_port()
        relay = Relay(tmp, conf([fwd('slow' + v, 'tcp', EXTERNAL4, port, SERVER4, srv.port, v)],
                                'tcp = { connect_timeout = 20.0; };'))
        data = os.urandom(1 << 20)
        try:
            t0 = time.monotonic()
            s = connect((EXTERNAL4, port), CLIENT4)
            cport = s.getsockname()[1]
            writer = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)),
                                      daemon=True)
            writer.start()
            time.sleep(0.3)          # the intended delay: the relay is connecting meanwhile
            srv.skip_ports.add(filler.getsockname()[1])
            srv.start()              # accept: the filler is closed, the queue frees
            try:
                answer = recv_all(s)
            except OSError as e:
                answer = repr(e).encode()
            writer.join(IO_TIMEOUT)
            s.close()
            recs = [r for r in srv.wait(1, timeout=LINE_TIMEOUT)]
            rec = recs[0] if recs else {'error': 'no connection', 'header': None}
            what = '%s slow internal connect with 1 MB waiting' % v
            header_is(rec, version, 'TCP4', (CLIENT4, cport), (EXTERNAL4, port), what)
            delay = (rec.get('t_header') or t0) - t0
            check(rec.get('length') == len(data) and
                  rec.get('sha') == hashlib.sha256(data).hexdigest() and answer.startswith(b'1048576 ')
                  and delay >= 0.5,
                  '%s: then the 1 MB exactly (the connect was held back: the header came %.1f s '
                  'after the client connected)' % (what, delay))
        finally:
            for f in fillers:
                f.close()
            srv.close()
            check(relay.stop(graceful=True) == 0, 'slow connect: the relay exits 0')


# ---- UDP ------------------------------------------------------------------------------------

def udp_ask(sock, dest, payload, wait=2.0):
    """Sends payload and waits for it to come back; returns what came back (None: nothing)."""
    sock.sendto(payload, dest)
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 17)
        except socket.timeout:
            return None
        if data == payload or not data.startswith(payload[:12]) or len(payload) < 12:
            return data


def payload_of(tag, size):
    head = tag.encode() + b'|'
    if size <= len(head):
        return head[:size]
    return head + os.urandom(size - len(head))


def test_udp(tmp):
    """v2 DGRAM: three clients (two addresses), datagrams of 0 bytes to the largest that fits
    with the header, each arriving with its client's header; replies without one."""
    srv4, srv6, srv64, srvds = UdpServer(SERVER4), UdpServer('::1'), UdpServer(SERVER4), \
        UdpServer(SERVER4)
    p4, p6, p64, pds = fresh_port(), fresh_port(), fresh_port(), fresh_port()
    relay = Relay(tmp, conf([fwd('u4', 'udp', EXTERNAL4, p4, SERVER4, srv4.port, 'v2'),
                             fwd('u6', 'udp', '::1', p6, '::1', srv6.port, 'v2'),
                             fwd('u64', 'udp', '::1', p64, SERVER4, srv64.port, 'v2'),
                             fwd('uds', 'udp', '::', pds, SERVER4, srvds.port, 'v2')]))
    try:
        # IPv4 server: 65,507 bytes of UDP payload at most, 28 of them the header's.
        # IPv6 server: 65,527, 52 the header's (IPv6 client) or 28 (an IPv4 one).
        cases = [
            ('u4', srv4, EXTERNAL4, p4, [CLIENT4, CLIENT4, CLIENT4B], 'UDP4', 65507 - 28),
            ('u6', srv6, '::1', p6, ['::1', '::1'], 'UDP6', 65527 - 52),
            ('u64', srv64, '::1', p64, ['::1', '::1'], 'UDP6', 65507 - 52),
            ('uds', srvds, EXTERNAL4, pds, [CLIENT4, CLIENT4B], 'UDP4', 65507 - 28),
            ('uds', srvds, '::1', pds, ['::1'], 'UDP6', 65507 - 52),
        ]
        for name, srv, ext, port, clients, family, largest in cases:
            what = '%s: %s -> %s:%d' % (name, '/'.join(sorted(set(clients))), ext, port)
            sizes = [1, 100, 1472, 9000, 60000, largest, 0, 17]
            socks = []
            for c in clients:
                s = socket.socket(family_of(c), socket.SOCK_DGRAM)
                s.bind((c, 0))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                socks.append(s)
            base = len(srv.records)
            sent, replies_ok = [], 0
            for size in sizes:                 # the clients take turns, each of its datagrams
                for i, s in enumerate(socks):
                    payload = payload_of('%s-%d-%d' % (name, s.getsockname()[1], size), size)
                    back = udp_ask(s, (ext, port), payload)
                    replies_ok += back == payload
                    sent.append(((norm(s.getsockname()[0]), s.getsockname()[1]), payload))
            recs = srv.records[base:]
            bad = []
            for (client, payload), rec in zip(sent, recs):
                h = rec['header']
                if (rec['error'] or h is None or h['version'] != 2 or h['ver_cmd'] != 0x21 or
                        h['family'] != family or h['src'] != client or
                        h['dst'] != (norm(ext), port) or h['tlvs'] or rec['payload'] != payload):
                    bad.append((client, len(payload), rec['error'],
                                h and (h['family'], h['src'], h['dst'])))
            check(len(recs) == len(sent) and not bad,
                  '%s: all %d datagrams (sizes %s, %d clients) arrived, each with a v2 %s header '
                  'naming its own client and %s:%d, then its payload exactly%s'
                  % (what, len(sent), sizes, len(socks), family, ext, port,
                     '' if not bad else ' -- %d received, bad: %r' % (len(recs), bad[:4])))
            check(replies_ok == len(sent),
                  '%s: every reply came back to its client without a header (%d of %d)'
                  % (what, replies_ok, len(sent)))
            if name == 'u4':
                print('u4 example header: %r' % recs[0]['header']['raw'], flush=True)
                # Too large to carry the header: dropped whole, and the flow goes on.
                s = socks[0]
                base = len(srv.records)
                back = udp_ask(s, (ext, port), payload_of('u4-toolarge', largest + 1), wait=0.5)
                after = payload_of('u4-after', 300)
                back2 = udp_ask(s, (ext, port), after)
                recs = srv.records[base:]
                check(back is None and back2 == after and len(recs) == 1 and
                      recs[0]['payload'] == after,
                      '%s: %d bytes (no room for the 28-byte header) never reach the server, '
                      'not even cut; the next datagram does' % (what, largest + 1))
            for s in socks:
                s.close()

        # `both` with v2: TCP gets a TCP4 header, UDP a UDP4 one, on the same port.
        code, relay = relay.stop(graceful=True), None
        check(code == 0, 'udp: the relay exits 0')
        usrv, tsrv = tcp_udp_servers(SERVER4)
        bport = fresh_port()
        relay = Relay(tmp, conf([fwd('b', 'both', EXTERNAL4, bport, SERVER4, usrv.port, 'v2')]))
        c = connect((EXTERNAL4, bport), CLIENT4)
        cport = c.getsockname()[1]
        c.sendall(b'tcp half')
        back = recv_exact(c, 8)
        c.close()
        rec = tsrv.wait(1)[0]
        header_is(rec, 2, 'TCP4', (CLIENT4, cport), (EXTERNAL4, bport), 'both v2: TCP')
        check(back == b'tcp half', 'both v2: the TCP bytes are echoed')
        tsrv.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((CLIENT4, 0))
        back = udp_ask(u, (EXTERNAL4, bport), b'udp half')
        rec = usrv.records[0] if usrv.records else {'error': 'nothing', 'header': None}
        header_is(rec, 2, 'UDP4', (CLIENT4, u.getsockname()[1]), (EXTERNAL4, bport), 'both v2: UDP')
        check(back == b'udp half', 'both v2: the UDP reply comes back without a header')
        u.close()
    finally:
        if relay is not None:
            check(relay.stop(graceful=True) == 0, 'udp: the relay exits 0')


def tcp_udp_servers(host):
    """A UdpServer and a TcpServer (echo) on the same port of host."""
    for _ in range(50):
        usrv = UdpServer(host)
        try:
            return usrv, TcpServer(host, port=usrv.port)
        except OSError:
            usrv.close()
    raise RuntimeError('no port free for both TCP and UDP')


# ---- configuration errors ----------------------------------------------------------------------

def test_config_errors(tmp):
    port = fresh_port()
    cases = [
        ('udp', 'v1', '', 'proxy_protocol "v1" has no datagrams'),
        ('both', 'v1', '', 'proxy_protocol "v1" has no datagrams'),
        ('tcp', 'v1', 'ftp = true; ', 'does not go with ftp'),
        ('tcp', 'v2', 'ftp = true; ', 'does not go with ftp'),
        ('tcp', 'v3', '', 'proxy_protocol must be "v1" or "v2"'),
        ('udp', 'V2', '', 'proxy_protocol must be "v1" or "v2"'),
        ('tcp', '', '', 'proxy_protocol must be "v1" or "v2"'),
    ]
    for proto, value, extra, needle in cases:
        text = ('# a comment line\n'
                'forwards = (\n'
                '  { name = "bad"; protocol = "%s";\n'
                '    external_address = "127.0.0.1"; external_port = %d;\n'
                '    internal_ip = "127.0.0.1"; internal_port = %d;\n'
                '    %s\n'
                '    proxy_protocol = "%s";\n'
                '  }\n);\n' % (proto, port, port + 1, extra, value))
        path = os.path.join(tmp, 'bad.conf')
        with open(path, 'w') as f:
            f.write(text)
        proc = subprocess.run([BIN, '-c', path], capture_output=True, text=True, timeout=10)
        err = proc.stderr.strip()
        check(proc.returncode == 1 and '%s:7:' % path in err and needle in err,
              'config: protocol %s, proxy_protocol "%s"%s: exit 1 naming line 7 (%r)'
              % (proto, value, ' with ' + extra.strip() if extra else '', err))
    # Not a string.
    path = os.path.join(tmp, 'bad.conf')
    with open(path, 'w') as f:
        f.write('forwards = (\n  { name = "n"; protocol = "tcp"; external_address = "127.0.0.1";\n'
                '    external_port = %d; internal_ip = "127.0.0.1"; internal_port = %d;\n'
                '    proxy_protocol = 2; }\n);\n' % (port, port + 1))
    proc = subprocess.run([BIN, '-c', path], capture_output=True, text=True, timeout=10)
    check(proc.returncode == 1 and '%s:4:' % path in proc.stderr and
          'proxy_protocol must be' in proc.stderr,
          'config: proxy_protocol = 2 (a number): exit 1 naming line 4 (%r)' % proc.stderr.strip())


def test_reload(tmp):
    """SIGHUP turns proxy_protocol on, then off: connections and UDP flows keep what they
    started with (no header in the middle of a stream, none added to an old flow, none
    taken from one); new ones follow the new rule. The servers here read no header: they
    record and echo the raw bytes, a header included."""
    ts = TcpServer(SERVER4, header=False)
    us = UdpServer(SERVER4, header=False)
    tp, up = fresh_port(), fresh_port()
    dest_t, dest_u = (EXTERNAL4, tp), (EXTERNAL4, up)

    def text(pp):
        return conf([fwd('t', 'tcp', EXTERNAL4, tp, SERVER4, ts.port, pp),
                     fwd('u', 'udp', EXTERNAL4, up, SERVER4, us.port, pp)])
    relay = Relay(tmp, text(None))
    socks = []

    def reload(pp, n):
        with open(relay.path, 'w') as f:
            f.write(text(pp))
        relay.proc.send_signal(signal.SIGHUP)
        return relay.wait_line('reload %d: applied' % n)

    def tcp_conn():
        c = connect(dest_t, CLIENT4)
        socks.append(c)
        return c

    def udp_sock():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((CLIENT4, 0))
        socks.append(u)
        return u

    def echoed(c, data, header=0):
        """Whether data comes back (after `header` bytes of an echoed header)."""
        c.sendall(data)
        return recv_exact(c, header + len(data)).endswith(data)

    def udp_echoed(u, data, header=0):
        back = udp_ask(u, dest_u, data)
        return back is not None and len(back) == header + len(data) and back.endswith(data)
    try:
        before, ubefore = tcp_conn(), udp_sock()
        ok = echoed(before, b'b1') and udp_echoed(ubefore, b'ub1')
        check(reload('v2', 1), 'reload: proxy_protocol "v2" applied')
        during, uduring = tcp_conn(), udp_sock()
        during_port = during.getsockname()[1]
        ok &= echoed(during, b'd1', 28) and udp_echoed(uduring, b'ud1', 28)
        ok &= echoed(before, b'b2') and udp_echoed(ubefore, b'ub2')
        check(reload(None, 2), 'reload: proxy_protocol removed, applied')
        after, uafter = tcp_conn(), udp_sock()
        ok &= echoed(after, b'a1') and udp_echoed(uafter, b'ua1')
        ok &= echoed(during, b'd2') and udp_echoed(uduring, b'ud2', 28)
        check(ok, 'reload: every echo came back')
        for c in socks:
            c.close()
        streams = {r['first'][-4:]: r['first'] for r in ts.wait(3)}
        d = streams.get(b'd1d2', b'')
        got = None
        try:
            got = parse_proxy(d)
        except ProxyError:
            pass
        check(streams.get(b'b1b2') == b'b1b2',
              'reload: the connection opened before "v2" never gets a header (%r)'
              % streams.get(b'b1b2'))
        check(got is not None and got[1] == len(d) - 4 and
              got[0]['src'] == (CLIENT4, during_port),
              'reload: the connection opened under "v2" has its one header, and nothing more '
              'after the option was removed (%r)' % d)
        check(streams.get(b'a1') == b'a1', 'reload: a connection opened after the removal gets '
              'no header (%r)' % streams.get(b'a1'))
        raw = [r['payload'] for r in us.records]
        with_header = [x for x in raw if x[:12] == V2_SIG]
        check(b'ub1' in raw and b'ub2' in raw and b'ua1' in raw and len(with_header) == 2 and
              with_header[0].endswith(b'ud1') and with_header[1].endswith(b'ud2'),
              'reload: the UDP flow from before keeps no header, the one made under "v2" keeps '
              'it after the removal, a new one has none (%r)' % raw)
    finally:
        for c in socks:
            c.close()
        check(relay.stop(graceful=True) == 0, 'reload: the relay exits 0')


def main():
    if not BIN:
        print('PORTRELAY_BIN is not set; skipping')
        return SKIP
    part = sys.argv[1] if len(sys.argv) > 1 else 'tcp'
    tests = {
        'tcp': [test_parser, test_tcp_addresses, test_tcp_ordering, test_tcp_slow_connect],
        'udp': [test_udp],
        'config': [test_config_errors, test_reload],
    }[part]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='portrelay-proxy-') as tmp:
        for test in tests:
            print('== %s' % test.__name__, flush=True)
            try:
                test(tmp)
            except Exception as e:      # a step failed in a way the test did not expect
                check(False, '%s: %r' % (test.__name__, e))
    print('proxy_test %s: %.1f s' % (part, time.monotonic() - t0))
    return exit_status()


if __name__ == '__main__':
    sys.exit(main())
