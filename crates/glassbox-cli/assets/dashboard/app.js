// glassbox dashboard: calls the JSON API of `glassbox serve` and shows the pictures it draws.
'use strict';

const $ = (id) => document.getElementById(id);
const pad2 = (n) => String(n).padStart(2, '0');
const headName = ([l, h]) => `L${pad2(l)}H${pad2(h)}`;

// The current query and what has been loaded for it.
const state = { run: 0, query: null, analysis: null, attribution: null, headTypes: {}, loaded: {}, patterns: {}, info: null };

/// A request to the API; rejects with the server's message.
async function api(path, body) {
  const resp = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const type = resp.headers.get('Content-Type') || '';
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    if (type.includes('json')) msg = (await resp.json()).error || msg;
    throw new Error(msg);
  }
  return type.includes('json') ? resp.json() : resp.text();
}

/// Runs a method, showing its progress (polled from /api/status) while it runs.
async function method(command, extra) {
  const q = state.query;
  const body = Object.assign({ prompt: q.prompt, correct: q.correct, incorrect: q.incorrect }, q.corrupted ? { corrupted: q.corrupted } : {}, extra || {});
  const started = performance.now();
  setStatus(`running ${command}…`);
  const timer = setInterval(async () => {
    try {
      const s = await (await fetch('/api/status')).json();
      const secs = ((performance.now() - started) / 1000).toFixed(1);
      let text = `running ${command}… ${secs} s`;
      if (s.running && s.running.command !== command) text = `waiting for ${s.running.command} to finish… ${secs} s`;
      else if (s.running && s.running.total > 0) text += ` (${s.running.done}/${s.running.total})`;
      if (s.queued > 0) text += `, ${s.queued} waiting`;
      setStatus(text);
    } catch (_) { /* the next poll tries again */ }
  }, 300);
  try {
    const r = await api(`/api/${command}`, body);
    setStatus(`${command} done in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    return r;
  } finally {
    clearInterval(timer);
  }
}

const plot = (kind, result, headTypes) => api(`/api/plot/${kind}`, headTypes ? { result, head_types: headTypes } : { result });

function setStatus(text) { $('status').textContent = text; }

function showError(e) {
  const box = $('error');
  box.textContent = String(e && e.message ? e.message : e);
  box.hidden = false;
  setStatus('');
}

function clearError() { $('error').hidden = true; $('error').textContent = ''; }

function metricOption() { return { kind: $('metric').value }; }
function methodOption() { return $('method').value === 'taylor' ? { kind: 'taylor' } : { kind: 'integrated_gradients', n_steps: 20 }; }

/// Puts an SVG from the server into `el`, with links to save it and the result.
function showPlot(el, svg, result, name) {
  el.innerHTML = svg;
  const bar = document.createElement('div');
  bar.className = 'downloads';
  for (const [label, data, type, ext] of [['SVG', svg, 'image/svg+xml', 'svg'], ['JSON', JSON.stringify(result, null, 2), 'application/json', 'json']]) {
    const a = document.createElement('a');
    a.textContent = `save ${label}`;
    a.download = `glassbox-${name}.${ext}`;
    a.href = URL.createObjectURL(new Blob([data], { type }));
    bar.appendChild(a);
  }
  el.appendChild(bar);
}

// ---- tabs ----------------------------------------------------------------------------------

function selectTab(name) {
  for (const b of document.querySelectorAll('#tabs button')) b.setAttribute('aria-selected', String(b.dataset.tab === name));
  for (const s of document.querySelectorAll('section.tab')) s.hidden = s.id !== `tab-${name}`;
  if (state.query) load(name).catch(showError);
}

/// Loads a tab's content for the current query once.
async function load(name) {
  const run = state.run;
  if (state.loaded[name]) return;
  state.loaded[name] = true;
  try {
    const loader = loaders[name];
    if (loader) await loader(run);
  } catch (e) {
    if (run === state.run) state.loaded[name] = false;
    throw e;
  }
}

const current = (run) => run === state.run;

const loaders = {
  async circuit() { /* filled by submit */ },
  async heatmap() { /* filled by submit */ },
  async attention() { /* filled by submit */ },
  async faithfulness() { /* filled by submit */ },
  async lens(run) {
    const r = await method('logit-lens', {});
    if (!current(run)) return;
    showPlot($('lens-plot'), await plot('logit-lens', r), r, 'logit-lens');
  },
  async patching(run) {
    const r = await method('patch', { options: { metric: metricOption() } });
    if (!current(run)) return;
    showPlot($('patching-plot'), await plot('patch', r), r, 'patch');
  },
  async edges(run) {
    const r = await method('edges', { options: { metric: metricOption(), top_k: 30 } });
    if (!current(run)) return;
    showPlot($('edges-plot'), await plot('edges', r), r, 'edges');
    const t = $('edges-table');
    t.replaceChildren(row('th', ['sender', 'receiver', 'score']));
    for (const e of r.top_edges) t.appendChild(row('td', [e.sender, e.receiver, e.score.toFixed(4)]));
  },
  async tokens(run) {
    const r = await method('token-attribution', {});
    if (!current(run)) return;
    showPlot($('tokens-plot'), await plot('token-attribution', r), r, 'token-attribution');
  },
  async composition(run) {
    const heads = (state.analysis ? state.analysis.circuit : []).map(headName);
    if (heads.length < 2) {
      $('composition-plot').textContent = `The circuit has ${heads.length} head${heads.length === 1 ? '' : 's'}; composition needs two or more.`;
      return;
    }
    const r = await method('composition', { heads });
    if (!current(run)) return;
    showPlot($('composition-plot'), await plot('composition', r), r, 'composition');
  },
};

function row(cell, values) {
  const tr = document.createElement('tr');
  for (const v of values) {
    const c = document.createElement(cell);
    c.textContent = v;
    tr.appendChild(c);
  }
  return tr;
}

// ---- the query -----------------------------------------------------------------------------

async function submit(ev) {
  ev.preventDefault();
  clearError();
  state.run += 1;
  const run = state.run;
  state.query = { prompt: $('prompt').value, correct: $('correct').value, incorrect: $('incorrect').value, corrupted: $('corrupted').value.trim() };
  state.analysis = null;
  state.loaded = { circuit: true, heatmap: true, attention: true, faithfulness: true };
  state.patterns = {};
  for (const id of ['circuit-plot', 'lens-plot', 'heatmap-plot', 'patching-plot', 'edges-plot', 'tokens-plot', 'attention-heatmap', 'attention-pattern', 'composition-plot']) $(id).replaceChildren();
  for (const id of ['circuit-list', 'edges-table', 'faithfulness-table']) $(id).replaceChildren();
  $('submit').disabled = true;
  try {
    const analysis = await method('analyze', { options: { method: methodOption(), metric: metricOption() } });
    if (!current(run)) return;
    state.analysis = analysis;
    const attribution = await method('attribution', { options: { method: methodOption(), metric: metricOption(), component: 'heads' } });
    if (!current(run)) return;
    state.attribution = attribution;
    const heat = await plot('attribution', attribution);
    if (!current(run)) return;
    showPlot($('heatmap-plot'), heat, attribution, 'attribution');
    $('attention-heatmap').innerHTML = heat;
    wireHeatmap($('attention-heatmap'));
    const circuit = analysis.circuit.map(headName);
    if (circuit.length > 0) {
      const types = await method('attention', { heads: circuit });
      if (!current(run)) return;
      state.headTypes = types.head_types || {};
    } else {
      state.headTypes = {};
    }
    showCircuit(analysis);
    showFaithfulness(analysis);
    showPlot($('circuit-plot'), await plot('analyze', analysis, state.headTypes), analysis, 'analyze');
    document.body.dataset.ready = String(run);
    const open = document.querySelector('#tabs button[aria-selected="true"]');
    if (open) selectTab(open.dataset.tab);
  } catch (e) {
    if (current(run)) showError(e);
  } finally {
    if (current(run)) $('submit').disabled = false;
  }
}

function showCircuit(a) {
  const list = $('circuit-list');
  list.replaceChildren();
  for (const h of a.circuit) {
    const name = headName(h);
    const li = document.createElement('li');
    li.dataset.head = name;
    const score = a.attributions[name];
    const type = state.headTypes[name];
    li.textContent = `${name}${type ? ` (${type.replaceAll('_', ' ')})` : ''}: attribution ${score === undefined ? '?' : score.toFixed(4)}`;
    list.appendChild(li);
  }
  if (a.circuit.length === 0) list.appendChild(Object.assign(document.createElement('li'), { textContent: 'no head is needed: the target is met with every head ablated' }));
}

function showFaithfulness(a) {
  const f = a.faithfulness;
  const pct = (x) => (x === null || x === undefined ? '—' : `${(100 * x).toFixed(1)}%`);
  const t = $('faithfulness-table');
  t.replaceChildren(row('th', ['measure', 'value']));
  const rows = [
    ['sufficiency (exact)', pct(f.sufficiency)],
    ['sufficiency (first-order Taylor estimate)', pct(f.taylor_sufficiency)],
    ['comprehensiveness', pct(f.comprehensiveness)],
    ['F1', pct(f.f1)],
    ['category', f.category],
    ['ablation', String(f.ablation)],
    ['circuit', `${a.circuit.length} heads${a.target_reached ? '' : ' (target not reached)'}`],
    [`clean ${a.metric}`, a.clean_ld.toFixed(4)],
    [`corrupted ${a.metric}`, a.corrupted_ld.toFixed(4)],
    ['metric with only the circuit', f.ld_circuit_only.toFixed(4)],
    ['metric with the circuit ablated', f.ld_circuit_ablated.toFixed(4)],
  ];
  for (const r of rows) t.appendChild(row('td', r));
}

// ---- attention patterns on hover -----------------------------------------------------------

let wanted = null;
let fetching = false;

function wireHeatmap(el) {
  const pick = (ev) => {
    const cell = ev.target.closest('rect.cell[data-head]');
    if (!cell) return;
    for (const c of el.querySelectorAll('rect.cell.hovered')) c.classList.remove('hovered');
    cell.classList.add('hovered');
    wanted = `L${cell.dataset.layer}H${cell.dataset.head}`;
    showPattern();
  };
  el.addEventListener('mouseover', pick);
  el.addEventListener('click', pick);
}

/// Shows the pattern of the head last hovered; one request at a time, the latest wins.
async function showPattern() {
  if (fetching || !wanted) return;
  const name = wanted;
  const run = state.run;
  const target = $('attention-pattern');
  if (state.patterns[name]) {
    target.innerHTML = state.patterns[name];
    target.dataset.head = name;
    return;
  }
  fetching = true;
  try {
    const r = await method('attention', { heads: [name] });
    const svg = await plot('attention', r);
    if (!current(run)) return;
    state.patterns[name] = svg;
    if (wanted === name) {
      target.innerHTML = svg;
      target.dataset.head = name;
    }
  } catch (e) {
    showError(e);
  } finally {
    fetching = false;
    if (wanted !== name) showPattern();
  }
}

// ---- start ---------------------------------------------------------------------------------

async function start() {
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => selectTab(b.dataset.tab));
  $('query').addEventListener('submit', submit);
  try {
    const info = await (await fetch('/api/info')).json();
    state.info = info;
    $('model-info').textContent = `${info.model}: ${info.architecture}, ${info.n_layers} layers × ${info.n_heads} heads (${info.n_kv_heads} key/value), d_model ${info.d_model}`;
  } catch (e) {
    showError(e);
  }
}

start();
