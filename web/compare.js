// Before/after: the same prompt on the libtorch baseline and on the int4 kernels, one
// after the other (temperature 0, same seed), side by side with bar charts.

import { streamChat, describeError } from './api.js';
import { renderMarkdown } from './markdown.js';
import { compareChart } from './charts.js';
import { answerMetrics, backendLabel, fmtNum, fmtSpeed, fmtSeconds } from './format.js';
import { h } from './dashboard.js';

const $ = (sel) => document.querySelector(sel);

const START_HINT = 'cpuchat serve --model PATH --backend int4,bf16';

function pickDefaults(models) {
  const base = models.find((m) => m.backend === 'bf16') || models.find((m) => m.backend === 'fp32') ||
    models.find((m) => m.backend !== 'int4') || models[0];
  const after = models.find((m) => m.backend === 'int4' && m !== base) || models.find((m) => m !== base);
  return { before: base, after };
}

export class Compare {
  constructor({ costParams, announce }) {
    this.costParams = costParams;
    this.announce = announce;
    this.models = [];
    this.controller = null;
    this.el = {
      form: $('#compare-form'),
      prompt: $('#compare-prompt'),
      before: $('#compare-before'),
      after: $('#compare-after'),
      maxTokens: $('#compare-max-tokens'),
      seed: $('#compare-seed'),
      run: $('#compare-run'),
      stop: $('#compare-stop'),
      notice: $('#compare-notice'),
      status: $('#compare-status'),
      results: $('#compare-results'),
      summary: $('#compare-summary'),
      speed: $('#compare-chart-speed'),
      ttft: $('#compare-chart-ttft'),
      colBefore: $('#compare-col-before'),
      colAfter: $('#compare-col-after'),
    };
    this.el.form.addEventListener('submit', (e) => { e.preventDefault(); this.run(); });
    this.el.stop.addEventListener('click', () => this.controller && this.controller.abort());
    this.el.prompt.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.run(); }
    });
  }

  setModels(models) {
    this.models = models;
    const opts = () => models.map((m) => new Option(m.id, m.id));
    this.el.before.replaceChildren(...opts());
    this.el.after.replaceChildren(...opts());
    const { before, after } = pickDefaults(models);
    if (before) this.el.before.value = before.id;
    if (after) this.el.after.value = after.id;

    const notice = this.el.notice;
    notice.replaceChildren();
    const backends = new Set(models.map((m) => m.backend));
    if (models.length < 2) {
      notice.append(
        h('strong', { text: 'Only one backend is loaded. ' }),
        'To compare the libtorch baseline with the int4 kernels, start the server with both:',
        h('code', { class: 'cmd', text: START_HINT }));
      notice.hidden = false;
      this.el.run.disabled = true;
    } else if (!backends.has('int4')) {
      notice.append(
        h('strong', { text: 'The int4 backend is not loaded; ' }),
        `comparing ${[...backends].join(' and ')} instead. For the int4 kernels start the server with:`,
        h('code', { class: 'cmd', text: START_HINT }));
      notice.hidden = false;
      this.el.run.disabled = false;
    } else {
      notice.hidden = true;
      this.el.run.disabled = false;
    }
  }

  column(col, title, model) {
    const m = this.models.find((x) => x.id === model);
    const body = h('div', { class: 'compare-answer markdown streaming', 'aria-busy': 'true' });
    const stats = h('div', { class: 'compare-stats' });
    col.replaceChildren(
      h('header', { class: 'compare-col-head' },
        h('span', { class: 'compare-role', text: title }),
        h('span', { class: 'compare-model', text: m ? `${m.id} · ${backendLabel(m.backend)}` : model })),
      body, stats);
    col.classList.remove('winner');
    return { body, stats };
  }

  async runOne(col, title, model, params) {
    const { body, stats } = this.column(col, title, model);
    body.append(h('span', { class: 'muted', text: 'Waiting…' }));
    let text = '';
    let metrics = null;
    let raf = 0;
    const paint = () => { raf = 0; body.innerHTML = renderMarkdown(text); };
    try {
      for await (const ev of streamChat({ ...params, model }, { signal: this.controller.signal })) {
        if (ev.type === 'delta') {
          text += ev.text;
          if (!raf) raf = requestAnimationFrame(paint);
        } else if (ev.type === 'finish') {
          metrics = ev.metrics;
        }
      }
    } finally {
      if (raf) cancelAnimationFrame(raf);
      body.innerHTML = renderMarkdown(text);
      body.classList.remove('streaming');
      body.setAttribute('aria-busy', 'false');
    }
    if (metrics) {
      const list = h('dl', { class: 'compare-metrics' });
      for (const it of answerMetrics(metrics)) {
        list.append(h('div', { class: `metric ${it.ok ? 'ok' : 'bad'}`, 'data-metric': it.key },
          h('dt', { text: it.label }),
          h('dd', {}, h('span', { class: 'metric-value', text: it.value }),
            h('span', { class: 'metric-icon', 'aria-label': it.ok ? 'interactive' : 'too slow', text: it.ok ? ' ✓' : ' ✗' }))));
      }
      stats.append(list);
    } else {
      stats.append(h('p', { class: 'muted', text: 'No metrics were returned.' }));
    }
    return { model, metrics, text };
  }

  async run() {
    if (this.controller || this.el.run.disabled) return;
    const prompt = this.el.prompt.value.trim();
    if (!prompt) { this.el.prompt.focus(); return; }
    const before = this.el.before.value;
    const after = this.el.after.value;
    const params = {
      messages: [{ role: 'user', content: prompt }],
      temperature: 0,
      seed: Math.floor(Number(this.el.seed.value) || 0),
      max_tokens: Math.max(1, Math.floor(Number(this.el.maxTokens.value) || 128)),
      ...this.costParams(),
    };
    this.controller = new AbortController();
    this.el.run.hidden = true;
    this.el.stop.hidden = false;
    this.el.results.hidden = false;
    this.el.summary.replaceChildren();
    this.el.speed.replaceChildren();
    this.el.ttft.replaceChildren();
    this.el.colAfter.replaceChildren(h('p', { class: 'muted', text: 'Runs after the baseline finishes.' }));
    this.el.colBefore.replaceChildren();
    document.body.classList.add('comparing');
    try {
      this.setStatus(`Running the baseline (${before})…`);
      const a = await this.runOne(this.el.colBefore, 'Before', before, params);
      this.setStatus(`Running ${after}…`);
      const b = await this.runOne(this.el.colAfter, 'After', after, params);
      this.showResults(a, b);
      this.setStatus('Comparison complete.');
      this.announce('Comparison complete.');
    } catch (err) {
      if (err && err.name === 'AbortError') {
        this.setStatus('Comparison stopped.');
      } else {
        const { title, detail } = describeError(err);
        this.setStatus(`${title}: ${detail}`, true);
      }
    } finally {
      this.controller = null;
      this.el.run.hidden = false;
      this.el.stop.hidden = true;
      document.body.classList.remove('comparing');
    }
  }

  setStatus(text, isError = false) {
    this.el.status.textContent = text;
    this.el.status.classList.toggle('error', isError);
  }

  showResults(a, b) {
    if (!a.metrics || !b.metrics) {
      this.el.summary.textContent = 'The server returned no metrics, so there is nothing to chart.';
      return;
    }
    const ma = a.metrics;
    const mb = b.metrics;
    const label = (m, id) => (m.backend || id.replace(/^.*-/, ''));
    const la = label(ma, a.model);
    const lb = label(mb, b.model);
    compareChart(this.el.speed, [
      { label: la, value: ma.decode_tokens_per_s, display: fmtSpeed(ma.decode_tokens_per_s), className: 'before' },
      { label: lb, value: mb.decode_tokens_per_s, display: fmtSpeed(mb.decode_tokens_per_s), className: 'after' },
    ], { title: 'Decode speed (tokens/s)', note: 'higher is better' });
    compareChart(this.el.ttft, [
      { label: la, value: ma.ttft_s, display: `${fmtSeconds(ma.ttft_s)} s`, className: 'before' },
      { label: lb, value: mb.ttft_s, display: `${fmtSeconds(mb.ttft_s)} s`, className: 'after' },
    ], { title: 'Time to first token (s)', note: 'lower is better' });

    const speedup = mb.decode_tokens_per_s / ma.decode_tokens_per_s;
    const ttftRatio = ma.ttft_s / mb.ttft_s;
    const costRatio = ma.cost_per_million_tokens_usd / mb.cost_per_million_tokens_usd;
    const ratio = (r) => (Number.isFinite(r) ? `${fmtNum(r >= 1 ? r : 1 / r, 3)}×` : '–');
    const same = a.text === b.text;
    this.el.summary.replaceChildren(
      h('div', { class: 'big-stat' }, h('span', { class: 'big-value', text: ratio(speedup) }),
        h('span', { class: 'big-label', text: `${speedup >= 1 ? 'faster' : 'slower'} decoding: ${lb} vs ${la} (${fmtSpeed(ma.decode_tokens_per_s)} → ${fmtSpeed(mb.decode_tokens_per_s)} tokens/s)` })),
      h('div', { class: 'big-stat' }, h('span', { class: 'big-value', text: ratio(ttftRatio) }),
        h('span', { class: 'big-label', text: `${ttftRatio >= 1 ? 'faster' : 'slower'} first token (${fmtSeconds(ma.ttft_s)} s → ${fmtSeconds(mb.ttft_s)} s)` })),
      h('div', { class: 'big-stat' }, h('span', { class: 'big-value', text: ratio(costRatio) }),
        h('span', { class: 'big-label', text: `${costRatio >= 1 ? 'cheaper' : 'more expensive'} per 1M tokens ($${fmtNum(ma.cost_per_million_tokens_usd)} → $${fmtNum(mb.cost_per_million_tokens_usd)})` })),
      h('p', { class: 'compare-same muted', text: same ? 'Both backends produced the same text.' : 'The two answers differ: the backends round numbers differently (quantization, precision).' }));
    const winner = speedup >= 1 ? this.el.colAfter : this.el.colBefore;
    winner.classList.add('winner');
  }
}
