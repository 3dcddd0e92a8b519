// The OpenAI Responses API of the real `cpuchat serve` (llama31-tiny-random: the Llama 3.1
// tokenizer and template, random weights, so answers are nonsense but deterministic at
// temperature 0), driven by the clients that use it: the official openai SDK
// (responses.create streamed and not, previous_response_id, retrieve/delete), the Vercel AI
// SDK's default openai() provider (generateText, streamText) and LangChain's
// ChatOpenAI({useResponsesApi: true}). Tool calls and structured outputs are checked with ajv.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';

import { loadOpenAI, startServer } from './server_harness.mjs';

const OpenAI = loadOpenAI();
const requireNode = createRequire(path.join(process.env.CPUCHAT_NODE_DIR, 'node_modules', 'noop.js'));
const Ajv = requireNode('ajv').default ?? requireNode('ajv');
const ajv = new Ajv({ strict: false });

const shared = path.resolve(path.dirname(process.env.CPUCHAT_TEST_MODEL), '..', '..');
const LLAMA = path.join(shared, 'models', 'meta', 'llama31-tiny-random');
const MODEL = 'llama31-tiny-random';

function client(url) {
  return new OpenAI({ baseURL: url + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 30000 });
}

async function collect(stream) {
  const events = [];
  for await (const e of stream) events.push(e);
  return events;
}

const base = { model: MODEL, temperature: 0, seed: 3 };

test('responses.create, three turns of previous_response_id, retrieve and delete', async (t) => {
  const srv = await startServer(['--backend', 'fp32', '--parallel', '2'], { model: LLAMA });
  t.after(() => srv.stop());
  const ai = client(srv.url);

  const first = await ai.responses.create({ ...base, instructions: 'Be brief.', input: 'Tell me about cats.', max_output_tokens: 12 });
  assert.match(first.id, /^resp_/);
  assert.equal(first.object, 'response');
  assert.equal(first.model, `${MODEL}-fp32`);
  assert.ok(['completed', 'incomplete'].includes(first.status));
  if (first.status === 'incomplete') assert.equal(first.incomplete_details.reason, 'max_output_tokens');
  const message = first.output.find((o) => o.type === 'message');
  assert.equal(message.role, 'assistant');
  assert.equal(message.content[0].type, 'output_text');
  assert.equal(first.output_text, message.content[0].text);
  assert.ok(first.output_text.length > 0);
  assert.equal(first.usage.total_tokens, first.usage.input_tokens + first.usage.output_tokens);
  assert.equal(first.usage.output_tokens, first.metrics.completion_tokens);
  assert.equal(first.instructions, 'Be brief.');

  // The same request as a chat completion renders the same prompt and gives the same answer.
  const chat = await ai.chat.completions.create({ ...base, max_tokens: 12,
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Tell me about cats.' }] });
  assert.equal(chat.choices[0].message.content, first.output_text);
  assert.equal(chat.usage.prompt_tokens, first.usage.input_tokens);

  // Three continuations: each turn's prompt holds the last one's, and the slot that served the
  // conversation still caches it, so cached_tokens grows by at least the previous prompt.
  let prev = first;
  const turns = [first];
  for (const input of ['And dogs?', 'And birds?', 'And fish?']) {
    const r = await ai.responses.create({ ...base, instructions: 'Be brief.', input, previous_response_id: prev.id, max_output_tokens: 8 });
    assert.equal(r.previous_response_id, prev.id);
    assert.ok(r.usage.input_tokens > prev.usage.input_tokens + prev.usage.output_tokens - 1, JSON.stringify(r.usage));
    assert.ok(r.usage.input_tokens_details.cached_tokens >= prev.usage.input_tokens, JSON.stringify([prev.usage, r.usage]));
    assert.ok(r.usage.input_tokens_details.cached_tokens > prev.usage.input_tokens_details.cached_tokens);
    assert.equal(r.metrics.prompt_tokens_processed, r.usage.input_tokens - r.usage.input_tokens_details.cached_tokens);
    turns.push(r);
    prev = r;
  }
  // A conversation interleaved with another one keeps its slot (affinity on the root id).
  const other = await ai.responses.create({ ...base, input: 'Something else entirely.', max_output_tokens: 4 });
  const fifth = await ai.responses.create({ ...base, instructions: 'Be brief.', input: 'And mice?', previous_response_id: prev.id, max_output_tokens: 4 });
  assert.ok(fifth.usage.input_tokens_details.cached_tokens >= prev.usage.input_tokens, JSON.stringify(fifth.usage));
  assert.ok(other.id !== fifth.id);

  // The continuation is the whole conversation: the same as sending it all as chat messages.
  const history = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Tell me about cats.' },
    { role: 'assistant', content: turns[0].output_text }, { role: 'user', content: 'And dogs?' },
    { role: 'assistant', content: turns[1].output_text }, { role: 'user', content: 'And birds?' }];
  const replay = await ai.chat.completions.create({ ...base, max_tokens: 8, messages: history });
  assert.equal(replay.usage.prompt_tokens, turns[2].usage.input_tokens);
  assert.equal(replay.choices[0].message.content, turns[2].output_text);

  const got = await ai.responses.retrieve(turns[1].id);
  assert.equal(got.id, turns[1].id);
  assert.equal(got.output[0].content[0].text, turns[1].output_text);
  const deleted = await ai.responses.del(turns[1].id);
  assert.equal(deleted.deleted, true);
  await assert.rejects(ai.responses.retrieve(turns[1].id), (e) => e.status === 404 && /not found/.test(e.message));
  await assert.rejects(ai.responses.del(turns[1].id), (e) => e.status === 404);
  await assert.rejects(ai.responses.create({ ...base, input: 'x', previous_response_id: turns[1].id }),
    (e) => e.status === 404 && e.param === 'previous_response_id');

  // store: false keeps nothing.
  const unstored = await ai.responses.create({ ...base, input: 'Do not keep this.', store: false, max_output_tokens: 2 });
  assert.equal(unstored.store, false);
  await assert.rejects(ai.responses.retrieve(unstored.id), (e) => e.status === 404);

  // Known but unsupported fields are 400s naming them.
  const refused = [
    [{ input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'https://x/y.png' }] }] }, 'input[0].content[0].type'],
    [{ input: 'x', tools: [{ type: 'web_search' }] }, 'tools[0].type'],
    [{ input: 'x', background: true }, 'background'],
    [{ input: 'x', truncation: 'sometimes' }, 'truncation'],
    [{ input: [{ type: 'item_reference', id: 'msg_1' }] }, 'input[0].type'],
    [{}, 'input'],
  ];
  for (const [body, param] of refused)
    await assert.rejects(ai.responses.create({ model: MODEL, ...body }), (e) => e.status === 400 && e.param === param, param);
});

test('streaming: typed events in order, same text as unstreamed; errors as response.failed', async (t) => {
  const srv = await startServer(['--backend', 'fp32'], { model: LLAMA });
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const params = { ...base, input: [{ role: 'user', content: [{ type: 'input_text', text: 'Write a poem.' }] }], max_output_tokens: 16 };
  const full = await ai.responses.create(params);
  const events = await collect(await ai.responses.create({ ...params, stream: true }));
  events.forEach((e, i) => assert.equal(e.sequence_number, i));
  const types = events.map((e) => e.type);
  const deltas = types.filter((x) => x === 'response.output_text.delta').length;
  assert.ok(deltas > 3, 'one delta per token');
  const final = full.status === 'completed' ? 'response.completed' : 'response.incomplete';
  assert.deepEqual(types, ['response.created', 'response.in_progress', 'response.output_item.added',
    'response.content_part.added', ...Array(deltas).fill('response.output_text.delta'), 'response.output_text.done',
    'response.content_part.done', 'response.output_item.done', final]);
  const text = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
  assert.equal(text, full.output_text);
  assert.equal(events.find((e) => e.type === 'response.output_text.done').text, text);
  const done = events.at(-1).response;
  assert.equal(done.output[0].content[0].text, text);
  assert.equal(done.usage.output_tokens, full.usage.output_tokens);
  assert.equal(events[0].response.status, 'in_progress');
  // The streamed response is stored like any other.
  assert.equal((await ai.responses.retrieve(done.id)).output_text, text);

  // The SDK's stream helper accumulates the same final response.
  const helper = ai.responses.stream(params);
  const helped = await helper.finalResponse();
  assert.equal(helped.output[0].content[0].text, full.output_text);
});

test('a shutdown mid-stream: raw events end with error then response.failed', async (t) => {
  const srv = await startServer(['--backend', 'fp32', '--drain-timeout', '0'], { model: LLAMA });
  t.after(() => srv.stop());
  const res = await fetch(srv.url + '/v1/responses', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, input: 'Go on.', max_output_tokens: 4000, ignore_eos: true, stream: true }) });
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  const reader = res.body.getReader();
  let raw = '';
  let killed = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    raw += new TextDecoder().decode(value);
    if (!killed && raw.includes('response.output_text.delta')) { srv.proc.kill('SIGTERM'); killed = true; }
  }
  const events = raw.trim().split('\n\n').map((block) => {
    const [ev, data] = block.split('\n');
    return { event: ev.slice('event: '.length), data: JSON.parse(data.slice('data: '.length)) };
  });
  for (const e of events) assert.equal(e.event, e.data.type);
  assert.deepEqual(events.slice(-2).map((e) => e.event), ['error', 'response.failed']);
  assert.equal(events.at(-2).data.code, 'server_shutting_down');
  assert.equal(events.at(-1).data.response.status, 'failed');
  assert.equal(events.at(-1).data.response.error.code, 'server_shutting_down');
  events.forEach((e, i) => assert.equal(e.data.sequence_number, i));
});

const weather = {
  type: 'function', name: 'get_weather', description: 'Current weather for a city',
  parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 12 }, days: { type: 'integer', minimum: 1, maximum: 7 } },
    required: ['city', 'days'], additionalProperties: false },
};

test('tools: function_call items, function_call_output continuation, text.format', async (t) => {
  const srv = await startServer(['--backend', 'fp32'], { model: LLAMA });
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const validate = ajv.compile(weather.parameters);
  const params = { ...base, input: 'Weather in Paris for 3 days?', tools: [weather], tool_choice: 'required', max_output_tokens: 80 };

  const r = await ai.responses.create(params);
  assert.equal(r.status, 'completed');
  const calls = r.output.filter((o) => o.type === 'function_call');
  assert.equal(calls.length, 1);
  assert.equal(calls[0].name, 'get_weather');
  assert.match(calls[0].call_id, /^call_/);
  assert.ok(validate(JSON.parse(calls[0].arguments)), JSON.stringify(validate.errors));
  assert.equal(r.output_text, '');

  // Streamed: the call's item, its argument deltas, done events; the same call.
  const events = await collect(await ai.responses.create({ ...params, stream: true }));
  const types = events.map((e) => e.type);
  assert.equal(types[2], 'response.output_item.added');
  assert.equal(events[2].item.type, 'function_call');
  assert.equal(events[2].item.name, 'get_weather');
  const args = events.filter((e) => e.type === 'response.function_call_arguments.delta').map((e) => e.delta).join('');
  assert.equal(args, calls[0].arguments);
  assert.equal(events.find((e) => e.type === 'response.function_call_arguments.done').arguments, args);
  assert.deepEqual(types.slice(-3), ['response.function_call_arguments.done', 'response.output_item.done', 'response.completed']);
  assert.equal(events.at(-1).response.output[0].call_id, events[2].item.call_id);
  assert.equal(events.at(-1).response.output[0].arguments, args);

  // The tool's result continues the stored conversation; an unknown call_id is a 400.
  const next = await ai.responses.create({ ...base, tools: [weather], previous_response_id: r.id, max_output_tokens: 6,
    input: [{ type: 'function_call_output', call_id: calls[0].call_id, output: '{"temp_c": 21}' }] });
  assert.ok(next.output_text.length > 0);
  assert.ok(next.usage.input_tokens_details.cached_tokens >= r.usage.input_tokens, JSON.stringify(next.usage));
  await assert.rejects(ai.responses.create({ ...base, previous_response_id: r.id,
    input: [{ type: 'function_call_output', call_id: 'call_nope', output: 'x' }] }), (e) => e.status === 400);

  // The same exchange sent statelessly (function_call item + output) renders the same prompt.
  const stateless = await ai.responses.create({ ...base, tools: [weather], max_output_tokens: 6, input: [
    { role: 'user', content: 'Weather in Paris for 3 days?' },
    { type: 'function_call', call_id: calls[0].call_id, name: 'get_weather', arguments: calls[0].arguments },
    { type: 'function_call_output', call_id: calls[0].call_id, output: '{"temp_c": 21}' }] });
  assert.equal(stateless.usage.input_tokens, next.usage.input_tokens);
  assert.equal(stateless.output_text, next.output_text);

  // text.format json_schema: the answer validates.
  const schema = { type: 'object', properties: { name: { type: 'string', maxLength: 10 }, age: { type: 'integer', minimum: 0, maximum: 120 } },
    required: ['name', 'age'], additionalProperties: false };
  const structured = await ai.responses.create({ ...base, input: 'A person as JSON.', max_output_tokens: 60,
    text: { format: { type: 'json_schema', name: 'person', schema, strict: true } } });
  assert.ok(ajv.validate(schema, JSON.parse(structured.output_text)), structured.output_text);
  assert.equal(structured.text.format.type, 'json_schema');
  await assert.rejects(ai.responses.create({ ...base, input: 'x', text: { format: { type: 'json_schema', name: 'bad', schema: { not: {} } } } }),
    (e) => e.status === 400 && e.code === 'unsupported_schema');
});

test('the store is an LRU bounded by --max-stored-responses', async (t) => {
  const srv = await startServer(['--backend', 'fp32', '--max-stored-responses', '2'], { model: LLAMA });
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const ids = [];
  for (const input of ['one', 'two']) ids.push((await ai.responses.create({ ...base, input, max_output_tokens: 1 })).id);
  await ai.responses.retrieve(ids[0]);  // now the most recently used
  ids.push((await ai.responses.create({ ...base, input: 'three', max_output_tokens: 1 })).id);
  await assert.rejects(ai.responses.retrieve(ids[1]), (e) => e.status === 404);  // evicted
  assert.equal((await ai.responses.retrieve(ids[0])).id, ids[0]);
  assert.equal((await ai.responses.retrieve(ids[2])).id, ids[2]);
});

test('Vercel AI SDK openai() provider and LangChain ChatOpenAI({useResponsesApi: true})', async (t) => {
  const srv = await startServer(['--backend', 'fp32'], { model: LLAMA });
  t.after(() => srv.stop());
  const ai = client(srv.url);
  const reference = await ai.responses.create({ ...base, input: 'Say hello.', max_output_tokens: 10 });

  const { generateText, streamText } = requireNode('ai');
  const { createOpenAI } = requireNode('@ai-sdk/openai');
  const provider = createOpenAI({ baseURL: srv.url + '/v1', apiKey: 'unused' });
  const model = provider(MODEL);  // the default provider call: the Responses API
  const opts = { model, prompt: 'Say hello.', maxOutputTokens: 10, temperature: 0, maxRetries: 0 };
  const generated = await generateText(opts);
  assert.equal(generated.text, reference.output_text);
  assert.equal(generated.usage.inputTokens, reference.usage.input_tokens);
  assert.equal(generated.usage.outputTokens, reference.usage.output_tokens);
  assert.match(generated.response.id, /^resp_/);

  const streamed = streamText(opts);
  let text = '';
  let parts = 0;
  for await (const piece of streamed.textStream) { text += piece; parts++; }
  assert.equal(text, reference.output_text);
  assert.ok(parts > 1);
  assert.equal((await streamed.usage).outputTokens, reference.usage.output_tokens);

  const { ChatOpenAI } = requireNode('@langchain/openai');
  const llm = new ChatOpenAI({ model: MODEL, useResponsesApi: true, temperature: 0, maxTokens: 10, maxRetries: 0,
    apiKey: 'unused', configuration: { baseURL: srv.url + '/v1' }, modelKwargs: { seed: 3 } });
  const msg = await llm.invoke('Say hello.');
  assert.equal(msg.text, reference.output_text);
  assert.match(msg.response_metadata?.id ?? msg.id ?? '', /resp_|msg_/);
  let langText = '';
  for await (const chunk of await llm.stream('Say hello.')) langText += chunk.text;
  assert.equal(langText, reference.output_text);
});
