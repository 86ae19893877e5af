// failsmall's web dashboard: plain JavaScript over the /v1 API. It reads its views again when
// the server's store changes (a long poll on GET /v1/changes), at most once a second, and at
// least every REFRESH_MAX_MS for what changes with time alone. Data is put in the
// page with textContent only (never as HTML). The token lives in this tab's sessionStorage
// and goes out only in the Authorization header.
'use strict';

// How long one wait on GET /v1/changes lasts (the server allows 30 s).
const WAIT_MS = 25000;
// At most one refresh a second, however often the store changes (reports arrive all the time
// during a rollout).
const REFRESH_MIN_MS = 1000;
// A refresh at least this often, for what changes with time alone (bake and soak countdowns).
const REFRESH_MAX_MS = 15000;
// After a failed wait (the server restarts, the network drops), the next one starts this late.
const RETRY_MS = 2000;
const TOKEN_KEY = 'failsmall.token';
const ACTIVE = ['queued', 'running', 'paused'];
const RECENT_MAX = 20;

const state = { token: null, role: null, name: null, tab: 'rollouts', rollout: null, unit: null, incident: null, timer: null, busy: false, pending: null, change: null, lastRefresh: 0, watcher: null, again: false };

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'onclick') node.addEventListener('click', value);
    else if (key.startsWith('data-')) node.setAttribute(key, String(value));
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function when(ms) {
  if (!ms) return '';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
}

function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 120) return s + ' s ago';
  if (s < 7200) return Math.round(s / 60) + ' min ago';
  return Math.round(s / 3600) + ' h ago';
}

const short = (hash) => (hash || '').slice(0, 12);
const phaseName = (phase) => (typeof phase === 'string' ? phase : Object.keys(phase || {})[0] || '');
const badge = (text, kind) => el('span', { class: 'badge ' + (kind || text) }, text);
const canDeploy = () => state.role === 'deployer' || state.role === 'admin';
const canApprove = () => state.role === 'approver' || state.role === 'admin';
const isAdmin = () => state.role === 'admin';
const rfcWhen = (text) => (text ? text.replace('T', ' ').replace(/\.\d+/, '').replace('Z', '') : '');

function say(text, kind) {
  const box = $('#message');
  box.textContent = text || '';
  box.className = text ? kind || 'error' : '';
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options) {
  const init = Object.assign({ headers: {} }, options || {});
  init.headers.Authorization = 'Bearer ' + state.token;
  if (init.body !== undefined) init.headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, 'the server does not answer (' + error.message + ')');
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error && body.error.message ? body.error.message : response.status + ' ' + text.slice(0, 200);
    throw new ApiError(response.status, message);
  }
  return body;
}

// --- sign-in -------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  let who;
  try {
    who = await api('/v1/whoami');
  } catch (error) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(error.status === 401 ? 'That token is not valid (or has expired).' : error.message);
    return;
  }
  if (!who.role || who.role === 'agent') {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn('An agent token cannot sign in here; use a viewer, deployer, approver or admin token.');
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.role = who.role;
  state.name = who.name;
  $('#signin').hidden = true;
  $('#tabs').hidden = false;
  $('#signout').hidden = false;
  $('#who').textContent = who.name + ' · ' + who.role;
  document.body.dataset.role = who.role;
  say('');
  show(state.tab);
}

function showSignIn(message) {
  clearTimeout(state.timer);
  state.timer = null;
  stopWatching();
  $('#signin').hidden = false;
  $('#tabs').hidden = true;
  $('#signout').hidden = true;
  $('#who').textContent = '';
  delete document.body.dataset.role;
  for (const view of document.querySelectorAll('.view')) view.hidden = true;
  // Nothing of the last session stays on the page (its data, its buttons).
  for (const box of document.querySelectorAll('#rollout-detail, #incident-detail, #unit-versions')) {
    box.replaceChildren();
    box.hidden = true;
  }
  for (const t of document.querySelectorAll('.view table')) t.replaceChildren();
  state.rollout = null;
  state.incident = null;
  state.unit = null;
  say(message || '');
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.role = null;
  state.rollout = null;
  showSignIn('Signed out.');
  $('#message').className = 'info';
}

// --- navigation and polling ----------------------------------------------------------------

function show(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll('#tabs button')) {
    button.classList.toggle('active', button.dataset.tab === tab);
  }
  for (const view of document.querySelectorAll('.view')) view.hidden = view.id !== 'view-' + tab;
  poll();
}

async function poll() {
  clearTimeout(state.timer);
  if (!state.token) return;
  // A refresh asked for while one runs follows it (the running one may have read too early).
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    // The counter is read before the views: a change after it wakes the next wait.
    if (state.change === null) state.change = (await api('/v1/changes')).change;
    if (state.tab === 'rollouts') await loadRollouts();
    else if (state.tab === 'changelog') await loadChangelog();
    else if (state.tab === 'nodes') await loadNodes();
    else if (state.tab === 'units') await loadUnits();
    else if (state.tab === 'incidents') await loadIncidents();
    else if (state.tab === 'freezes') await loadFreezes();
    state.lastRefresh = Date.now();
    document.body.dataset.refreshed = String(state.lastRefresh);
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showSignIn('Signed out: ' + error.message);
      state.busy = false;
      return;
    }
    say(error.message);
  }
  state.busy = false;
  if (!state.token) return;
  if (state.again) {
    state.again = false;
    poll();
    return;
  }
  state.timer = setTimeout(poll, REFRESH_MAX_MS);
  watchChanges();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One wait at a time on GET /v1/changes for the signed-in token: when the store's change
// counter differs from the one the views were read at, they are read again.
async function watchChanges() {
  if (!state.token || (state.watcher && state.watcher.token === state.token)) return;
  const watcher = { token: state.token, abort: new AbortController() };
  state.watcher = watcher;
  while (state.watcher === watcher) {
    let answer;
    try {
      const after = state.change === null ? '' : '&after=' + state.change;
      answer = await api('/v1/changes?wait_ms=' + WAIT_MS + after, { signal: watcher.abort.signal });
    } catch (error) {
      // 401: the next refresh signs out. Otherwise the server is away for now.
      if (state.watcher !== watcher || error.status === 401) break;
      await sleep(RETRY_MS);
      continue;
    }
    if (state.watcher !== watcher || answer.change === state.change) continue;
    state.change = answer.change;
    const since = Date.now() - state.lastRefresh;
    if (since < REFRESH_MIN_MS) await sleep(REFRESH_MIN_MS - since);
    if (state.watcher === watcher) poll();
  }
  if (state.watcher === watcher) state.watcher = null;
}

function stopWatching() {
  if (state.watcher) state.watcher.abort.abort();
  state.watcher = null;
  state.change = null;
}

function table(node, headings, rows) {
  node.replaceChildren(el('thead', {}, el('tr', {}, headings.map((h) => el('th', {}, h)))), el('tbody', {}, rows));
  if (rows.length === 0) node.tBodies[0].append(el('tr', {}, el('td', { colspan: headings.length, class: 'muted' }, 'none')));
}

// --- rollouts ------------------------------------------------------------------------------

function rolloutRow(view) {
  return el('tr', { class: 'pick', 'data-rollout': view.id, onclick: () => { state.rollout = view.id; poll(); } },
    el('td', { class: 'mono' }, 'r' + view.id),
    el('td', {}, view.unit),
    el('td', { class: 'mono' }, short(view.version)),
    el('td', {}, badge(view.status)),
    el('td', {}, (view.stage_index + 1) + '/' + view.stages_total + ' ' + view.stage_name),
    el('td', {}, phaseName(view.phase)),
    el('td', {}, String(view.nodes_exposed)),
    el('td', {}, when(view.created_ms)));
}

async function loadRollouts() {
  const list = await api('/v1/rollouts?limit=200');
  const rollouts = list.rollouts || [];
  const headings = ['id', 'unit', 'version', 'status', 'stage', 'phase', 'exposed', 'started'];
  table($('#rollouts-active'), headings, rollouts.filter((r) => ACTIVE.includes(r.status)).map(rolloutRow));
  table($('#rollouts-recent'), headings, rollouts.filter((r) => !ACTIVE.includes(r.status)).slice(0, RECENT_MAX).map(rolloutRow));
  if (state.rollout === null && rollouts.length > 0) {
    const active = rollouts.find((r) => ACTIVE.includes(r.status));
    state.rollout = (active || rollouts[0]).id;
  }
  if (state.rollout !== null) await loadRolloutDetail(state.rollout);
}

async function loadRolloutDetail(id) {
  const [view, log] = await Promise.all([
    api('/v1/rollouts/' + id),
    api('/v1/changelog?rollout=' + id + '&order=oldest&limit=1000'),
  ]);
  const entries = log.entries || [];
  const box = $('#rollout-detail');
  box.hidden = false;
  box.dataset.rollout = view.id;
  box.dataset.status = view.status;
  box.dataset.stageIndex = view.stage_index;
  box.dataset.phase = phaseName(view.phase);
  const phase = phaseName(view.phase);
  const actions = el('div', { class: 'row', id: 'actions' });
  const action = (name, label, style) => actions.append(el('button', { class: 'act ' + (style || ''), 'data-action': name, onclick: () => confirmAction(view, name) }, label));
  if (canDeploy() && view.status === 'running') action('pause', 'Pause');
  if (canDeploy() && view.status === 'paused') action('resume', 'Resume');
  if (canDeploy() && (view.status === 'running' || view.status === 'paused')) action('promote', 'Promote');
  if (canApprove() && view.status === 'running' && phase === 'awaiting_approval') action('approve', 'Approve', 'primary');
  if (canDeploy() && (view.status === 'running' || view.status === 'paused')) action('rollback', 'Roll back', 'danger');
  const gates = el('table', {});
  table(gates, ['gate', 'verdict', 'value against the limit'], (view.gates || []).map((gate) => {
    const kind = Object.keys(gate.verdict || {})[0] || '';
    const detail = kind ? gate.verdict[kind].detail : '';
    return el('tr', {}, el('td', { class: 'mono' }, gate.gate), el('td', {}, badge(kind)), el('td', {}, detail));
  }));
  const canary = view.canary || {};
  const sample = canary.sample || {};
  box.replaceChildren(
    el('div', { class: 'row' },
      el('h2', {}, 'r' + view.id + ' · ' + view.unit + ' @ ' + short(view.version)),
      badge(view.status),
      el('span', { id: 'detail-stage' }, 'stage ' + (view.stage_index + 1) + '/' + view.stages_total + ': ' + view.stage_name + ' (' + phase + ')'),
      el('span', { class: 'muted' }, view.nodes_exposed + ' nodes exposed, ' + view.nodes_applied + ' applied')),
    el('p', { class: 'muted' }, 'by ' + view.actor + ' — ' + (view.reason || 'no reason given') + (view.outcome ? ' · ' + view.outcome : '')),
    actions,
    el('h3', {}, 'Wave timeline'),
    timeline(view, entries),
    el('h3', {}, 'Gates'),
    gates,
    el('p', { class: 'muted' }, 'canary: ' + (canary.nodes || 0) + ' nodes, ' + (sample.requests || 0) + ' requests, ' + (sample.errors || 0) + ' errors, ' +
      (canary.rejections || 0) + ' rejections, ' + (canary.crashes || 0) + ' crashes, ' + (canary.health_check_failures || 0) + ' failed health checks'),
    el('h3', {}, 'Events'),
    (() => {
      const events = el('table', {});
      table(events, ['time', 'kind', 'stage', 'actor', 'reason'], entries.slice(-12).reverse().map((e) =>
        el('tr', {}, el('td', {}, when(e.at_ms)), el('td', {}, e.kind), el('td', {}, e.stage || ''), el('td', {}, e.actor), el('td', {}, e.reason))));
      return events;
    })());
}

// Stages over time as bands, nodes exposed as a step line, and the moments that matter
// (approvals, pauses, the rollback) as marks, from the rollout's changelog.
function timeline(view, entries) {
  const W = 960, H = 170, left = 40, right = 20, top = 24, bottom = 30;
  const start = view.created_ms;
  const lastAt = entries.length ? entries[entries.length - 1].at_ms : start;
  const end = Math.max(view.ended_ms || Math.max(Date.now(), lastAt), start + 1000);
  const x = (ms) => left + ((ms - start) / (end - start)) * (W - left - right);
  const chart = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'timeline', id: 'timeline', role: 'img', 'aria-label': 'wave timeline' });
  const stages = entries.filter((e) => e.kind === 'stage_started');
  const colors = ['#e4ebfb', '#dcf3e3', '#fdf0d9', '#efe4fb', '#fbe0e1'];
  stages.forEach((entry, i) => {
    const from = x(entry.at_ms);
    const to = i + 1 < stages.length ? x(stages[i + 1].at_ms) : x(end);
    chart.append(svg('rect', { x: from, y: top, width: Math.max(1, to - from), height: H - top - bottom, fill: colors[i % colors.length], 'data-stage': entry.stage || '' }));
    chart.append(svg('text', { x: from + 4, y: top + 14 }, entry.stage || 'stage ' + (i + 1)));
  });
  // Nodes exposed, from each stage's "N exposed in all".
  let maxExposed = Math.max(1, view.nodes_exposed);
  const points = [];
  for (const entry of stages) {
    const match = /(\d+) exposed in all/.exec(entry.reason || '');
    if (match) {
      const n = Number(match[1]);
      maxExposed = Math.max(maxExposed, n);
      points.push([entry.at_ms, n]);
    }
  }
  const rolledBack = entries.find((e) => e.kind === 'rolled_back');
  if (rolledBack) points.push([rolledBack.at_ms, 0]);
  if (points.length) {
    const y = (n) => H - bottom - (n / maxExposed) * (H - top - bottom - 20);
    let d = 'M ' + x(points[0][0]) + ' ' + y(0);
    let last = 0;
    for (const [at, n] of points) {
      d += ' L ' + x(at) + ' ' + y(last) + ' L ' + x(at) + ' ' + y(n);
      last = n;
    }
    d += ' L ' + x(end) + ' ' + y(last);
    chart.append(svg('path', { d, fill: 'none', stroke: '#2f5bd3', 'stroke-width': 2 }));
    chart.append(svg('text', { x: 4, y: y(maxExposed) + 4 }, String(maxExposed)));
    chart.append(svg('text', { x: 4, y: y(0) }, '0'));
  }
  const marks = { approved: ['#1a7f37', 'approved'], paused: ['#b54708', 'paused'], resumed: ['#b54708', 'resumed'], promoted: ['#2f5bd3', 'promoted'],
    rolled_back: ['#c0262d', 'rollback'], completed: ['#2f5bd3', 'completed'], aborted: ['#c0262d', 'aborted'], held: ['#b54708', 'held'] };
  // Marks close together stack their labels rather than overprint them.
  let lastLabelX = -Infinity, row = 0;
  for (const entry of entries) {
    const mark = marks[entry.kind];
    if (!mark) continue;
    const at = x(entry.at_ms);
    row = at - lastLabelX < 70 ? (row + 1) % 3 : 0;
    lastLabelX = at;
    chart.append(svg('line', { x1: at, x2: at, y1: top - 6, y2: H - bottom, stroke: mark[0], 'stroke-width': entry.kind === 'rolled_back' ? 3 : 1.5, 'data-mark': entry.kind }));
    const labelX = at + 70 > W ? at - 66 : at + 3;
    chart.append(svg('text', { x: labelX, y: top - 8 + row * 40, fill: mark[0] }, mark[1]));
  }
  for (const entry of entries.filter((e) => e.kind === 'gate_verdict')) {
    const failed = /fail/i.test(entry.reason || '');
    chart.append(svg('circle', { cx: x(entry.at_ms), cy: H - bottom - 6, r: 3, fill: failed ? '#c0262d' : '#1a7f37' }));
  }
  chart.append(svg('text', { x: left, y: H - 8 }, when(start)));
  chart.append(svg('text', { x: W - right - 120, y: H - 8 }, when(end)));
  return chart;
}

// --- actions -------------------------------------------------------------------------------

// Every write goes through one confirmation: what it does, and a reason for the changelog.
// `run(reason)` performs it; `label` names it in the message that follows.
function confirmDo(action, title, text, label, run) {
  const dialog = $('#confirm');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-reason').value = '';
  dialog.dataset.action = action;
  state.pending = { label, run };
  dialog.classList.add('open');
}

function confirmAction(view, name) {
  const id = view.id;
  confirmDo(name, name[0].toUpperCase() + name.slice(1) + ' r' + id + '?',
    name + ' rollout r' + id + ' of ' + view.unit + ' @ ' + short(view.version) + ', now at stage ' + (view.stage_index + 1) + ' (' + view.stage_name + ').',
    name + ' r' + id,
    (reason) => name === 'approve'
      ? api('/v1/rollouts/' + id + '/approve', { method: 'POST', body: JSON.stringify({ reason }) })
      : api('/v1/rollouts/' + id + '/commands', { method: 'POST', body: JSON.stringify({ command: name, reason }) }));
}

async function confirmed() {
  const dialog = $('#confirm');
  const pending = state.pending;
  const written = $('#confirm-reason').value.trim();
  dialog.classList.remove('open');
  state.pending = null;
  if (!pending) return;
  try {
    await pending.run(written || 'from the dashboard', written);
    say(pending.label + ': done', 'info');
  } catch (error) {
    say(pending.label + ': ' + error.message);
  }
  poll();
}

// --- changelog, nodes, units ---------------------------------------------------------------

async function loadChangelog() {
  const query = new URLSearchParams({ order: 'newest', limit: '200' });
  const unit = $('#filter-unit').value.trim();
  const rollout = $('#filter-rollout').value.trim().replace(/^r/, '');
  const label = $('#filter-label').value.trim();
  const kind = $('#filter-kind').value.trim();
  if (unit) query.set('unit', unit);
  if (rollout) query.set('rollout', rollout);
  if (label) query.set('label', label);
  const log = await api('/v1/changelog?' + query);
  const entries = (log.entries || []).filter((e) => !kind || (e.kind || '').includes(kind));
  table($('#changelog'), ['time', 'kind', 'actor', 'unit', 'version', 'rollout', 'stage', 'reason'], entries.map((e) =>
    el('tr', { 'data-kind': e.kind },
      el('td', {}, when(e.at_ms)), el('td', {}, e.kind), el('td', {}, e.actor), el('td', {}, e.unit || ''),
      el('td', { class: 'mono' }, short(e.version)), el('td', {}, e.rollout ? 'r' + e.rollout : ''), el('td', {}, e.stage || ''), el('td', {}, e.reason))));
}

async function loadNodes() {
  const list = await api('/v1/nodes?limit=1000');
  const now = list.now_ms || Date.now();
  table($('#nodes'), ['node', 'liveness', 'last seen', 'labels', 'versions'], (list.nodes || []).map((node) => {
    const down = now - node.last_seen_ms > list.down_after_ms;
    const liveness = down ? 'down' : node.stale_since_ms ? 'stale' : 'up';
    const labels = Object.entries(node.labels || {}).map(([k, v]) => k + '=' + v).join(', ');
    const versions = Object.entries(node.versions || {}).map(([unit, v]) => unit + ' @ ' + short(v.version)).join(', ');
    return el('tr', { 'data-node': node.id }, el('td', { class: 'mono' }, node.id), el('td', {}, badge(liveness)),
      el('td', {}, ago(node.last_seen_ms, now)), el('td', {}, labels), el('td', { class: 'mono' }, versions));
  }));
}

async function loadUnits() {
  const list = await api('/v1/units?limit=1000');
  const units = list.units || [];
  table($('#units'), ['unit', 'format', 'owner', 'description', 'updated'], units.map((unit) =>
    el('tr', { class: 'pick', 'data-unit': unit.name, onclick: () => { state.unit = unit.name; poll(); } },
      el('td', {}, unit.name), el('td', {}, (unit.spec && unit.spec.format) + (unit.spec && unit.spec.shape ? ' · ' + unit.spec.shape : '')),
      el('td', {}, unit.owner), el('td', {}, unit.description), el('td', {}, when(unit.updated_ms)))));
  const box = $('#unit-versions');
  if (!state.unit) { box.hidden = true; return; }
  const versions = await api('/v1/units/' + encodeURIComponent(state.unit) + '/versions?limit=50');
  const rows = (versions.versions || []).map((v) => el('tr', {}, el('td', {}, String(v.seq)), el('td', { class: 'mono' }, short(v.hash)),
    el('td', {}, v.status ? badge(v.status, 'plain') : ''), el('td', {}, v.author), el('td', {}, v.message), el('td', {}, when(v.created_ms))));
  const versionsTable = el('table', {});
  table(versionsTable, ['#', 'version', 'status', 'author', 'message', 'pushed'], rows);
  box.hidden = false;
  box.replaceChildren(el('h2', {}, 'Versions of ' + state.unit), versionsTable);
}

// --- incidents -----------------------------------------------------------------------------

function incidentRow(incident, now) {
  const due = incident.next_update_due ? Date.parse(incident.next_update_due) : null;
  const dueCell = due === null ? '' : due < now ? badge('overdue ' + rfcWhen(incident.next_update_due), 'overdue') : rfcWhen(incident.next_update_due);
  return el('tr', { class: 'pick', 'data-incident': incident.id, onclick: () => { state.incident = incident.id; poll(); } },
    el('td', { class: 'mono' }, '#' + incident.id), el('td', {}, incident.title), el('td', {}, badge(incident.severity)),
    el('td', {}, badge(incident.status)), el('td', {}, (incident.components || []).join(', ')), el('td', {}, incident.cause),
    el('td', {}, rfcWhen(incident.opened)), el('td', {}, rfcWhen(incident.last_update)), el('td', {}, dueCell));
}

async function loadIncidents() {
  const list = await api('/v1/incidents');
  const incidents = list.incidents || [];
  const now = Date.now();
  table($('#incidents'), ['id', 'title', 'severity', 'status', 'components', 'cause', 'opened', 'last update', 'next update due'],
    incidents.map((incident) => incidentRow(incident, now)));
  $('#incident-open').hidden = !canDeploy();
  if (state.incident === null && incidents.length > 0) {
    const open = incidents.find((i) => i.status !== 'resolved');
    state.incident = (open || incidents[0]).id;
  }
  const box = $('#incident-detail');
  if (state.incident === null) { box.hidden = true; return; }
  const incident = await api('/v1/incidents/' + state.incident);
  // An update being written survives the redraw (the view is read again on every change).
  const draft = keptDraft(box, incident.id, '#incident-update-text', '#incident-update-status');
  box.hidden = false;
  box.dataset.incident = incident.id;
  box.dataset.status = incident.status;
  const updates = el('table', {});
  table(updates, ['time', 'status', 'severity', 'update (public)', 'by'], (incident.updates || []).slice().reverse().map((u) =>
    el('tr', { 'data-update': u.automatic ? 'automatic' : 'written' }, el('td', {}, rfcWhen(u.at)), el('td', {}, badge(u.status)), el('td', {}, badge(u.severity)),
      el('td', {}, u.message), el('td', {}, u.automatic ? u.author + ' (automatic)' : u.author))));
  const timeline = el('table', {});
  table(timeline, ['time', 'kind', 'actor', 'stage', 'reason'], (incident.timeline || []).slice(-20).reverse().map((e) =>
    el('tr', {}, el('td', {}, rfcWhen(e.at)), el('td', {}, e.kind), el('td', {}, e.actor), el('td', {}, e.stage || ''), el('td', {}, e.reason))));
  const open = incident.status !== 'resolved';
  const actions = el('div', { class: 'row', id: 'incident-actions' });
  if (canDeploy() && open) {
    const message = el('input', { id: 'incident-update-text', placeholder: 'update (public)', size: 48 });
    const status = el('select', { id: 'incident-update-status' }, ['', 'investigating', 'identified', 'monitoring'].map((s) => el('option', { value: s }, s || 'status unchanged')));
    draft.into = [message, status];
    actions.append(message, status,
      el('button', { class: 'act primary', 'data-action': 'update', onclick: () => {
        const body = { message: message.value.trim() };
        if (status.value) body.status = status.value;
        if (!body.message) { say('An update needs its public text.'); return; }
        confirmDo('update', 'Publish an update to incident #' + incident.id + '?', 'Public, on the status page: "' + body.message + '"', 'update of #' + incident.id,
          () => api('/v1/incidents/' + incident.id + '/updates', { method: 'POST', body: JSON.stringify(body) }));
      } }, 'Publish update'),
      el('button', { class: 'act danger', 'data-action': 'resolve', onclick: () => {
        confirmDo('resolve', 'Resolve incident #' + incident.id + '?', 'Resolves "' + incident.title + '". What you write below is published as its last update (a standard one when empty).', 'resolve #' + incident.id,
          (_, written) => api('/v1/incidents/' + incident.id + '/resolve', { method: 'POST', body: JSON.stringify({ message: written }) }));
      } }, 'Resolve'));
  }
  box.replaceChildren(
    el('div', { class: 'row' }, el('h2', {}, '#' + incident.id + ' · ' + incident.title), badge(incident.severity), badge(incident.status)),
    el('p', { class: 'muted' }, 'opened ' + rfcWhen(incident.opened) + ' by ' + incident.opened_by + ' (' + incident.cause + ')' +
      (incident.rollout ? ' · rollout r' + incident.rollout : '') + (incident.next_update_due ? ' · next update due ' + rfcWhen(incident.next_update_due) : '') +
      (incident.resolved ? ' · resolved ' + rfcWhen(incident.resolved) : '')),
    actions,
    el('h3', {}, 'Updates'), updates,
    el('h3', {}, 'Timeline'), timeline,
    incident.review ? el('h3', {}, 'Post-incident review') : null,
    incident.review ? el('pre', { class: 'mono' }, incident.review) : null);
  draft.restore();
}

// What is being written in `text` (and chosen in `choice`) inside `box`, when `box` still shows
// item `id`: set `into` to the new [text, choice] elements, and `restore()` after the redraw puts
// the value, the choice, the focus and the cursor back.
function keptDraft(box, id, text, choice) {
  const old = box.dataset.incident === String(id) ? box.querySelector(text) : null;
  const kept = old && {
    value: old.value,
    choice: box.querySelector(choice) ? box.querySelector(choice).value : '',
    focused: document.activeElement === old,
    start: old.selectionStart,
    end: old.selectionEnd,
  };
  const draft = {
    into: null,
    restore() {
      if (!kept || !draft.into) return;
      const [input, select] = draft.into;
      input.value = kept.value;
      if (select) select.value = kept.choice;
      if (kept.focused) {
        input.focus();
        input.setSelectionRange(kept.start, kept.end);
      }
    },
  };
  return draft;
}

function openIncident(event) {
  event.preventDefault();
  const body = {
    title: $('#incident-title').value.trim(),
    severity: $('#incident-severity').value,
    components: $('#incident-components').value.split(',').map((c) => c.trim()).filter(Boolean),
    message: $('#incident-message').value.trim(),
  };
  confirmDo('open-incident', 'Open incident "' + body.title + '"?', 'A ' + body.severity + ' incident, public on the status page.', 'open incident',
    async () => {
      const opened = await api('/v1/incidents', { method: 'POST', body: JSON.stringify(body) });
      state.incident = opened.id;
      $('#incident-title').value = '';
      $('#incident-message').value = '';
    });
}

// --- freezes and maintenance ---------------------------------------------------------------

async function loadFreezes() {
  const [freezes, maintenance] = await Promise.all([api('/v1/freezes'), api('/v1/maintenance')]);
  $('#stop-the-line').hidden = !isAdmin();
  table($('#freezes'), ['id', 'what', 'state', 'reason', 'by', 'created', ''], (freezes.freezes || []).map((f) =>
    el('tr', { 'data-freeze': f.id }, el('td', { class: 'mono' }, String(f.id)), el('td', {}, f.describe), el('td', {}, badge(f.active ? 'active' : 'inactive')),
      el('td', {}, f.reason), el('td', {}, f.actor), el('td', {}, rfcWhen(f.created)),
      el('td', {}, isAdmin() ? el('button', { class: 'act', 'data-action': 'lift', onclick: () =>
        confirmDo('lift', 'Lift freeze ' + f.id + '?', 'Lifts "' + f.describe + '": rollouts it holds go on.', 'lift freeze ' + f.id,
          (reason) => api('/v1/freezes/' + f.id + '/lift', { method: 'POST', body: JSON.stringify({ reason }) })) }, 'Lift') : null))));
  table($('#maintenance'), ['id', 'what', 'state', 'reason', 'by', 'until', ''], (maintenance.maintenance || []).map((m) =>
    el('tr', { 'data-maintenance': m.id }, el('td', { class: 'mono' }, String(m.id)), el('td', {}, m.describe), el('td', {}, badge(m.active ? 'active' : 'inactive')),
      el('td', {}, m.reason), el('td', {}, m.actor), el('td', {}, rfcWhen(m.until)),
      el('td', {}, isAdmin() && m.active ? el('button', { class: 'act', 'data-action': 'end', onclick: () =>
        confirmDo('end', 'End maintenance window ' + m.id + '?', 'Its nodes count in canaries and baselines again.', 'end maintenance ' + m.id,
          (reason) => api('/v1/maintenance/' + m.id + '/end', { method: 'POST', body: JSON.stringify({ reason }) })) }, 'End') : null))));
}

function stopTheLine() {
  confirmDo('stop-the-line', 'Stop the line?', 'A global freeze from now until lifted: no rollout starts or promotes (rollbacks and break glass still work).', 'stop the line',
    (reason) => api('/v1/freezes/now', { method: 'POST', body: JSON.stringify({ reason }) }));
}

// --- start ---------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('#signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('#token').value.trim();
    $('#token').value = '';
    if (token) signIn(token);
  });
  $('#signout').addEventListener('click', signOut);
  for (const button of document.querySelectorAll('#tabs button')) button.addEventListener('click', () => show(button.dataset.tab));
  $('#changelog-filters').addEventListener('submit', (event) => { event.preventDefault(); poll(); });
  $('#confirm-yes').addEventListener('click', confirmed);
  $('#incident-open-form').addEventListener('submit', openIncident);
  $('#stop-the-line').addEventListener('click', stopTheLine);
  $('#confirm-no').addEventListener('click', () => $('#confirm').classList.remove('open'));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showSignIn('');
});
