// The metrics panel shown after each answer, and the session panel (speed chart and
// running cost).

import { answerMetrics, fmtNum, fmtUsd, fmtSpeed, DECODE_BAR_TPS, backendLabel } from './format.js';
import { sessionChart } from './charts.js';

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// A panel with the five metrics of one answer. Each metric says pass/fail in words and
// with an icon, not only by colour.
export function metricsPanel(m) {
  const items = answerMetrics(m);
  const list = h('dl', { class: 'metrics-grid' });
  for (const it of items) {
    list.append(h('div', { class: `metric ${it.ok ? 'ok' : 'bad'}`, 'data-metric': it.key },
      h('dt', { text: it.label }),
      h('dd', {},
        h('span', { class: 'metric-value', text: it.value }),
        h('span', { class: 'metric-status', title: it.bar },
          h('span', { class: 'metric-icon', 'aria-hidden': 'true', text: it.ok ? '✓' : '✗' }),
          h('span', { text: it.ok ? 'Interactive' : 'Too slow' })),
        h('span', { class: 'metric-bar', text: it.bar }))));
  }
  const allOk = items[0].ok && items[1].ok;
  const who = [m.model, m.backend ? backendLabel(m.backend) : null].filter(Boolean).join(' · ');
  const tokens = `${m.completion_tokens ?? '?'} tokens, prompt ${m.prompt_tokens ?? '?'}`;
  const header = h('div', { class: 'metrics-head' },
    h('span', { class: `verdict ${allOk ? 'ok' : 'bad'}` },
      h('span', { 'aria-hidden': 'true', text: allOk ? '✓ ' : '✗ ' }),
      allOk ? 'Interactive speed' : 'Slower than interactive'),
    h('span', { class: 'metrics-who', text: `${who}${who ? ' · ' : ''}${tokens}` }));
  return h('section', { class: 'metrics-panel', 'aria-label': 'Answer metrics' }, header, list);
}

// Session totals, the tokens/s chart and the running cost.
export class SessionStats {
  constructor(root) {
    this.root = root;
    this.svg = root.querySelector('#session-chart');
    this.costEl = root.querySelector('#session-cost');
    this.answersEl = root.querySelector('#session-answers');
    this.tokensEl = root.querySelector('#session-tokens');
    this.avgEl = root.querySelector('#session-speed');
    this.reset();
  }

  reset() {
    this.points = [];
    this.cost = 0;
    this.tokens = 0;
    this.render();
  }

  add(m) {
    this.points.push({ value: Number(m.decode_tokens_per_s) || 0, ok: m.decode_tokens_per_s >= DECODE_BAR_TPS });
    this.cost += Number(m.total_cost_usd) || 0;
    this.tokens += Number(m.completion_tokens) || 0;
    this.render();
  }

  render() {
    sessionChart(this.svg, this.points, { threshold: DECODE_BAR_TPS });
    this.costEl.textContent = this.points.length ? fmtUsd(this.cost) : '$0';
    this.answersEl.textContent = String(this.points.length);
    this.tokensEl.textContent = fmtNum(this.tokens, 4);
    const avg = this.points.length ? this.points.reduce((a, p) => a + p.value, 0) / this.points.length : NaN;
    this.avgEl.textContent = Number.isFinite(avg) ? fmtSpeed(avg) : '–';
  }
}

export { h };
