// cpuchat page: chat, settings, theme, session dashboard. Wires the modules together.

import { listModels, listInstances, streamChat, describeError, health } from './api.js';
import { renderMarkdown, renderToolCalls, toolCallsInText } from './markdown.js';
import { metricsPanel, SessionStats, h } from './dashboard.js';
import { fmtNum, fmtSpeed, fmtSeconds, backendLabel } from './format.js';
import { Compare } from './compare.js';

const $ = (sel) => document.querySelector(sel);

const els = {
  messages: $('#messages'),
  empty: $('#empty-state'),
  banner: $('#banner'),
  composer: $('#composer'),
  input: $('#composer-input'),
  send: $('#send'),
  stop: $('#stop'),
  newChat: $('#new-chat'),
  model: $('#model'),
  modelNote: $('#model-note'),
  system: $('#system-prompt'),
  temperature: $('#temperature'),
  temperatureOut: $('#temperature-out'),
  maxTokens: $('#max-tokens'),
  instance: $('#instance'),
  price: $('#price'),
  instanceNote: $('#instance-note'),
  status: $('#status'),
  themeToggle: $('#theme-toggle'),
  sidebar: $('#sidebar'),
  sidebarToggle: $('#sidebar-toggle'),
  sidebarClose: $('#sidebar-close'),
  scrim: $('#scrim'),
  brandSub: $('#brand-sub'),
};

const state = {
  models: [],
  instances: [],
  history: [], // [{role, content}] without the system prompt
  controller: null,
  // Sent as X-Session-Id: a balancer hashes it so every turn reaches the replica that
  // holds this conversation's KV cache (deploy/nginx/cpuchat.conf). New chat, new id.
  sessionId: newSessionId(),
};

function newSessionId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

const session = new SessionStats($('#session-panel'));

// ---------------------------------------------------------------- persistence

const STORE = 'cpuchat.settings';
function loadSettings() {
  try { return JSON.parse(localStorage.getItem(STORE) || '{}') || {}; } catch { return {}; }
}
function saveSettings() {
  const s = {
    model: els.model.value,
    system: els.system.value,
    temperature: els.temperature.value,
    maxTokens: els.maxTokens.value,
    instance: els.instance.value,
    price: els.price.value,
  };
  try { localStorage.setItem(STORE, JSON.stringify(s)); } catch { /* storage disabled */ }
}
const saved = loadSettings();
if (typeof saved.system === 'string') els.system.value = saved.system;
if (saved.temperature) els.temperature.value = saved.temperature;
if (saved.maxTokens) els.maxTokens.value = saved.maxTokens;

// ---------------------------------------------------------------- announcements

function announce(text) {
  els.status.textContent = '';
  // A fresh text node makes screen readers announce a repeated message too.
  setTimeout(() => { els.status.textContent = text; }, 30);
}

// ---------------------------------------------------------------- theme

function currentTheme() {
  const t = document.documentElement.getAttribute('data-theme');
  if (t === 'light' || t === 'dark') return t;
  return window.matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}
function syncThemeButton() {
  const dark = currentTheme() === 'dark';
  els.themeToggle.setAttribute('aria-label', dark ? 'Switch to light theme' : 'Switch to dark theme');
  els.themeToggle.setAttribute('aria-pressed', String(dark));
}
els.themeToggle.addEventListener('click', () => {
  const next = currentTheme() === 'dark' ? 'light' : 'dark';
  document.documentElement.setAttribute('data-theme', next);
  try { localStorage.setItem('cpuchat.theme', next); } catch { /* ignore */ }
  syncThemeButton();
});
window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', syncThemeButton);
syncThemeButton();

// ---------------------------------------------------------------- tabs & sidebar

const tabs = [...document.querySelectorAll('[role="tab"]')];
function selectTab(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute('aria-selected', String(on));
    t.tabIndex = on ? 0 : -1;
    document.getElementById(t.getAttribute('aria-controls')).hidden = !on;
  }
  document.body.dataset.view = tab.id === 'tab-compare' ? 'compare' : 'chat';
}
for (const t of tabs) {
  t.addEventListener('click', () => selectTab(t));
  t.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
    const i = tabs.indexOf(t);
    const next = tabs[(i + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length];
    selectTab(next);
    next.focus();
  });
}

function setSidebar(open) {
  document.body.classList.toggle('sidebar-open', open);
  els.sidebarToggle.setAttribute('aria-expanded', String(open));
  els.scrim.hidden = !open;
  if (open) els.sidebarClose.focus();
}
els.sidebarToggle.addEventListener('click', () => setSidebar(!document.body.classList.contains('sidebar-open')));
els.sidebarClose.addEventListener('click', () => { setSidebar(false); els.sidebarToggle.focus(); });
els.scrim.addEventListener('click', () => setSidebar(false));
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && document.body.classList.contains('sidebar-open')) {
    setSidebar(false);
    els.sidebarToggle.focus();
  }
});

// ---------------------------------------------------------------- settings

els.temperature.addEventListener('input', () => {
  els.temperatureOut.textContent = Number(els.temperature.value).toFixed(2);
});
els.temperatureOut.textContent = Number(els.temperature.value).toFixed(2);
for (const el of [els.system, els.temperature, els.maxTokens, els.model]) el.addEventListener('change', saveSettings);

els.instance.addEventListener('change', () => {
  const inst = state.instances.find((i) => i.name === els.instance.value);
  if (inst) els.price.value = String(inst.price_per_hour_usd);
  describeInstance();
  saveSettings();
});
els.price.addEventListener('input', () => { describeInstance(); });
els.price.addEventListener('change', saveSettings);

function describeInstance() {
  const inst = state.instances.find((i) => i.name === els.instance.value);
  if (!inst) {
    els.instanceNote.textContent = els.instance.value === '' && state.instances.length === 0
      ? 'The server lists no instance presets; the price you enter is used.' : 'Custom price.';
    return;
  }
  const parts = [inst.cpu, inst.vcpus ? `${inst.vcpus} vCPUs` : null, inst.arch].filter(Boolean);
  const edited = Number(els.price.value) !== Number(inst.price_per_hour_usd);
  els.instanceNote.textContent = `${parts.join(' · ')}${edited ? ` — preset price $${inst.price_per_hour_usd}/h overridden` : ''}`;
}

function modelLabel(m) {
  return m.backend && !m.id.endsWith(m.backend) ? `${m.id} (${m.backend})` : m.id;
}

function describeModel() {
  const m = state.models.find((x) => x.id === els.model.value);
  if (!m) { els.modelNote.textContent = ''; return; }
  const parts = [backendLabel(m.backend), m.quant && m.quant !== m.backend ? m.quant : null, m.isa,
    m.threads ? `${m.threads} threads` : null, m.ctx ? `context ${m.ctx}` : null];
  els.modelNote.textContent = parts.filter(Boolean).join(' · ');
}
els.model.addEventListener('change', describeModel);

// Cost parameters sent with every request (extension fields).
function costParams() {
  const p = {};
  const inst = state.instances.find((i) => i.name === els.instance.value);
  if (inst) p.instance = inst.name;
  const price = Number(els.price.value);
  if (els.price.value !== '' && Number.isFinite(price) && price >= 0) p.price_per_hour = price;
  return p;
}

async function loadServerInfo() {
  let models;
  try {
    models = await listModels();
  } catch (err) {
    const { title, detail } = describeError(err);
    showBanner(`${title}: ${detail}`);
    setTimeout(loadServerInfo, 2000);
    return;
  }
  hideBanner();
  state.models = models;
  els.model.replaceChildren(...models.map((m) => new Option(modelLabel(m), m.id)));
  if (!models.length) els.model.append(new Option('(server default)', ''));
  if (saved.model && models.some((m) => m.id === saved.model)) els.model.value = saved.model;
  describeModel();
  const names = [...new Set(models.map((m) => m.id.replace(/-[^-]+$/, '')))];
  if (names.length) {
    els.brandSub.textContent = `${names.join(', ')} · ${models.length} backend${models.length === 1 ? '' : 's'} on CPU`;
  }
  compare.setModels(models);

  try {
    const { default: def, instances } = await listInstances();
    state.instances = instances;
    const opts = instances.map((i) => new Option(`${i.name} — $${fmtNum(i.price_per_hour_usd, 4)}/h`, i.name));
    opts.push(new Option('Custom price', ''));
    els.instance.replaceChildren(...opts);
    const pick = (saved.instance !== undefined && (saved.instance === '' || instances.some((i) => i.name === saved.instance)))
      ? saved.instance : (def || (instances[0] && instances[0].name) || '');
    els.instance.value = pick;
    const inst = instances.find((i) => i.name === pick);
    if (saved.price !== undefined && saved.price !== '' && saved.instance === pick) els.price.value = saved.price;
    else if (inst) els.price.value = String(inst.price_per_hour_usd);
  } catch {
    els.instance.replaceChildren(new Option('Custom price', ''));
  }
  describeInstance();
}

// ---------------------------------------------------------------- banner

function showBanner(text) {
  els.banner.textContent = text;
  els.banner.hidden = false;
}
function hideBanner() {
  els.banner.hidden = true;
}

// ---------------------------------------------------------------- conversation UI

function nearBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}
function scrollToBottom(force = false) {
  if (force || nearBottom()) els.messages.scrollTop = els.messages.scrollHeight;
}

function addUserBubble(text) {
  els.empty.hidden = true;
  const body = h('div', { class: 'bubble-body plain' });
  body.textContent = text; // never innerHTML for user text
  const row = h('div', { class: 'msg user' }, h('div', { class: 'bubble' }, body));
  els.messages.append(row);
  scrollToBottom(true);
  return row;
}

// An assistant bubble that fills while the answer streams.
class AssistantTurn {
  constructor() {
    this.body = h('div', { class: 'bubble-body markdown' });
    this.meta = h('div', { class: 'msg-meta' });
    this.bubble = h('div', { class: 'bubble streaming', 'aria-busy': 'true' },
      h('span', { class: 'sr-only', text: 'Assistant: ' }), this.body);
    this.row = h('div', { class: 'msg assistant' },
      h('div', { class: 'avatar', 'aria-hidden': 'true', text: 'AI' }),
      h('div', { class: 'msg-col' }, this.bubble, this.meta));
    this.text = '';
    this.calls = []; // tool calls streamed as delta.tool_calls: [{id, name, arguments}]
    this.pending = false;
    this.body.append(h('span', { class: 'typing', 'aria-label': 'Waiting for the first token' },
      h('i'), h('i'), h('i')));
    els.messages.append(this.row);
    scrollToBottom(true);
  }

  append(text) {
    this.text += text;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => this.flush());
  }

  toolCall(ev) {
    const call = this.calls[ev.index] || (this.calls[ev.index] = { id: null, name: '', arguments: '' });
    if (ev.id) call.id = ev.id;
    if (ev.name) call.name = ev.name;
    call.arguments += ev.arguments || '';
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => this.flush());
  }

  // Text, or tool calls as blocks (streamed ones, or a call the model wrote as text).
  html() {
    const inText = this.calls.length ? null : toolCallsInText(this.text);
    if (inText) return renderToolCalls(inText);
    return renderMarkdown(this.text) + renderToolCalls(this.calls.filter(Boolean)); // both escape
  }

  flush() {
    this.pending = false;
    const stick = nearBottom();
    this.body.innerHTML = this.html();
    if (stick) scrollToBottom(true);
  }

  end() {
    this.pending = false;
    if (this.text || this.calls.length) this.body.innerHTML = this.html();
    else this.body.replaceChildren();
    this.bubble.classList.remove('streaming');
    this.bubble.setAttribute('aria-busy', 'false');
  }

  finish(reason, metrics) {
    this.end();
    if (!this.text && !this.calls.length) this.body.append(h('em', { class: 'muted', text: '(empty answer)' }));
    if (reason === 'length') {
      this.meta.append(h('span', { class: 'tag', text: 'Reached the max tokens limit' }));
    }
    if (metrics) {
      this.row.querySelector('.msg-col').append(metricsPanel(metrics));
    } else {
      this.meta.append(h('span', { class: 'tag', text: 'The server sent no metrics for this answer' }));
    }
    scrollToBottom();
  }

  stopped() {
    this.end();
    if (!this.text) this.body.append(h('em', { class: 'muted', text: 'Stopped before the first token.' }));
    this.bubble.classList.add('was-stopped');
    this.meta.append(h('span', { class: 'tag stopped', text: '■ Stopped — generation cancelled' }));
    scrollToBottom();
  }

  error(title, detail) {
    this.end();
    if (!this.text) this.bubble.classList.add('empty');
    this.row.classList.add('has-error');
    const box = h('div', { class: 'error-box', role: 'alert' },
      h('span', { class: 'error-icon', 'aria-hidden': 'true', text: '!' }),
      h('div', {}, h('strong', { text: title }), h('p', { text: detail })));
    this.row.querySelector('.msg-col').append(box);
    scrollToBottom(true);
  }
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.composer.classList.toggle('busy', busy);
  document.body.classList.toggle('generating', busy);
}

function buildMessages(userText) {
  const msgs = [];
  const sys = els.system.value.trim();
  if (sys) msgs.push({ role: 'system', content: sys });
  msgs.push(...state.history, { role: 'user', content: userText });
  return msgs;
}

async function sendMessage(text) {
  if (state.controller) return;
  const prompt = text.trim();
  if (!prompt) return;
  els.input.value = '';
  autosize();
  addUserBubble(prompt);
  const turn = new AssistantTurn();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  announce('Generating an answer…');

  const params = {
    messages: buildMessages(prompt),
    temperature: Number(els.temperature.value),
    max_tokens: Math.max(1, Math.floor(Number(els.maxTokens.value) || 256)),
    ...costParams(),
  };
  if (els.model.value) params.model = els.model.value;

  let gotFinish = false;
  try {
    for await (const ev of streamChat(params, { signal: controller.signal, sessionId: state.sessionId })) {
      if (ev.type === 'delta') turn.append(ev.text);
      else if (ev.type === 'tool_call') turn.toolCall(ev);
      else if (ev.type === 'finish') {
        gotFinish = true;
        turn.finish(ev.reason, ev.metrics);
        if (ev.metrics) {
          session.add(ev.metrics);
          const m = ev.metrics;
          announce(`Answer complete: ${m.completion_tokens} tokens at ${fmtSpeed(m.decode_tokens_per_s)} tokens per second, first token after ${fmtSeconds(m.ttft_s)} seconds.`);
        } else {
          announce('Answer complete.');
        }
      }
    }
    if (!gotFinish) turn.finish(null, null);
    state.history.push({ role: 'user', content: prompt }, { role: 'assistant', content: turn.text });
  } catch (err) {
    if (err && err.name === 'AbortError') {
      turn.stopped();
      if (turn.text) state.history.push({ role: 'user', content: prompt }, { role: 'assistant', content: turn.text });
      announce('Generation stopped.');
    } else {
      const { title, detail } = describeError(err);
      turn.error(title, detail);
      announce(`${title}. ${detail}`);
      // The failed turn is not kept in the history; give the text back to retry.
      if (!els.input.value) { els.input.value = prompt; autosize(); }
    }
  } finally {
    state.controller = null;
    setBusy(false);
    els.input.focus();
  }
}

function stopGeneration() {
  if (state.controller) state.controller.abort();
}

function newChat() {
  stopGeneration();
  state.history = [];
  state.sessionId = newSessionId();
  for (const n of [...els.messages.children]) if (n !== els.empty) n.remove();
  els.empty.hidden = false;
  session.reset();
  els.input.focus();
  announce('New chat started.');
}

// ---------------------------------------------------------------- composer

function autosize() {
  els.input.style.height = 'auto';
  els.input.style.height = `${Math.min(els.input.scrollHeight, 200)}px`;
}
els.input.addEventListener('input', autosize);
els.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!state.controller) sendMessage(els.input.value);
  }
});
els.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  sendMessage(els.input.value);
});
els.stop.addEventListener('click', stopGeneration);
els.newChat.addEventListener('click', newChat);
for (const chip of document.querySelectorAll('#suggestions .chip')) {
  chip.addEventListener('click', () => sendMessage(chip.textContent));
}

// ---------------------------------------------------------------- compare

const compare = new Compare({ costParams, announce });

// ---------------------------------------------------------------- start

loadServerInfo();
health().then((hres) => {
  if (!hres.ok && hres.status === 'loading') showBanner('The server is loading the model…');
});
els.input.focus();

// For tests and debugging: a read-only view of the page state.
window.cpuchat = { state, session };
