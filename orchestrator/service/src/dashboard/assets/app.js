// The saga status dashboard: a small single-page app with no dependencies. Routes (in the hash):
//   #/                 overview
//   #/sagas?...        list (filters in the query)
//   #/sagas/<id>       one saga
//   #/jobs             operator jobs (bulk replays), newest first
//   #/jobs/<id>        one job: its progress and the result for each saga it handled
//   #/consistency      the consistency audit: the last report, and a button to run one
//   #/definitions      every version of every saga type, drawn as a graph
// Every value from the server reaches the page through textContent (never innerHTML).
'use strict';

const STATES = ['running', 'compensating', 'completed', 'compensated', 'failed'];
const session = {
  token: sessionStorage.getItem('saga-token') || '',
  identity: null,
  readsProtected: false,
};
let onChange = null; // what the current page does when a saga changes
let sagaTypes = [];

// ---------- helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const svgNS = 'http://www.w3.org/2000/svg';
function s(tag, attrs) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function when(t) {
  if (!t) return '';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

// "4 min 12 s" from now until t ("now" once it has passed).
function timeLeft(t) {
  const ms = new Date(t) - Date.now();
  if (isNaN(ms)) return '';
  if (ms <= 0) return 'now';
  const s = Math.round(ms / 1000);
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  return [h && `${h} h`, m && `${m} min`, (sec || !(h || m)) && `${sec} s`].filter(Boolean).join(' ');
}

function badge(state) {
  return h('span', { class: 'badge ' + state }, String(state).replace('_', ' '));
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('show'), 2500);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (session.token) headers['Authorization'] = 'Bearer ' + session.token;
  if (options.body) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new Error('The orchestrator cannot be reached: ' + e.message);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const message = body && body.error ? body.error : response.status + ' ' + response.statusText;
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return body;
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

function main() {
  return document.getElementById('main');
}

function show(...nodes) {
  const m = main();
  m.replaceChildren(...nodes);
  performance.mark('rendered'); // for the benchmark: navigation start → page drawn
}

function failure(err) {
  return h('p', { class: 'error', role: 'alert' }, err.message);
}

// ---------- session ----------

async function loadSession() {
  try {
    const s = await api('/api/session');
    session.readsProtected = s.reads_protected;
    session.identity = s.identity;
    sagaTypes = s.saga_types;
  } catch (e) {
    if (e.status === 401) {
      session.token = '';
      sessionStorage.removeItem('saga-token');
      session.identity = null;
      toast('That token is not a known credential');
    }
  }
  const signedIn = session.identity && session.identity.role === 'operator';
  document.getElementById('signin').hidden = !!signedIn;
  document.getElementById('whoami').hidden = !signedIn;
  document.getElementById('whoami-name').textContent = signedIn ? 'Operator: ' + session.identity.name : '';
}

document.getElementById('signin').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = document.getElementById('token');
  session.token = input.value.trim();
  input.value = '';
  sessionStorage.setItem('saga-token', session.token);
  await loadSession();
  connectEvents();
  route();
});

document.getElementById('signout').addEventListener('click', async () => {
  session.token = '';
  sessionStorage.removeItem('saga-token');
  await loadSession();
  route();
});

// ---------- live updates ----------

let source = null;
function connectEvents() {
  if (source) source.close();
  const live = document.getElementById('live');
  const q = session.readsProtected && session.token ? '?token=' + encodeURIComponent(session.token) : '';
  source = new EventSource('/api/events' + q);
  source.onopen = () => { live.textContent = 'live'; live.className = 'live on'; };
  source.onerror = () => { live.textContent = 'reconnecting…'; live.className = 'live off'; };
  source.addEventListener('saga', (e) => { if (onChange) onChange(JSON.parse(e.data)); });
  source.addEventListener('resync', () => { if (onChange) onChange(null); });
}

// Browsers allow few connections per host: never leave a stream open behind a page that is gone.
window.addEventListener('pagehide', () => { if (source) source.close(); });

// ---------- routing ----------

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  return { path, params: new URLSearchParams(query || '') };
}

async function route() {
  const { path, params } = parseHash();
  onChange = null;
  document.getElementById('nav-overview').toggleAttribute('aria-current', false);
  document.getElementById('nav-sagas').toggleAttribute('aria-current', false);
  document.getElementById('nav-consistency').toggleAttribute('aria-current', false);
  document.getElementById('nav-jobs').toggleAttribute('aria-current', false);
  document.getElementById('nav-definitions').toggleAttribute('aria-current', false);
  clearTimeout(jobsTimer);
  const detail = path.match(/^\/sagas\/([0-9a-fA-F-]+)$/);
  const job = path.match(/^\/jobs\/([0-9a-fA-F-]+)$/);
  if (job) {
    document.getElementById('nav-jobs').setAttribute('aria-current', 'page');
    await jobPage(job[1]);
  } else if (path === '/jobs') {
    document.getElementById('nav-jobs').setAttribute('aria-current', 'page');
    await jobsPage();
  } else if (detail) {
    document.getElementById('nav-sagas').setAttribute('aria-current', 'page');
    await detailPage(detail[1]);
  } else if (path === '/definitions') {
    document.getElementById('nav-definitions').setAttribute('aria-current', 'page');
    await definitionsPage();
  } else if (path === '/consistency') {
    document.getElementById('nav-consistency').setAttribute('aria-current', 'page');
    await consistencyPage();
  } else if (path === '/sagas') {
    document.getElementById('nav-sagas').setAttribute('aria-current', 'page');
    await listPage(params);
  } else {
    document.getElementById('nav-overview').setAttribute('aria-current', 'page');
    await overviewPage();
  }
}

window.addEventListener('hashchange', () => { route(); main().focus(); });

// ---------- consistency ----------

function auditReport(r, counts) {
  if (!r) return h('p', { class: 'muted', id: 'audit-none' }, 'No audit has run since this orchestrator started.');
  const found = r.findings.length;
  const summary = h('p', { id: 'audit-summary' },
    `${r.sagas_checked} saga(s) created ${when(r.since)} – ${when(r.until)}`,
    r.saga_type ? ` (type ${r.saga_type})` : '',
    ` compared with ${r.ledger_entries} ledger entries in ${r.duration_seconds.toFixed(2)} s (run ${when(r.started_at)}): `,
    h('strong', {}, found ? `${found} finding(s)` : 'no drift found'));
  const participants = h('ul', { id: 'audit-participants' },
    r.participants.map((p) => h('li', {}, `${p.name}: ${p.service} serves ${p.commands_topic}, ${p.entries} entries`)),
    r.unaudited_topics.length ? h('li', { class: 'error' }, 'Not audited (no participant configured): ' + r.unaudited_topics.join(', ')) : null);
  const kinds = h('p', { class: 'muted' },
    Object.entries(counts || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k}: ${n}`).join(' · '));
  if (!found) return h('div', {}, summary, participants);
  const table = h('table', { id: 'audit-findings' },
    h('thead', {}, h('tr', {}, ['Kind', 'Saga', 'Type', 'Step', 'Participant', 'What', 'Records']
      .map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, r.findings.map((f) => h('tr', {},
      h('td', {}, f.kind),
      h('td', {}, f.saga_type ? sagaLink(f.saga_id) : h('span', { class: 'mono' }, f.saga_id)),
      h('td', {}, f.saga_type || '—'),
      h('td', {}, f.step === null ? '' : `${f.step} ${f.step_name || ''} ${f.phase || ''}`),
      h('td', {}, f.participant || ''),
      h('td', {}, f.message),
      h('td', {}, records(f))))));
  return h('div', {}, summary, participants, kinds, table);
}

// A finding's records: both sides, or only the side that has one (an effect no saga claims, two
// participants' replicas that differ).
function records(f) {
  const participant = f.kind === 'replica_drift' ? 'Participants' : 'Participant';
  const sides = [['Orchestrator', f.orchestrator], [participant, f.participant_record]]
    .filter(([, v]) => v !== null && v !== undefined);
  return h('details', {}, h('summary', {}, sides.length === 2 ? 'both sides' : 'records'),
    sides.flatMap(([title, v]) => [h('h4', {}, title), h('pre', {}, pretty(v))]));
}

async function consistencyPage() {
  let data;
  try { data = await api('/api/audit'); } catch (e) { show(h('h1', {}, 'Consistency'), failure(e)); return; }
  const result = h('div', { id: 'audit-result' }, auditReport(data.report, data.counts));
  const status = h('p', { id: 'audit-status', role: 'status', 'aria-live': 'polite' });
  const hours = h('input', { id: 'audit-hours', type: 'number', min: 1, max: 720, value: 24, required: true });
  const type = h('select', { id: 'audit-type' }, h('option', { value: '' }, 'every type'),
    sagaTypes.map((t) => h('option', { value: t }, t)));
  const button = h('button', { type: 'submit', class: 'primary', id: 'audit-run' }, 'Run audit');
  const form = h('form', { id: 'audit-form', class: 'filters', onsubmit: async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    status.textContent = 'Auditing…';
    try {
      const body = { since_hours: Number(hours.value), type: type.value || null };
      const d = await api('/api/audit', { method: 'POST', body: JSON.stringify(body) });
      result.replaceChildren(auditReport(d.report, d.counts));
      status.textContent = d.report.findings.length ? 'Drift found.' : 'The records agree.';
    } catch (e) {
      status.textContent = '';
      result.replaceChildren(failure(e));
    } finally {
      button.disabled = false;
    }
  } },
  h('label', { for: 'audit-hours' }, 'Sagas of the last (hours)'), hours,
  h('label', { for: 'audit-type' }, 'Type'), type, button);
  const configured = data.participants_configured.length
    ? 'Participants read: ' + data.participants_configured.join(', ') + '.'
    : 'No participants are configured (APP_AUDIT__PARTICIPANTS__<NAME>): nothing can be compared.';
  const periodic = data.periodic_every_secs
    ? ` A periodic audit runs every ${data.periodic_every_secs} s.` : ' No periodic audit is configured.';
  show(h('h1', {}, 'Consistency'),
    h('p', { class: 'muted' }, 'Compares the orchestrator\'s record of each saga with every participant\'s inbox ledger. ',
      configured, periodic),
    form, status, result);
}

// ---------- overview ----------

function perMinuteChart(minutes) {
  const series = [
    ['started', '#2457c5'], ['completed', '#1e7d3c'], ['compensated', '#6a4bb3'], ['failed', '#b3261e'],
  ];
  const max = Math.max(1, ...minutes.flatMap((m) => series.map(([k]) => m[k])));
  const W = 600, H = 160, pad = 24;
  const x = (i) => pad + (i * (W - 2 * pad)) / Math.max(1, minutes.length - 1);
  const y = (v) => H - pad - (v * (H - 2 * pad)) / max;
  const totals = Object.fromEntries(series.map(([k]) => [k, minutes.reduce((a, m) => a + m[k], 0)]));
  const label = 'Sagas per minute over the last hour: ' + series.map(([k]) => totals[k] + ' ' + k).join(', ');
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, preserveAspectRatio: 'none' });
  svg.append(s('line', { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: '#c5cbd6' }));
  const top = s('text', { x: 2, y: pad, 'font-size': 11, fill: '#5b6475' });
  top.textContent = String(max);
  svg.append(top);
  for (const [k, color] of series) {
    const points = minutes.map((m, i) => `${x(i).toFixed(1)},${y(m[k]).toFixed(1)}`).join(' ');
    svg.append(s('polyline', { points, fill: 'none', stroke: color, 'stroke-width': 2 }));
  }
  const legend = h('div', { class: 'legend' },
    series.map(([k, color]) => h('span', { style: `--c:${color}` }, `${k} (${totals[k]})`)));
  return h('div', { class: 'chart', id: 'throughput' }, svg, legend);
}

function latencyTable(rows) {
  if (!rows.length) return h('p', { class: 'muted' }, 'No finished sagas in the last hour.');
  const max = Math.max(1, ...rows.map((r) => r.p99_ms));
  return h('table', { id: 'latency' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Saga'), h('th', { scope: 'col' }, 'Step'),
      h('th', { scope: 'col' }, 'Phase'), h('th', { scope: 'col', class: 'num' }, 'n'),
      h('th', { scope: 'col', class: 'num' }, 'p50 ms'), h('th', { scope: 'col', class: 'num' }, 'p90 ms'),
      h('th', { scope: 'col', class: 'num' }, 'p99 ms'))),
    h('tbody', {}, rows.map((r) => h('tr', {},
      h('td', {}, r.saga_type), h('td', {}, r.step), h('td', {}, r.phase),
      h('td', { class: 'num' }, r.count),
      h('td', { class: 'num' }, r.p50_ms.toFixed(1)), h('td', { class: 'num' }, r.p90_ms.toFixed(1)),
      h('td', { class: 'num bar-cell' }, r.p99_ms.toFixed(1),
        h('div', { class: 'bar-fill', style: `width:${(100 * r.p99_ms / max).toFixed(0)}%`, 'aria-hidden': 'true' }))))));
}

function sagaLink(id) {
  return h('a', { href: '#/sagas/' + id, class: 'mono' }, id);
}

function attentionList(title, block, query) {
  return h('section', {},
    h('h3', {}, `${title} (${block.count})`),
    block.sagas.length
      ? h('ul', {}, block.sagas.map((x) => h('li', {}, sagaLink(x.id), ' ', badge(x.state), ' ',
          x.current_step || '', x.failure_reason ? h('div', { class: 'muted' }, x.failure_reason) : null)))
      : h('p', { class: 'muted' }, 'None.'),
    query && block.count > block.sagas.length ? h('a', { href: '#/sagas?' + query }, 'All of them') : null);
}

async function overviewPage() {
  let o;
  try { o = await api('/api/overview'); } catch (e) { show(h('h1', {}, 'Overview'), failure(e)); return; }
  sagaTypes = o.saga_types;
  const byState = Object.fromEntries(STATES.map((st) => [st, 0]));
  for (const states of Object.values(o.counts)) for (const [st, n] of Object.entries(states)) byState[st] += n;
  // Completed and compensated sagas are counted over the last hour (all of them would mean reading
  // the whole table); running, compensating and failed ones all.
  const lastHour = (st) => st === 'completed' || st === 'compensated';
  const cards = h('div', { class: 'cards', id: 'state-cards' }, STATES.map((st) =>
    h('div', { class: 'card' }, h('a', { href: '#/sagas?state=' + st, id: 'count-' + st },
      h('div', { class: 'n' }, byState[st]), badge(st),
      lastHour(st) ? h('span', { class: 'muted' }, ' last hour') : null))));
  const types = h('table', { id: 'by-type' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Saga type'),
      STATES.map((st) => h('th', { scope: 'col', class: 'num' }, lastHour(st) ? st + ' (last hour)' : st)))),
    h('tbody', {}, Object.entries(o.counts).map(([t, states]) => h('tr', {},
      h('th', { scope: 'row' }, h('a', { href: '#/sagas?type=' + t }, t)),
      STATES.map((st) => h('td', { class: 'num' }, states[st] || 0))))));
  const a = o.attention;
  show(
    h('h1', {}, 'Overview'),
    cards,
    h('div', { class: 'grid2' },
      h('section', {}, h('h2', {}, 'Sagas per minute, last hour'), perMinuteChart(o.per_minute)),
      h('section', {}, h('h2', {}, 'By type'), types)),
    h('h2', {}, 'Needs attention'),
    h('div', { class: 'grid2', id: 'attention' },
      attentionList('Parked, failed', a.failed, 'state=failed'),
      h('div', {},
        attentionList('Compensating for over 5 minutes', a.compensating_long, 'state=compensating'),
        attentionList('Retrying or past a deadline', a.retrying, null))),
    h('h2', {}, `Step latency, last hour (latest ${o.latency_sample} finished sagas)`),
    latencyTable(o.step_latency),
    h('p', { class: 'muted' }, 'Updated ', when(o.generated_at)));
  onChange = debounce(() => overviewPage(), 1000);
}

// ---------- list ----------

function filterForm(params) {
  const field = (label, id, input) => h('div', { class: 'field' }, h('label', { for: id }, label), input);
  const select = (id, name, options, value) => h('select', { id, name },
    h('option', { value: '' }, 'any'), options.map((o) => h('option', { value: o, selected: o === value }, o)));
  const localInput = (v) => (v ? new Date(v).toISOString().slice(0, 16) : '');
  const form = h('form', { class: 'filters', id: 'filters', 'aria-label': 'Filter sagas' },
    field('Type', 'f-type', select('f-type', 'type', sagaTypes, params.get('type'))),
    field('State', 'f-state', select('f-state', 'state', STATES, params.get('state'))),
    field('Step', 'f-step', h('input', { id: 'f-step', name: 'step', value: params.get('step') || '', size: 14 })),
    field('Created since (UTC)', 'f-since', h('input', { id: 'f-since', name: 'since', type: 'datetime-local', value: localInput(params.get('since')) })),
    field('Created before (UTC)', 'f-until', h('input', { id: 'f-until', name: 'until', type: 'datetime-local', value: localInput(params.get('until')) })),
    field('Saga id, idempotency key or business key', 'f-q', h('input', { id: 'f-q', name: 'q', value: params.get('q') || '', size: 28,
      placeholder: 'e.g. a@example.com or email=a@example.com' })),
    field('Order', 'f-order', h('select', { id: 'f-order', name: 'order' },
      h('option', { value: 'newest', selected: params.get('order') !== 'oldest' }, 'newest first'),
      h('option', { value: 'oldest', selected: params.get('order') === 'oldest' }, 'oldest first'))),
    h('button', { type: 'submit', class: 'primary', id: 'apply' }, 'Apply'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) {
      if (!v) continue;
      q.set(k, k === 'since' || k === 'until' ? new Date(v + 'Z').toISOString() : v);
    }
    if (q.get('order') === 'newest') q.delete('order');
    location.hash = '#/sagas?' + q.toString();
  });
  return form;
}

async function listPage(params) {
  const apiParams = new URLSearchParams(params);
  let page;
  try { page = await api('/api/sagas?' + apiParams.toString()); } catch (e) {
    show(h('h1', {}, 'Sagas'), filterForm(params), failure(e));
    return;
  }
  const rows = page.sagas.map((x) => h('tr', { 'data-saga': x.id },
    h('td', {}, sagaLink(x.id)), h('td', {}, x.saga_type), h('td', {}, badge(x.state)),
    h('td', {}, x.current_step || ''), h('td', {}, when(x.created_at)), h('td', {}, when(x.updated_at)),
    h('td', { class: 'muted' }, x.failure_reason || '')));
  const next = page.next_cursor ? (() => {
    const q = new URLSearchParams(params);
    q.set('cursor', page.next_cursor);
    return h('a', { href: '#/sagas?' + q.toString(), id: 'next-page' }, 'Next page →');
  })() : null;
  const first = params.get('cursor') ? (() => {
    const q = new URLSearchParams(params);
    q.delete('cursor');
    return h('a', { href: '#/sagas?' + q.toString() }, '← First page');
  })() : null;
  show(
    h('h1', {}, 'Sagas'),
    filterForm(params),
    h('table', { id: 'saga-list' },
      h('caption', { class: 'sr' }, 'Sagas matching the filters'),
      h('thead', {}, h('tr', {}, ['Saga', 'Type', 'State', 'Step', 'Created', 'Updated', 'Reason'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No sagas match.')))),
    h('div', { class: 'pager' }, first, next, h('span', { class: 'muted' }, `${rows.length} shown`)),
    bulkReplayButton(params),
    bulkActionForm(params));
  onChange = debounce(() => listPage(params), 700);
}

// Replays the compensation of every failed saga the list's filters select, as a job.
function bulkReplayButton(params) {
  const signedIn = session.identity && session.identity.role === 'operator';
  const state = params.get('state');
  const why = !signedIn ? 'sign in with an operator token to act'
    : (state && state !== 'failed' ? 'replay applies to failed sagas: filter by state failed' : '');
  const body = {};
  for (const [k, v] of [['type', params.get('type')], ['step', params.get('step')],
    ['since', params.get('since')], ['until', params.get('until')]]) if (v) body[k] = v;
  const open = () => confirmDialog('Replay compensations (bulk)',
    'Every failed saga these filters select gets its exhausted compensation sent again, paced, as a job any orchestrator replica works.',
    async (reason) => {
      const r = await api('/api/jobs', { method: 'POST', body: JSON.stringify(Object.assign({ reason }, body)) });
      toast('Job started');
      location.hash = '#/jobs/' + r.job.id;
    });
  return h('div', { class: 'actions', role: 'group', 'aria-label': 'Bulk actions' },
    h('button', { id: 'act-bulk-replay', type: 'button', class: 'primary', disabled: !!why, 'aria-describedby': 'act-bulk-replay-why', onclick: open },
      'Replay failed sagas…'),
    ' ', h('span', { class: 'why', id: 'act-bulk-replay-why' }, why));
}

// Any bulk action (hold, release, abort, retry, replay) for every saga the list's filters select:
// a plan first (how many, the first of them), then a job started only on an explicit confirmation.
function bulkActionForm(params) {
  const signedIn = session.identity && session.identity.role === 'operator';
  const body = {};
  for (const [k, v] of [['type', params.get('type')], ['state', params.get('state')], ['step', params.get('step')],
    ['since', params.get('since')], ['until', params.get('until')]]) if (v) body[k] = v;
  const q = (params.get('q') || '').trim();
  if (q.includes('=')) body.key = q;
  // A free search (an id, a key's value) is not a filter a job can repeat: name the key instead.
  const why = !signedIn ? 'sign in with an operator token to act'
    : (q && !q.includes('=') ? 'a bulk action takes a search of the form name=value, not a free search' : '');
  const action = h('select', { id: 'bulk-action', 'aria-label': 'Bulk action' },
    [['hold', 'Place legal hold'], ['release', 'Release legal hold'], ['abort', 'Abort'], ['retry', 'Retry step'],
      ['replay_compensations', 'Replay compensation']].map(([v, l]) => h('option', { value: v }, l)));
  const result = h('div', { id: 'bulk-plan', 'aria-live': 'polite' });
  const plan = () => confirmDialog('Plan a bulk action',
    'Nothing changes yet: the plan says how many sagas these filters select and shows the first of them.',
    async (reason) => {
      const request = Object.assign({ action: action.value, reason }, body);
      const r = await api('/api/bulk/plan', { method: 'POST', body: JSON.stringify(request) });
      const p = r.plan;
      result.replaceChildren(
        h('p', { id: 'bulk-count' }, `${p.capped ? 'At least ' : ''}${p.count} saga(s) selected for “${action.selectedOptions[0].textContent}”`,
          p.capped ? ' (the job stops at its limit)' : ''),
        p.sample.length ? h('ul', {}, p.sample.map((x) => h('li', {}, sagaLink(x.id), ` ${x.saga_type} · ${x.state}`))) : null,
        h('button', { id: 'bulk-start', type: 'button', class: 'danger', disabled: p.count === 0,
          onclick: async () => {
            try {
              const started = await api('/api/bulk', { method: 'POST', body: JSON.stringify(Object.assign({ confirmed: true }, request)) });
              toast('Job started');
              location.hash = '#/jobs/' + started.job.id;
            } catch (err) { result.append(h('p', { class: 'error' }, err.message)); }
          } }, `Start job for ${p.count} saga(s)`));
    });
  // The plan goes below the controls, not beside them.
  return h('div', {},
    h('div', { class: 'actions', role: 'group', 'aria-label': 'Act on the selected sagas' },
      action, ' ',
      h('button', { id: 'bulk-plan-button', type: 'button', disabled: !!why, onclick: plan }, 'Plan…'),
      ' ', h('span', { class: 'why' }, why)),
    result);
}

// ---------- jobs ----------

let jobsTimer = null;

function jobCounts(j) {
  return Object.entries(j.counts || {}).map(([k, n]) => `${k.replace(/_/g, ' ')} ${n}`).join(' · ');
}

function jobSelection(j) {
  const f = j.params.filter;
  const keys = (f.keys || []).map((k) => `${k.name || 'a key'} ${k.prefix ? 'starting with' : '='} ${k.value}`);
  return [f.saga_type || 'every type', f.state || '', f.current_step ? 'at ' + f.current_step : '', ...keys,
    f.failure_contains ? `failing with “${f.failure_contains}”` : '', f.definition_version ? 'v' + f.definition_version : '',
    f.created_after ? 'since ' + when(f.created_after) : '', f.created_before ? 'until ' + when(f.created_before) : '']
    .filter(Boolean).join(' ');
}

async function jobsPage() {
  let page;
  try { page = await api('/api/jobs'); } catch (e) { show(h('h1', {}, 'Jobs'), failure(e)); return; }
  const rows = page.jobs.map((j) => h('tr', { 'data-job': j.id },
    h('td', {}, h('a', { href: '#/jobs/' + j.id, class: 'mono' }, j.id.slice(0, 8) + '…')),
    h('td', {}, j.kind.replace(/_/g, ' ')), h('td', {}, badge(j.state)),
    h('td', {}, `${j.processed} / ${j.params.limit}`), h('td', {}, jobCounts(j)),
    h('td', {}, jobSelection(j)), h('td', {}, j.operator), h('td', {}, when(j.created_at))));
  show(h('h1', {}, 'Jobs'),
    h('p', { class: 'muted' }, 'Operator bulk work, kept in the orchestrator\'s database: any replica works a job, and another goes on if it stops.'),
    h('table', { id: 'job-list' },
      h('thead', {}, h('tr', {}, ['Job', 'Kind', 'State', 'Processed', 'Outcomes', 'Selects', 'Operator', 'Created'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No jobs yet.')))));
  if (page.jobs.some((j) => j.state === 'running' || j.state === 'paused')) jobsTimer = setTimeout(jobsPage, 1000);
}

async function jobPage(id) {
  let d;
  try { d = await api('/api/jobs/' + id); } catch (e) { show(h('h1', {}, 'Job'), failure(e)); return; }
  const j = d.job;
  const signedIn = session.identity && session.identity.role === 'operator';
  const running = j.state === 'running';
  const cancel = h('div', { class: 'actions', role: 'group', 'aria-label': 'Operator actions' },
    h('button', { id: 'act-cancel-job', type: 'button', class: 'danger', disabled: !(signedIn && (running || j.state === 'paused')),
      'aria-describedby': 'act-cancel-job-why',
      onclick: () => confirmDialog('Cancel job', 'The job stops before its next saga; what it did stays done. Job ' + j.id + '.',
        async (reason) => {
          await api(`/api/jobs/${j.id}/cancel`, { method: 'POST', body: JSON.stringify({ reason }) });
          toast('Job cancelled');
          jobPage(id);
        }) }, 'Cancel job'),
    ' ', h('span', { class: 'why', id: 'act-cancel-job-why' },
      !signedIn ? 'sign in with an operator token to act' : (running || j.state === 'paused' ? '' : `the job is ${j.state}`)),
    ' ', h('button', { id: 'act-pause-job', type: 'button', disabled: !(signedIn && (running || j.state === 'paused')),
      onclick: () => confirmDialog(running ? 'Pause job' : 'Resume job',
        running ? 'No replica works the job until it is resumed.' : 'The job goes on after the last saga it handled.',
        async (reason) => {
          await api(`/api/jobs/${j.id}/${running ? 'pause' : 'resume'}`, { method: 'POST', body: JSON.stringify({ reason }) });
          toast(running ? 'Job paused' : 'Job resumed');
          jobPage(id);
        }) }, j.state === 'paused' ? 'Resume job' : 'Pause job'));
  const meta = h('dl', { class: 'meta' },
    h('dt', {}, 'Job'), h('dd', { class: 'mono' }, j.id),
    h('dt', {}, 'Kind'), h('dd', {}, j.kind.replace(/_/g, ' ')),
    h('dt', {}, 'State'), h('dd', {}, h('span', { id: 'job-state', 'data-state': j.state }, badge(j.state))),
    h('dt', {}, 'Selects'), h('dd', {}, `${jobSelection(j)} — at most ${j.params.limit}, ${j.params.rate_per_second}/s`),
    h('dt', {}, 'Processed'), h('dd', { id: 'job-processed' }, `${j.processed} ${jobCounts(j) ? '(' + jobCounts(j) + ')' : ''}`),
    h('dt', {}, 'Started by'), h('dd', {}, `${j.operator}: “${j.reason}”`),
    j.owner ? [h('dt', {}, 'Worked by'), h('dd', { class: 'mono' }, j.owner)] : null,
    j.last_error ? [h('dt', {}, 'Held up by'), h('dd', { class: 'error' }, j.last_error)] : null,
    j.cancelled_by ? [h('dt', {}, 'Cancelled by'), h('dd', {}, `${j.cancelled_by}: “${j.cancel_reason}”`)] : null,
    j.paused_by ? [h('dt', {}, j.state === 'paused' ? 'Paused by' : 'Last paused or resumed by'), h('dd', {}, `${j.paused_by}: “${j.pause_reason}”`)] : null,
    h('dt', {}, 'Created'), h('dd', {}, when(j.created_at)),
    j.finished_at ? [h('dt', {}, 'Finished'), h('dd', {}, when(j.finished_at))] : null);
  const items = h('table', { id: 'job-items' },
    h('thead', {}, h('tr', {}, ['#', 'Saga', 'Outcome', 'Sent', 'When'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, d.items.map((i) => h('tr', {},
      h('td', {}, i.seq), h('td', {}, sagaLink(i.saga_id)),
      h('td', {}, badge(i.outcome), i.detail ? h('div', { class: 'line muted' }, i.detail) : null),
      h('td', {}, i.commands.map((c) => `${c.command_type} (step ${c.step}, attempt ${c.attempt})`).join('; ')),
      h('td', {}, when(i.at))))));
  show(h('h1', {}, 'Job ', h('span', { class: 'mono' }, j.id.slice(0, 8) + '…')), meta, cancel,
    h('h2', {}, 'Results'), d.items.length ? items : h('p', { class: 'muted' }, 'No saga handled yet.'));
  if (running) jobsTimer = setTimeout(() => jobPage(id), 1000);
}

// ---------- detail ----------

function phaseCell(p, kind) {
  if (!p) return h('td', { class: 'muted' }, '— none: a pivot step cannot be undone');
  const lines = [];
  if (p.started_at) lines.push('started ' + when(p.started_at));
  if (p.finished_at) lines.push('finished ' + when(p.finished_at));
  if (p.deadline) lines.push('deadline ' + when(p.deadline));
  if (p.retry_at) lines.push('next attempt ' + when(p.retry_at));
  if (p.gives_up_at) lines.push(`gives up in ${timeLeft(p.gives_up_at)} (${when(p.gives_up_at)}) unless answered`);
  return h('td', { class: 'phase', 'data-phase': kind },
    h('div', {}, h('strong', {}, p.command_type), ' ', badge(p.status), p.attempt ? ` attempt ${p.attempt}` : ''),
    lines.map((l) => h('div', { class: 'line' }, l)),
    p.last_error
      ? (p.status === 'succeeded'
          ? h('div', { class: 'err earlier' }, 'an earlier attempt failed: ' + p.last_error)
          : h('div', { class: 'err' }, p.last_error))
      : null,
    p.sent ? h('details', {}, h('summary', {}, 'Command sent'), h('pre', {}, pretty(p.sent))) : null,
    p.reply ? h('details', {}, h('summary', {}, 'Reply'), h('pre', {}, pretty(p.reply))) : null);
}

// A refused action applied nothing, so its compensation will never run: say so instead of
// showing it "pending" forever.
function compensationCell(st) {
  const c = st.compensation;
  if (!c && st.shape && st.shape.kind === 'wait') {
    return h('td', { class: 'phase muted', 'data-phase': 'compensation' }, '— none: a wait has nothing to undo');
  }
  if (c && st.action.status === 'rejected' && c.status === 'pending') {
    return h('td', { class: 'phase muted not-needed', 'data-phase': 'compensation' },
      h('div', {}, h('strong', {}, c.command_type), ' not needed — the action was refused'));
  }
  return phaseCell(c, 'compensation');
}

function describe(e) {
  const d = e.data || {};
  const bits = [];
  if (d.name !== undefined) bits.push(`step ${d.step} ${d.name}`);
  if (d.phase) bits.push(d.phase);
  if (d.attempt) bits.push('attempt ' + d.attempt);
  if (d.command) bits.push(d.command);
  if (d.reason) bits.push('“' + d.reason + '”');
  if (d.why) bits.push(d.why);
  return bits.join(' · ');
}

// ---------- the saga as a graph ----------

// What a step is, in a few words: its kind, what a wait waits for, its condition, a child's type.
function shapeWords(sh) {
  const bits = [];
  if (sh.kind === 'wait') bits.push('waits for ' + (sh.waits_for === 'approval' ? 'an approval' : sh.waits_for));
  if (sh.kind === 'child') bits.push('child saga ' + sh.child_saga_type);
  if (sh.kind === 'participant') bits.push(sh.action + (sh.compensation ? ' / ' + sh.compensation : ' (pivot)'));
  if (sh.when) bits.push('when ' + sh.when);
  return bits.join(' · ');
}

// The steps as stages, top to bottom; the branches of a parallel group side by side. `steps` are
// the saga's steps (with their status) or a definition's (without).
function graph(id, steps) {
  const stages = [];
  for (const st of steps) {
    const sh = st.shape || st;
    const at = sh.stage ?? st.index;
    if (!stages.length || stages[stages.length - 1].stage !== at) stages.push({ stage: at, group: sh.group, steps: [] });
    stages[stages.length - 1].steps.push(st);
  }
  return h('ol', { class: 'graph', id, 'aria-label': 'Steps as a graph' },
    stages.map((stage) => h('li', { class: 'stage' + (stage.steps.length > 1 ? ' parallel' : ''), 'data-group': stage.group || '' },
      stage.steps.length > 1 ? h('div', { class: 'group-label muted' }, 'in parallel: ' + stage.group) : null,
      h('div', { class: 'branches' }, stage.steps.map((st) => {
        const sh = st.shape || st;
        const status = st.action ? st.action.status : null;
        const waiting = sh.kind === 'wait' && status === 'in_flight';
        return h('div', { class: 'node' + (waiting ? ' waiting' : ''), 'data-step': st.name, 'data-kind': sh.kind, 'data-status': status || '' },
          h('div', {}, h('strong', {}, st.name), status ? [' ', badge(status)] : null),
          h('div', { class: 'line muted' }, shapeWords(sh)),
          waiting ? h('div', { class: 'line waits' }, 'waiting for ' + (sh.waits_for === 'approval' ? 'an approval' : sh.waits_for) +
            (st.action.deadline ? ', until ' + when(st.action.deadline) : '')) : null,
          sh.child_saga_id ? h('div', { class: 'line' }, 'child ', sagaLink(sh.child_saga_id)) : null);
      })))));
}

async function definitionsPage() {
  let r;
  try { r = await api('/api/definitions'); } catch (e) {
    show(h('h1', {}, 'Definitions'), failure(e));
    return;
  }
  show(h('h1', {}, 'Definitions'), h('div', { id: 'definitions' },
    r.definitions.map((d) => h('section', { class: 'definition', id: `def-${d.name}-v${d.version}` },
      h('h2', {}, `${d.name} v${d.version}`, d.latest ? h('span', { class: 'muted' }, ' — new sagas start on this version') : null),
      d.description ? h('p', {}, d.description) : null,
      graph(`graph-${d.name}-v${d.version}`, d.steps)))));
}

function actionButton(id, label, availability, onClick, danger) {
  const signedIn = session.identity && session.identity.role === 'operator';
  const allowed = availability && availability.allowed;
  const why = !signedIn ? 'sign in with an operator token to act' : (!allowed ? availability.why : '');
  return h('span', {},
    h('button', { id, type: 'button', class: danger ? 'danger' : 'primary', disabled: !(signedIn && allowed),
      'aria-describedby': id + '-why', onclick: onClick }, label),
    ' ', h('span', { class: 'why', id: id + '-why' }, why));
}

async function detailPage(id) {
  let x;
  try { x = await api('/api/sagas/' + id); } catch (e) {
    show(h('h1', {}, 'Saga'), failure(e));
    return;
  }
  const meta = h('dl', { class: 'meta' },
    h('dt', {}, 'Saga'), h('dd', { class: 'mono' }, x.saga_id),
    h('dt', {}, 'Type'), h('dd', {}, `${x.saga_type} v${x.definition_version}`),
    h('dt', {}, 'State'), h('dd', {}, h('span', { id: 'state-badge', 'data-state': x.state }, badge(x.state))),
    h('dt', {}, 'Step'), h('dd', {}, x.current_step || '—'),
    x.parent ? [h('dt', {}, 'Parent'), h('dd', { id: 'parent-link' }, sagaLink(x.parent.saga_id), ` (its step ${x.parent.step})`)] : null,
    x.failure_reason ? [h('dt', {}, 'Reason'), h('dd', { id: 'failure-reason' }, x.failure_reason)] : null,
    x.idempotency_key ? [h('dt', {}, 'Idempotency key'), h('dd', { class: 'mono' }, x.idempotency_key)] : null,
    x.search_keys.length ? [h('dt', {}, 'Business keys'), h('dd', { id: 'search-keys' },
      x.search_keys.map((k) => h('div', {}, `${k.name} = `, h('span', { class: 'mono' }, k.value))))] : null,
    x.hold ? [h('dt', {}, 'Legal hold'), h('dd', { id: 'legal-hold' },
      `held by ${x.hold.operator} since ${when(x.hold.placed_at)}: ${x.hold.reason} (retention keeps it)`)] : null,
    h('dt', {}, 'Created'), h('dd', {}, when(x.created_at)),
    h('dt', {}, 'Updated'), h('dd', {}, when(x.updated_at)),
    h('dt', {}, 'Context'), h('dd', {}, h('details', {}, h('summary', {}, 'Input and replies'), h('pre', {}, pretty(x.context)))));
  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Operator actions' },
    actionButton('act-replay', 'Replay compensation', x.actions.replay,
      () => confirmAction(x, 'replay', 'Replay compensation', 'The exhausted compensation is sent again with a new retry budget.')),
    actionButton('act-retry', 'Retry step', x.actions.retry,
      () => confirmAction(x, 'retry', 'Retry step', 'The step whose outcome is unknown is sent again instead of compensating.')),
    actionButton('act-abort', 'Abort', x.actions.abort,
      () => confirmAction(x, 'abort', 'Abort saga', 'The saga stops and everything it did is compensated.'), true),
    actionButton('act-approve', 'Approve', x.actions.approve,
      () => confirmAction(x, 'approve', 'Approve', 'The saga goes on past its approval step.')),
    actionButton('act-reject', 'Reject', x.actions.approve,
      () => confirmAction(x, 'reject', 'Reject', 'The approval step fails and the saga compensates what it did.'), true),
    actionButton('act-hold', 'Place legal hold', x.actions.hold,
      () => confirmAction(x, 'hold', 'Place legal hold', 'Retention never removes the saga while it is held.')),
    actionButton('act-release', 'Release hold', x.actions.release,
      () => confirmAction(x, 'release', 'Release legal hold', 'Retention removes the saga once it is finished and old enough.')));
  const steps = h('table', { id: 'steps' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Step'), h('th', { scope: 'col' }, 'Forward action'), h('th', { scope: 'col' }, 'Compensation'))),
    h('tbody', {}, x.steps.map((st) => h('tr', {},
      h('th', { scope: 'row' }, `${st.index} · ${st.name}`, h('div', { class: 'line muted' }, st.participant)),
      phaseCell(st.action, 'action'), compensationCell(st)))));
  const timeline = h('ol', { class: 'timeline', id: 'timeline', 'aria-label': 'History' },
    x.history.map((e) => h('li', { class: e.actor.startsWith('operator:') ? 'operator' : '', 'data-kind': e.kind },
      h('span', { class: 'muted' }, when(e.at)), h('span', {}, e.actor),
      h('span', {}, h('strong', {}, e.kind.replace(/_/g, ' ')), ' ', describe(e)))));
  show(h('h1', {}, 'Saga ', h('span', { class: 'mono' }, x.saga_id.slice(0, 8) + '…')),
    meta, actions, h('h2', {}, 'Graph'), graph('graph', x.steps), h('h2', {}, 'Steps'), steps, h('h2', {}, 'Timeline'), timeline);
  onChange = (change) => { if (!change || change.id === x.saga_id) refreshDetail(); };
  const refreshDetail = debounce(() => detailPage(id), 200);
}

// ---------- actions ----------

function confirmAction(saga, kind, title, text) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text + ' Saga ' + saga.saga_id + '.';
  const reason = document.getElementById('confirm-reason');
  const error = document.getElementById('confirm-error');
  const stepRow = document.getElementById('confirm-step-row');
  const step = document.getElementById('confirm-step');
  reason.value = '';
  error.textContent = '';
  // Validated as it is typed: the message goes as soon as there is a reason.
  reason.oninput = () => { if (reason.value.trim()) error.textContent = ''; };
  stepRow.hidden = kind !== 'retry';
  step.replaceChildren(h('option', { value: '' }, 'the step it stopped at'),
    saga.steps.map((st) => h('option', { value: st.index }, `${st.index} · ${st.name}`)));
  const form = document.getElementById('confirm-form');
  form.onsubmit = async (e) => {
    e.preventDefault();
    if (!reason.value.trim()) { error.textContent = 'A reason is required: it is recorded in the saga\'s history.'; reason.focus(); return; }
    const body = { reason: reason.value.trim() };
    if (kind === 'retry' && step.value !== '') body.step = Number(step.value);
    try {
      const r = await api(`/api/sagas/${saga.saga_id}/${kind}`, { method: 'POST', body: JSON.stringify(body) });
      dialog.close();
      toast(`${title}: ${r.outcome || r.state}`);
      detailPage(saga.saga_id);
    } catch (err) {
      error.textContent = err.message;
    }
  };
  document.getElementById('confirm-cancel').onclick = () => dialog.close();
  dialog.showModal();
  reason.focus();
}

// A confirmation that asks for a reason, then runs `submit(reason)`; its error stays in the dialog.
function confirmDialog(title, text, submit) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  const reason = document.getElementById('confirm-reason');
  const error = document.getElementById('confirm-error');
  document.getElementById('confirm-step-row').hidden = true;
  reason.value = '';
  error.textContent = '';
  reason.oninput = () => { if (reason.value.trim()) error.textContent = ''; };
  document.getElementById('confirm-form').onsubmit = async (e) => {
    e.preventDefault();
    if (!reason.value.trim()) { error.textContent = 'A reason is required: it is recorded.'; reason.focus(); return; }
    try {
      await submit(reason.value.trim());
      dialog.close();
    } catch (err) {
      error.textContent = err.message;
    }
  };
  document.getElementById('confirm-cancel').onclick = () => dialog.close();
  dialog.showModal();
  reason.focus();
}

// ---------- start ----------

(async () => {
  await loadSession();
  connectEvents();
  route();
})();
