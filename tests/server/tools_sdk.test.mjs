// Tool calling and structured outputs through the official OpenAI JS SDK against the real
// `cpuchat serve`, on the trained stories260K (SentencePiece, plain template) and on
// llama31-tiny-random (Llama 3's 128K byte-level BPE, Llama 3.1 template). Both models write
// nonsense: the constraint, not the model, must guarantee the shape. Arguments and answers
// are checked with ajv (an independent JSON Schema validator) and zod.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';

import { loadOpenAI, startServer } from './server_harness.mjs';

const OpenAI = loadOpenAI();
const requireNode = createRequire(path.join(process.env.CPUCHAT_NODE_DIR, 'node_modules', 'noop.js'));
const Ajv = requireNode('ajv').default ?? requireNode('ajv');
const { z } = requireNode('zod');
const { zodResponseFormat } = requireNode('openai/helpers/zod');
const ajv = new Ajv({ strict: false });

const shared = path.resolve(path.dirname(process.env.CPUCHAT_TEST_MODEL), '..', '..');
const MODELS = [
  { name: 'stories260K', path: process.env.CPUCHAT_TEST_MODEL },
  { name: 'llama31-tiny-random', path: path.join(shared, 'models', 'meta', 'llama31-tiny-random') },
];

const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string', maxLength: 20 },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
        days: { type: 'integer', minimum: 1, maximum: 7 },
      },
      required: ['city', 'days'],
      additionalProperties: false,
    },
  },
};
const time = {
  type: 'function',
  function: {
    name: 'get_time',
    parameters: { type: 'object', properties: { zone: { type: 'string', pattern: '^[A-Z][a-z]+/[A-Z][a-z]+$' } }, required: ['zone'] },
  },
};
const validators = { get_weather: ajv.compile(weather.function.parameters), get_time: ajv.compile(time.function.parameters) };

function client(url) {
  return new OpenAI({ baseURL: url + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 60000 });
}

function checkCall(call, allowed) {
  assert.equal(call.type, 'function');
  assert.match(call.id, /^call_/);
  assert.ok(allowed.includes(call.function.name), call.function.name);
  const args = JSON.parse(call.function.arguments);
  const validate = validators[call.function.name];
  assert.ok(validate(args), JSON.stringify(validate.errors) + ' ' + call.function.arguments);
  return args;
}

async function expect400(promise, pattern, param) {
  await assert.rejects(promise, (e) => {
    assert.equal(e.status, 400, String(e));
    assert.match(e.error?.message ?? e.message, pattern);
    if (param) assert.equal(e.error?.param, param);
    return true;
  });
}

for (const m of MODELS) {
  test(`structured outputs and tool calls (${m.name})`, async (t) => {
    const srv = await startServer(['--backend', 'fp32'], { model: m.path });
    t.after(() => srv.stop());
    const ai = client(srv.url);
    const model = path.basename(m.path);
    const ask = [{ role: 'user', content: 'Tell me about a person.' }];

    // parse() with a zod schema: a parsed object on every seed; ajv agrees with zod.
    const Person = z.object({
      name: z.string().max(16),
      age: z.number().int().min(0).max(120),
      city: z.enum(['Oslo', 'Rome', 'Paris']),
      tags: z.array(z.string().max(8)).max(3),
      married: z.boolean().nullable(),
    });
    const format = zodResponseFormat(Person, 'person');
    const validatePerson = ajv.compile(format.json_schema.schema);
    for (let seed = 0; seed < 20; seed++) {
      const r = await ai.beta.chat.completions.parse({ model, messages: ask, response_format: format, seed, temperature: 1, max_tokens: 120 });
      const parsed = r.choices[0].message.parsed;
      assert.ok(parsed, `seed ${seed}: ${r.choices[0].message.content}`);
      assert.ok(validatePerson(JSON.parse(r.choices[0].message.content)), JSON.stringify(validatePerson.errors));
      assert.equal(r.choices[0].finish_reason, 'stop');
    }

    // json_object: any JSON object, streamed or not, the same text either way.
    const jo = { model, messages: ask, response_format: { type: 'json_object' }, seed: 3, temperature: 0.9, max_tokens: 60 };
    const full = await ai.chat.completions.create(jo);
    const obj = JSON.parse(full.choices[0].message.content);
    assert.equal(typeof obj, 'object');
    assert.ok(!Array.isArray(obj) && obj !== null);
    let streamed = '';
    for await (const c of await ai.chat.completions.create({ ...jo, stream: true })) streamed += c.choices[0]?.delta?.content ?? '';
    assert.equal(streamed, full.choices[0].message.content);

    // A tight budget still ends with a complete document (finish_reason says it was cut).
    const tight = await ai.chat.completions.create({ ...jo, response_format: format, max_tokens: 70, temperature: 1.5, seed: 11 });
    assert.ok(validatePerson(JSON.parse(tight.choices[0].message.content)), tight.choices[0].message.content);

    // tool_choice "required" and a named function, non-streamed and streamed (the SDK's
    // stream helper assembles the deltas): the same calls, arguments valid.
    for (const [choice, allowed] of [['required', ['get_weather', 'get_time']], [{ type: 'function', function: { name: 'get_time' } }, ['get_time']]]) {
      for (let seed = 0; seed < 4; seed++) {
        const req = { model, messages: [{ role: 'user', content: 'Weather in Oslo?' }], tools: [weather, time], tool_choice: choice, seed, temperature: 1, max_tokens: 80 };
        const r = await ai.chat.completions.create(req);
        const msg = r.choices[0].message;
        assert.equal(r.choices[0].finish_reason, 'tool_calls');
        assert.equal(msg.content, null);
        assert.equal(msg.tool_calls.length, 1);
        checkCall(msg.tool_calls[0], allowed);

        const stream = ai.beta.chat.completions.stream(req);
        const deltas = [];
        stream.on('chunk', (c) => deltas.push(c));
        const final = await stream.finalChatCompletion();
        const sm = final.choices[0].message;
        assert.equal(final.choices[0].finish_reason, 'tool_calls');
        assert.equal(sm.tool_calls.length, 1);
        checkCall(sm.tool_calls[0], allowed);
        assert.equal(sm.tool_calls[0].function.name, msg.tool_calls[0].function.name);
        assert.equal(sm.tool_calls[0].function.arguments, msg.tool_calls[0].function.arguments);
        const first = deltas.find((c) => c.choices[0]?.delta?.tool_calls);
        assert.equal(first.choices[0].delta.tool_calls[0].index, 0);
        assert.equal(first.choices[0].delta.tool_calls[0].function.name, sm.tool_calls[0].function.name);
      }
    }

    // A multi-turn tool conversation: call -> result -> answer, through the SDK's runTools
    // (which runs our function with the parsed arguments) and then by hand.
    let ran = null;
    const runner = ai.beta.chat.completions.runTools({
      model, messages: [{ role: 'user', content: 'Weather in Oslo?' }], seed: 1, temperature: 1, max_tokens: 80,
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      tools: [{ type: 'function', function: { ...weather.function, function: (args) => { ran = args; return { temp: 3 }; }, parse: JSON.parse } }],
    });
    await runner.done();
    const messages = runner.messages;
    assert.ok(ran && validators.get_weather(ran), JSON.stringify(ran));
    const call = messages.find((x) => x.role === 'assistant' && x.tool_calls?.length);
    const result = messages.find((x) => x.role === 'tool');
    assert.ok(call && result);
    const answer = await ai.chat.completions.create({
      model, tools: [weather], seed: 2, max_tokens: 24,
      messages: [{ role: 'user', content: 'Weather in Oslo?' }, call, result, { role: 'user', content: 'And tomorrow?' }],
    });
    assert.ok(['stop', 'length', 'tool_calls'].includes(answer.choices[0].finish_reason));
    assert.ok(answer.choices[0].message.content !== undefined);
    // Two calls in one turn in the history render (Llama 3.1 makes one per turn).
    const two = await ai.chat.completions.create({
      model, tools: [weather], tool_choice: 'none', max_tokens: 8, seed: 2,
      messages: [{ role: 'user', content: 'Oslo and Rome?' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'a', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo","days":1}' } },
          { id: 'b', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome","days":1}' } }] },
        { role: 'tool', tool_call_id: 'a', content: '3C' }, { role: 'tool', tool_call_id: 'b', content: '20C' }],
    });
    assert.equal(typeof two.choices[0].message.content, 'string');

    // The `grammar` extension (GBNF), on both endpoints.
    const g = await ai.chat.completions.create({ model, messages: ask, grammar: 'root ::= ("yes" | "no") " " [0-9]{2}', max_tokens: 10, temperature: 1, seed: 5 });
    assert.match(g.choices[0].message.content, /^(yes|no) [0-9]{2}$/);
    const gc = await ai.completions.create({ model, prompt: 'Once', grammar: 'root ::= [a-z]{3,5} "."', max_tokens: 8, temperature: 1, seed: 5 });
    assert.match(gc.choices[0].text, /^[a-z]{3,5}\.$/);

    // logit_bias: +100 forces one token at every step, -100 bans it.
    const forced = await ai.completions.create({ model, prompt: 'Once', max_tokens: 5, temperature: 0, logprobs: 1, logit_bias: { 300: 100 } });
    const tokens = forced.choices[0].logprobs.tokens;
    assert.equal(tokens.length, 5);
    assert.ok(tokens.slice(1).every((x) => x === tokens[1]), JSON.stringify(tokens));
    const free = await ai.completions.create({ model, prompt: 'Once', max_tokens: 3, temperature: 0, logprobs: 1 });
    const banned = await ai.completions.create({ model, prompt: 'Once', max_tokens: 3, temperature: 0, logprobs: 1, logit_bias: { 300: -100 } });
    assert.ok(!banned.choices[0].logprobs.tokens.includes(tokens[1]) || tokens[1] !== free.choices[0].logprobs.tokens[0]);

    // Bad input: 400 with a message naming the problem.
    await expect400(ai.chat.completions.create({ model, messages: ask, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'number', multipleOf: 3 } } } }), /multipleOf/, 'response_format.json_schema.schema');
    await expect400(ai.chat.completions.create({ model, messages: ask, tools: [weather], tool_choice: { type: 'function', function: { name: 'nope' } } }), /nope/, 'tool_choice');
    // n > 1 with a forced tool call: every choice calls it, each call with an id of its own.
    // (max_tokens as in the cases above: unbounded, a random model's arguments can run to the context end.)
    const twoCalls = await ai.chat.completions.create({ model, messages: ask, tools: [weather], n: 2, temperature: 1, seed: 3,
      max_tokens: 80, tool_choice: { type: 'function', function: { name: weather.function.name } } });
    assert.deepEqual(twoCalls.choices.map((c) => c.index), [0, 1]);
    for (const c of twoCalls.choices) {
      assert.equal(c.finish_reason, 'tool_calls');
      assert.equal(c.message.tool_calls[0].function.name, weather.function.name);
      assert.equal(typeof JSON.parse(c.message.tool_calls[0].function.arguments), 'object');
    }
    assert.notEqual(twoCalls.choices[0].message.tool_calls[0].id, twoCalls.choices[1].message.tool_calls[0].id);
    await expect400(ai.chat.completions.create({ model, messages: ask, tools: [weather], n: 0 }), /n/, 'n');
    await expect400(ai.chat.completions.create({ model, messages: [...ask, { role: 'tool', content: 'x', tool_call_id: 'c' }] }), /tool result/);
    await expect400(ai.chat.completions.create({ model, messages: [...ask, { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }] }, { role: 'tool', content: 'x', tool_call_id: 'd' }] }), /does not match/, 'messages[2].tool_call_id');
    await expect400(ai.chat.completions.create({ model, messages: [...ask, { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: 'not json' } }] }] }), /JSON object/);
    await expect400(ai.chat.completions.create({ model, messages: ask, response_format: format, max_tokens: 10 }), /shortest valid answer/, 'max_tokens');
    await expect400(ai.chat.completions.create({ model, messages: ask, tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { not: {} } } } } }] }), /'not'/, 'tools[0].function.parameters');
    await expect400(ai.chat.completions.create({ model, messages: ask, logit_bias: { 1: 101 } }), /\[-100, 100\]/, 'logit_bias');
    await expect400(ai.chat.completions.create({ model, messages: ask, logit_bias: { 99999999: 1 } }), /vocabulary/, 'logit_bias');
    await expect400(ai.chat.completions.create({ model, messages: ask, response_format: { type: 'json_object' }, stop: ['x'] }), /stop/, 'stop');
    await expect400(ai.chat.completions.create({ model, messages: ask, grammar: 'root ::= root "a" | "b"' }), /left-recursive/, 'grammar');
    await expect400(ai.chat.completions.create({ model, messages: ask, response_format: { type: 'xml' } }), /response_format/);
    await expect400(ai.chat.completions.create({ model, messages: ask, tool_choice: 'required' }), /requires 'tools'/, 'tool_choice');
  });
}
