#!/usr/bin/env node
// A tiny stand-in for `cpuchat serve`, implementing the subset of docs/API.md the page
// uses, so the page can be developed before the real server works. Not used by CTest.
//
//   node tests/web/mock_server.mjs [--port 0] [--backends int4,bf16] [--delay-ms 25]
//
// Prints "listening on http://127.0.0.1:PORT" like the real binary. Special prompts:
//   __429__  -> 429 queue full (Retry-After: 3)      __500__ -> 500 internal error
//   __drop__ -> a few tokens, then the connection is destroyed (server gone mid-stream)
//   a prompt over the context size (512 "tokens" ~ words) -> 400 context overflow
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const webDir = path.resolve(here, '../../web');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : def;
}
const port = Number(arg('port', '0'));
const backends = arg('backends', 'int4,bf16').split(',').filter(Boolean);
const baseDelay = Number(arg('delay-ms', '25'));
const CTX = 512;
const NAME = 'stories260K';

const models = backends.map((b) => ({
  id: `${NAME}-${b}`, object: 'model', created: 0, owned_by: 'cpuchat', backend: b,
  quant: b === 'int4' ? 'q4g32' : b, isa: 'avx512vnni', threads: 2, ctx: CTX, format: 'hf',
}));
const instances = {
  default: 'r8g.4xlarge',
  instances: [
    { name: 'r8g.4xlarge', price_per_hour_usd: 0.9424, vcpus: 16, arch: 'arm64', cpu: 'Graviton4' },
    { name: 'c7i.2xlarge', price_per_hour_usd: 0.357, vcpus: 8, arch: 'x86_64', cpu: 'Sapphire Rapids' },
    { name: 'c7g.xlarge', price_per_hour_usd: 0.145, vcpus: 4, arch: 'arm64', cpu: 'Graviton3' },
  ],
};
let activeStreams = 0;
let requestsTotal = 0;

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml' };

const ANSWERS = [
  'Once upon a time, there was a little robot named **Bolt**. Bolt lived in a small town and loved to help.\n\n' +
  'Every morning Bolt would:\n\n- water the flowers\n- say *hello* to the birds\n- fix the old clock with `gear.turn()`\n\n' +
  'One day Bolt found a lost kitten. "Do not worry," said Bolt, "I will help you find your home."\n\n' +
  '```python\ndef find_home(kitten):\n    return kitten.follow("smell of fish")\n```\n\n' +
  'And they walked together until the sun went down. The end.',
  'Here is a short answer with a list:\n\n1. First, read the question.\n2. Then think about it.\n3. Finally, write a clear reply.\n\n' +
  'That is all you need to know. Lily and Tom played in the park and the sun was warm and happy.',
];

function json(res, status, body, headers = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data), ...headers });
  res.end(data);
}
function apiError(res, status, message, type, code = null, headers = {}) {
  json(res, status, { error: { message, type, param: null, code } }, headers);
}

function contentText(c) {
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) return c.map((p) => (p && p.type === 'text' ? p.text : '')).join('');
  return '';
}

function tokenize(text) {
  return text.match(/\s*[^\s]+|\s+/g) || [];
}

function serveStatic(req, res, url) {
  let p = url;
  if (p === '/') p = '/index.html';
  if (!/^\/[A-Za-z0-9_-][A-Za-z0-9._-]*$/.test(p) || p.includes('..')) return false;
  const ext = path.extname(p);
  if (!TYPES[ext]) return false;
  const file = path.join(webDir, p.slice(1));
  if (!fs.existsSync(file)) return false;
  const data = fs.readFileSync(file);
  res.writeHead(200, { 'Content-Type': TYPES[ext], 'Cache-Control': 'no-cache', 'Content-Length': data.length,
    'X-Content-Type-Options': 'nosniff' });
  res.end(req.method === 'HEAD' ? undefined : data);
  return true;
}

function chat(req, res, body) {
  let params;
  try { params = JSON.parse(body); } catch { return apiError(res, 400, 'malformed JSON', 'invalid_request_error'); }
  if (!Array.isArray(params.messages) || !params.messages.length) {
    return apiError(res, 400, "'messages' must be a non-empty array", 'invalid_request_error', 'invalid_value');
  }
  const model = params.model ? models.find((m) => m.id === params.model || m.id.startsWith(`${params.model}-`)) : models[0];
  if (!model) return apiError(res, 404, `model '${params.model}' not found`, 'invalid_request_error', 'model_not_found');
  const last = contentText(params.messages[params.messages.length - 1].content);
  if (last.includes('__429__')) {
    return apiError(res, 429, 'server overloaded: the request queue is full', 'server_error', 'queue_full', { 'Retry-After': '3' });
  }
  if (last.includes('__500__')) return apiError(res, 500, 'internal error', 'server_error');
  const promptTokens = params.messages.reduce((n, m) => n + tokenize(contentText(m.content)).length + 4, 1);
  if (promptTokens >= CTX) {
    return apiError(res, 400, `the prompt has ${promptTokens} tokens but the context size is ${CTX}`,
      'invalid_request_error', 'context_length_exceeded');
  }
  const maxTokens = Math.min(params.max_tokens ?? params.max_completion_tokens ?? 128, CTX - promptTokens);
  const answer = ANSWERS[(last.length + (params.temperature > 0 ? Date.now() : 0)) % ANSWERS.length];
  let toks = tokenize(answer);
  while (toks.length < maxTokens) toks = toks.concat(tokenize(` And then, ${answer}`));
  const finish = toks.length > maxTokens ? 'length' : 'stop';
  toks = toks.slice(0, maxTokens);
  const price = Number.isFinite(params.price_per_hour) ? params.price_per_hour
    : (instances.instances.find((i) => i.name === params.instance) || instances.instances[0]).price_per_hour_usd;
  const instName = params.instance || instances.default;
  const delay = model.backend === 'int4' ? baseDelay * 0.4 : baseDelay;
  const id = `chatcmpl-${Date.now()}`;
  const created = Math.floor(Date.now() / 1000);
  const drop = last.includes('__drop__');

  const t0 = performance.now();
  let tFirst = 0;
  const metrics = () => {
    const now = performance.now();
    const total = (now - t0) / 1000;
    const ttft = ((tFirst || now) - t0) / 1000;
    const decode = toks.length > 1 ? (toks.length - 1) / Math.max(1e-6, (now - tFirst) / 1000) : 0;
    return {
      ttft_s: ttft, prompt_tokens: promptTokens, prompt_tokens_processed: promptTokens, prompt_tokens_per_s: promptTokens / Math.max(ttft, 1e-6),
      completion_tokens: toks.length, decode_tokens_per_s: decode, total_time_s: total, instance: instName,
      price_per_hour_usd: price, cost_per_million_tokens_usd: decode > 0 ? price / (decode * 3600) * 1e6 : null,
      total_cost_usd: price * total / 3600, backend: model.backend, model: model.id,
      interactive: { ttft_ok: ttft < 1, decode_ok: decode >= 10 },
    };
  };

  if (!params.stream) {
    const finishNow = () => json(res, 200, {
      id, object: 'chat.completion', created, model: model.id,
      choices: [{ index: 0, message: { role: 'assistant', content: toks.join('') }, finish_reason: finish }],
      usage: { prompt_tokens: promptTokens, completion_tokens: toks.length, total_tokens: promptTokens + toks.length },
      metrics: metrics(),
    });
    tFirst = performance.now() + 5;
    return setTimeout(finishNow, toks.length * delay);
  }

  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
  activeStreams++;
  let closed = false;
  const done = () => { if (!closed) { closed = true; activeStreams--; } };
  res.on('close', done);
  const send = (obj) => res.write(`data: ${JSON.stringify(obj)}\n\n`);
  const chunk = (delta, finishReason = null, extra = {}) => ({
    id, object: 'chat.completion.chunk', created, model: model.id,
    choices: [{ index: 0, delta, finish_reason: finishReason }], ...extra,
  });
  send(chunk({ role: 'assistant', content: '' }));
  let i = 0;
  const step = () => {
    if (closed) return; // the client went away: stop generating
    if (drop && i === 5) { res.destroy(); return; }
    if (i < toks.length) {
      if (i === 0) tFirst = performance.now();
      send(chunk({ content: toks[i++] }));
      setTimeout(step, delay * (0.7 + Math.random() * 0.6));
      return;
    }
    send(chunk({}, finish, { metrics: metrics() }));
    if (params.stream_options && params.stream_options.include_usage) {
      send({ id, object: 'chat.completion.chunk', created, model: model.id, choices: [],
        usage: { prompt_tokens: promptTokens, completion_tokens: toks.length, total_tokens: promptTokens + toks.length } });
    }
    res.write('data: [DONE]\n\n');
    res.end();
    done();
  };
  setTimeout(step, 60 + promptTokens * 0.5);
  return undefined;
}

const server = http.createServer((req, res) => {
  requestsTotal++;
  const url = req.url.split('?')[0];
  if (req.method === 'GET' || req.method === 'HEAD') {
    if (url === '/v1/models') return json(res, 200, { object: 'list', data: models });
    if (url === '/v1/instances') return json(res, 200, instances);
    if (url === '/health') return json(res, 200, { status: 'ok' });
    if (url === '/metrics') {
      res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4' });
      return res.end(`# TYPE cpuchat_active_streams gauge\ncpuchat_active_streams ${activeStreams}\n` +
        `# TYPE cpuchat_http_requests_total counter\ncpuchat_http_requests_total ${requestsTotal}\n`);
    }
    if (serveStatic(req, res, url)) return undefined;
    return apiError(res, 404, `no route for ${req.method} ${url}`, 'invalid_request_error', 'not_found');
  }
  if (req.method === 'POST' && url === '/v1/chat/completions') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => chat(req, res, body));
    return undefined;
  }
  return apiError(res, 405, 'method not allowed', 'invalid_request_error');
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { server.close(); process.exit(0); });
