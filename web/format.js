// Number formatting and the five answer metrics with their interactive bar.

// The interactive bar of the original demo: first token under 1 s, and at least
// 10 tokens/s while decoding (at most 100 ms per token).
export const TTFT_BAR_S = 1;
export const DECODE_BAR_TPS = 10;

// Plain decimal notation with `sig` significant digits (never 1e-5 notation).
export function fmtNum(value, sig = 3) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return '–';
  const v = Number(value);
  if (v === 0) return '0';
  const abs = Math.abs(v);
  if (abs >= 1000) return Math.round(v).toLocaleString('en-US');
  const digits = Math.max(0, sig - 1 - Math.floor(Math.log10(abs)));
  return v.toFixed(Math.min(digits, 12)).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '');
}

export function fmtSeconds(s) {
  if (!Number.isFinite(s)) return '–';
  return s >= 10 ? s.toFixed(1) : s >= 1 ? s.toFixed(2) : fmtNum(s, 2);
}

export function fmtUsd(v) {
  if (!Number.isFinite(v)) return '–';
  return `$${v >= 1 ? v.toFixed(2) : fmtNum(v, 3)}`;
}

export function fmtSpeed(tps) {
  if (!Number.isFinite(tps)) return '–';
  return tps >= 100 ? Math.round(tps).toLocaleString('en-US') : fmtNum(tps, 3);
}

function ttftOk(m) {
  return m.interactive && typeof m.interactive.ttft_ok === 'boolean'
    ? m.interactive.ttft_ok : m.ttft_s < TTFT_BAR_S;
}

function decodeOk(m) {
  if (m.interactive && typeof m.interactive.decode_ok === 'boolean') return m.interactive.decode_ok;
  return m.decode_tokens_per_s >= DECODE_BAR_TPS;
}

// The whole answer against the bar: the first token within 1 s, then 100 ms per token.
function totalBudget(m) {
  const n = Math.max(0, (m.completion_tokens || 0) - 1);
  return TTFT_BAR_S + n / DECODE_BAR_TPS;
}

// The five metrics of one answer, labelled as in the original demo, each judged
// against the interactive bar. `bar` explains the judgement in words.
export function answerMetrics(m) {
  const budget = totalBudget(m);
  const inBudget = m.total_time_s <= budget;
  const batched = Number(m.instance_decode_tokens_per_s) > 0;
  const items = [
    {
      key: 'ttft', label: 'Time to first token (s)', value: fmtSeconds(m.ttft_s),
      ok: ttftOk(m), bar: `target under ${TTFT_BAR_S} s`,
    },
    {
      key: 'decode', label: 'Decode speed (tokens/s)', value: fmtSpeed(m.decode_tokens_per_s),
      ok: decodeOk(m), bar: `target at least ${DECODE_BAR_TPS} tokens/s`,
    },
    {
      key: 'cost1m', label: 'Cost to generate 1M tokens ($)', value: fmtNum(m.cost_per_million_tokens_usd, 3),
      ok: decodeOk(m),
      bar: batched && m.mean_batch_size > 1.05
        ? `its share of steps shared by ${fmtNum(m.mean_batch_size, 1)} streams`
        : `at ${fmtSpeed(m.decode_tokens_per_s)} tokens/s`,
    },
    {
      key: 'total', label: 'Total time (s)', value: fmtSeconds(m.total_time_s),
      ok: inBudget, bar: `budget ${fmtSeconds(budget)} s for ${m.completion_tokens ?? 0} tokens`,
    },
    {
      key: 'cost', label: 'Total cost ($)', value: fmtNum(m.total_cost_usd, 3),
      ok: inBudget, bar: `${m.instance || 'instance'} at $${fmtNum(m.price_per_hour_usd, 4)}/h`,
    },
  ];
  // Under batching the instance produces more than this one stream: show both.
  if (batched) {
    items.splice(2, 0, {
      key: 'instance', label: 'Instance throughput (tokens/s)', value: fmtSpeed(m.instance_decode_tokens_per_s),
      ok: true, bar: `all streams together (${fmtNum(m.mean_batch_size, 1)} per step)`,
    });
  }
  return items;
}

// A short human label for a backend: which one is the libtorch baseline.
export function backendLabel(backend) {
  switch (backend) {
    case 'int4': return 'int4 kernels';
    case 'bf16': return 'bf16 (libtorch baseline)';
    case 'fp32': return 'fp32 (libtorch baseline)';
    default: return backend || 'default';
  }
}
