// Unit tests of the page's browser-free modules (markdown, number formatting, the SSE
// client), run with node's test runner: node --test tests/web/unit.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');
// The modules are plain ES modules without imports of their own; loading them from a
// data: URL works whatever node decides about the .js extension.
const load = (name) => import(`data:text/javascript;base64,${fs.readFileSync(path.join(webDir, name)).toString('base64')}`);

const { renderMarkdown, escapeHtml, renderToolCalls, toolCallsInText } = await load('markdown.js');
const { fmtNum, fmtUsd, fmtSpeed, answerMetrics } = await load('format.js');
const api = await load('api.js');

test('escapeHtml escapes the five HTML characters', () => {
  assert.equal(escapeHtml(`<a href="x" title='y'>&</a>`), '&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;');
});

test('markdown: raw HTML never becomes markup', () => {
  for (const evil of ['<img src=x onerror=alert(1)>', '<script>alert(1)</script>', '<svg/onload=alert(1)>',
    '**<b>x</b>**', '`<i>`', '```\n</code></pre><script>x</script>\n```', '- <iframe src=x>',
    '[x](javascript:alert(1))', '[x](https://a.b/" onclick="alert(1))', '> <style>*{}</style>']) {
    const html = renderMarkdown(evil);
    assert.doesNotMatch(html, /<(img|script|svg|iframe|style|b|i)[\s>/]/i, `${evil} -> ${html}`);
    assert.doesNotMatch(html, /<a [^>]*href="javascript/i, `${evil} -> ${html}`);
    assert.doesNotMatch(html, /<[^>]*\son\w+\s*=/i, `${evil} -> ${html}`);
  }
});

test('markdown: supported syntax', () => {
  assert.equal(renderMarkdown('Hello **bold** and *it* and `x<y`'),
    '<p>Hello <strong>bold</strong> and <em>it</em> and <code>x&lt;y</code></p>');
  assert.equal(renderMarkdown('a\nb\n\nc'), '<p>a<br>b</p><p>c</p>');
  assert.equal(renderMarkdown('```py\nprint("<hi>")\n```'),
    '<pre><span class="code-lang">py</span><code class="language-py">print(&quot;&lt;hi&gt;&quot;)</code></pre>');
  assert.equal(renderMarkdown('```\nopen fence while streaming'), '<pre><code>open fence while streaming</code></pre>');
  assert.equal(renderMarkdown('- a\n- b\n  - c\n\n1. x\n2. y'),
    '<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><ol><li>x</li><li>y</li></ol>');
  assert.equal(renderMarkdown('3. three\n4. four'), '<ol start="3"><li>three</li><li>four</li></ol>');
  assert.equal(renderMarkdown('# T\n---\n> q'), '<h1>T</h1><hr><blockquote><p>q</p></blockquote>');
  assert.equal(renderMarkdown('snake_case_word and 2*3*4'), '<p>snake_case_word and 2*3*4</p>');
  assert.equal(renderMarkdown('[site](https://example.com/a?b=1&c=2)'),
    '<p><a href="https://example.com/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">site</a></p>');
  assert.equal(renderMarkdown(''), '');
  assert.equal(renderMarkdown(null), '');
});

test('number formatting: plain decimals, never exponent notation', () => {
  assert.equal(fmtNum(0.0000236), '0.0000236');
  assert.equal(fmtNum(850.2), '850');
  assert.equal(fmtNum(0.31), '0.31');
  assert.equal(fmtNum(12345), '12,345');
  assert.equal(fmtNum(NaN), '–');
  assert.equal(fmtUsd(0.000183), '$0.000183');
});

test('answer metrics: labelled and judged against the interactive bar', () => {
  const m = { ttft_s: 1.5, decode_tokens_per_s: 9, completion_tokens: 11, total_time_s: 2.6,
    cost_per_million_tokens_usd: 29, total_cost_usd: 0.0007, price_per_hour_usd: 0.9424, instance: 'r8g.4xlarge' };
  const items = answerMetrics(m);
  assert.deepEqual(items.map((i) => i.label), ['Time to first token (s)', 'Decode speed (tokens/s)',
    'Cost to generate 1M tokens ($)', 'Total time (s)', 'Total cost ($)']);
  assert.deepEqual(items.map((i) => i.ok), [false, false, false, false, false]);
  const fast = answerMetrics({ ...m, ttft_s: 0.2, decode_tokens_per_s: 50, total_time_s: 0.4 });
  assert.deepEqual(fast.map((i) => i.ok), [true, true, true, true, true]);
  // Batched answers also show the instance's aggregate throughput, after the stream's own.
  const shared = answerMetrics({ ...m, instance_decode_tokens_per_s: 72, mean_batch_size: 8 });
  assert.deepEqual(shared.map((i) => i.key), ['ttft', 'decode', 'instance', 'cost1m', 'total', 'cost']);
  assert.equal(shared[2].value, fmtSpeed(72));
  assert.match(shared[3].bar, /8(\.0)? streams/);
  // The server's own verdict wins when given.
  const srv = answerMetrics({ ...m, interactive: { ttft_ok: true, decode_ok: true } });
  assert.equal(srv[0].ok, true);
  assert.equal(srv[1].ok, true);
});

function streamOf(parts) {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(c) { for (const p of parts) c.enqueue(enc.encode(p)); c.close(); },
  });
}

test('SSE parser: events split anywhere, CRLF, comments, multi-line data', async () => {
  const text = ': comment\r\ndata: {"a":1}\r\n\r\ndata: line1\ndata: line2\n\nevent: x\ndata: [DONE]\n\n';
  const parts = [];
  for (let i = 0; i < text.length; i += 3) parts.push(text.slice(i, i + 3));
  const got = [];
  for await (const d of api.sseData(streamOf(parts))) got.push(d);
  assert.deepEqual(got, ['{"a":1}', 'line1\nline2', '[DONE]']);
});

test('SSE parser: a multi-byte UTF-8 character split across reads', async () => {
  const bytes = new TextEncoder().encode('data: {"c":"é😀"}\n\n');
  const body = new ReadableStream({ start(c) { for (const b of bytes) c.enqueue(new Uint8Array([b])); c.close(); } });
  const got = [];
  for await (const d of api.sseData(body)) got.push(JSON.parse(d).c);
  assert.deepEqual(got, ['é😀']);
});

function withFetch(impl, fn) {
  const orig = globalThis.fetch;
  globalThis.fetch = impl;
  return fn().finally(() => { globalThis.fetch = orig; });
}
const chunk = (delta, fin = null, extra = {}) =>
  `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: fin }], ...extra })}\n\n`;

test('streamChat: deltas, the finish chunk with metrics, usage; request shape', async () => {
  let sent;
  const body = chunk({ role: 'assistant', content: '' }) + chunk({ content: 'Hel' }) + chunk({ content: 'lo' }) +
    chunk({}, 'stop', { metrics: { ttft_s: 0.1 } }) +
    `data: ${JSON.stringify({ choices: [], usage: { completion_tokens: 2 } })}\n\ndata: [DONE]\n\n`;
  await withFetch(async (url, init) => { sent = { url, init }; return new Response(streamOf([body]), { status: 200 }); }, async () => {
    const evs = [];
    for await (const e of api.streamChat({ model: 'm', messages: [] })) evs.push(e);
    assert.deepEqual(evs, [{ type: 'delta', text: 'Hel' }, { type: 'delta', text: 'lo' },
      { type: 'finish', reason: 'stop', metrics: { ttft_s: 0.1 } }, { type: 'usage', usage: { completion_tokens: 2 } }]);
  });
  assert.equal(sent.url, '/v1/chat/completions');
  const req = JSON.parse(sent.init.body);
  assert.equal(req.stream, true);
  assert.deepEqual(req.stream_options, { include_usage: true });
});

test('streamChat: HTTP errors carry status, code and Retry-After', async () => {
  await withFetch(async () => new Response(JSON.stringify({ error: { message: 'queue full', type: 'server_error', code: 'queue_full' } }),
    { status: 429, headers: { 'Retry-After': '5' } }), async () => {
    await assert.rejects(async () => { for await (const _ of api.streamChat({})) { /* none */ } }, (e) => {
      assert.equal(e.status, 429);
      assert.equal(e.retryAfter, 5);
      assert.match(api.describeError(e).detail, /queue full\. Try again in 5 s\./);
      return true;
    });
  });
});

test('streamChat: an error event inside the stream, and a stream cut before [DONE]', async () => {
  const errBody = chunk({ content: 'a' }) + `data: {"error":{"message":"boom","type":"server_error"}}\n\ndata: [DONE]\n\n`;
  await withFetch(async () => new Response(streamOf([errBody])), async () => {
    await assert.rejects(async () => { for await (const _ of api.streamChat({})) { /* drain */ } }, /boom/);
  });
  await withFetch(async () => new Response(streamOf([chunk({ content: 'a' })])), async () => {
    await assert.rejects(async () => { for await (const _ of api.streamChat({})) { /* drain */ } },
      (e) => e.status === 0 && /closed the stream/.test(e.message));
  });
  await withFetch(async () => { throw new TypeError('Failed to fetch'); }, async () => {
    await assert.rejects(async () => { for await (const _ of api.streamChat({})) { /* drain */ } },
      (e) => e.status === 0 && /Can't reach the server/.test(api.describeError(e).title));
  });
});

test('tool calls render as a block: name and pretty-printed, escaped arguments', () => {
  const html = renderToolCalls([{ name: 'get_weather', arguments: '{"city":"<Oslo>","days":2}' }]);
  assert.match(html, /^<div class="tool-call">/);
  assert.match(html, /<code>get_weather<\/code>/);
  assert.ok(html.includes('{\n  &quot;city&quot;: &quot;&lt;Oslo&gt;&quot;,\n  &quot;days&quot;: 2\n}'), html);
  // Still streaming: shown as it is.
  assert.ok(renderToolCalls([{ name: 'f', arguments: '{"a": 1' }]).includes('{&quot;a&quot;: 1'));
  assert.doesNotMatch(renderToolCalls([{ name: '<img src=x onerror=alert(1)>', arguments: '' }]), /<img/);
});

test('a Llama 3.1 call written as text is recognised', () => {
  assert.deepEqual(toolCallsInText(' {"name": "f", "parameters": {"x": 1}}'), [{ name: 'f', arguments: '{"x":1}' }]);
  assert.deepEqual(toolCallsInText('<|python_tag|>{"name": "g", "arguments": {}}'), [{ name: 'g', arguments: '{}' }]);
  assert.equal(toolCallsInText('{"name": "f"}'), null);
  assert.equal(toolCallsInText('Hello {"name": "f", "parameters": {}}'), null);
  assert.equal(toolCallsInText('{"name": "f", "parameters": {'), null);
});

test('streamChat: tool-call deltas', async () => {
  const body = chunk({ role: 'assistant', content: '' }) +
    chunk({ tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }] }) +
    chunk({ tool_calls: [{ index: 0, function: { arguments: '{"a":' } }] }) +
    chunk({ tool_calls: [{ index: 0, function: { arguments: ' 1}' } }] }) + chunk({}, 'tool_calls') + 'data: [DONE]\n\n';
  await withFetch(async () => new Response(streamOf([body]), { status: 200 }), async () => {
    const evs = [];
    for await (const e of api.streamChat({ messages: [] })) evs.push(e);
    assert.deepEqual(evs, [
      { type: 'tool_call', index: 0, id: 'call_1', name: 'f', arguments: '' },
      { type: 'tool_call', index: 0, id: null, name: null, arguments: '{"a":' },
      { type: 'tool_call', index: 0, id: null, name: null, arguments: ' 1}' },
      { type: 'finish', reason: 'tool_calls', metrics: null }]);
  });
});
