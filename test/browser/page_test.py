#!/usr/bin/env python3
"""The Port Forwarding page in a real browser: Debian's chromium, headless, driven
by python3-selenium through chromium-driver, against the real binary (PORTRELAY_BIN)
on loopback.

Logged out, only the login form is reachable; a wrong token is refused; logged in,
a rule added through the form shows in the table and really forwards; disabling it
closes the port, enabling opens it again; editing its target moves the traffic; a
bad port shows its error next to the field and changes nothing; a name full of
markup is shown as text; at 360 px the page does not overflow and the form works
with the keyboard alone; deleting closes the port; logging out ends the session.
Also the security headers, and no CSP violation or script error in the console.

PORTRELAY_SCREENSHOT=PATH also saves a screenshot of the page (1100x700) with a
read-only rule, a disabled one and rules with traffic.

Without chromium, chromium-driver or python3-selenium it skips (exit 77), unless
PORTRELAY_E2E_REQUIRED=1 (CI), where it fails.
"""
import os
import sys

REQUIRED = os.environ.get('PORTRELAY_E2E_REQUIRED') == '1'
CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
SYSTEM_PYTHON = '/usr/bin/python3'


def skip(why):
    print(('FAILED ' if REQUIRED else 'SKIP   ') + why, flush=True)
    sys.exit(1 if REQUIRED else 77)


try:
    import selenium  # noqa: F401  (Debian's python3-selenium)
except ImportError:
    # `python3` on PATH may be another interpreter (pyenv, a venv) that does not see
    # Debian's packages: run again under Debian's own.
    if (os.path.exists(SYSTEM_PYTHON) and not os.environ.get('PORTRELAY_PAGE_TEST_REEXEC')
            and os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)):
        os.environ['PORTRELAY_PAGE_TEST_REEXEC'] = '1'
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON] + sys.argv)
    skip('python3-selenium is not installed (apt-get install python3-selenium)')
for path, package in ((CHROMIUM, 'chromium'), (CHROMEDRIVER, 'chromium-driver')):
    if not os.access(path, os.X_OK):
        skip('%s is missing (apt-get install %s)' % (path, package))

import http.client  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import urllib.parse  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'integration'))
from itest_lib import Relay, check, failures, free_port, tcp_echo_server, tcp_server, udp_echo_server  # noqa: E402

WAIT = 15.0           # bounds a wait for the page (a hang, not a latency)
XSS_NAME = '<img src=x onerror=alert(1)>'
ODD_NAME = 'media/web 50%?#'


class Abort(Exception):
    """A step the rest depends on failed."""


def need(cond, what):
    if not check(cond, what):
        raise Abort(what)


# ---------------------------------------------------------------- traffic

def tagged_server(tag):
    """A TCP server on 127.0.0.1 that reads to EOF and answers TAG + what it read;
    returns its port."""
    def serve(conn):
        with conn:
            data = b''
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    break
                data += chunk
            try:
                conn.sendall(tag + data)
            except OSError:
                pass
    return tcp_server(serve)


def tcp_exchange(port, payload):
    """What comes back for PAYLOAD sent through 127.0.0.1:PORT (read to EOF), or
    'refused', or 'error: ...'."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            data = b''
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk
    except ConnectionRefusedError:
        return 'refused'
    except OSError as e:
        return 'error: %s' % e


def poll(fn, timeout=10.0, interval=0.2):
    """fn() until it is truthy, for at most TIMEOUT seconds; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def forwards_to(port, expect, what):
    payload = secrets.token_bytes(8).hex().encode()
    got = poll(lambda: tcp_exchange(port, payload) == expect + payload)
    return check(got, what)


def refuses(port, what):
    return check(poll(lambda: tcp_exchange(port, b'x') == 'refused'), what)


# ---------------------------------------------------------------- HTTP without the browser

class Admin:
    def __init__(self, port, token):
        self.port = port
        self.token = token

    def request(self, method, path, body=None, token=None, cookie=None, headers=None):
        """(status, headers as a dict with lower-case names, body text)."""
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=10)
        try:
            h = dict(headers or {})
            if token:
                h['Authorization'] = 'Bearer ' + token
            if cookie:
                h['Cookie'] = 'portrelay_session=' + cookie
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                h['Content-Type'] = 'application/json'
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            text = resp.read().decode('utf-8', 'replace')
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
        finally:
            conn.close()

    def api(self, method, path, body=None):
        """With the bearer token: (status, parsed JSON or None)."""
        status, _, text = self.request(method, path, body, token=self.token)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, None

    def rules(self):
        status, data = self.api('GET', '/api/forwards')
        if status != 200 or not isinstance(data, list):
            return None
        return [{k: v for k, v in r.items() if k != 'counters'} for r in data]


def check_security_headers(headers, what):
    csp = headers.get('content-security-policy', '')
    check("script-src 'self'" in csp and 'unsafe-inline' not in csp and 'unsafe-eval' not in csp
          and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp,
          what + ": Content-Security-Policy without inline script (%r)" % csp)
    check(headers.get('x-frame-options', '').upper() == 'DENY', what + ': X-Frame-Options: DENY')
    check(headers.get('x-content-type-options', '').lower() == 'nosniff',
          what + ': X-Content-Type-Options: nosniff')


# ---------------------------------------------------------------- the browser

def start_browser(tmp):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                '--user-data-dir=' + os.path.join(tmp, 'chromium'), '--no-first-run',
                '--disable-extensions', '--disable-background-networking',
                '--password-store=basic', '--lang=en-US'):
        opts.add_argument(arg)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    opts.set_capability('unhandledPromptBehavior', 'ignore')
    log = os.path.join(tmp, 'chromedriver.log')
    try:
        service = Service(executable_path=CHROMEDRIVER, log_output=log)     # selenium >= 4.11
    except TypeError:
        service = Service(executable_path=CHROMEDRIVER, log_path=log)       # Debian 12's 4.8
    return webdriver.Chrome(service=service, options=opts)


class Page:
    """The page in the browser, through what a user sees and does."""

    def __init__(self, driver, base):
        self.d = driver
        self.base = base
        self.console = []

    def get(self, path='/'):
        self.d.get(self.base + path)

    def wait(self, fn, timeout=WAIT):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(lambda d: fn())
        except TimeoutException:
            return None

    def has(self, css):
        return len(self.d.find_elements(By.CSS_SELECTOR, css)) > 0

    def el(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def names(self):
        return self.js("return Array.from(document.querySelectorAll('#forwards tbody tr'),"
                       " tr => tr.dataset.name)")

    def row(self, name):
        """The row's cells' texts by column (name, protocol, external, internal, enabled,
        active, bytes_in, bytes_out, actions) and its buttons, or None."""
        return self.js("""
            for (const tr of document.querySelectorAll('#forwards tbody tr')) {
              if (tr.dataset.name !== arguments[0]) continue;
              const o = {buttons: Array.from(tr.querySelectorAll('button'), b => b.className),
                         toggle: (tr.querySelector('button.toggle') || {}).textContent || null,
                         cells: tr.cells.length};
              for (const td of tr.cells) o[td.className.replace(/^c-/, '')] = td.textContent.trim();
              return o;
            }
            return null;""", name)

    def button(self, name, cls):
        return self.js("""
            for (const tr of document.querySelectorAll('#forwards tbody tr'))
              if (tr.dataset.name === arguments[0]) return tr.querySelector('button.' + arguments[1]);
            return null;""", name, cls)

    def wait_row(self, name, pred=lambda r: True, timeout=WAIT):
        def ok():
            r = self.row(name)
            return r if r is not None and pred(r) else None
        return self.wait(ok, timeout)

    def fill(self, **fields):
        for field, value in fields.items():
            el = self.el('#' + field)
            if field == 'protocol':
                el.find_element(By.CSS_SELECTOR, 'option[value="%s"]' % value).click()
            elif field == 'enabled':
                if el.is_selected() != bool(value):
                    el.click()
            else:
                el.clear()
                el.send_keys(str(value))

    def value(self, field):
        return self.el('#' + field).get_attribute('value')

    def text(self, css):
        els = self.d.find_elements(By.CSS_SELECTOR, css)
        return els[0].text.strip() if els else None

    def alert(self):
        try:
            return self.d.switch_to.alert
        except NoAlertPresentException:
            return None

    def refreshes(self):
        return int(self.js("return Number(document.getElementById('forwards').dataset.refreshes || 0)"))

    def collect_console(self):
        self.console.extend(self.d.get_log('browser'))


# ---------------------------------------------------------------- the test

def run(tmp):
    token = secrets.token_hex(16)
    with open(os.path.join(tmp, 'token'), 'w') as f:
        f.write(token + '\n')
    admin_port = free_port()
    ro_port = free_port()
    ro_target = tcp_echo_server()
    config = '''
wan_address = "127.0.0.1";
admin = { listen = "127.0.0.1:%d"; token_file = "%s/token"; rules_file = "%s/rules.conf"; };
forwards = (
  { name = "router-admin"; protocol = "tcp"; external_address = "127.0.0.1"; external_port = %d;
    internal_ip = "127.0.0.1"; internal_port = %d; }
);
''' % (admin_port, tmp, tmp, ro_port, ro_target)
    relay = Relay(tmp, config)
    driver = None
    try:
        admin = Admin(admin_port, token)
        base = 'http://127.0.0.1:%d' % admin_port

        # --- logged out: the login form and nothing else
        status, headers, body = admin.request('GET', '/')
        check(status == 200 and 'id="login"' in body and 'id="token"' in body
              and 'id="forwards"' not in body and 'app.js' not in body,
              'GET / without a session: the login form only (%d)' % status)
        check_security_headers(headers, 'GET / logged out')
        status, _, _ = admin.request('GET', '/app.js')
        check(status == 401, 'GET /app.js without a session: 401 (%d)' % status)
        status, headers, body = admin.request('GET', '/api/forwards')
        check(status == 401 and 'error' in body, 'GET /api/forwards without a session: 401 JSON (%d %r)'
              % (status, body[:80]))
        status, _, _ = admin.request('GET', '/style.css')
        check(status == 200, 'GET /style.css is public (%d)' % status)

        # --- logged in through the bearer token: the page's HTML
        status, headers, body = admin.request('GET', '/', token=token)
        need(status == 200 and 'id="forwards"' in body and 'src="/app.js"' in body,
             'GET / with the token: the page (%d)' % status)
        check_security_headers(headers, 'GET / logged in')
        check('no-store' in headers.get('cache-control', ''), 'GET /: Cache-Control: no-store')
        check(not re.search(r'<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=', body, re.I),
              'the page has no inline script, style element nor style or event attribute')
        status, headers, _ = admin.request('GET', '/app.js', token=token)
        check(status == 200 and 'javascript' in headers.get('content-type', ''),
              'GET /app.js with the token: 200, JavaScript (%d %s)' % (status, headers.get('content-type')))

        driver = start_browser(tmp)
        page = Page(driver, base)
        driver.set_window_size(1100, 800)

        # --- the login form
        page.get('/')
        need(page.wait(lambda: page.has('#login #token')), 'the browser shows the login form')
        check(not page.has('#forwards'), 'no rules table before logging in')
        t0 = time.monotonic()
        page.el('#token').send_keys('not-the-token' + Keys.ENTER)
        check(page.wait(lambda: page.has('#login-error')), 'a wrong token shows #login-error')
        check(time.monotonic() - t0 >= 0.9, 'a wrong token is answered slowly (%.2f s)' % (time.monotonic() - t0))
        check(relay.wait_line('wrong token', timeout=5), 'the wrong token is logged')
        check(page.has('#login #token') and not page.has('#forwards'), 'still only the login form')
        page.el('#token').send_keys(token + Keys.ENTER)
        need(page.wait(lambda: page.row('router-admin')), 'logged in: the table lists the file\'s rule')
        cookie = driver.get_cookie('portrelay_session')
        check(cookie is not None and cookie.get('httpOnly') and cookie.get('sameSite') == 'Strict'
              and cookie.get('expiry'), 'the session cookie is HttpOnly, SameSite=Strict, with an expiry (%r)'
              % ({k: cookie.get(k) for k in ('httpOnly', 'sameSite', 'expiry')} if cookie else None))
        session = cookie['value'] if cookie else ''
        check(page.text('h1') == 'Port Forwarding', 'the heading is "Port Forwarding"')
        heads = [th.text.strip() for th in driver.find_elements(By.CSS_SELECTOR, '#forwards thead th')]
        check(heads[:4] == ['Name', 'Protocol', 'External Port', 'Internal IP:Port'],
              'column headers like the router page (%r)' % heads)

        ro = page.row('router-admin')
        check(ro['buttons'] == [] and 'read-only' in ro['actions'],
              'the file\'s rule is marked read-only, without buttons (%r)' % ro['actions'])
        check(ro['external'] == '127.0.0.1:%d' % ro_port and ro['internal'] == '127.0.0.1:%d' % ro_target
              and ro['protocol'] == 'TCP' and ro['enabled'] == 'Yes',
              'the file\'s rule: TCP 127.0.0.1:%d -> 127.0.0.1:%d (%r)' % (ro_port, ro_target, ro))

        # --- add a rule through the form
        target_a = tagged_server(b'A:')
        target_b = tagged_server(b'B:')
        port = free_port()
        page.fill(name='web', protocol='tcp', external_port=port, internal_ip='127.0.0.1',
                  internal_port=target_a)
        page.el('#save').click()
        r = page.wait_row('web')
        need(r, 'the added rule shows in the table')
        check(r['protocol'] == 'TCP' and r['external'] in (str(port), '127.0.0.1:%d' % port)
              and r['internal'] == '127.0.0.1:%d' % target_a and r['enabled'] == 'Yes'
              and r['toggle'] == 'Disable' and sorted(r['buttons']) == ['delete', 'edit', 'toggle'],
              'its cells: TCP %d -> 127.0.0.1:%d, enabled, Edit/Disable/Delete (%r)' % (port, target_a, r))
        check(page.value('name') == '' and page.value('external_port') == '',
              'the form is cleared after adding')
        forwards_to(port, b'A:', 'traffic through the new port reaches its target')

        # Counters: a connection held open shows as active, bytes as they move.
        held = socket.create_connection(('127.0.0.1', port), timeout=5)
        held.sendall(b'x' * 1500)
        check(page.wait_row('web', lambda r: r['active'] == '1' and r['bytes_in'] != '0 B'),
              'the table shows the open connection and its bytes (%r)' % (page.row('web'),))
        held.close()
        check(page.wait_row('web', lambda r: r['active'] == '0'), 'and the connection gone')

        # The refresh does not touch a half-typed form.
        page.el('#name').send_keys('half-typed')
        n = page.refreshes()
        check(page.wait(lambda: page.refreshes() >= n + 2, timeout=10), 'the table refreshes every 2 s')
        check(page.value('name') == 'half-typed'
              and page.js('return document.activeElement.id') == 'name',
              'a half-typed form keeps its text and focus across refreshes')
        page.el('#cancel').click()
        check(page.value('name') == '', 'Cancel clears the form')

        # --- disable, enable
        page.button('web', 'toggle').click()
        check(page.wait_row('web', lambda r: r['toggle'] == 'Enable' and r['enabled'] == 'No'),
              'Disable: the row shows it disabled')
        refuses(port, 'a disabled rule\'s port refuses')
        page.button('web', 'toggle').click()
        check(page.wait_row('web', lambda r: r['toggle'] == 'Disable' and r['enabled'] == 'Yes'),
              'Enable: the row shows it enabled')
        forwards_to(port, b'A:', 'enabled again, the port forwards again')

        # --- edit its target
        page.button('web', 'edit').click()
        check(page.wait(lambda: page.value('name') == 'web' and page.value('external_port') == str(port)),
              'Edit fills the form with the rule')
        check(page.text('#save') == 'Save changes', 'the form is in edit mode')
        page.fill(internal_port=target_b)
        page.el('#save').click()
        check(page.wait_row('web', lambda r: r['internal'] == '127.0.0.1:%d' % target_b),
              'the edited target shows in the table')
        forwards_to(port, b'B:', 'traffic reaches the new target')

        # Editing keeps the fields the form does not show.
        port2 = free_port()
        status, _ = admin.api('POST', '/api/forwards', {
            'name': 'scripted', 'protocol': 'tcp', 'external_port': port2, 'internal_ip': '127.0.0.1',
            'internal_port': target_a, 'max_connections': 7})
        check(status == 201, 'a rule added through the API (%d)' % status)
        if page.wait_row('scripted'):
            page.button('scripted', 'edit').click()
            page.wait(lambda: page.value('name') == 'scripted')
            page.fill(internal_port=target_b)
            page.el('#save').click()
            page.wait_row('scripted', lambda r: r['internal'] == '127.0.0.1:%d' % target_b)
            status, rule = admin.api('GET', '/api/forwards/scripted')
            check(status == 200 and rule.get('internal_port') == target_b and rule.get('max_connections') == 7,
                  'an edit through the page keeps max_connections (%r)' % (rule,))
        else:
            check(False, 'the API\'s rule shows in the table')

        # --- a bad port: its error next to the field, nothing changed
        before = admin.rules()
        names_before = page.names()
        page.fill(name='bad', protocol='tcp', external_port=70000, internal_ip='127.0.0.1')
        page.el('#save').click()
        err = page.wait(lambda: page.text('#error-external_port'))
        check(err, 'external_port 70000: the error shows in #error-external_port (%r)' % err)
        check(page.el('#external_port').get_attribute('aria-invalid') == 'true',
              'the field is marked aria-invalid')
        check(page.js("return document.getElementById('error-external_port').parentNode"
                      " === document.getElementById('external_port').parentNode"),
              'the error is next to its field')
        check(page.text('#form-error') == '' and not page.text('#error-name'),
              'no other error shown')
        check(admin.rules() == before and page.names() == names_before, 'nothing changed')
        page.el('#cancel').click()
        check(page.text('#error-external_port') == ''
              and page.el('#external_port').get_attribute('aria-invalid') is None,
              'Cancel clears the error')

        # --- a name full of markup is text
        udp_port = free_port()
        udp_target = udp_echo_server()
        page.fill(name=XSS_NAME, protocol='udp', external_port=udp_port, internal_ip='127.0.0.1',
                  internal_port=udp_target)
        page.el('#save').click()
        r = page.wait_row(XSS_NAME)
        check(r is not None and r['name'] == XSS_NAME, 'a name with markup shows as text (%r)' % (r,))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b'ping', ('127.0.0.1', udp_port))
            try:
                check(u.recv(100) == b'ping', 'UDP through the markup-named rule')
            except OSError as e:
                check(False, 'UDP through the markup-named rule (%s)' % e)
        n = page.refreshes()
        page.wait(lambda: page.refreshes() >= n + 2, timeout=10)
        check(page.js("return document.querySelectorAll('img').length") == 0,
              'no img element on the page')
        check(page.alert() is None, 'no alert')

        # Renamed through the form to a name with a slash, a space and a %, then
        # disabled: the names travel percent-encoded in the paths.
        page.button(XSS_NAME, 'edit').click()
        page.wait(lambda: page.value('name') == XSS_NAME)
        page.fill(name=ODD_NAME)
        page.el('#save').click()
        check(page.wait(lambda: page.row(ODD_NAME) and page.row(XSS_NAME) is None),
              'a rule renamed through the form (%r)' % page.names())
        if page.row(ODD_NAME):
            page.button(ODD_NAME, 'toggle').click()
            check(page.wait_row(ODD_NAME, lambda r: r['toggle'] == 'Enable'),
                  'a rule named %r disabled through the page' % ODD_NAME)

        # --- 360 px wide, the keyboard alone
        driver.set_window_size(360, 740)
        page.wait(lambda: page.js('return window.innerWidth') <= 400, timeout=5)
        sizes = page.js('return [document.documentElement.scrollWidth, window.innerWidth]')
        check(sizes[0] <= sizes[1], 'at 360 px no horizontal overflow (scrollWidth %d, innerWidth %d)' % tuple(sizes))
        kbd_port = free_port()
        page.get('/')
        page.wait(lambda: page.row('web'))
        for _ in range(60):         # from the top of the page
            if page.js('return document.activeElement.id') == 'name':
                break
            ActionChains(driver).send_keys(Keys.TAB).perform()
        need(page.js('return document.activeElement.id') == 'name', 'Tab reaches the form\'s first field')
        outline = page.js('const s = getComputedStyle(document.activeElement);'
                          ' return [s.outlineStyle, s.outlineWidth]')
        check(outline[0] != 'none' and outline[1] != '0px', 'the focused field shows an outline (%r)' % outline)
        order = []
        ActionChains(driver).send_keys('keyboard').perform()
        for field, typed in (('protocol', 't'), ('external_address', ''), ('external_port', str(kbd_port)),
                             ('internal_ip', '127.0.0.1'), ('internal_port', str(target_a)),
                             ('enabled', Keys.SPACE), ('save', None)):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            order.append(page.js('return document.activeElement.id'))
            if typed:
                ActionChains(driver).send_keys(typed).perform()
        check(order == ['protocol', 'external_address', 'external_port', 'internal_ip', 'internal_port',
                        'enabled', 'save'], 'Tab goes through the form in order (%r)' % order)
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        r = page.wait_row('keyboard')
        check(r is not None and r['external'] in (str(kbd_port), '127.0.0.1:%d' % kbd_port)
              and r['internal'] == '127.0.0.1:%d' % target_a
              and r['enabled'] == 'No' and r['protocol'] == 'TCP',
              'the form filled and submitted with the keyboard alone (%r)' % (r,))
        refuses(kbd_port, 'the keyboard\'s rule, added disabled, opens nothing')
        sizes = page.js('return [document.documentElement.scrollWidth, window.innerWidth]')
        check(sizes[0] <= sizes[1], 'at 360 px with every rule, no horizontal overflow (%d, %d)' % tuple(sizes))
        check(page.js("""const w = window.innerWidth;
            return Array.from(document.querySelectorAll('#forwards tr, #rule-form, button, input, select'))
              .every(e => e.getBoundingClientRect().right <= w + 0.5);"""),
              'at 360 px every row, field and button is within the screen')
        driver.set_window_size(1100, 800)

        # --- delete: a dismissed confirm keeps the rule, an accepted one removes it
        page.button('web', 'delete').click()
        alert = page.wait(page.alert, timeout=5)
        check(alert is not None and 'web' in alert.text, 'Delete asks for confirmation')
        if alert:
            alert.dismiss()
        n = page.refreshes()
        page.wait(lambda: page.refreshes() >= n + 1, timeout=5)
        check(page.row('web') is not None, 'a dismissed confirm keeps the rule')
        page.button('web', 'delete').click()
        alert = page.wait(page.alert, timeout=5)
        if alert:
            alert.accept()
        check(page.wait(lambda: page.row('web') is None), 'an accepted confirm removes the row')
        refuses(port, 'the deleted rule\'s port refuses')
        check('web' not in [r['name'] for r in admin.rules() or []], 'the API no longer lists it')

        page.collect_console()

        # --- the screenshot for the README
        shot = os.environ.get('PORTRELAY_SCREENSHOT')
        if shot:
            screenshot(page, admin, shot, ro_port, ro_target, udp_target)

        # --- the session ended elsewhere: the next refresh's 401 brings the login form
        page.get('/')
        page.wait(lambda: page.row('router-admin'))
        status, _, _ = admin.request('POST', '/logout', cookie=session)
        check(status == 303, 'POST /logout from outside the browser (%d)' % status)
        need(page.wait(lambda: page.has('#login #token')),
             'the page notices the session is over and shows the login form')
        page.el('#token').send_keys(token + Keys.ENTER)
        need(page.wait(lambda: page.row('router-admin')), 'logged in again')
        cookie = driver.get_cookie('portrelay_session')
        session = cookie['value'] if cookie else ''

        # --- logout
        page.wait(lambda: page.has('#logout'))
        page.el('#logout button').click()
        check(page.wait(lambda: page.has('#login #token')), 'Log out returns to the login form')
        status, _, _ = admin.request('GET', '/api/forwards', cookie=session)
        check(status == 401, 'the old session cookie no longer works for the API (%d)' % status)
        status, _, body = admin.request('GET', '/', cookie=session)
        check(status == 200 and 'id="login"' in body and 'id="forwards"' not in body,
              'nor for the page (%d)' % status)

        # --- the console: no CSP violation, no script error
        page.collect_console()
        bad = [e['message'] for e in page.console
               if 'Content Security Policy' in e['message'] or 'Refused to' in e['message']
               or e.get('source') == 'javascript']
        check(not bad, 'no CSP violation nor script error in the console (%d: %r)'
              % (len(bad), [m[:200] for m in bad[:3]]))
    except Abort:
        pass
    except Exception:       # a broken page can make any step throw: a failure, reported
        traceback.print_exc()
        check(False, 'the test ran to its end')
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception as e:      # the report matters more than a tidy quit
                print('driver.quit: %s' % e)
        code = relay.stop()
        check(code == 0, 'the relay exits 0 (%s)' % code)


def screenshot(page, admin, path, ro_port, echo_port, udp_echo):
    """The page with a read-only rule, a disabled one, and traffic."""
    d = page.d
    for r in admin.rules() or []:
        if not r.get('read_only') and r['name'] != 'keyboard':
            admin.api('DELETE', '/api/forwards/' + urllib.parse.quote(r['name'], safe=''))
    admin.api('DELETE', '/api/forwards/keyboard')
    web, dns = free_port(), free_port()
    admin.api('POST', '/api/forwards', {'name': 'web-server', 'protocol': 'tcp', 'external_port': web,
                                        'internal_ip': '127.0.0.1', 'internal_port': echo_port})
    admin.api('POST', '/api/forwards', {'name': 'dns', 'protocol': 'udp', 'external_port': dns,
                                        'internal_ip': '127.0.0.1', 'internal_port': udp_echo})
    admin.api('POST', '/api/forwards', {'name': 'game-server', 'protocol': 'both',
                                        'external_port': free_port(), 'internal_ip': '127.0.0.1',
                                        'enabled': False})
    held = []
    try:
        for p, size in ((ro_port, 40000), (web, 1300000)):
            s = socket.create_connection(('127.0.0.1', p), timeout=5)
            sent = 0
            while sent < size:
                chunk = min(65536, size - sent)
                s.sendall(b'x' * chunk)
                got = 0
                while got < chunk:
                    got += len(s.recv(chunk - got))
                sent += chunk
            held.append(s)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(5)
        for _ in range(3):
            u.sendto(b'q' * 60, ('127.0.0.1', dns))
            u.recv(100)
        held.append(u)
        d.set_window_size(1100, 700)      # then the viewport itself 1100x700
        extra = page.js('return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]')
        d.set_window_size(1100 + extra[0], 700 + extra[1])
        page.get('/')
        page.wait_row('web-server', lambda r: r['active'] == '1' and r['bytes_in'] != '0 B', timeout=10)
        page.wait_row('dns', lambda r: r['active'] == '1', timeout=10)
        d.save_screenshot(path)
        check(os.path.getsize(path) > 0, 'screenshot saved to %s' % path)
    finally:
        for s in held:
            s.close()


def main():
    # meson's timeout sends SIGTERM: unwind, so that the browser and the relay are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit('SIGTERM'))
    if not os.environ.get('PORTRELAY_BIN'):
        os.environ['PORTRELAY_BIN'] = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   '..', '..', 'build', 'portrelay')
    tmp = tempfile.mkdtemp(prefix='portrelay-page-')
    try:
        run(tmp)
    finally:
        if failures:
            print('\nchromedriver log: %s' % os.path.join(tmp, 'chromedriver.log'))
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print('%d failed' % len(failures) if failures else 'all checks passed', flush=True)
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
