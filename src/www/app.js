/* The Port Forwarding page: the table of rules (refreshed every 2 s from
 * GET /api/forwards) and the form that adds or edits a rule. No framework;
 * every value reaches the page through textContent, never as markup. */
'use strict';

(function () {
  const API = '/api/forwards';
  const FIELDS = ['name', 'protocol', 'external_address', 'external_port',
    'internal_ip', 'internal_port', 'enabled'];
  const COLUMNS = ['name', 'protocol', 'external', 'internal', 'enabled',
    'active', 'bytes_in', 'bytes_out', 'actions'];
  const $ = (id) => document.getElementById(id);

  const table = $('forwards');
  const tbody = table.tBodies[0];
  const form = $('rule-form');
  let rules = [];
  let editing = null;       /* name of the rule the form edits; null: adding */
  let leaving = false;      /* logged out: the page reloads */
  let refreshing = false;
  let refreshAgain = false;
  let refreshes = 0;

  const labels = Array.from(table.tHead.rows[0].cells, (th) => th.textContent.trim());

  /* One API call: {ok, status, data}. A 401 (session over) reloads the page,
   * which then shows the login form. */
  async function api(method, path, body) {
    /* referrerPolicy: under the server's `no-referrer` a browser sends `Origin: null`
     * with a POST, which the server's CSRF check refuses. */
    const opts = { method: method, credentials: 'same-origin', cache: 'no-store',
      referrerPolicy: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(path, opts);
    if (resp.status === 401) {
      leaving = true;
      window.location.reload();
      throw new Error('not logged in');
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    return { ok: resp.ok, status: resp.status, data: data };
  }

  function ruleUrl(name) {
    return API + '/' + encodeURIComponent(name);
  }

  function errorText(r) {
    if (r.data && typeof r.data.error === 'string')
      return r.data.error;
    return 'The request failed (HTTP ' + r.status + ').';
  }

  function hostPort(host, port) {
    return (String(host).indexOf(':') >= 0 ? '[' + host + ']' : host) + ':' + port;
  }

  function humanBytes(n) {
    n = Number(n) || 0;
    const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i++;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }

  const PROTOCOLS = { tcp: 'TCP', udp: 'UDP', both: 'TCP+UDP' };
  const WILDCARDS = ['0.0.0.0', '::'];     /* every address: the port alone says it */

  function cellTexts(r) {
    const c = r.counters || {};
    const tcp = Number(c.tcp_connections_active) || 0;
    const udp = Number(c.udp_flows_active) || 0;
    const internalPort = r.internal_port !== undefined && r.internal_port !== null ?
      r.internal_port : r.external_port;
    return {
      name: String(r.name === undefined || r.name === null ? '' : r.name),
      protocol: PROTOCOLS[r.protocol] || String(r.protocol),
      external: r.external_address && !WILDCARDS.includes(r.external_address) ?
        hostPort(r.external_address, r.external_port) : String(r.external_port),
      internal: hostPort(r.internal_ip, internalPort),
      enabled: r.enabled === false ? 'No' : 'Yes',
      active: String(tcp + udp),
      active_title: tcp + ' TCP connections, ' + udp + ' UDP flows',
      bytes_in: humanBytes(c.bytes_to_internal),
      bytes_in_title: (Number(c.bytes_to_internal) || 0) + ' bytes',
      bytes_out: humanBytes(c.bytes_to_client),
      bytes_out_title: (Number(c.bytes_to_client) || 0) + ' bytes',
    };
  }

  function setText(el, text) {
    if (el.textContent !== text)
      el.textContent = text;
  }

  function setTitle(el, text) {
    if (el.getAttribute('title') !== text)
      el.setAttribute('title', text);
  }

  function button(cls, text, label) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = cls;
    b.textContent = text;
    b.setAttribute('aria-label', label);
    return b;
  }

  function fillActions(td, r) {
    const key = r.read_only ? 'ro' : 'rw';
    if (td.dataset.kind === key)
      return;
    td.dataset.kind = key;
    td.replaceChildren();
    if (r.read_only) {
      const s = document.createElement('span');
      s.className = 'read-only';
      const cmd = typeof r.origin === 'string' && r.origin.indexOf('-L') === 0;
      s.textContent = cmd ? 'read-only (command line)' : 'read-only (configuration file)';
      td.appendChild(s);
      return;
    }
    td.appendChild(button('edit', 'Edit', 'Edit ' + r.name));
    td.appendChild(button('toggle', '', ''));
    td.appendChild(button('delete', 'Delete', 'Delete ' + r.name));
  }

  function newRow(name) {
    const tr = document.createElement('tr');
    tr.dataset.name = name;
    COLUMNS.forEach((col, i) => {
      const td = document.createElement('td');
      td.className = 'c-' + col;
      if (labels[i] && col !== 'actions')
        td.dataset.label = labels[i];
      tr.appendChild(td);
    });
    return tr;
  }

  function updateRow(tr, r) {
    const t = cellTexts(r);
    const cells = tr.cells;
    for (let i = 0; i < COLUMNS.length - 1; i++)
      setText(cells[i], t[COLUMNS[i]]);
    setTitle(cells[5], t.active_title);
    setTitle(cells[6], t.bytes_in_title);
    setTitle(cells[7], t.bytes_out_title);
    if (typeof r.origin === 'string')
      setTitle(cells[0], r.origin);
    tr.classList.toggle('disabled', r.enabled === false);
    tr.classList.toggle('ro', !!r.read_only);
    const actions = cells[COLUMNS.length - 1];
    fillActions(actions, r);
    const toggle = actions.querySelector('.toggle');
    if (toggle) {
      setText(toggle, r.enabled === false ? 'Enable' : 'Disable');
      const label = (r.enabled === false ? 'Enable ' : 'Disable ') + r.name;
      if (toggle.getAttribute('aria-label') !== label)
        toggle.setAttribute('aria-label', label);
    }
  }

  /* Updates the rows in place (a row keeps its elements, so a focused button
   * keeps its focus across refreshes). */
  function render() {
    const old = new Map();
    for (const tr of Array.from(tbody.rows))
      old.set(tr.dataset.name, tr);
    rules.forEach((r, i) => {
      const name = String(r.name);
      let tr = old.get(name);
      if (tr)
        old.delete(name);
      else
        tr = newRow(name);
      updateRow(tr, r);
      if (tbody.rows[i] !== tr)
        tbody.insertBefore(tr, tbody.rows[i] || null);
    });
    for (const tr of old.values())
      tr.remove();
    $('empty').hidden = rules.length > 0;
    refreshes++;
    table.dataset.refreshes = String(refreshes);
  }

  let statusTimer = 0;
  /* A message that fades after a while (transient), or stays until replaced. */
  function setStatus(text, transient) {
    window.clearTimeout(statusTimer);
    setText($('status'), text);
    if (transient)
      statusTimer = window.setTimeout(() => setText($('status'), ''), 8000);
  }

  async function refresh() {
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    try {
      const r = await api('GET', API);
      if (r.ok && Array.isArray(r.data)) {
        rules = r.data;
        render();
        if ($('status').classList.contains('stale')) {
          $('status').classList.remove('stale');
          setStatus('');
        }
      } else {
        setStatus('Could not load the rules: ' + errorText(r));
        $('status').classList.add('stale');
      }
    } catch (e) {
      if (!leaving) {
        setStatus('Cannot reach portrelay; retrying…');
        $('status').classList.add('stale');
      }
    } finally {
      refreshing = false;
      if (refreshAgain && !leaving) {
        refreshAgain = false;
        refresh();
      }
    }
  }

  /* The form */

  function clearErrors() {
    for (const f of FIELDS) {
      setText($('error-' + f), '');
      $(f).removeAttribute('aria-invalid');
    }
    setText($('form-error'), '');
  }

  function showError(r) {
    const msg = errorText(r);
    const field = r.data && r.data.field;
    if (typeof field === 'string' && FIELDS.indexOf(field) >= 0) {
      $('error-' + field).textContent = msg;
      $(field).setAttribute('aria-invalid', 'true');
      $(field).focus();
    } else {
      $('form-error').textContent = msg;
    }
  }

  function portValue(text) {
    const v = text.trim();
    return /^[0-9]+$/.test(v) ? Number(v) : v;
  }

  /* The rule to send: when editing, the rule as read, so that fields the form
   * does not show (allow, max_connections, ...) are kept. */
  function collect() {
    let rule = {};
    if (editing !== null) {
      const orig = rules.find((r) => r.name === editing);
      if (orig)
        rule = JSON.parse(JSON.stringify(orig));
      delete rule.read_only;
      delete rule.origin;
      delete rule.counters;
    }
    rule.name = $('name').value.trim();
    rule.protocol = $('protocol').value;
    for (const f of ['external_address', 'external_port', 'internal_ip', 'internal_port']) {
      const v = $(f).value.trim();
      if (v === '')
        delete rule[f];
      else if (f.endsWith('_port'))
        rule[f] = portValue(v);
      else
        rule[f] = v;
    }
    rule.enabled = $('enabled').checked;
    return rule;
  }

  function resetForm() {
    editing = null;
    form.reset();
    clearErrors();
    setText($('form-heading'), 'Add a rule');
    setText($('save'), 'Add rule');
  }

  function startEdit(r) {
    resetForm();
    editing = r.name;
    $('name').value = r.name;
    $('protocol').value = r.protocol;
    $('external_address').value = r.external_address || '';
    $('external_port').value = String(r.external_port === undefined ? '' : r.external_port);
    $('internal_ip').value = r.internal_ip || '';
    $('internal_port').value = r.internal_port === undefined || r.internal_port === null ?
      '' : String(r.internal_port);
    $('enabled').checked = r.enabled !== false;
    setText($('form-heading'), 'Edit rule “' + r.name + '”');
    setText($('save'), 'Save changes');
    form.scrollIntoView({ block: 'nearest' });
    $('name').focus();
  }

  let saving = false;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (saving)
      return;
    saving = true;
    form.setAttribute('aria-busy', 'true');
    clearErrors();
    const rule = collect();
    const wasEditing = editing;
    try {
      const r = wasEditing === null ? await api('POST', API, rule) :
        await api('PUT', ruleUrl(wasEditing), rule);
      if (r.ok) {
        resetForm();
        setStatus((wasEditing === null ? 'Added “' : 'Saved “') + rule.name + '”.', true);
        refresh();
      } else {
        showError(r);
      }
    } catch (e) {
      if (!leaving)
        $('form-error').textContent = 'Cannot reach portrelay: ' + e.message;
    } finally {
      saving = false;
      form.removeAttribute('aria-busy');
    }
  });

  $('cancel').addEventListener('click', () => {
    resetForm();
    $('name').focus();
  });

  /* The table's buttons */

  tbody.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button');
    if (!b || !tbody.contains(b))
      return;
    const name = b.closest('tr').dataset.name;
    const rule = rules.find((r) => r.name === name);
    if (!rule || rule.read_only)
      return;
    setText($('action-error'), '');
    if (b.classList.contains('edit')) {
      startEdit(rule);
      return;
    }
    let r;
    try {
      if (b.classList.contains('toggle')) {
        const what = rule.enabled === false ? 'enable' : 'disable';
        r = await api('POST', ruleUrl(name) + '/' + what);
        if (r.ok)
          setStatus((what === 'enable' ? 'Enabled “' : 'Disabled “') + name + '”.', true);
      } else if (b.classList.contains('delete')) {
        if (!window.confirm('Delete the rule “' + name + '”?'))
          return;
        r = await api('DELETE', ruleUrl(name));
        if (r.ok) {
          setStatus('Deleted “' + name + '”.', true);
          if (editing === name)
            resetForm();
        }
      } else {
        return;
      }
      if (!r.ok)
        $('action-error').textContent = name + ': ' + errorText(r);
    } catch (e) {
      if (!leaving)
        $('action-error').textContent = 'Cannot reach portrelay: ' + e.message;
    }
    refresh();
  });

  refresh();
  window.setInterval(refresh, 2000);
})();
