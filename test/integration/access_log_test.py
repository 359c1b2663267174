#!/usr/bin/env python3
"""access_log = true: one line at info per finished TCP connection and per closed UDP
flow, with the client, the address it reached, the internal address, bytes each way,
duration and how it ended; nothing for a forward without it; nothing a peer sent.

PORTRELAY_BIN names the binary (meson sets it); without it the test skips (exit 77).
"""
import os
import re
import socket
import sys
import tempfile
import threading

from admission_test import conf, forward
from itest_lib import Relay, check, exit_status, free_port

BIN = os.environ.get('PORTRELAY_BIN')
# What a hostile peer might send, hoping to forge or colour a log line.
HOSTILE = b'GET /\r\n2026-12-01T00:00:00.000Z info  [x] access: forged\x1b[31m\n'


def servers():
    """A TCP server answering twice what it got, a UDP one adding '!': their ports."""
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(8)
    usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usock.bind(('127.0.0.1', 0))

    def tcp_loop():
        while True:
            conn, _ = lsock.accept()
            with conn:
                data = conn.recv(65536)
                conn.sendall(data * 2)

    def udp_loop():
        while True:
            data, peer = usock.recvfrom(65536)
            usock.sendto(data + b'!', peer)
    threading.Thread(target=tcp_loop, daemon=True).start()
    threading.Thread(target=udp_loop, daemon=True).start()
    return lsock.getsockname()[1], usock.getsockname()[1]


def main():
    if not BIN:
        print('PORTRELAY_BIN is not set; skipping')
        return 77
    tport, uport = servers()
    logged, quiet = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix='portrelay-access-') as tmp:
        relay = Relay(tmp, conf([
            forward('logged', 'tcp', logged, tport, 'access_log = true;').replace(
                '"127.0.0.1"; external_port', '"0.0.0.0"; external_port', 1),
            forward('loggedu', 'udp', logged, uport, 'access_log = true;'),
            forward('quiet', 'both', quiet, tport),
        ], 'udp = { idle_timeout = 0.5; };'))
        try:
            c = socket.socket()
            c.bind(('127.0.0.7', 0))
            c.connect(('127.0.0.2', logged))
            c.sendall(HOSTILE)
            got = b''
            while len(got) < 2 * len(HOSTILE):
                got += c.recv(65536)
            client_port = c.getsockname()[1]
            c.close()
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(('127.0.0.8', 0))
            u.settimeout(5)
            u.sendto(HOSTILE, ('127.0.0.1', logged))
            u.recv(65536)
            uclient_port = u.getsockname()[1]
            q = socket.create_connection(('127.0.0.1', quiet))
            q.sendall(b'x')
            q.recv(10)
            q.close()

            check(relay.wait_line('access: tcp '), 'the TCP connection is logged')
            check(relay.wait_line('access: udp '), 'the UDP flow is logged once it expires')
            text = ''.join(relay.log)
            tcp = re.search(r' info  \[logged\] access: tcp 127\.0\.0\.7:(\d+) -> 127\.0\.0\.2:%d '
                            r'-> 127\.0\.0\.1:%d: (\d+) bytes to internal, (\d+) bytes to '
                            r'client, [0-9.]+ s, (.+)' % (logged, tport), text)
            check(tcp is not None and int(tcp.group(1)) == client_port and
                  int(tcp.group(2)) == len(HOSTILE) and int(tcp.group(3)) == 2 * len(HOSTILE),
                  'TCP line: client, the address it reached (a wildcard bind), internal '
                  'address, bytes each way (%s)' % (tcp.group(0) if tcp else None))
            udp = re.search(r' info  \[loggedu\] access: udp 127\.0\.0\.8:(\d+) -> '
                            r'127\.0\.0\.1:%d -> 127\.0\.0\.1:%d: 1 datagrams \((\d+) bytes\) to '
                            r'internal, 1 datagrams \((\d+) bytes\) to client, [0-9.]+ s, '
                            r'idle timeout' % (logged, uport), text)
            check(udp is not None and int(udp.group(1)) == uclient_port and
                  int(udp.group(2)) == len(HOSTILE) and int(udp.group(3)) == len(HOSTILE) + 1,
                  'UDP line: client, addresses, datagrams and bytes each way, how it ended (%s)'
                  % (udp.group(0) if udp else None))
            check('[quiet]' not in text.split(' ready: ')[-1],
                  'a forward without access_log logs nothing per connection')
            check('forged' not in text and '\x1b' not in text,
                  'nothing the peers sent reaches the log')
        finally:
            check(relay.stop() == 0, 'the relay exits 0')
    return exit_status()


if __name__ == '__main__':
    sys.exit(main())
