#!/usr/bin/env python3
"""Integration tests of the admin endpoint, through the real binary on loopback.

    admin_test.py endpoint     /metrics and /status against real traffic, token
                               auth, Unix socket, config errors, nothing listening
                               without `admin`, `promtool check metrics`
    admin_test.py prometheus   a real Prometheus server scrapes the relay once

PORTRELAY_BIN names the binary (meson sets it). promtool and prometheus come
from Debian's `prometheus` package; without them a test skips (exit 77),
unless PORTRELAY_E2E_REQUIRED=1 (CI), where it fails.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from itest_lib import (check, exit_status, failures, free_port, http_get, sample, tcp_echo_server,
                       udp_echo_server)

BIN = os.environ.get('PORTRELAY_BIN')
REQUIRED = os.environ.get('PORTRELAY_E2E_REQUIRED') == '1'
SKIP = 77


class Relay:
    """The relay on a config file, started on its `ready` line, stopped by PID."""

    def __init__(self, config_text, tmp, expect_ready=True):
        self.path = os.path.join(tmp, 'portrelay.conf')
        with open(self.path, 'w') as f:
            f.write(config_text)
        self.proc = subprocess.Popen([BIN, '-c', self.path], stderr=subprocess.PIPE, text=True)
        self.log = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if expect_ready:
            if not self.ready.wait(10):
                self.stop()
                raise RuntimeError('relay not ready:\n' + ''.join(self.log))

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)
            sys.stderr.write('relay| ' + line)
            if ' ready: ' in line:
                self.ready.set()

    def wait_exit(self, timeout=10):
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait_exit()


def dead_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def listening_sockets(pid):
    """(tcp ports, unix paths) the process listens on."""
    inodes = set()
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try:
            target = os.readlink(f'/proc/{pid}/fd/{fd}')
        except OSError:
            continue
        m = re.match(r'socket:\[(\d+)\]', target)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ('tcp', 'tcp6'):
        with open(f'/proc/{pid}/net/{table}') as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == '0A' and fields[9] in inodes:
                    ports.add(int(fields[1].split(':')[1], 16))
    paths = set()
    with open(f'/proc/{pid}/net/unix') as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            # Flags 00010000: __SO_ACCEPTCON, a listening socket.
            if fields[6] in inodes and fields[3] == '00010000':
                paths.add(fields[7] if len(fields) > 7 else '')
    return ports, paths


def need_tool(name):
    path = shutil.which(name)
    if path is None:
        msg = f'{name} not found (Debian package prometheus)'
        if REQUIRED:
            check(False, msg + ' but PORTRELAY_E2E_REQUIRED=1')
        else:
            print('SKIP: ' + msg)
    return path


# ---- the endpoint ------------------------------------------------------------

def test_metrics_follow_traffic(tmp):
    echo = tcp_echo_server()
    udp_echo = udp_echo_server()
    alpha, beta, gone, admin = free_port(), free_port(), free_port(), free_port()
    dgram = free_port()
    relay = Relay(f'''
admin = {{ listen = "127.0.0.1:{admin}"; }};
forwards = (
  {{ name = "alpha"; protocol = "tcp"; external_address = "127.0.0.1"; external_port = {alpha};
     internal_ip = "127.0.0.1"; internal_port = {echo}; }},
  {{ name = "beta \\"quoted\\" \\\\ name"; protocol = "both"; external_address = "127.0.0.1";
     external_port = {beta}; internal_ip = "127.0.0.1"; internal_port = {echo}; }},
  {{ name = "gone"; protocol = "tcp"; external_address = "127.0.0.1"; external_port = {gone};
     internal_ip = "127.0.0.1"; internal_port = {dead_port()}; }},
  {{ name = "dgram"; protocol = "udp"; external_address = "127.0.0.1"; external_port = {dgram};
     internal_ip = "127.0.0.1"; internal_port = {udp_echo}; }}
);
''', tmp)
    try:
        payload = os.urandom(300000)
        with socket.create_connection(('127.0.0.1', alpha), timeout=5) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            got = b''
            while len(got) < len(payload):
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
        check(got == payload, 'a 300,000-byte echo through forward alpha')
        # A connection still open shows as active, its bytes already counted.
        held = socket.create_connection(('127.0.0.1', alpha), timeout=5)
        held.sendall(b'x' * 1000)
        held.recv(1000, socket.MSG_WAITALL)
        # The relay resets the client when the internal host refuses: that
        # reset may even beat the end of connect().
        try:
            with socket.create_connection(('127.0.0.1', gone), timeout=5) as c:
                c.settimeout(5)
                c.recv(1)
        except OSError:
            pass
        # Two UDP clients, 5 datagrams each, every one echoed.
        for _ in range(2):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(5)
                for i in range(5):
                    u.sendto(b'datagram %d' % i, ('127.0.0.1', dgram))
                    u.recvfrom(100)
        base = f'http://127.0.0.1:{admin}'
        deadline = time.time() + 5
        while True:
            status, text = http_get(base + '/metrics')
            if sample(text, 'portrelay_tcp_connect_failures_total', forward='gone',
                      reason='refused') == 1 or time.time() > deadline:
                break
            time.sleep(0.05)
        check(status == 200, 'GET /metrics: 200')
        check(sample(text, 'portrelay_tcp_bytes_total', forward='alpha',
                     direction='to_internal') == 301000,
              'alpha: 301000 bytes to_internal (one closed, one open connection)')
        check(sample(text, 'portrelay_tcp_bytes_total', forward='alpha',
                     direction='to_client') == 301000, 'alpha: 301000 bytes to_client')
        check(sample(text, 'portrelay_tcp_connections_total', forward='alpha') == 2,
              'alpha: 2 connections')
        check(sample(text, 'portrelay_tcp_connections_active', forward='alpha') == 1,
              'alpha: 1 connection active')
        check(sample(text, 'portrelay_tcp_bytes_total', forward='beta \\"quoted\\" \\\\ name',
                     direction='to_internal') == 0,
              'beta (name with quotes and a backslash, escaped): 0 bytes')
        check(sample(text, 'portrelay_udp_flows_active', forward='beta \\"quoted\\" \\\\ name')
              == 0, 'beta has UDP families')
        check(sample(text, 'portrelay_udp_flows_active', forward='alpha') is None,
              'alpha (tcp only) has no UDP families')
        check(sample(text, 'portrelay_tcp_connect_failures_total', forward='gone',
                     reason='refused') == 1, 'gone: 1 connect failure, reason refused')
        check(sample(text, 'portrelay_udp_datagrams_total', forward='dgram',
                     direction='to_internal') == 10 and
              sample(text, 'portrelay_udp_datagrams_total', forward='dgram',
                     direction='to_client') == 10, 'dgram: 10 datagrams each way')
        check(sample(text, 'portrelay_udp_flows_created_total', forward='dgram') == 2 and
              sample(text, 'portrelay_udp_flows_active', forward='dgram') == 2,
              'dgram: 2 flows created, 2 active')
        check(sample(text, 'portrelay_udp_dropped_datagrams_total', forward='dgram',
                     reason='table_full') == 0, 'dgram: no drops')
        check(sample(text, 'portrelay_tcp_connections_total', forward='dgram') is None,
              'dgram (udp only) has no TCP families')
        check(sample(text, 'portrelay_build_info', version=relay_version()) == 1,
              'build_info carries the version')
        check((sample(text, 'portrelay_open_fds') or 0) > 5, 'open_fds counted')
        check(sample(text, 'portrelay_reloads_total', result='success') == 0,
              'reloads_total{result="success"} 0')
        check('127.0.0.1:' not in text.replace(f'127.0.0.1:{admin}', ''),
              'no address in any label')
        for line in text.splitlines():
            if line.startswith('# TYPE '):
                name = line.split()[2]
                check(text.count(f'# TYPE {name} ') == 1 and
                      text.count(f'# HELP {name} ') == 1, f'HELP and TYPE once: {name}')

        status, body = http_get(base + '/status')
        check(status == 200, 'GET /status: 200')
        doc = json.loads(body)
        names = [f['name'] for f in doc['forwards']]
        check(names == ['alpha', 'beta "quoted" \\ name', 'gone', 'dgram'],
              'status lists the forwards, names unescaped by the JSON parser')
        a = doc['forwards'][0]
        check(a['protocol'] == 'tcp' and a['external_port'] == alpha and
              a['internal_ip'] == '127.0.0.1' and a['internal_port'] == echo,
              'status: alpha\'s rule')
        check(a['listeners'] == [{'protocol': 'tcp', 'address': '127.0.0.1', 'port': alpha,
                                  'sockets': 1}], 'status: alpha\'s listeners')
        check(len(doc['forwards'][1]['listeners']) == 2, 'status: beta listens on tcp and udp')
        check(a['counters']['tcp_bytes_total'] == {'to_internal': 301000,
                                                   'to_client': 301000},
              'status: alpha\'s bytes as in /metrics')
        status, _ = http_get(base + '/nothing')
        check(status == 404, 'an unknown path: 404')
        held.close()

        promtool = need_tool('promtool')
        if promtool is not None:
            _, text = http_get(base + '/metrics')
            res = subprocess.run([promtool, 'check', 'metrics'], input=text, text=True,
                                 capture_output=True)
            check(res.returncode == 0 and res.stdout.strip() == '' and
                  res.stderr.strip() == '',
                  'promtool check metrics: no error, no lint warning ' +
                  (res.stdout + res.stderr).strip())
    finally:
        check(relay.stop() == 0, 'relay exits 0')


def relay_version():
    out = subprocess.run([BIN, '-V'], capture_output=True, text=True).stdout
    return out.split()[1]


def test_token(tmp):
    echo = tcp_echo_server()
    port, admin = free_port(), free_port()
    token_file = os.path.join(tmp, 'admin.token')
    with open(token_file, 'w') as f:
        f.write('s3cret-token\nsecond line ignored\n')
    # A token makes a non-loopback address acceptable.
    relay = Relay(f'''
admin = {{ listen = "0.0.0.0:{admin}"; token_file = "{token_file}"; }};
forwards = ( {{ name = "t"; protocol = "tcp"; external_address = "127.0.0.1";
               external_port = {port}; internal_ip = "127.0.0.1"; internal_port = {echo}; }} );
''', tmp)
    try:
        url = f'http://127.0.0.1:{admin}/metrics'
        check(http_get(url)[0] == 401, 'no Authorization header: 401')
        check(http_get(url, token='wrong')[0] == 401, 'a wrong token: 401')
        check(http_get(url, token='s3cret-toke')[0] == 401, 'a prefix of the token: 401')
        check(http_get(url, token='s3cret-tokenX')[0] == 401, 'the token and more: 401')
        check(http_get(url, token='s3cret-token')[0] == 200, 'the right token: 200')
        check(http_get(f'http://127.0.0.1:{admin}/status', token='s3cret-token')[0] == 200,
              '/status with the right token: 200')
    finally:
        check(relay.stop() == 0, 'relay exits 0')


def test_config_errors(tmp):
    port = free_port()
    relay = Relay(f'''forwards = ( {{ protocol = "tcp"; external_address = "127.0.0.1";
  external_port = {port}; internal_ip = "127.0.0.1"; internal_port = 9; }} );
admin = {{
  listen = "0.0.0.0:9330";
}};
''', tmp, expect_ready=False)
    code = relay.wait_exit()
    log = ''.join(relay.log)
    check(code == 1, 'non-loopback admin.listen without token_file: exit 1')
    check(f'{relay.path}:4:' in log and 'token_file' in log,
          'the message names file:line and token_file: ' + log.strip())

    relay = Relay(f'''forwards = ( {{ protocol = "tcp"; external_address = "127.0.0.1";
  external_port = {port}; internal_ip = "127.0.0.1"; internal_port = 9; }} );
admin = {{ listen = "127.0.0.1:{free_port()}"; token_file = "{tmp}/missing"; }};
''', tmp, expect_ready=False)
    code = relay.wait_exit()
    check(code == 1 and 'missing' in ''.join(relay.log), 'an unreadable token_file: exit 1')


def test_unix_socket_and_nothing_without_admin(tmp):
    echo = tcp_echo_server()
    port = free_port()
    path = os.path.join(tmp, 'admin.sock')
    rule = f'''forwards = ( {{ name = "u"; protocol = "tcp"; external_address = "127.0.0.1";
  external_port = {port}; internal_ip = "127.0.0.1"; internal_port = {echo}; }} );'''
    relay = Relay(rule + f'\nadmin = {{ listen = "{path}"; }};\n', tmp)
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=5) as c:
            c.sendall(b'hello')
            c.recv(5, socket.MSG_WAITALL)
        status, text = http_get('/metrics', unix=path)
        check(status == 200 and 'portrelay_tcp_connections_total{forward="u"} 1' in text,
              'GET /metrics over the Unix socket')
        curl = shutil.which('curl')
        if curl is not None:
            out = subprocess.run([curl, '-sf', '--unix-socket', path, 'http://x/status'],
                                 capture_output=True, text=True)
            check(out.returncode == 0 and json.loads(out.stdout)['forwards'][0]['name'] == 'u',
                  'curl --unix-socket PATH http://x/status')
        mode = os.stat(path).st_mode & 0o777
        check(mode & 0o007 == 0, f'the socket file is not open to others ({oct(mode)})')
    finally:
        check(relay.stop() == 0, 'relay exits 0')
    check(not os.path.exists(path), 'the socket file is removed at exit')

    relay = Relay(rule + '\n', tmp)
    try:
        ports, paths = listening_sockets(relay.proc.pid)
        check(ports == {port} and not paths,
              f'without admin only the forward listens: tcp {sorted(ports)}, unix {paths}')
    finally:
        check(relay.stop() == 0, 'relay exits 0')


# ---- a real Prometheus server ----------------------------------------------------

def test_prometheus_scrape(tmp):
    prometheus = need_tool('prometheus')
    if prometheus is None:
        return
    echo = tcp_echo_server()
    port, admin, web = free_port(), free_port(), free_port()
    relay = Relay(f'''
admin = {{ listen = "127.0.0.1:{admin}"; }};
forwards = ( {{ name = "scraped"; protocol = "tcp"; external_address = "127.0.0.1";
               external_port = {port}; internal_ip = "127.0.0.1"; internal_port = {echo}; }} );
''', tmp)
    config = os.path.join(tmp, 'prometheus.yml')
    with open(config, 'w') as f:
        f.write(f'''global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: portrelay
    static_configs:
      - targets: ['127.0.0.1:{admin}']
''')
    log = open(os.path.join(tmp, 'prometheus.log'), 'w')
    prom = subprocess.Popen([prometheus, f'--config.file={config}',
                             f'--storage.tsdb.path={tmp}/data',
                             f'--web.listen-address=127.0.0.1:{web}'],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=5) as c:
            c.sendall(b'ping')
            c.recv(4, socket.MSG_WAITALL)
        api = f'http://127.0.0.1:{web}/api/v1'
        target, value = None, None
        deadline = time.time() + 60
        while time.time() < deadline and (value is None):
            time.sleep(0.5)
            try:
                _, body = http_get(api + '/targets')
                active = json.loads(body)['data']['activeTargets']
                target = active[0] if active else None
                if target is None or target['health'] != 'up':
                    continue
                _, body = http_get(api + '/query?query=portrelay_tcp_bytes_total'
                                   '%7Bforward%3D%22scraped%22%2Cdirection%3D%22to_client%22%7D')
                result = json.loads(body)['data']['result']
                value = result[0]['value'][1] if result else None
            except (OSError, ValueError, KeyError):
                continue
        check(target is not None and target['health'] == 'up',
              f'prometheus reports the target up: {target and target.get("lastError")}')
        check(value == '4', f'prometheus has portrelay_tcp_bytes_total of the forward: {value}')
    finally:
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()
        check(relay.stop() == 0, 'relay exits 0')
        if failures:
            with open(os.path.join(tmp, 'prometheus.log')) as f:
                sys.stderr.write(f.read()[-4000:])


def main():
    if not BIN:
        print('SKIP: PORTRELAY_BIN not set')
        return SKIP
    which = sys.argv[1] if len(sys.argv) > 1 else 'endpoint'
    tests = {
        'endpoint': [test_metrics_follow_traffic, test_token, test_config_errors,
                     test_unix_socket_and_nothing_without_admin],
        'prometheus': [test_prometheus_scrape],
    }[which]
    skipped = False
    for test in tests:
        with tempfile.TemporaryDirectory(prefix='portrelay-admin-') as tmp:
            print(f'== {test.__name__}', flush=True)
            before = len(failures)
            test(tmp)
            if which == 'prometheus' and not shutil.which('prometheus') and not REQUIRED:
                skipped = before == len(failures)
    return exit_status() or (SKIP if skipped else 0)


if __name__ == '__main__':
    sys.exit(main())
