#!/usr/bin/env python3
"""Integration tests of admission control, through the real binary on loopback.

    admission_test.py limits  allow/deny (TCP reset at accept, UDP no flow),
                              max_connections_per_source (the 11th from one
                              address is reset, another address still gets
                              in), a forward's max_connections, the global
                              max_connections (clients wait in the backlog and
                              are served when a place frees), a client that
                              resets while the relay connects frees its
                              descriptors at once, a self-loop is refused,
                              `user` drops root (visible in /proc; one that
                              cannot drop exits 1), `freebind` binds an
                              address the host does not have, a client of a
                              wildcard UDP bind gets a flow per local address
    admission_test.py flood   a UDP flood from thousands of source ports and
                              source addresses (127.x.y.z) with the default
                              limits: established flows keep every reply, TCP
                              is still accepted, descriptors and memory stay
                              bounded; the figures are printed

PORTRELAY_BIN names the binary (meson sets it); without it the test skips
(exit 77). Traffic goes to 127.0.0.0/8 only; every loop is bounded in count
and time; waits are on log lines and socket events with deadlines that only
stop a hang.
"""
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from itest_lib import Relay, check, echoes, exit_status, free_port, tcp_echo_server, udp_echo_server

BIN = os.environ.get('PORTRELAY_BIN')
SKIP = 77
LINE_TIMEOUT = 15.0
IO_TIMEOUT = 10.0


def connect_from(source, port):
    s = socket.socket()
    s.settimeout(IO_TIMEOUT)
    s.bind((source, 0))
    s.connect(('127.0.0.1', port))
    return s


def refused(source, port):
    """Whether a connection from source is reset (at connect() or at its first byte)."""
    try:
        s = connect_from(source, port)
    except ConnectionError:
        return True
    with s:
        return not echoes(s)


def udp_echoes(port, source='127.0.0.1', payload=b'u', sock=None, wait=1.0):
    """Whether payload comes back within `wait` seconds; a late reply to an earlier
    datagram on the same socket is skipped, not taken for this one."""
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
    deadline = time.monotonic() + wait
    try:
        sock.sendto(payload, ('127.0.0.1', port))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            if sock.recv(65536) == payload:
                return True
    except OSError:
        return False
    finally:
        if own:
            sock.close()


def forward(name, proto, ext_port, int_port, extra=''):
    return ('  { name = "%s"; protocol = "%s"; external_address = "127.0.0.1"; '
            'external_port = %d; internal_ip = "127.0.0.1"; internal_port = %d; %s }'
            % (name, proto, ext_port, int_port, extra))


def conf(forwards, extra=''):
    return '%s\nforwards = (\n%s\n);\n' % (extra, ',\n'.join(forwards))


# ---- limits -------------------------------------------------------------------

def test_acl(tmp):
    echo = tcp_echo_server()
    uecho = udp_echo_server()
    port = free_port()
    relay = Relay(tmp, conf([forward('acl', 'tcp', port, echo,
                                     'deny = ["127.0.0.2/32", "127.0.9.0/24"];')]))
    try:
        # TCP: the denied client is reset at accept; others relay.
        ok = connect_from('127.0.0.1', port)
        check(echoes(ok), 'acl: 127.0.0.1 (no entry matches: default allow) relays over TCP')
        check(refused('127.0.0.2', port), 'acl: 127.0.0.2 (deny 127.0.0.2/32) is refused over TCP')
        check(refused('127.0.9.7', port), 'acl: 127.0.9.7 (deny 127.0.9.0/24) is refused over TCP')
        check(relay.wait_line('denied by allow/deny'), 'acl: the refusal is logged')
        # The UDP echo server answers the relay's flow, so a reply means a flow.
        relay2_port = free_port()
        relay.stop()
        relay = Relay(tmp, conf([forward('uacl', 'udp', relay2_port, uecho,
                                         'deny = ["127.0.0.2/32"];')]))
        check(udp_echoes(relay2_port, '127.0.0.1'), 'acl: 127.0.0.1 gets a UDP flow')
        check(not udp_echoes(relay2_port, '127.0.0.2', wait=0.5),
              'acl: 127.0.0.2 (denied) gets no UDP flow')
        check(relay.wait_line('client denied by allow/deny'), 'acl: the UDP refusal is logged')
        ok.close()
    finally:
        check(relay.stop() == 0, 'acl: the relay exits 0')


def test_per_source_and_forward_limits(tmp):
    echo = tcp_echo_server()
    port, port2 = free_port(), free_port()
    relay = Relay(tmp, conf([
        forward('src', 'tcp', port, echo, 'max_connections_per_source = 10;'),
        forward('fwd', 'tcp', port2, echo, 'max_connections = 5; max_connections_per_source = 0;'),
    ]))
    held = []
    try:
        for i in range(10):
            s = connect_from('127.0.0.1', port)
            held.append(s)
            if not echoes(s):
                check(False, 'per source: connection %d of 10 from 127.0.0.1 relays' % (i + 1))
                return
        check(True, 'per source: 10 connections from 127.0.0.1 relay')
        check(refused('127.0.0.1', port), 'per source: the 11th from 127.0.0.1 is reset')
        other = connect_from('127.0.0.3', port)
        check(echoes(other), 'per source: 127.0.0.3 still gets in while 127.0.0.1 is at its limit')
        check(relay.wait_line('max_connections_per_source reached'), 'per source: logged')
        held[0].close()
        # The place freed when the relay saw the close: bounded retry.
        deadline, again = time.monotonic() + IO_TIMEOUT, False
        while time.monotonic() < deadline and not again:
            try:
                s = connect_from('127.0.0.1', port)
            except ConnectionError:      # still refused: the reset came before connect() returned
                time.sleep(0.05)
                continue
            again = echoes(s)
            held.append(s)
            if not again:
                time.sleep(0.05)
        check(again, 'per source: a place freed by a close is taken again')

        fwd_held = [connect_from('127.0.0.%d' % (10 + i), port2) for i in range(5)]
        check(all(echoes(s) for s in fwd_held), "forward limit: 5 connections relay")
        check(refused('127.0.0.20', port2),
              "forward limit: the 6th is reset (the forward's max_connections = 5)")
        check(relay.wait_line("the forward's max_connections reached"), 'forward limit: logged')
        held += fwd_held + [other]
    finally:
        for s in held:
            s.close()
        check(relay.stop() == 0, 'limits: the relay exits 0')


def test_global_max_connections_waits(tmp):
    echo = tcp_echo_server()
    port = free_port()
    relay = Relay(tmp, conf([forward('g', 'tcp', port, echo, 'max_connections_per_source = 0;')],
                            'max_connections = 4;'))
    held = []
    try:
        held = [connect_from('127.0.0.1', port) for _ in range(4)]
        check(all(echoes(s) for s in held), 'global: 4 connections relay')
        waiting = connect_from('127.0.0.1', port)   # completes in the kernel's backlog
        waiting.settimeout(0.8)
        try:
            waiting.sendall(b'w')
            early = waiting.recv(1)
        except socket.timeout:
            early = None
        check(early is None, 'global: the 5th waits (no echo while 4 are open)')
        check(relay.wait_line('max_connections (4) open'), 'global: the wait is logged')
        held[0].close()
        waiting.settimeout(IO_TIMEOUT)
        try:
            late = waiting.recv(1)
        except OSError:
            late = None
        check(late == b'w', 'global: the 5th is served once a place frees (its byte echoed)')
        held.append(waiting)
    finally:
        for s in held:
            s.close()
        check(relay.stop() == 0, 'global: the relay exits 0')


def test_reset_while_connecting(tmp):
    # An internal server whose accept queue is full: SYNs go unanswered.
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(lsock.getsockname())
        except BlockingIOError:
            pass
        fillers.append(f)
    port = free_port()
    relay = Relay(tmp, conf([forward('slow', 'tcp', port, lsock.getsockname()[1])],
                            'tcp = { connect_timeout = 60.0; };'))
    try:
        before = relay.fds()
        c = connect_from('127.0.0.1', port)
        c.sendall(b'request')
        deadline = time.monotonic() + IO_TIMEOUT
        while relay.fds() < before + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        check(relay.fds() >= before + 2, 'connecting: the relay holds client and internal sockets')
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        c.close()
        deadline = time.monotonic() + 2.0      # far below connect_timeout (60 s)
        while relay.fds() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        check(relay.fds() <= before,
              'connecting: a client reset frees both descriptors at once, not at connect_timeout')
    finally:
        for f in fillers:
            f.close()
        lsock.close()
        check(relay.stop() == 0, 'connecting: the relay exits 0')


def test_self_loop_refused(tmp):
    port = free_port()
    for spec in ('tcp:127.0.0.1:%d:127.0.0.1:%d' % (port, port),
                 'udp:127.0.0.1:%d:127.0.0.1:%d' % (port, port),
                 'tcp:0.0.0.0:%d:127.0.0.1:%d' % (port, port)):
        proc = subprocess.run([BIN, '-L', spec], capture_output=True, text=True, timeout=10)
        check(proc.returncode == 1 and 'loop' in proc.stderr,
              'self-loop: -L %s exits 1 naming the loop (%r)' % (spec, proc.stderr.strip()))


def proc_ids(pid):
    ids = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('Uid', 'Gid', 'Groups'):
                ids[key] = value.split()
    return ids


def test_privilege_drop(tmp):
    if os.geteuid() != 0:
        print('not root: the privilege drop is not tested here', flush=True)
        return
    import pwd
    nobody = pwd.getpwnam('nobody')
    echo = tcp_echo_server()
    low = random.randint(600, 1000)      # a privileged port: bound before the drop
    relay = Relay(tmp, conf([forward('low', 'tcp', low, echo)], 'user = "nobody";'))
    try:
        ids = proc_ids(relay.proc.pid)
        check(ids['Uid'] == [str(nobody.pw_uid)] * 4,
              'privileges: real, effective, saved and fs uid are nobody\'s (%s)' % ids['Uid'])
        check(ids['Gid'] == [str(nobody.pw_gid)] * 4,
              'privileges: every gid is nobody\'s group (%s)' % ids['Gid'])
        check(ids['Groups'] == [str(nobody.pw_gid)],
              'privileges: no supplementary group of root left (%s)' % ids['Groups'])
        c = connect_from('127.0.0.1', low)
        check(echoes(c), 'privileges: port %d, bound as root, relays after the drop' % low)
        c.close()
    finally:
        check(relay.stop() == 0, 'privileges: the relay exits 0')
    # Told to drop but cannot (not root): it must not run on.
    proc = subprocess.run(['setpriv', '--reuid=%d' % nobody.pw_uid, '--regid=%d' % nobody.pw_gid,
                           '--clear-groups', BIN, '-L', 'tcp:127.0.0.1:%d:127.0.0.1:%d'
                           % (free_port(), echo)] + ['-c', write_conf(tmp, 'user = "root";')],
                          capture_output=True, text=True, timeout=10)
    check(proc.returncode == 1 and 'cannot run as user root' in proc.stderr,
          'privileges: a relay that cannot become the user it is told to exits 1 (%r)'
          % proc.stderr.strip()[-120:])


def write_conf(tmp, text):
    path = os.path.join(tmp, 'only-globals.conf')
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, 0o644)
    os.chmod(tmp, 0o755)
    return path


def test_freebind(tmp):
    echo = tcp_echo_server()
    port = free_port()
    # 192.0.2.0/24 is TEST-NET-1: never an address of this host.
    absent = forward('wan', 'tcp', port, echo).replace('"127.0.0.1"; external_port',
                                                       '"192.0.2.77"; external_port', 1)
    proc = subprocess.run([BIN, '-c', write_conf(tmp, conf([absent]))], capture_output=True,
                          text=True, timeout=10)
    check(proc.returncode == 1 and 'Cannot assign requested address' in proc.stderr,
          'freebind: without it an address the host lacks cannot be bound (exit 1)')
    relay = Relay(tmp, conf([absent.replace('}', 'freebind = true; }')]))
    check(relay.proc.poll() is None, 'freebind: with it the forward binds 192.0.2.77 and runs')
    check(relay.stop() == 0, 'freebind: the relay exits 0')


def test_wildcard_flows_per_local_address(tmp):
    """One client socket talks to two addresses of a wildcard bind: two flows, each
    answered from the address it was sent to."""
    seen = []
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(('127.0.0.1', 0))

    def serve():
        server.settimeout(IO_TIMEOUT)
        for _ in range(4):
            try:
                data, peer = server.recvfrom(100)
            except OSError:
                return
            seen.append(peer[1])
            server.sendto(data, peer)
    threading.Thread(target=serve, daemon=True).start()
    port = free_port()
    relay = Relay(tmp, conf([forward('any', 'udp', port, server.getsockname()[1])
                             .replace('"127.0.0.1"; external_port', '"0.0.0.0"; external_port', 1)]))
    try:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(('127.0.0.1', 0))
        client.settimeout(IO_TIMEOUT)
        replies = []
        for n, local in enumerate(('127.0.0.1', '127.0.0.2', '127.0.0.1', '127.0.0.2')):
            client.sendto(b'to %s %d' % (local.encode(), n), (local, port))
            data, source = client.recvfrom(100)
            replies.append((local, source[0], data))
        check(all(sent == came for sent, came, _ in replies),
              'wildcard: every reply comes from the address the client sent to (%s)'
              % [(a, b) for a, b, _ in replies])
        check(len(set(seen)) == 2 and seen[0] == seen[2] and seen[1] == seen[3],
              'wildcard: two local addresses are two flows, each kept (server saw ports %s)' % seen)
        client.close()
    finally:
        server.close()
        check(relay.stop() == 0, 'wildcard: the relay exits 0')


# ---- flood --------------------------------------------------------------------

# Run in processes of their own, so that the test's own Python threads (and
# its interpreter lock) do not stand between the established clients and the
# relay: what is measured is the relay.
UDP_ECHO_PROCESS = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind(('127.0.0.1', 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, peer = sock.recvfrom(65536)
    try:
        # Established clients' datagrams (b'e...') come back with the relay port they came from.
        sock.sendto(data + b'|%d' % peer[1] if data[:1] == b'e' else data, peer)
    except OSError:
        pass
"""

FLOOD_PROCESS = r"""
import random, socket, sys, time
port, seconds, limit, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(seed)
sources = ['127.0.0.1'] + ['127.%d.%d.%d' % (random.randint(2, 250), random.randint(0, 255),
                                             random.randint(1, 254)) for _ in range(3000)]
sent, socks, deadline = 0, [], time.monotonic() + seconds
while time.monotonic() < deadline and sent < limit:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((random.choice(sources), 0))
        s.sendto(b'flood', ('127.0.0.1', port))
        sent += 1
    except OSError:
        pass
    socks.append(s)
    if len(socks) >= 200:
        for old in socks:
            old.close()
        socks = []
print(sent, flush=True)
"""


def test_udp_flow_limits(tmp):
    """max_flows_per_source; a full table makes room by evicting a flow that never got
    a reply (quiet for a second), never one with a reply; unreplied_timeout."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(('127.0.0.1', 0))

    def serve():
        # Answers only datagrams starting with b'r': the others' flows stay unanswered.
        while True:
            try:
                data, peer = server.recvfrom(100)
            except OSError:
                return
            if data[:1] == b'r':
                server.sendto(data, peer)
    threading.Thread(target=serve, daemon=True).start()
    ps, ev = free_port(), free_port()
    relay = Relay(tmp, conf([forward('ps', 'udp', ps, server.getsockname()[1],
                                     'max_flows_per_source = 3;'),
                             forward('ev', 'udp', ev, server.getsockname()[1],
                                     'access_log = true;')],
                            # One worker: a worker makes room among its own flows, and
                            # which worker a client's flow lands on is the kernel's pick.
                            'workers = 1;\n'
                            'udp = { max_flows = 4; unreplied_timeout = 3; idle_timeout = 60; };'))
    socks = []

    def client(source='127.0.0.1'):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        socks.append(s)
        return s
    try:
        three = [client() for _ in range(3)]
        check(all(udp_echoes(ps, sock=s, payload=b'r%d' % i) for i, s in enumerate(three)),
              'flows per source: 3 clients of 127.0.0.1 get flows')
        check(not udp_echoes(ps, sock=client(), payload=b'r4', wait=0.5),
              'flows per source: a 4th client of 127.0.0.1 gets none (max_flows_per_source = 3)')
        check(udp_echoes(ps, sock=client('127.0.0.2'), payload=b'r5'),
              'flows per source: 127.0.0.2 still gets one')
        check(relay.wait_line('client at max_flows_per_source'), 'flows per source: logged')

        r1, r2, s1, s2, r3 = client(), client(), client(), client(), client()
        check(udp_echoes(ev, sock=r1, payload=b'r1') and udp_echoes(ev, sock=r2, payload=b'r2'),
              'eviction: two answered flows')
        s1.sendto(b's1', ('127.0.0.1', ev))
        s2.sendto(b's2', ('127.0.0.1', ev))
        check(not udp_echoes(ev, sock=r3, payload=b'r3', wait=0.5),
              'eviction: the table is full and its unanswered flows too young to go')
        time.sleep(1.3)
        check(udp_echoes(ev, sock=r3, payload=b'r3'),
              'eviction: a second later the newcomer gets a flow')
        check(relay.wait_line('evicted for a new client'),
              'eviction: the oldest unanswered flow made room (access log)')
        check(relay.wait_line('no reply within udp.unreplied_timeout'),
              'unreplied_timeout: the other unanswered flow expired')
        check(udp_echoes(ev, sock=r1, payload=b'r1b') and udp_echoes(ev, sock=r2, payload=b'r2b'),
              'eviction: the answered flows still work')
        check(udp_echoes(ev, sock=client(), payload=b'r4'), 'eviction: a fourth answered flow')
        time.sleep(1.3)
        check(not udp_echoes(ev, sock=client(), payload=b'r5', wait=0.5),
              'eviction: a table of answered flows makes no room')
        check(relay.wait_line('no unanswered flow to make room'),
              'eviction: the refusal is logged')
        check(relay.count('evicted for a new client') == 1,
              'eviction: only the one unanswered flow was evicted')
    finally:
        for s in socks:
            s.close()
        server.close()
        check(relay.stop() == 0, 'udp limits: the relay exits 0')


def test_udp_flood(tmp):
    echo_proc = subprocess.Popen([sys.executable, '-c', UDP_ECHO_PROCESS], stdout=subprocess.PIPE,
                                 text=True)
    uecho = int(echo_proc.stdout.readline())
    echo = tcp_echo_server()
    port, tport = free_port(), free_port()
    relay = None
    try:
        relay = Relay(tmp, conf([forward('dns', 'udp', port, uecho),
                                 forward('web', 'tcp', tport, echo)]))
        flood_and_measure(relay, port, tport)
    finally:
        if relay is not None:
            check(relay.stop() == 0, 'flood: the relay exits 0')
        echo_proc.kill()
        echo_proc.wait()


def flood_and_measure(relay, port, tport):
    budget = re.search(r'up to (\d+) tcp connections and (\d+) udp flows', ''.join(relay.log))
    check(budget is not None, 'flood: the start-up log states the budgets')
    flow_budget = int(budget.group(2)) if budget else 0
    fds0, rss0 = relay.fds(), relay.rss_kib()

    # Established clients, each from an address of its own: they send, get the reply, go on.
    established = []
    for i in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(('127.0.1.%d' % (i + 1), 0))
        established.append(s)
    relay_ports = [set() for _ in established]

    def ask(i, sock, n):
        """One request of client i, resent once after 3 s as a UDP client would; the
        reply names the relay port the server saw. 0: no answer, 1: answered, 2: on the resend."""
        payload = b'e%d-%d' % (i, n)
        for attempt in (1, 2):
            sock.sendto(payload, ('127.0.0.1', port))
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    break
                except OSError:
                    return 0
                echoed, _, seen = data.partition(b'|')
                if echoed == payload:
                    relay_ports[i].add(int(seen))
                    return attempt
        return 0

    check(all(ask(i, s, 0) == 1 for i, s in enumerate(established)),
          'flood: 8 established UDP clients get replies before the flood')

    # Two flooders: each datagram from a new source port, over 3,000 source addresses.
    flooders = [subprocess.Popen([sys.executable, '-c', FLOOD_PROCESS, str(port), '6', '40000',
                                  str(seed)], stdout=subprocess.PIPE, text=True)
                for seed in (1, 2)]
    answered = asked = resent = 0
    tcp_ok = tcp_tries = 0
    peak_fds = 0
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        for i, s in enumerate(established):
            asked += 1
            got = ask(i, s, asked)
            answered += got != 0
            resent += got == 2
        tcp_tries += 1
        try:
            c = connect_from('127.0.0.1', tport)
            tcp_ok += echoes(c)
            c.close()
        except OSError:
            pass
        peak_fds = max(peak_fds, relay.fds())
    sent = 0
    for f in flooders:
        out, _ = f.communicate(timeout=30)
        sent += int(out.strip() or 0)
    rss1 = relay.rss_kib()
    print('flood: %d datagrams from new sources in 6 s; established clients got %d of %d replies '
          '(%d after one resend); TCP %d of %d connections relayed; relay descriptors %d before, '
          'peak %d (flow budget %d); RSS %d KiB before, %d KiB after'
          % (sent, answered, asked, resent, tcp_ok, tcp_tries, fds0, peak_fds, flow_budget, rss0,
             rss1), flush=True)
    check(sent > 5000, 'flood: the flood sent thousands of datagrams (%d)' % sent)
    # UDP has no retransmission of its own: a datagram may drown in the flood's queue, and a
    # client resends (as DNS does). What must hold: every request answered, at most 1% after
    # a resend, and each client's flow kept (the server saw one relay port per client).
    check(answered == asked, 'flood: established clients got every answer (%d of %d)'
          % (answered, asked))
    check(resent * 100 <= asked, 'flood: at most 1%% needed a resend (%d of %d)' % (resent, asked))
    check(all(len(p) == 1 for p in relay_ports),
          'flood: each established flow was kept (relay ports per client: %s)'
          % [sorted(p) for p in relay_ports])
    check(tcp_ok == tcp_tries, 'flood: TCP was accepted and relayed throughout (%d of %d)'
          % (tcp_ok, tcp_tries))
    check(peak_fds <= fds0 + flow_budget + 16,
          'flood: descriptors stay within the flow budget (peak %d, budget %d)' % (peak_fds, flow_budget))
    check(rss1 - rss0 < 64 * 1024, 'flood: RSS grew by less than 64 MiB (%d KiB)' % (rss1 - rss0))


def main():
    if not BIN:
        print('PORTRELAY_BIN is not set; skipping')
        return SKIP
    part = sys.argv[1] if len(sys.argv) > 1 else 'limits'
    tests = {
        'limits': [test_self_loop_refused, test_acl, test_per_source_and_forward_limits,
                   test_global_max_connections_waits, test_reset_while_connecting,
                   test_privilege_drop, test_freebind, test_wildcard_flows_per_local_address,
                   test_udp_flow_limits],
        'flood': [test_udp_flood],
    }[part]
    with tempfile.TemporaryDirectory(prefix='portrelay-admission-') as tmp:
        for test in tests:
            print('== %s' % test.__name__, flush=True)
            try:
                test(tmp)
            except Exception as e:      # a step failed in a way the test did not expect
                check(False, '%s: %r' % (test.__name__, e))
    return exit_status()


if __name__ == '__main__':
    sys.exit(main())
