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

/// The input keys `command` reads (from the method catalog in /api/info).
function inputKeys(command) {
  const m = (state.info && state.info.methods || []).find((d) => d.name === command);
  return m ? m.input_fields.map((f) => f.name) : ['prompt', 'correct', 'incorrect', 'corrupted'];
}

/// Runs a method on the current query, showing its progress (polled from /api/status) while
/// it runs; resolves to its envelope's result (the whole envelope is `lastEnvelope`).
async function method(command, extra) {
  const env = await runMethod(command, queryInput(command), extra || {});
  return env.result;
}

/// The current query as `command`'s input.
function queryInput(command) {
  const q = state.query;
  const keys = inputKeys(command);
  const input = {};
  for (const k of ['prompt', 'correct', 'incorrect', 'corrupted']) if (keys.includes(k) && q[k]) input[k] = q[k];
  return input;
}

/// Runs `command` on `input` with `extra` (`{options: ...}`): its envelope; warnings shown.
async function runMethod(command, input, extra) {
  const body = Object.assign({}, input, extra || {});
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
    const env = await api(`/api/${command}`, body);
    setStatus(`${command} done in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    showWarnings(env.warnings || []);
    state.lastEnvelope = env;
    return env;
  } finally {
    clearInterval(timer);
  }
}

const plot = (kind, result) => api(`/api/plot/${kind}`, { result });
const report = (kind, result) => api(`/api/report/${kind}`, { result });

function showWarnings(list) {
  const box = $('warnings');
  box.replaceChildren(...list.map((w) => Object.assign(document.createElement('li'), { textContent: w })));
  box.hidden = list.length === 0;
}

function setStatus(text) { $('status').textContent = text; }

function showError(e) {
  const box = $('error');
  box.textContent = String(e && e.message ? e.message : e);
  box.hidden = false;
  setStatus('');
}

function clearError() { $('error').hidden = true; $('error').textContent = ''; }

function metricOption() { return $('metric').value; }
function methodOption() { return $('method').value; }

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
    const r = await method('composition', { options: { heads } });
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
    state.headTypes = analysis.head_types || {};
    showCircuit(analysis);
    showFaithfulness(analysis.faithfulness, analysis);
    $('circuit-edit').value = analysis.circuit.map(headName).join(' ');
    showPlot($('circuit-plot'), await plot('analyze', analysis), analysis, 'analyze');
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

function showFaithfulness(f, a) {
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
    ['circuit', a ? `${a.circuit.length} heads${a.target_reached ? '' : ' (target not reached)'}` : `${f.circuit_heads} heads (edited)`],
    ['clean metric', f.clean_ld.toFixed(4)],
    ['metric with everything ablated', f.ld_all_ablated.toFixed(4)],
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
    const r = await method('attention', { options: { heads: [name] } });
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

// ---- the circuit, edited ------------------------------------------------------------------

/// Re-scores the circuit typed in the editor (heads such as L9H6, separated by spaces or
/// commas): its exact faithfulness by the `faithfulness` method.
async function rescore() {
  clearError();
  const heads = $('circuit-edit').value.split(/[\s,]+/).filter((h) => h);
  try {
    const f = await method('faithfulness', { options: { heads, metric: metricOption() } });
    f.circuit_heads = heads.length;
    showFaithfulness(f, null);
    $('circuit-score').textContent = `edited circuit (${heads.length} heads): sufficiency ${(100 * f.sufficiency).toFixed(1)}%, comprehensiveness ${(100 * f.comprehensiveness).toFixed(1)}%, F1 ${(100 * f.f1).toFixed(1)}% (${f.category})`;
    document.body.dataset.rescored = String(heads.length);
  } catch (e) {
    showError(e);
  }
}

// ---- every method, with forms made from the catalog -----------------------------------------

/// The form control of one option field (from its schema).
function control(field) {
  const k = field.kind;
  const inner = k.type === 'optional' ? k.value : k;
  let el;
  if (inner.type === 'choice') {
    el = document.createElement('select');
    if (k.type === 'optional') el.appendChild(Object.assign(document.createElement('option'), { value: '', textContent: '(none)' }));
    for (const v of inner.values) el.appendChild(Object.assign(document.createElement('option'), { value: v.name, textContent: v.name, title: v.help }));
  } else if (inner.type === 'boolean') {
    el = Object.assign(document.createElement('input'), { type: 'checkbox' });
  } else {
    el = Object.assign(document.createElement('input'), { type: inner.type === 'integer' || inner.type === 'number' ? 'number' : 'text' });
    if (inner.type === 'number') el.step = 'any';
    if (inner.type === 'list') el.placeholder = 'comma-separated';
    if (inner.format) el.placeholder = inner.format;
  }
  el.dataset.field = field.name;
  el.dataset.kind = inner.type;
  el.dataset.optional = String(k.type === 'optional');
  const d = field.default;
  if (el.type === 'checkbox') el.checked = d === true;
  else if (Array.isArray(d)) el.value = d.join(', ');
  else if (d !== null && d !== undefined) el.value = String(d);
  return el;
}

/// The options a generated form holds: only the fields changed from their defaults.
function formOptions(form, entry) {
  const out = {};
  for (const f of entry.options) {
    const el = form.querySelector(`[data-field="${f.name}"]`);
    if (!el) continue;
    let v;
    if (el.type === 'checkbox') v = el.checked;
    else if (el.value.trim() === '') v = el.dataset.optional === 'true' ? null : undefined;
    else if (el.dataset.kind === 'integer') v = parseInt(el.value, 10);
    else if (el.dataset.kind === 'number') v = parseFloat(el.value);
    else if (el.dataset.kind === 'list') v = el.value.split(/[\s,]+/).filter((x) => x);
    else v = el.value;
    if (v !== undefined && JSON.stringify(v) !== JSON.stringify(f.default)) out[f.name] = v;
  }
  return out;
}

function showMethodForm() {
  const entry = state.info.methods.find((m) => m.name === $('method-pick').value);
  const form = $('method-form');
  form.replaceChildren();
  $('method-summary').textContent = entry.summary;
  const set = entry.input_fields.some((f) => f.name === 'task');
  $('method-input').textContent = `input: ${entry.input.replaceAll('_', ' ')}${set ? ' (the prompt above, or a generated set)' : ''}`;
  $('method-task').hidden = !set;
  for (const f of entry.options) {
    const label = Object.assign(document.createElement('label'), { title: f.help });
    label.append(`${f.name.replaceAll('_', ' ')} `, control(f));
    form.appendChild(label);
  }
}

async function runPicked() {
  clearError();
  const entry = state.info.methods.find((m) => m.name === $('method-pick').value);
  const q = { prompt: $('prompt').value, correct: $('correct').value, incorrect: $('incorrect').value, corrupted: $('corrupted').value.trim() };
  const input = {};
  const useSet = !$('method-task').hidden && $('use-task').checked;
  if (useSet) {
    input.task = $('task-name').value;
    input.n = parseInt($('task-n').value, 10);
    input.seed = parseInt($('task-seed').value, 10);
  } else {
    for (const f of entry.input_fields) if (q[f.name]) input[f.name] = q[f.name];
  }
  const out = $('method-output');
  out.replaceChildren();
  try {
    const env = await runMethod(entry.name, input, { options: formOptions($('method-form'), entry) });
    const text = await report(entry.name, env.result);
    out.appendChild(Object.assign(document.createElement('pre'), { className: 'report', textContent: text }));
    if (entry.plots) {
      const div = Object.assign(document.createElement('div'), { className: 'plot' });
      out.appendChild(div);
      showPlot(div, await plot(entry.name, env.result), env, entry.name);
    }
    document.body.dataset.methodDone = entry.name;
  } catch (e) {
    showError(e);
  }
}

// ---- start ---------------------------------------------------------------------------------

async function start() {
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => selectTab(b.dataset.tab));
  $('query').addEventListener('submit', submit);
  $('rescore').addEventListener('click', rescore);
  $('method-pick').addEventListener('change', showMethodForm);
  $('method-run').addEventListener('click', runPicked);
  try {
    const info = await (await fetch('/api/info')).json();
    state.info = info;
    $('model-info').textContent = `${info.model}: ${info.architecture}, ${info.n_layers} layers × ${info.n_heads} heads (${info.n_kv_heads} key/value), d_model ${info.d_model}`;
    const pick = $('method-pick');
    for (const m of info.methods) pick.appendChild(Object.assign(document.createElement('option'), { value: m.name, textContent: m.name, title: m.summary }));
    showMethodForm();
  } catch (e) {
    showError(e);
  }
}

start();
