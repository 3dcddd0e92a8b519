// Rough edges real clients hit (issue 13), against the real `cpuchat serve`: CORS preflights
// that echo the openai SDK's x-stainless-* headers, checked by the SDK itself in a Chromium
// page (dangerouslyAllowBrowser); streamed content == the logprob tokens == the unstreamed
// content (a leading-space first token); GET /v1/models/<bare name>; Vary: Accept-Encoding;
// X-Request-Id; usage: null on intermediate chunks; control tokens never shown as text.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';

import { loadOpenAI, MODEL_NAME, startServer } from './server_harness.mjs';

const OpenAI = loadOpenAI();
const nodeModules = path.join(process.env.CPUCHAT_NODE_DIR, 'node_modules');
const requireNode = createRequire(path.join(nodeModules, 'noop.js'));
const shared = path.resolve(path.dirname(process.env.CPUCHAT_TEST_MODEL), '..', '..');
const LLAMA = path.join(shared, 'models', 'meta', 'llama31-tiny-random');

async function sseChunks(res) {
  const text = await res.text();
  return text.split('\n\n').filter((b) => b.startsWith('data: {')).map((b) => JSON.parse(b.slice(6)));
}

function post(url, body, headers = {}) {
  return fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
}

test('streamed content == logprob tokens == unstreamed content; usage null until the last chunk; ids and headers', async (t) => {
  const srv = await startServer(['--backend', 'fp32']);
  t.after(() => srv.stop());
  const chat = srv.url + '/v1/chat/completions';
  // stories260K's first answer token is " upon": SentencePiece drops the space of the first
  // piece, and the logprob must report what the token added to the text.
  const body = { model: MODEL_NAME, messages: [{ role: 'user', content: 'Once' }], max_tokens: 12, temperature: 0, logprobs: true };
  const full = await (await post(chat, body)).json();
  const content = full.choices[0].message.content;
  const tokens = full.choices[0].logprobs.content.map((l) => l.token);
  assert.equal(tokens.join(''), content);
  for (const l of full.choices[0].logprobs.content) assert.deepEqual(l.bytes, [...Buffer.from(l.token)]);

  const chunks = await sseChunks(await post(chat, { ...body, stream: true, stream_options: { include_usage: true } }));
  const streamed = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  const streamedTokens = chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []).map((l) => l.token);
  assert.equal(streamed, content);
  assert.deepEqual(streamedTokens, tokens);
  // include_usage: every chunk has the key, null but on the last one (as OpenAI).
  for (const c of chunks.slice(0, -1)) assert.ok('usage' in c && c.usage === null, JSON.stringify(c));
  assert.equal(chunks.at(-1).usage.completion_tokens, full.usage.completion_tokens);
  // Without include_usage no chunk carries the key.
  const plain = await sseChunks(await post(chat, { ...body, stream: true }));
  assert.ok(plain.every((c) => !('usage' in c)));

  // The same on /v1/completions (logprobs as tokens + text_offset).
  const comp = await (await post(srv.url + '/v1/completions', { model: MODEL_NAME, prompt: 'Once upon', max_tokens: 10, temperature: 0, logprobs: 0 })).json();
  assert.equal(comp.choices[0].logprobs.tokens.join(''), comp.choices[0].text);

  // GET /v1/models/<id> resolves ids as chat does: the bare name is the first backend.
  const bare = await fetch(srv.url + '/v1/models/' + MODEL_NAME);
  assert.equal(bare.status, 200);
  assert.equal((await bare.json()).id, `${MODEL_NAME}-fp32`);
  assert.equal((await fetch(srv.url + `/v1/models/${MODEL_NAME}-fp32`)).status, 200);
  const missing = await fetch(srv.url + '/v1/models/nope');
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, 'model_not_found');

  // Compressed answers say they vary by Accept-Encoding (node's fetch sends gzip, deflate, br).
  for (const p of ['/v1/models', '/']) {
    const r = await fetch(srv.url + p, { headers: { 'accept-encoding': 'gzip' } });
    assert.equal(r.headers.get('content-encoding'), 'gzip', p);
    assert.match(r.headers.get('vary') ?? '', /Accept-Encoding/, p);
    await r.arrayBuffer();
  }
  const identity = await fetch(srv.url + '/v1/models', { headers: { 'accept-encoding': 'identity' } });
  assert.equal(identity.headers.get('content-encoding'), null);
  assert.match(identity.headers.get('vary') ?? '', /Accept-Encoding/);  // the other variant exists

  // X-Request-Id: the client's echoed, else a fresh one per request.
  const echoed = await fetch(srv.url + '/v1/models', { headers: { 'x-request-id': 'trace-42.a_b' } });
  assert.equal(echoed.headers.get('x-request-id'), 'trace-42.a_b');
  const a = (await fetch(srv.url + '/health')).headers.get('x-request-id');
  const b = (await post(chat, { messages: [] })).headers.get('x-request-id');  // errors too
  assert.match(a, /^req_/);
  assert.match(b, /^req_/);
  assert.notEqual(a, b);
  const bad = await fetch(srv.url + '/health', { headers: { 'x-request-id': 'x'.repeat(300) } });
  assert.match(bad.headers.get('x-request-id'), /^req_/);  // too long to echo: replaced
  // The SDK exposes it.
  const ai = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'unused', maxRetries: 0 });
  const { response } = await ai.chat.completions.create({ ...body, max_tokens: 2 }).withResponse();
  assert.match(response.headers.get('x-request-id'), /^req_/);
});

test('control tokens are never text: <s> (SentencePiece) and Llama 3 header tokens sampled mid-answer', async (t) => {
  const cases = [
    { model: process.env.CPUCHAT_TEST_MODEL, name: MODEL_NAME, token: 1, text: '<s>' },
    { model: LLAMA, name: 'llama31-tiny-random', token: 128006, text: '<|start_header_id|>' },
  ];
  for (const c of cases) {
    const srv = await startServer(['--backend', 'fp32'], { model: c.model });
    try {
      // A large bias makes the control token most likely at every step, but sampling
      // (temperature 1) still mixes in others: the answer interleaves both.
      const body = { model: c.name, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 24, temperature: 1.5, seed: 1,
        logit_bias: { [c.token]: 8 }, logprobs: true };
      const r = await (await post(srv.url + '/v1/chat/completions', body)).json();
      const lps = r.choices[0].logprobs.content;
      const controls = lps.filter((l) => l.token === '').length;
      assert.ok(controls > 0, `${c.name}: the biased control token was sampled: ${JSON.stringify(lps.map((l) => l.token))}`);
      assert.ok(!r.choices[0].message.content.includes(c.text), r.choices[0].message.content);
      assert.equal(lps.map((l) => l.token).join(''), r.choices[0].message.content);
      const chunks = await sseChunks(await post(srv.url + '/v1/chat/completions', { ...body, stream: true }));
      assert.equal(chunks.map((x) => x.choices[0]?.delta?.content ?? '').join(''), r.choices[0].message.content);
    } finally {
      await srv.stop();
    }
  }
});

// A static page server on its own origin: the page and the openai SDK's ESM files.
async function startPageServer() {
  const openaiDir = path.join(nodeModules, 'openai');
  const page = `<!doctype html><meta charset="utf-8"><title>sdk</title>
<script type="importmap">{"imports": {"openai/_shims/auto/runtime": "/openai/_shims/auto/runtime.mjs"}}</script>
<script type="module">
import OpenAI from '/openai/index.mjs';
window.runSdk = async (baseURL, apiKey, model) => {
  const ai = new OpenAI({ baseURL, apiKey, dangerouslyAllowBrowser: true, maxRetries: 0 });
  const out = {};
  out.models = (await ai.models.list()).data.map((m) => m.id);
  const chat = await ai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Once' }], max_tokens: 8, temperature: 0 });
  out.chat = chat.choices[0].message.content;
  const r = await ai.responses.create({ model, input: 'Once', max_output_tokens: 8, temperature: 0 });
  out.response = r.output_text;
  let streamed = '';
  for await (const e of await ai.responses.create({ model, input: 'Once', max_output_tokens: 8, temperature: 0, stream: true }))
    if (e.type === 'response.output_text.delta') streamed += e.delta;
  out.streamed = streamed;
  out.deleted = (await ai.responses.del(r.id)).deleted;
  return out;
};
window.sdkReady = true;
</script>`;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(page);
    if (url.pathname === '/favicon.ico') return res.writeHead(204).end();
    const file = path.join(openaiDir, path.normalize(url.pathname.slice('/openai/'.length)));
    if (!url.pathname.startsWith('/openai/') || !file.startsWith(openaiDir) || !fs.existsSync(file))
      return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(fs.readFileSync(file));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

test('CORS: preflights echo the requested headers; the openai SDK works from a Chromium page', async (t) => {
  const { server, origin } = await startPageServer();
  t.after(() => server.close());
  const srv = await startServer(['--backend', 'fp32', '--cors-origin', origin, '--api-key', 'sekret']);
  t.after(() => srv.stop());

  const requested = 'authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, '
    + 'x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout';
  for (const p of ['/v1/chat/completions', '/v1/responses', '/v1/responses/resp_x']) {
    const pre = await fetch(srv.url + p, { method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'POST',
      'access-control-request-headers': requested } });
    assert.equal(pre.status, 204, p);
    assert.equal(pre.headers.get('access-control-allow-origin'), origin);
    assert.equal(pre.headers.get('access-control-allow-headers'), requested);
    assert.match(pre.headers.get('access-control-allow-methods'), /DELETE/);
  }
  // A header list that is not a list of names is not echoed.
  const odd = await fetch(srv.url + '/v1/responses', { method: 'OPTIONS', headers: { origin, 'access-control-request-headers': 'x-a, (x-b)' } });
  assert.equal(odd.headers.get('access-control-allow-headers'), 'Authorization, Content-Type, X-Session-Id');

  // The reference answers, from node.
  const ai = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'sekret', maxRetries: 0 });
  const chat = await ai.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Once' }], max_tokens: 8, temperature: 0 });
  const resp = await ai.responses.create({ model: MODEL_NAME, input: 'Once', max_output_tokens: 8, temperature: 0 });

  const { chromium } = requireNode('playwright-core');
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  await page.goto(origin + '/');
  await page.waitForFunction(() => window.sdkReady === true, null, { timeout: 20000 });
  const out = await page.evaluate(([u, k, m]) => window.runSdk(u, k, m), [srv.url + '/v1', 'sekret', MODEL_NAME]);
  assert.deepEqual(out.models, [`${MODEL_NAME}-fp32`]);
  assert.equal(out.chat, chat.choices[0].message.content);
  assert.equal(out.response, resp.output_text);
  assert.equal(out.streamed, resp.output_text);
  assert.equal(out.deleted, true);
  assert.deepEqual(consoleErrors, []);
  // A wrong key from the page is the API's 401, readable by the page (CORS headers on errors too).
  const status = await page.evaluate(async (u) => {
    try {
      const { default: OpenAI } = await import('/openai/index.mjs');
      await new OpenAI({ baseURL: u, apiKey: 'wrong', dangerouslyAllowBrowser: true, maxRetries: 0 }).models.list();
      return 0;
    } catch (e) { return e.status; }
  }, srv.url + '/v1');
  assert.equal(status, 401);
});
