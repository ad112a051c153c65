// The web view of a Scout broker: plain JavaScript modules, no framework.
// Live data comes from the broker's server-sent event streams
// (/v1/web/live for the mesh and the agents, /v1/events/stream for
// routing) and the agent terminal's WebSocket; the page never polls.
import { Terminal } from '/assets/vendor/xterm.mjs';
import { FitAddon } from '/assets/vendor/addon-fit.mjs';

const main = document.getElementById('main');
const state = { snapshot: null, filter: '', live: null, events: null, cleanup: [] };

// ---- small helpers -------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

function when(ms) { return ms ? new Date(ms).toLocaleString() : '—'; }

function stateTag(text) {
  const value = text ?? '—';
  return h('span', { class: `tag state-${String(value).toLowerCase()}` }, value);
}

async function api(path, options = {}) {
  const init = { credentials: 'same-origin', ...options };
  if (options.body !== undefined) {
    init.method = options.method ?? 'POST';
    init.headers = { 'content-type': 'application/json' };
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(data?.error?.message ?? response.statusText);
    error.code = data?.error?.code ?? String(response.status);
    throw error;
  }
  return data;
}

function showError(error) {
  return h('p', { class: 'error' }, `${error.code ?? 'ERROR'}: ${error.message}`);
}

function setLive(on) {
  const el = document.getElementById('live');
  el.className = `live ${on ? 'on' : 'off'}`;
  el.textContent = on ? 'live' : 'offline';
}

// ---- live streams --------------------------------------------------------

function startLive() {
  if (state.live) return;
  const source = new EventSource('/v1/web/live');
  state.live = source;
  source.addEventListener('open', () => setLive(true));
  source.addEventListener('error', () => setLive(false));
  source.addEventListener('snapshot', (event) => {
    state.snapshot = JSON.parse(event.data);
    document.getElementById('node').textContent = `@${state.snapshot.nodeName}`;
    setApprovals(state.snapshot.approvals ?? []);
    render('snapshot');
  });
}

// Routing events, shared by the pages that show flights.
const routingListeners = new Set();
function onRouting(listener) {
  if (!state.events) {
    state.events = new EventSource('/v1/events/stream');
    const dispatch = (event) => {
      for (const fn of routingListeners) fn(event);
    };
    state.events.addEventListener('message', dispatch);
    for (const name of ['lagged', 'invocation', 'delivery', 'flight', 'output']) {
      state.events.addEventListener(name, dispatch);
    }
  }
  routingListeners.add(listener);
  state.cleanup.push(() => routingListeners.delete(listener));
}

// Coalesces a burst of events into one refresh.
function debounce(fn, ms = 150) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// Approvals of the whole mesh, from the live snapshot (one stream per
// page: a browser keeps six connections per host); the nav shows how many
// wait.
const approvals = new Map();
const approvalListeners = new Set();
let approvalsSeen = '';
function setApprovals(list) {
  // Snapshots come with every peer measure; the list is redrawn (and a
  // note being typed replaced) only when an approval changed.
  const text = JSON.stringify(list);
  if (text === approvalsSeen) return;
  approvalsSeen = text;
  approvals.clear();
  for (const view of list) approvals.set(`${view.node_id}/${view.id}`, view);
  const pending = list.filter((a) => a.state === 'pending').length;
  document.getElementById('approvals-count').textContent = pending ? String(pending) : '';
  for (const fn of approvalListeners) fn();
}

// ---- pages ---------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [page, ...rest] = hash.split('/');
  return { page: page || 'agents', arg: rest.length ? decodeURIComponent(rest.join('/')) : null };
}

let current = null;

function render(reason) {
  const { page, arg } = route();
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.page === page || (page === 'agent' && a.dataset.page === 'agents'));
  }
  const key = `${page}/${arg}`;
  // A snapshot redraws the snapshot pages only; the agent page keeps its
  // terminal and refreshes its header.
  if (reason === 'snapshot' && current === key && page === 'agent') {
    agentHeader(arg);
    return;
  }
  if (reason === 'snapshot' && current === key && !['mesh', 'agents'].includes(page)) return;
  if (current !== key) {
    for (const fn of state.cleanup.splice(0)) fn();
    current = key;
  }
  switch (page) {
    case 'mesh': return meshPage();
    case 'agents': return agentsPage(reason);
    case 'agent': return agentPage(arg);
    case 'flights': return flightsPage();
    case 'work-orders': return workOrdersPage();
    case 'approvals': return approvalsPage();
    default: main.replaceChildren(h('p', {}, `No page “${page}”.`));
  }
}

function waiting() {
  main.replaceChildren(h('p', { class: 'dim' }, 'Waiting for the broker…'));
}

function meshPage() {
  const snap = state.snapshot;
  if (!snap) return waiting();
  const byNode = new Map();
  for (const address of snap.addresses ?? []) {
    if (address.node_id) {
      if (!byNode.has(address.node_id)) byNode.set(address.node_id, []);
      byNode.get(address.node_id).push(address);
    }
  }
  const addressList = (addresses) =>
    h('div', {}, (addresses ?? []).map((a) =>
      h('div', {}, a.addr, ' ', h('span', { class: 'dim' }, (a.sources ?? []).join(', ')))));
  const peers = snap.peers ?? [];
  const live = peers.filter((p) => p.state !== 'revoked');
  const revoked = peers.filter((p) => p.state === 'revoked');
  const row = (p) => h('tr', {},
    h('td', {}, p.name),
    h('td', {}, stateTag(p.state)),
    h('td', {}, addressList(p.addresses?.length ? p.addresses : byNode.get(p.node_id))),
    h('td', {}, p.rtt_ms != null ? `${p.rtt_ms.toFixed(2)} ms` : '—'),
    h('td', {}, ago(p.last_seen_ms)),
    h('td', { class: 'dim' }, p.node_id.slice(0, 16)));
  const head = h('tr', {}, ['Node', 'State', 'Addresses (sources)', 'RTT', 'Last seen', 'Id'].map((t) => h('th', {}, t)));
  main.replaceChildren(
    h('h1', {}, 'Mesh ', h('span', { class: 'dim' }, snap.meshId)),
    h('table', { id: 'members' },
      h('thead', {}, head),
      h('tbody', {},
        h('tr', {},
          h('td', { class: 'me' }, `${snap.nodeName} (this node)`),
          h('td', {}, stateTag('self')),
          h('td', {}, (snap.announced ?? []).join(', ')),
          h('td', {}, '—'), h('td', {}, 'now'),
          h('td', { class: 'dim' }, snap.nodeId.slice(0, 16))),
        live.map(row))),
    h('h2', {}, `Revoked members (${revoked.length})`),
    revoked.length
      ? h('table', {}, h('thead', {}, head.cloneNode(true)), h('tbody', {}, revoked.map(row)))
      : h('p', { class: 'dim' }, 'None.'));
}

// A node's name, from its id (the registry names owners and origins by id).
function nodeName(id) {
  const snap = state.snapshot;
  if (!snap || !id) return id ?? '—';
  if (id === snap.nodeId || id === snap.nodeName) return snap.nodeName;
  return (snap.peers ?? []).find((p) => p.node_id === id || p.name === id)?.name ?? id;
}

function workspaceOf(name) {
  const hash = name.indexOf('#');
  return hash < 0 ? '' : name.slice(hash + 1);
}

function shortName(name) {
  return name.replace(/^@/, '').split(/[@#]/)[0];
}

// The runtime session of a local instance, if it has one.
function runtimeOf(instance) {
  const runtime = state.snapshot?.runtime ?? [];
  const short = shortName(instance.name);
  return runtime.find((r) => r.name === instance.name || r.name === short || r.name === `@${short}`)
    ?? null;
}

function agentsPage(reason) {
  const snap = state.snapshot;
  if (!snap) return waiting();
  const instances = snap.instances ?? [];
  const needle = state.filter.toLowerCase();
  const shown = instances.filter((i) =>
    !needle || [i.name, nodeName(i.owner), i.harness, i.state, i.cwd].join(' ').toLowerCase().includes(needle));
  const rows = shown.map((i) => {
    const runtime = i.local ? runtimeOf(i) : null;
    return h('tr', { class: 'click', 'data-instance': i.name, onclick: () => { location.hash = `#/agent/${encodeURIComponent(i.name)}`; } },
      h('td', {}, i.name),
      h('td', { class: i.local ? 'me' : '' }, nodeName(i.owner), i.local ? ' (this node)' : ''),
      h('td', {}, workspaceOf(i.name)),
      h('td', {}, i.harness),
      h('td', {}, stateTag(i.state)),
      h('td', {}, i.active_flights ? `${i.active_flights} in flight` : '—'),
      h('td', { class: 'dim' }, runtime ? `${runtime.status} since ${runtime.ready_at ?? runtime.created_at}` : ''));
  });
  const table = h('table', { id: 'agents' },
    h('thead', {}, h('tr', {}, ['Agent', 'Owner', 'Workspace', 'Harness', 'State', 'Current flight', 'Session'].map((t) => h('th', {}, t)))),
    h('tbody', {}, rows));
  const existing = document.getElementById('agents-filter');
  if (reason === 'snapshot' && existing) {
    document.getElementById('agents').replaceWith(table);
    document.getElementById('agents-count').textContent = `${shown.length} of ${instances.length}`;
    return;
  }
  const filter = h('input', {
    id: 'agents-filter', type: 'search', placeholder: 'Filter by name, owner, harness, state…', value: state.filter,
    oninput: (event) => { state.filter = event.target.value; agentsPage('snapshot'); },
  });
  main.replaceChildren(
    h('h1', {}, 'Agents'),
    h('div', { class: 'bar' }, filter, h('span', { id: 'agents-count', class: 'dim' }, `${shown.length} of ${instances.length}`)),
    table);
}

function findInstance(name) {
  return (state.snapshot?.instances ?? []).find((i) => i.name === name) ?? null;
}

function agentHeader(name) {
  const el = document.getElementById('agent-header');
  if (!el) return;
  const i = findInstance(name);
  el.replaceChildren(i
    ? h('span', {}, 'owner ', h('b', {}, nodeName(i.owner)), ' · workspace ', workspaceOf(i.name), ' · ', i.harness, ' · ', stateTag(i.state),
      ' · ', i.active_flights ? `${i.active_flights} in flight` : 'no flight', ' · ', h('span', { class: 'dim' }, i.cwd))
    : h('span', { class: 'dim' }, state.snapshot ? 'not in the registry' : 'waiting for the broker…'));
  // The terminal starts once the instance and its session are known.
  maybeStartTerminal(name);
}

let terminalFor = null;

function agentPage(name) {
  terminalFor = null;
  const flights = h('div', { id: 'agent-flights' }, h('p', { class: 'dim' }, 'Loading…'));
  const usage = h('div', { id: 'agent-usage' });
  const message = h('textarea', { id: 'agent-message', rows: 2, cols: 60, placeholder: 'Message to the agent' });
  const status = h('span', { id: 'agent-send-status', class: 'dim' });
  const send = async () => {
    status.textContent = 'sending…';
    try {
      const submitted = await api('/v1/invocations', { body: { target: name, message: message.value } });
      status.textContent = `sent (${submitted.invocation_id})`;
      message.value = '';
    } catch (error) {
      status.replaceChildren(showError(error));
    }
  };
  main.replaceChildren(
    h('h1', {}, name),
    h('div', { id: 'agent-header', class: 'bar' }),
    h('div', { id: 'terminal-box' }, h('div', { class: 'notice dim' }, 'Looking for the agent’s terminal…')),
    h('h2', {}, 'Send a message'),
    h('div', { class: 'bar' }, message, h('button', { type: 'button', onclick: send }, 'Send'), status),
    h('h2', {}, 'Flights'), flights,
    h('h2', {}, 'Usage (last day)'), usage);
  agentHeader(name);
  const refresh = debounce(() => agentFlights(name, flights, usage));
  refresh();
  onRouting(refresh);
}

async function agentFlights(name, box, usageBox) {
  try {
    const rows = await api('/v1/flights?limit=200');
    const mine = rows.filter((r) => r.target === name || r.instance === name || shortName(r.target) === shortName(name));
    box.replaceChildren(flightsTable(mine.slice(0, 20)));
  } catch (error) {
    box.replaceChildren(showError(error));
  }
  try {
    const totals = await api('/v1/usage?since=1d&by=agent');
    const rows = (totals.rows ?? []).filter((r) => r.key === name);
    usageBox.replaceChildren(rows.length
      ? h('table', {},
        h('thead', {}, h('tr', {}, ['Flights', 'Failed', 'Input tokens', 'Output tokens', 'Cached tokens', 'Cost'].map((t) => h('th', {}, t)))),
        h('tbody', {}, rows.map((r) => h('tr', {},
          h('td', {}, r.flights), h('td', {}, r.failed),
          h('td', {}, r.usage?.input_tokens ?? 0), h('td', {}, r.usage?.output_tokens ?? 0), h('td', {}, r.usage?.cached_tokens ?? 0),
          h('td', {}, r.usage?.cost_micro_usd != null ? `$${(r.usage.cost_micro_usd / 1e6).toFixed(4)}` : '—')))))
      : h('p', { class: 'dim' }, 'No usage recorded in the last day.'));
  } catch (error) {
    usageBox.replaceChildren(showError(error));
  }
}

function maybeStartTerminal(name) {
  if (terminalFor === name) return;
  const box = document.getElementById('terminal-box');
  const instance = findInstance(name);
  if (!box || !instance) return;
  if (!instance.local) {
    box.replaceChildren(openTerminal(name, `/ws/mesh/agents/${encodeURIComponent(name)}/terminal`,
      `through ${nodeName(instance.owner)} over the mesh`));
    terminalFor = name;
    return;
  }
  const runtime = runtimeOf(instance);
  if (!runtime) {
    box.replaceChildren(h('div', { class: 'notice' },
      'This agent has no running session yet; it starts with its first turn. Send it a message below.'));
    return;
  }
  box.replaceChildren(openTerminal(name, `/ws/agents/${encodeURIComponent(runtime.id)}/terminal`, 'on this node'));
  terminalFor = name;
}

function openTerminal(name, path, where) {
  const el = h('div', { id: 'terminal' });
  const status = h('span', { id: 'terminal-status', class: 'dim' }, `connecting ${where}…`);
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  // The browser test reads the screen buffer through this.
  window.scoutTerminal = term;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
  const ws = new WebSocket(url);
  const sendSize = () => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
  };
  ws.addEventListener('open', () => {
    status.textContent = `connected ${where}`;
    status.dataset.state = 'open';
    sendSize();
  });
  ws.addEventListener('message', (event) => {
    const data = event.data;
    if (typeof data === 'string' && data.startsWith('{')) {
      try {
        const control = JSON.parse(data);
        if (control.type === 'lagged') status.textContent = `connected ${where} (skipped ${control.skipped} chunks, redrawn)`;
        else if (control.type === 'error') status.textContent = `${control.code ?? 'ERROR'}: ${control.message ?? ''}`;
        return;
      } catch {
        // Output that happens to start with a brace.
      }
    }
    term.write(typeof data === 'string' ? data : new Uint8Array(data));
  });
  ws.addEventListener('close', (event) => {
    status.textContent = `disconnected${event.reason ? `: ${event.reason}` : ''}`;
    status.dataset.state = 'closed';
  });
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(data); });
  term.onResize(sendSize);
  const onWindowResize = () => fit.fit();
  window.addEventListener('resize', onWindowResize);
  state.cleanup.push(() => {
    window.removeEventListener('resize', onWindowResize);
    ws.close();
    term.dispose();
    if (window.scoutTerminal === term) window.scoutTerminal = null;
    terminalFor = null;
  });
  queueMicrotask(() => {
    term.open(el);
    fit.fit();
    term.focus();
  });
  return h('div', {}, el, status);
}

function flightsTable(rows, onPick) {
  if (!rows.length) return h('p', { class: 'dim' }, 'No flights.');
  return h('table', { class: 'flights' },
    h('thead', {}, h('tr', {}, ['Invocation', 'Target', 'Origin', 'Delivery', 'Flight', 'Failure', 'Created'].map((t) => h('th', {}, t)))),
    h('tbody', {}, rows.map((r) => h('tr', { class: onPick ? 'click' : '', onclick: onPick ? () => onPick(r) : undefined },
      h('td', { class: 'dim' }, r.invocation_id.slice(0, 12)),
      h('td', {}, r.instance ?? r.target),
      h('td', {}, nodeName(r.origin)),
      h('td', {}, stateTag(r.delivery)),
      h('td', {}, stateTag(r.flight)),
      h('td', { class: r.failure_reason ? 'error' : '' }, [r.failure_code, r.failure_reason].filter(Boolean).join(' ') || '—'),
      h('td', {}, when(r.created_at_ms))))));
}

function flightsPage() {
  const list = h('div', { id: 'flights' }, h('p', { class: 'dim' }, 'Loading…'));
  const detail = h('div', { id: 'flight-detail' });
  const pick = async (row) => {
    try {
      const status = await api(`/v1/invocations/${encodeURIComponent(row.invocation_id)}`);
      const d = status.delivery;
      const f = status.flight;
      const cancel = h('button', { type: 'button', onclick: async () => {
        try { await api(`/v1/invocations/${encodeURIComponent(row.invocation_id)}/cancel`, { body: {} }); } catch (error) { detail.append(showError(error)); }
      } }, 'Cancel');
      detail.replaceChildren(
        h('h2', {}, `Invocation ${row.invocation_id}`), cancel,
        h('p', {}, 'Target ', status.invocation.target, ' · from ', nodeName(status.invocation.origin), ' · ', when(status.invocation.created_at_ms)),
        h('pre', {}, status.invocation.body),
        h('h2', {}, 'Delivery'),
        d ? h('div', {}, stateTag(d.state), ' owner ', nodeName(d.owner), d.failure_reason ? h('span', { class: 'error' }, ` ${d.failure_reason}: ${d.failure_detail ?? ''}`) : '',
          h('table', {}, h('thead', {}, h('tr', {}, ['Attempt', 'Started', 'Outcome', 'Failure'].map((t) => h('th', {}, t)))),
            h('tbody', {}, (d.attempts ?? []).map((a) => h('tr', {}, h('td', {}, a.attempt), h('td', {}, when(a.started_at_ms)), h('td', {}, a.outcome ?? '—'),
              h('td', { class: 'error' }, [a.failure_reason, a.failure_detail].filter(Boolean).join(': '))))))) : h('p', { class: 'dim' }, 'None.'),
        h('h2', {}, 'Flight'),
        f ? h('div', {}, stateTag(f.state), f.failure_reason ? h('span', { class: 'error' }, ` ${f.failure_reason}: ${f.failure_detail ?? ''}`) : '',
          h('pre', {}, typeof f.output === 'string' ? f.output : JSON.stringify(f.result ?? f.output, null, 2))) : h('p', { class: 'dim' }, 'None.'));
    } catch (error) {
      detail.replaceChildren(showError(error));
    }
  };
  const load = async () => {
    try {
      list.replaceChildren(flightsTable(await api('/v1/flights?limit=100'), pick));
    } catch (error) {
      list.replaceChildren(showError(error));
    }
  };
  main.replaceChildren(h('h1', {}, 'Flights'), list, detail);
  load();
  onRouting(debounce(load));
}

function workOrdersPage() {
  const list = h('div', { id: 'work-orders' }, h('p', { class: 'dim' }, 'Loading…'));
  const target = h('input', { placeholder: '@agent', size: 24 });
  const body = h('input', { placeholder: 'What to do', size: 48 });
  const status = h('span', { class: 'dim' });
  const submit = (runNow) => async () => {
    try {
      await api(runNow ? '/v1/work-orders/run-now' : '/v1/work-orders', { body: { target: target.value, body: body.value } });
      status.textContent = runNow ? 'running now' : 'queued';
      body.value = '';
      load();
    } catch (error) {
      status.replaceChildren(showError(error));
    }
  };
  const load = async () => {
    try {
      const data = await api('/v1/work-orders?limit=100');
      const orders = Array.isArray(data) ? data : (data.work_orders ?? data.orders ?? []);
      list.replaceChildren(orders.length ? h('table', {},
        h('thead', {}, h('tr', {}, ['Work order', 'Target', 'Body', 'State', 'Owner', 'Not before', 'Invocation', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, orders.map((o) => h('tr', {},
          h('td', { class: 'dim' }, o.work_order_id.slice(0, 12)), h('td', {}, o.target), h('td', {}, o.body), h('td', {}, stateTag(o.state)),
          h('td', {}, o.owner), h('td', {}, when(o.not_before_ms)), h('td', { class: 'dim' }, o.invocation_id?.slice(0, 12) ?? '—'),
          h('td', {}, h('button', { type: 'button', onclick: async () => {
            try { await api(`/v1/work-orders/${encodeURIComponent(o.work_order_id)}/cancel`, { body: {} }); load(); } catch (error) { status.replaceChildren(showError(error)); }
          } }, 'Cancel'))))))
        : h('p', { class: 'dim' }, 'No work orders.'));
    } catch (error) {
      list.replaceChildren(showError(error));
    }
  };
  main.replaceChildren(
    h('h1', {}, 'Work orders'),
    h('div', { class: 'bar' }, target, body,
      h('button', { type: 'button', onclick: submit(false) }, 'Enqueue'),
      h('button', { type: 'button', onclick: submit(true) }, 'Run now'), status),
    list);
  load();
  onRouting(debounce(load));
}

function approvalsPage() {
  const pendingBox = h('div', { id: 'approvals-pending' });
  const decidedBox = h('div', { id: 'approvals-decided' });
  const status = h('div', { id: 'approvals-status' });
  const answer = (view, approve, note) => async () => {
    try {
      const decided = await api(`/v1/approvals/${encodeURIComponent(view.id)}/${approve ? 'approve' : 'deny'}`,
        { body: { note: note.value } });
      approvals.set(`${decided.node_id}/${decided.id}`, decided);
      status.replaceChildren();
      draw();
    } catch (error) {
      status.replaceChildren(showError(error));
    }
  };
  const draw = () => {
    const all = [...approvals.values()].sort((a, b) => b.created_unix_ms - a.created_unix_ms);
    const pending = all.filter((a) => a.state === 'pending');
    const decided = all.filter((a) => a.state !== 'pending');
    pendingBox.replaceChildren(pending.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Agent', 'On', 'Asks', 'Summary', 'Deadline', 'Note', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, pending.map((a) => {
        const note = h('input', { placeholder: 'note (optional)', size: 20 });
        return h('tr', { 'data-approval': a.id },
          h('td', {}, a.agent), h('td', {}, a.node), h('td', {}, a.action),
          // The whole summary, as text: a person approves what they read.
          h('td', {}, h('pre', { class: 'summary' }, a.summary)),
          h('td', {}, when(a.deadline_unix_ms)), h('td', {}, note),
          h('td', {},
            h('button', { type: 'button', class: 'approve', onclick: answer(a, true, note) }, 'Approve'),
            h('button', { type: 'button', class: 'deny', onclick: answer(a, false, note) }, 'Deny')));
      })))
      : h('p', { class: 'dim' }, 'Nothing waits for a person.'));
    decidedBox.replaceChildren(decided.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Agent', 'On', 'Asked', 'Summary', 'Decision', 'By', 'When', 'Note'].map((t) => h('th', {}, t)))),
      h('tbody', {}, decided.slice(0, 100).map((a) => h('tr', { 'data-approval': a.id },
        h('td', {}, a.agent), h('td', {}, a.node), h('td', {}, a.action), h('td', {}, a.summary),
        h('td', {}, stateTag(a.state)), h('td', {}, a.decided_by ?? '—'), h('td', {}, when(a.decided_unix_ms)),
        h('td', {}, a.note || (a.outcome ?? ''))))))
      : h('p', { class: 'dim' }, 'None yet.'));
  };
  main.replaceChildren(h('h1', {}, 'Approvals'), status,
    h('h2', {}, 'Waiting'), pendingBox, h('h2', {}, 'Decided'), decidedBox);
  draw();
  approvalListeners.add(draw);
  state.cleanup.push(() => approvalListeners.delete(draw));
}

// ---- start ---------------------------------------------------------------

async function start() {
  document.getElementById('logout').addEventListener('click', async () => {
    try { await api('/v1/web/logout', { body: {} }); } finally { location.reload(); }
  });
  try {
    await api('/v1/peers');
  } catch (error) {
    main.replaceChildren(h('div', { class: 'notice', id: 'login-needed' },
      h('h1', {}, 'Not logged in'),
      h('p', {}, 'Run ', h('code', {}, 'scout open'), ' on this machine: it opens this page logged in (the link works once, for 60 seconds).'),
      error.code !== 'UNAUTHORIZED' ? showError(error) : null));
    return;
  }
  window.addEventListener('hashchange', () => render('route'));
  // A page left (or kept in the back-forward cache) closes its streams:
  // each holds one of the six connections a browser keeps per host, and
  // streams of pages nobody looks at would stall the next page's loads.
  window.addEventListener('pagehide', () => {
    state.live?.close();
    state.live = null;
    state.events?.close();
    state.events = null;
  });
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) startLive();
  });
  startLive();
  render('route');
}

start();
