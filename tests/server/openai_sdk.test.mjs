// The real `cpuchat serve` with stories260K, driven by the official OpenAI JS SDK (v4):
// answers and their metrics, streaming == non-streaming, prefix reuse across turns,
// queueing (429), client disconnects, SIGTERM during a stream, and each backend.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { loadOpenAI, metric, MODEL_NAME, startServer, waitFor } from './server_harness.mjs';

const OpenAI = loadOpenAI();
const backends = (process.env.CPUCHAT_TEST_BACKENDS || 'fp32').split(/\s+|;/).filter(Boolean);
const story = [{ role: 'user', content: 'Tell me a story about a cat.' }];

function client(url, opts = {}) {
  // maxRetries 0: the SDK would otherwise retry 429s and hide them.
  return new OpenAI({ baseURL: url + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 30000, ...opts });
}

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

test('answers, metrics and streaming (fp32)', async (t) => {
  const srv = await startServer(['--backend', 'fp32', '--instance', 'c8g.2xlarge']);
  t.after(() => srv.stop());
  const ai = client(srv.url);

  const models = await ai.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [`${MODEL_NAME}-fp32`]);

  const params = { model: MODEL_NAME, messages: story, temperature: 0, max_tokens: 48, seed: 7 };
  const full = await ai.chat.completions.create(params);
  assert.equal(full.object, 'chat.completion');
  const text = full.choices[0].message.content;
  assert.ok(text.length > 0);
  assert.ok(['stop', 'length'].includes(full.choices[0].finish_reason));
  assert.equal(full.usage.total_tokens, full.usage.prompt_tokens + full.usage.completion_tokens);

  // metrics extension: present and adds up
  const m = full.metrics;
  assert.equal(m.model, `${MODEL_NAME}-fp32`);
  assert.equal(m.backend, 'fp32');
  assert.equal(m.instance, 'c8g.2xlarge');
  assert.equal(m.prompt_tokens, full.usage.prompt_tokens);
  assert.equal(m.completion_tokens, full.usage.completion_tokens);
  assert.ok(m.ttft_s > 0 && m.ttft_s <= m.total_time_s, JSON.stringify(m));
  // Billed its share of every forward step it took part in (docs/API.md).
  assert.ok(m.billed_time_s > 0 && m.billed_time_s <= m.total_time_s, JSON.stringify(m));
  assert.ok(Math.abs(m.total_cost_usd - (m.price_per_hour_usd * m.billed_time_s) / 3600) <= 1e-12 + 1e-9 * m.total_cost_usd);
  if (m.completion_tokens > 1) {
    assert.ok(m.decode_tokens_per_s > 0);
    const expected = ((m.price_per_hour_usd * m.billed_decode_time_s) / 3600 / (m.completion_tokens - 1)) * 1e6;
    assert.ok(Math.abs(m.cost_per_million_tokens_usd - expected) <= 1e-9 * expected, JSON.stringify(m));
  }
  assert.equal(typeof m.interactive.ttft_ok, 'boolean');

  // the same request streamed: deltas concatenate to the same text
  const chunks = await collect(await ai.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } }));
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const streamed = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(streamed, text);
  const finish = chunks.find((c) => c.choices[0]?.finish_reason);
  assert.equal(finish.choices[0].finish_reason, full.choices[0].finish_reason);
  assert.equal(finish.metrics.completion_tokens, full.usage.completion_tokens);
  const usage = chunks.at(-1);
  assert.deepEqual(usage.choices, []);
  assert.equal(usage.usage.completion_tokens, full.usage.completion_tokens);
  // more than one content chunk: tokens are streamed as produced, not in one piece
  assert.ok(chunks.filter((c) => c.choices[0]?.delta?.content).length > 5);

  // legacy completions
  const comp = await ai.completions.create({ model: `${MODEL_NAME}-fp32`, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 });
  assert.equal(comp.object, 'text_completion');
  assert.ok(comp.choices[0].text.length > 0);
  assert.ok(comp.metrics);

  // max_tokens beyond the context: stops at the context end with "length"
  const long = await ai.chat.completions.create({ ...params, max_tokens: 100000, ignore_eos: true });
  assert.equal(long.choices[0].finish_reason, 'length');
  assert.equal(long.usage.prompt_tokens + long.usage.completion_tokens, models.data[0].ctx);

  // errors arrive as SDK errors with the right status
  await assert.rejects(ai.chat.completions.create({ ...params, n: 0 }), (e) => e.status === 400 && e.param === 'n');
  await assert.rejects(ai.chat.completions.create({ ...params, model: 'gpt-4o' }), (e) => e.status === 404 && e.code === 'model_not_found');
  await assert.rejects(ai.chat.completions.create({ ...params, temperature: 5 }), (e) => e.status === 400 && e.param === 'temperature');
  const overflow = [{ role: 'user', content: 'cat '.repeat(2000) }];
  await assert.rejects(ai.chat.completions.create({ ...params, messages: overflow }),
    (e) => e.status === 400 && e.code === 'context_length_exceeded' && /512/.test(e.message));
  assert.equal((await ai.chat.completions.create(params)).choices[0].message.content, text);
});

test('n > 1: one prompt computed once, n answers seeded seed, seed + 1, ... (int4, streamed and not)', async (t) => {
  const srv = await startServer(['--backend', 'int4', '--parallel', '4', '--max-queue', '4']);
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const params = { model: MODEL_NAME, messages: [{ role: 'user', content: 'Tell me a long story about a little dog, a red ball and a big tree in the park.' }],
    temperature: 0.9, max_tokens: 32, seed: 11 };
  // First on a fresh server: the prompt runs once, the two other answers copy its rows.
  const multi = await ai.chat.completions.create({ ...params, n: 3 });
  assert.deepEqual(multi.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(multi.metrics.prompt_tokens_processed, multi.usage.prompt_tokens + 2, JSON.stringify(multi.metrics));
  // Each answer is the one its seed gives alone: n = 1 requests with seed 11, 12, 13.
  let completion = 0;
  for (let i = 0; i < 3; ++i) {
    const one = await ai.chat.completions.create({ ...params, seed: 11 + i });
    assert.equal(multi.choices[i].message.content, one.choices[0].message.content, `choice ${i}`);
    assert.equal(multi.choices[i].finish_reason, one.choices[0].finish_reason);
    assert.equal(one.usage.prompt_tokens, multi.usage.prompt_tokens);
    completion += one.usage.completion_tokens;
  }
  assert.equal(multi.usage.completion_tokens, completion);
  assert.ok(new Set(multi.choices.map((c) => c.message.content)).size > 1, 'different seeds, different answers');

  // Streamed: the chunks of both choices interleave under their index and add up to the same.
  const chunks = await collect(await ai.chat.completions.create({ ...params, n: 2, stream: true,
    stream_options: { include_usage: true } }));
  const texts = ['', ''], finishes = [null, null];
  for (const c of chunks.slice(0, -1)) {
    assert.equal(c.choices.length, 1);
    const { index, delta, finish_reason } = c.choices[0];
    texts[index] += delta?.content ?? '';
    if (finish_reason) finishes[index] = finish_reason;
  }
  assert.deepEqual(texts, multi.choices.slice(0, 2).map((c) => c.message.content));
  assert.deepEqual(finishes, multi.choices.slice(0, 2).map((c) => c.finish_reason));
  const usage = chunks.at(-1).usage;
  assert.equal(usage.prompt_tokens, multi.usage.prompt_tokens);

  // Legacy completions take n too; more answers than slots + queue is a 400 naming n.
  const comp = await ai.completions.create({ model: MODEL_NAME, prompt: 'Once upon a time', max_tokens: 8, n: 2, seed: 3 });
  assert.deepEqual(comp.choices.map((c) => c.index), [0, 1]);
  await assert.rejects(ai.chat.completions.create({ ...params, n: 9 }), (e) => e.status === 400 && e.param === 'n' && /4 slots/.test(e.message));
});

test('a follow-up turn only processes its new suffix', async (t) => {
  const srv = await startServer(['--backend', 'fp32', '--parallel', '2']);
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const turn1 = [{ role: 'system', content: 'You tell short stories.' }, { role: 'user', content: 'A story about a dog named Max.' }];
  const a1 = await ai.chat.completions.create({ messages: turn1, temperature: 0, max_tokens: 40 });
  assert.equal(a1.metrics.prompt_tokens_processed, a1.metrics.prompt_tokens);
  // another conversation meanwhile: it must not take the first one's slot
  await ai.chat.completions.create({ messages: [{ role: 'user', content: 'Something different: a fish and a boat.' }], temperature: 0, max_tokens: 20 });
  const turn2 = [...turn1, { role: 'assistant', content: a1.choices[0].message.content }, { role: 'user', content: 'What happened next?' }];
  const a2 = await ai.chat.completions.create({ messages: turn2, temperature: 0, max_tokens: 20 });
  const { prompt_tokens, prompt_tokens_processed } = a2.metrics;
  assert.ok(prompt_tokens > a1.metrics.prompt_tokens + 10, JSON.stringify(a2.metrics));
  assert.ok(prompt_tokens_processed < prompt_tokens / 2, JSON.stringify(a2.metrics));
  assert.ok(prompt_tokens_processed <= prompt_tokens - a1.metrics.prompt_tokens, JSON.stringify(a2.metrics));
  assert.equal(a2.usage.prompt_tokens_details.cached_tokens, prompt_tokens - prompt_tokens_processed);
});

test('8 concurrent streams are batched into shared steps; cancelling each frees its slot', async (t) => {
  const srv = await startServer(['--backend', 'int4', '--parallel', '8', '--max-queue', '8']);
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const model = `${MODEL_NAME}-int4`;
  const card = (await ai.models.list()).data[0];
  assert.equal(card.slots.total, 8);
  assert.equal(card.kv_type, 'bf16');
  assert.ok(card.kv_bytes_per_token > 0);
  const before = await metric(srv.url, `cpuchat_step_sequences_count{model="${model}"}`);
  const streams = await Promise.all(Array.from({ length: 8 }, (_, i) => ai.chat.completions.create({
    messages: [{ role: 'user', content: `Tell me story number ${i} about a cat.` }],
    max_tokens: 320, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } })));
  const results = await Promise.all(streams.map(collect));
  let shared = 0;
  for (const chunks of results) {
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    const finish = chunks.find((c) => c.choices[0]?.finish_reason);
    assert.equal(finish.choices[0].finish_reason, 'length');
    assert.equal(chunks.at(-1).usage.completion_tokens, 320);
    assert.equal(finish.metrics.completion_tokens, 320);
    assert.ok(text.length > 0);
    const m = finish.metrics;
    assert.ok(m.billed_time_s <= m.total_time_s, JSON.stringify(m));
    // Shared steps: billed a fraction of the wall time; the instance produced more than this stream.
    if (m.mean_batch_size > 2 && m.billed_time_s < 0.6 * m.total_time_s &&
        m.instance_decode_tokens_per_s > 1.5 * m.decode_tokens_per_s) ++shared;
  }
  assert.ok(shared >= 6, `only ${shared} of 8 streams shared their steps`);
  // The step histogram shows it: most steps of this burst carried >= 4 sequences.
  const count = (await metric(srv.url, `cpuchat_step_sequences_count{model="${model}"}`)) - before;
  const small = await metric(srv.url, `cpuchat_step_sequences_bucket{model="${model}",le="3"}`);
  assert.ok(count >= 64, `only ${count} steps`);
  assert.ok(count - small > count / 2, `${count - small} of ${count} steps carried >= 4 sequences`);

  // Each of 8 streams hangs up mid-answer: every slot is freed, and 8 new requests run.
  const controllers = Array.from({ length: 8 }, () => new AbortController());
  const open = await Promise.all(controllers.map((c, i) => ai.chat.completions.create(
    { messages: [{ role: 'user', content: `Another story ${i}.` }], max_tokens: 100000, ignore_eos: true, stream: true },
    { signal: c.signal })));
  await Promise.all(open.map(async (s, i) => {
    const it = s[Symbol.asyncIterator]();
    await it.next();
    await it.next();
    controllers[i].abort();
    await it.next().catch(() => {});
  }));
  assert.equal(await waitFor(async () => (await metric(srv.url, `cpuchat_active_requests{model="${model}"}`)) === 0, 5000), true);
  const again = await Promise.all(Array.from({ length: 8 }, () => ai.chat.completions.create({ messages: story, max_tokens: 4 })));
  for (const r of again) assert.equal(r.usage.completion_tokens, 4);
});

test('full queue -> 429 with Retry-After; /health not starved', async (t) => {
  const srv = await startServer(['--backend', 'fp32', '--parallel', '1', '--max-queue', '1']);
  t.after(() => srv.stop());
  const ai = client(srv.url);
  // Six long answers at once: one runs, one waits, the rest are refused.
  const long = { messages: story, max_tokens: 100000, ignore_eos: true };
  const results = await Promise.allSettled(Array.from({ length: 6 }, () => ai.chat.completions.create(long)));
  const health = await fetch(srv.url + '/health');
  assert.equal(health.status, 200);
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r) => r.status === 'rejected');
  assert.ok(ok.length >= 2, `${ok.length} served`);  // the running one and the queued one
  assert.ok(refused.length >= 1, 'nothing was refused');
  for (const r of refused) {
    assert.equal(r.reason.status, 429, String(r.reason));
    assert.equal(r.reason.headers['retry-after'], '1');
    assert.equal(r.reason.code, 'rate_limit_exceeded');
  }
  for (const r of ok) assert.equal(r.value.choices[0].finish_reason, 'length');
  assert.equal((await ai.chat.completions.create({ messages: story, max_tokens: 4 })).usage.completion_tokens, 4);
});

test('a client that hangs up mid-stream stops its generation and frees the slot', async (t) => {
  const srv = await startServer(['--backend', 'fp32', '--parallel', '1', '--max-queue', '0']);
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const model = `${MODEL_NAME}-fp32`;
  const controller = new AbortController();
  const stream = await ai.chat.completions.create(
    { messages: story, max_tokens: 100000, ignore_eos: true, stream: true }, { signal: controller.signal });
  const it = stream[Symbol.asyncIterator]();
  await it.next();  // role
  await it.next();  // first token
  controller.abort();
  await it.next().catch(() => {});
  assert.equal(await waitFor(async () => (await metric(srv.url, `cpuchat_active_requests{model="${model}"}`)) === 0, 3000), true);
  assert.equal(await metric(srv.url, `cpuchat_generations_total{model="${model}",finish_reason="cancelled"}`), 1);
  const generated = await metric(srv.url, `cpuchat_generated_tokens_total{model="${model}"}`);
  assert.ok(generated < 400, `generated ${generated} tokens after the hang-up`);
  // the freed slot serves the next request
  const after = await ai.chat.completions.create({ messages: story, max_tokens: 4 });
  assert.equal(after.usage.completion_tokens, 4);
});

// (With the default --drain-timeout the stream would finish normally: tests/fleet covers that.)
test('SIGTERM with --drain-timeout 0 during a stream: error event, [DONE], exit 0', async () => {
  const srv = await startServer(['--backend', 'fp32', '--drain-timeout', '0']);
  const res = await fetch(srv.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: story, max_tokens: 100000, ignore_eos: true, stream: true }),
  });
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let body = '';
  let signalled = false;
  const t0 = Date.now();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    body += decoder.decode(value, { stream: true });
    if (!signalled && body.split('\n\n').length > 2) { srv.proc.kill('SIGTERM'); signalled = true; }
  }
  const events = body.split('\n\n').filter(Boolean);
  assert.equal(events.at(-1), 'data: [DONE]');
  const last = JSON.parse(events.at(-2).slice(6));
  assert.equal(last.error?.code, 'server_shutting_down', events.at(-2));
  const { code } = await srv.exited;
  assert.equal(code, 0);
  assert.ok(Date.now() - t0 < 8000);
});

for (const backend of backends.filter((b) => b !== 'fp32')) {
  test(`backend ${backend}`, async (t) => {
    const srv = await startServer(['--backend', backend]);
    t.after(() => srv.stop());
    const ai = client(srv.url);
    const ids = (await ai.models.list()).data.map((m) => m.id);
    assert.deepEqual(ids, backend.split(',').map((b) => `${MODEL_NAME}-${b}`));
    for (const id of ids) {
      const r = await ai.chat.completions.create({ model: id, messages: story, temperature: 0, max_tokens: 24 });
      assert.ok(r.choices[0].message.content.length > 0);
      assert.equal(r.metrics.backend, id.split('-').at(-1));
      const s = (await collect(await ai.chat.completions.create({ model: id, messages: story, temperature: 0, max_tokens: 24, stream: true })))
        .map((c) => c.choices[0]?.delta?.content ?? '').join('');
      assert.equal(s, r.choices[0].message.content);
    }
  });
}
