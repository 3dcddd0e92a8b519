// Small inline-SVG charts, drawn with DOM calls (all text goes through textContent).

const SVG_NS = 'http://www.w3.org/2000/svg';

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function compact(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(v < 10 ? 1 : 0)}`;
}

// Vertical bars: tokens/s of each answer in the session, with the interactive bar as
// a dashed line. points: [{value, ok, label}]
export function sessionChart(svg, points, { threshold = 10, unit = 'tokens/s' } = {}) {
  svg.replaceChildren();
  const W = 320;
  const H = 150;
  const pad = { l: 40, r: 10, t: 14, b: 24 };
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  const iw = W - pad.l - pad.r;
  const ih = H - pad.t - pad.b;
  const max = niceMax(Math.max(threshold * 1.2, ...points.map((p) => p.value || 0)));
  const y = (v) => pad.t + ih - (Math.max(0, v) / max) * ih;

  const desc = points.length
    ? `${unit} per answer: ${points.map((p, i) => `answer ${i + 1}: ${compact(p.value)}`).join(', ')}`
    : `No answers yet`;
  svg.append(el('title', {}, desc));

  if (!points.length) {
    svg.append(el('line', { x1: pad.l, x2: W - pad.r, y1: pad.t + ih, y2: pad.t + ih, class: 'grid' }));
    svg.append(el('text', { x: pad.l + iw / 2, y: pad.t + ih / 2, 'text-anchor': 'middle', class: 'empty' },
      'No answers yet'));
    return;
  }
  for (const f of [0, 0.5, 1]) {
    const gy = y(max * f);
    svg.append(el('line', { x1: pad.l, x2: W - pad.r, y1: gy, y2: gy, class: 'grid' }));
    svg.append(el('text', { x: pad.l - 6, y: gy + 4, 'text-anchor': 'end', class: 'axis' }, compact(max * f)));
  }
  const ty = y(threshold);
  svg.append(el('line', { x1: pad.l, x2: W - pad.r, y1: ty, y2: ty, class: 'threshold' }));
  svg.append(el('text', { x: W - pad.r, y: ty - 4, 'text-anchor': 'end', class: 'axis threshold-label' },
    `${threshold} ${unit}`));

  const n = Math.max(points.length, 6);
  const slot = iw / n;
  const bw = Math.min(28, slot * 0.7);
  const step = Math.ceil(points.length / 12);
  points.forEach((p, i) => {
    const cx = pad.l + slot * i + slot / 2;
    const top = y(p.value || 0);
    const bar = el('rect', {
      x: cx - bw / 2, y: top, width: bw, height: Math.max(1, pad.t + ih - top), rx: 3,
      class: p.ok ? 'bar ok' : 'bar bad',
    });
    bar.append(el('title', {}, `Answer ${i + 1}: ${compact(p.value)} ${unit}`));
    svg.append(bar);
    if (i % step === 0) {
      svg.append(el('text', { x: cx, y: H - 8, 'text-anchor': 'middle', class: 'axis' }, `#${i + 1}`));
    }
  });
}

// Horizontal bars comparing a few values. items: [{label, value, display, className}]
export function compareChart(svg, items, { title = '', note = '' } = {}) {
  svg.replaceChildren();
  const W = 360;
  const rowH = 34;
  const pad = { l: 64, r: 70, t: 8, b: 8 };
  const H = pad.t + pad.b + rowH * Math.max(1, items.length);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  svg.append(el('title', {},
    `${title}${note ? ` (${note})` : ''}: ${items.map((it) => `${it.label} ${it.display}`).join(', ')}`));
  const max = Math.max(...items.map((it) => (Number.isFinite(it.value) ? it.value : 0)), 1e-9);
  const iw = W - pad.l - pad.r;
  items.forEach((it, i) => {
    const top = pad.t + i * rowH;
    const cy = top + rowH / 2;
    svg.append(el('text', { x: pad.l - 8, y: cy + 4, 'text-anchor': 'end', class: 'label' }, it.label));
    svg.append(el('rect', { x: pad.l, y: top + 7, width: iw, height: rowH - 14, rx: 4, class: 'track' }));
    const w = Number.isFinite(it.value) ? Math.max(2, (it.value / max) * iw) : 0;
    svg.append(el('rect', { x: pad.l, y: top + 7, width: w, height: rowH - 14, rx: 4, class: `bar ${it.className || ''}` }));
    svg.append(el('text', { x: W - 2, y: cy + 4, 'text-anchor': 'end', class: 'value' }, it.display));
  });
}
