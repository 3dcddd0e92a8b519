#!/usr/bin/env node
// End-to-end test of the chat page in a real browser (Debian's chromium via
// playwright-core) against the REAL cpuchat binary.
//
//   node tests/web/e2e.mjs [/path/to/cpuchat]        (or env CPUCHAT_BINARY)
//   node tests/web/e2e.mjs --mock                     (develop against tests/web/mock_server.mjs)
//
// Env: CPUCHAT_SHARED_DIR (models; default <repo>/../shared), ARTIFACTS_DIR (screenshots;
// default <repo>/artifacts/web), CHROMIUM (default /usr/bin/chromium), NODE_PATH or
// CPUCHAT_NODE_DIR (where playwright-core is installed; default <repo>/tests/node).
// Ends with "e2e: N passed, M failed" and exits non-zero on any failure.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const webDir = path.join(repo, 'web');
const sharedDir = process.env.CPUCHAT_SHARED_DIR || path.resolve(repo, '../shared');
const artifacts = process.env.ARTIFACTS_DIR || path.join(repo, 'artifacts/web');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const useMock = process.argv.includes('--mock');
const binary = process.argv.slice(2).find((a) => !a.startsWith('--')) || process.env.CPUCHAT_BINARY;
const modelDir = path.join(sharedDir, 'models/hf/stories260K');

let passed = 0;
let failed = 0;
const failures = [];
const log = (...a) => console.log(...a);

function finish() {
  if (failures.length) {
    log('\nfailures:');
    for (const f of failures) log(`  - ${f}`);
  }
  log(`e2e: ${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

function fatal(msg) {
  failed++;
  failures.push(msg);
  log(`FAIL setup: ${msg}`);
  finish();
  process.exit(1);
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    log(`PASS ${name} (${Date.now() - t0} ms)`);
    return true;
  } catch (err) {
    failed++;
    const msg = `${name}: ${err && err.message ? err.message.split('\n')[0] : err}`;
    failures.push(msg);
    log(`FAIL ${name}: ${err && err.stack ? err.stack : err}`);
    return false;
  }
}

// ------------------------------------------------------------------ packages & browser

function loadPlaywright() {
  const dirs = [];
  for (const p of (process.env.NODE_PATH || '').split(path.delimiter)) if (p) dirs.push(p);
  if (process.env.CPUCHAT_NODE_DIR) dirs.push(path.join(process.env.CPUCHAT_NODE_DIR, 'node_modules'));
  dirs.push(path.join(repo, 'tests/node/node_modules'));
  for (const d of dirs) {
    if (!fs.existsSync(path.join(d, 'playwright-core'))) continue;
    return createRequire(path.join(d, 'noop.js'))('playwright-core');
  }
  fatal(`playwright-core not found in ${dirs.join(', ')}: run 'npm ci' in tests/node`);
  return null;
}

if (!fs.existsSync(chromiumPath)) {
  fatal(`chromium is not installed (no ${chromiumPath}); install it with 'apt-get install -y chromium'`);
}
const { chromium } = loadPlaywright();

// ------------------------------------------------------------------ server

const children = [];
process.on('exit', () => { for (const c of children) if (c.exitCode === null) c.kill('SIGKILL'); });

function startServer(cmd, args, label) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${label}: no "listening on" line within 90 s\nstdout: ${out}\nstderr: ${err.slice(-2000)}`));
    }, 90000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/[^\s]+?)\/?(\s|$)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, base: m[1], stderr: () => err });
      }
    });
    child.stderr.on('data', (d) => { err += d; if (err.length > 200000) err = err.slice(-100000); });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited (code ${code}, signal ${sig}) before listening\nstdout: ${out.slice(-2000)}\nstderr: ${err.slice(-2000)}`));
    });
  });
}

async function waitHealthy(base, child = null, stderr = () => '') {
  const deadline = Date.now() + 60000;
  for (;;) {
    if (child && child.exitCode !== null || child && child.signalCode) {
      throw new Error(`the server exited while loading (code ${child.exitCode}, signal ${child.signalCode})\nstderr: ${stderr().slice(-1500)}`);
    }
    try {
      const res = await fetch(`${base}/health`);
      if (res.ok) return;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`${base}/health not 200 within 60 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// Raw GET that sends the path exactly as given (no URL normalisation).
function rawGet(base, rawPath) {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: rawPath, method: 'GET' }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.setTimeout(10000, () => req.destroy(new Error(`timeout GET ${rawPath}`)));
    req.end();
  });
}

async function scrapeMetrics(base) {
  const res = await fetch(`${base}/metrics`);
  const text = await res.text();
  const sum = (name, filter = () => true) => {
    let total = 0;
    let found = false;
    for (const line of text.split('\n')) {
      if (line.startsWith('#')) continue;
      const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([-+eE\d.]+|NaN)/.exec(line);
      if (m && m[1] === name && filter(m[2] || '')) { total += Number(m[3]); found = true; }
    }
    return found ? total : null;
  };
  return {
    activeStreams: sum('cpuchat_active_streams'),
    activeRequests: sum('cpuchat_active_requests'),
    generated: sum('cpuchat_generated_tokens_total'),
    cancelled: sum('cpuchat_generations_total', (l) => /finish_reason="(cancelled|abort|aborted|disconnected)"/.test(l)),
  };
}

// ------------------------------------------------------------------ start

let server;
let backends = 'int4,bf16';
if (useMock) {
  server = await startServer(process.execPath, [path.join(here, 'mock_server.mjs'), '--port', '0', '--backends', backends], 'mock server')
    .catch((e) => fatal(e.message));
  log(`server: mock (${server.base})`);
} else {
  if (!binary) fatal('no cpuchat binary: pass its path as the first argument or set CPUCHAT_BINARY');
  if (!fs.existsSync(binary)) fatal(`cpuchat binary not found at ${binary}`);
  if (!fs.existsSync(modelDir)) fatal(`model not found at ${modelDir} (set CPUCHAT_SHARED_DIR)`);
  const args = (b) => ['serve', '--model', modelDir, '--backend', b, '--port', '0', '--max-queue', '4'];
  const launch = async (b) => {
    const srv = await startServer(binary, args(b), `cpuchat serve --backend ${b}`);
    try {
      await waitHealthy(srv.base, srv.child, srv.stderr);
    } catch (e) {
      if (srv.child.exitCode === null) srv.child.kill('SIGKILL');
      throw e;
    }
    return srv;
  };
  try {
    server = await launch(backends);
  } catch (e) {
    log(`note: --backend int4,bf16 did not start (${e.message.split('\n').slice(0, 2).join(' ').slice(0, 300)}); ` +
      'falling back to --backend fp32,bf16');
    backends = 'fp32,bf16';
    server = await launch(backends).catch((e2) => fatal(e2.message));
  }
  log(`server: ${binary} serve --backend ${backends} (${server.base})`);
}
const base = server.base;
await waitHealthy(base, server.child, server.stderr).catch((e) => fatal(e.message));
fs.mkdirSync(artifacts, { recursive: true });

// ------------------------------------------------------------------ static route

await check('static files: content types, caching headers, every web/ file embedded', async () => {
  const expect = { '.html': /^text\/html/, '.js': /^(text|application)\/javascript/, '.css': /^text\/css/, '.svg': /^image\/svg\+xml/ };
  const root = await rawGet(base, '/');
  assert(root.status === 200, `GET / -> ${root.status}`);
  assert(/^text\/html/.test(root.headers['content-type'] || ''), `GET / content-type ${root.headers['content-type']}`);
  assert(root.body.includes('id="composer-input"'), 'GET / is not the chat page');
  const files = fs.readdirSync(webDir).filter((f) => expect[path.extname(f)]);
  assert(files.includes('index.html') && files.includes('app.js') && files.includes('style.css'), 'web/ is incomplete');
  for (const f of files) {
    const r = await rawGet(base, `/${f}`);
    assert(r.status === 200, `GET /${f} -> ${r.status}`);
    const ct = r.headers['content-type'] || '';
    assert(expect[path.extname(f)].test(ct), `GET /${f}: content-type '${ct}'`);
    const cache = r.headers['cache-control'] || r.headers.etag || r.headers['last-modified'];
    assert(cache, `GET /${f}: no Cache-Control / ETag / Last-Modified header`);
    assert(r.body === fs.readFileSync(path.join(webDir, f), 'utf8'), `GET /${f}: body differs from web/${f} (stale build?)`);
  }
});

await check('static files: path traversal and non-embedded paths give 404', async () => {
  const attempts = ['/../CMakeLists.txt', '/%2e%2e/etc/passwd', '/web/index.html', '/..%2fCMakeLists.txt',
    '/%2e%2e%2fCMakeLists.txt', '/.%2e/CMakeLists.txt', '/../../../../etc/passwd', '//etc/passwd',
    '/web/app.js', '/CMakeLists.txt', '/%2fetc%2fpasswd', '/index.html%00.js', '/docs/API.md'];
  for (const p of attempts) {
    const r = await rawGet(base, p);
    assert(r.status === 404, `GET ${p} -> ${r.status} (want 404)`);
    assert(!/cmake_minimum_required|root:x:0:0/.test(r.body), `GET ${p} leaked a file`);
  }
});

// ------------------------------------------------------------------ browser

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
}).catch((e) => fatal(`cannot launch chromium at ${chromiumPath}: ${e.message}`));

const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
const page = await context.newPage();
const pageErrors = [];
const foreignRequests = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) pageErrors.push(m.text()); });
page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) foreignRequests.push(r.url()); });
page.setDefaultTimeout(20000);

// Records the length of the streaming answer at every DOM change (in the page).
async function installRecorder() {
  await page.evaluate(() => {
    window.__lengths = [];
    const obs = new MutationObserver(() => {
      const bubble = [...document.querySelectorAll('#messages .msg.assistant .bubble')].pop();
      if (!bubble) return;
      const busy = bubble.getAttribute('aria-busy') === 'true';
      const body = bubble.querySelector('.bubble-body');
      const len = body.querySelector('.typing') ? 0 : body.textContent.length;
      window.__lengths.push({ busy, len, t: Math.round(performance.now()) });
    });
    obs.observe(document.querySelector('#messages'), { subtree: true, childList: true, characterData: true, attributes: true });
  });
}

async function setSetting(selector, value) {
  await page.evaluate(([sel, v]) => {
    const el = document.querySelector(sel);
    el.value = v;
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, [selector, String(value)]);
}

async function send(text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

// Adds the ignore_eos extension to the page's chat requests, so that the tiny story model
// runs to max_tokens instead of ending its story early (for the streaming and Stop checks).
async function withIgnoreEos(fn) {
  const handler = (route) => {
    const body = JSON.parse(route.request().postData() || '{}');
    body.ignore_eos = true;
    return route.continue({ postData: JSON.stringify(body) });
  };
  await page.route('**/v1/chat/completions', handler);
  try {
    return await fn();
  } finally {
    await page.unroute('**/v1/chat/completions', handler);
  }
}

const answers = () => page.locator('#messages .msg.assistant');
const waitIdle = () => page.waitForSelector('#send:not([hidden])', { timeout: 60000 });

// The stream's own speed, then the instance's throughput over all streams sharing its steps.
const METRIC_LABELS = ['Time to first token (s)', 'Decode speed (tokens/s)', 'Instance throughput (tokens/s)',
  'Cost to generate 1M tokens ($)', 'Total time (s)', 'Total cost ($)'];
let models = [];

await check('page loads: models and instances listed, no errors, labelled controls', async () => {
  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.querySelector('#model').options.length > 0 &&
    document.querySelector('#model').value !== '', null, { timeout: 20000 });
  models = await page.evaluate(() => [...document.querySelector('#model').options].map((o) => o.value));
  const apiModels = (await (await fetch(`${base}/v1/models`)).json()).data.map((m) => m.id);
  assert(JSON.stringify(models) === JSON.stringify(apiModels), `model select ${models} != /v1/models ${apiModels}`);
  await page.waitForFunction(() => document.querySelector('#instance').options.length > 1, null, { timeout: 10000 });
  const price = await page.inputValue('#price');
  assert(Number(price) > 0, `price per hour not filled (${price})`);
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter((el) => {
      if (el.type === 'hidden') return false;
      if (el.tagName === 'BUTTON') return !(el.getAttribute('aria-label') || el.textContent.trim());
      return !(el.labels && el.labels.length) && !el.getAttribute('aria-label');
    }).map((el) => el.id || el.outerHTML.slice(0, 60)));
  assert(unlabelled.length === 0, `controls without a label: ${unlabelled.join(', ')}`);
  assert(await page.getAttribute('#messages', 'aria-live'), '#messages has no aria-live');
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
});

await check('chat: Enter sends, Shift+Enter adds a line, the answer streams and the metrics show', async () => {
  await setSetting('#max-tokens', 300);
  await setSetting('#temperature', 0.8);
  await page.fill('#composer-input', 'Once upon a time');
  await page.press('#composer-input', 'Shift+Enter');
  const v = await page.inputValue('#composer-input');
  assert(v.includes('\n'), 'Shift+Enter did not insert a new line');
  assert(await answers().count() === 0, 'Shift+Enter sent the message');
  await page.fill('#composer-input', '');
  await installRecorder();
  const panel = page.locator('#messages .msg.assistant').last().locator('.metrics-panel');
  await withIgnoreEos(async () => {
    await send('Tell me a story about a little dog.');
    await panel.waitFor({ timeout: 60000 });
    await waitIdle();
  });
  const lengths = await page.evaluate(() => window.__lengths);
  const finalLen = await answers().last().locator('.bubble-body').evaluate((n) => n.textContent.length);
  const inter = [...new Set(lengths.filter((l) => l.busy && l.len > 0 && l.len < finalLen).map((l) => l.len))];
  log(`  streamed: ${inter.length} intermediate lengths, final ${finalLen} chars`);
  assert(finalLen > 0, 'the answer is empty');
  if (inter.length < 2) {
    log(`  recorded DOM changes (busy,len,t): ${lengths.slice(0, 40).map((l) => `${l.busy ? 'B' : '-'}${l.len}@${l.t}`).join(' ')}`);
  }
  assert(inter.length >= 2, `saw ${inter.length} intermediate lengths (${inter.slice(0, 10)}), want >= 2: not streamed`);

  const items = await panel.locator('.metric').evaluateAll((ns) => ns.map((n) => ({
    label: n.querySelector('dt').textContent, value: n.querySelector('.metric-value').textContent,
    cls: n.className, status: n.querySelector('.metric-status').textContent,
  })));
  assert(JSON.stringify(items.map((i) => i.label)) === JSON.stringify(METRIC_LABELS),
    `metric labels ${JSON.stringify(items.map((i) => i.label))}`);
  for (const it of items) {
    assert(/^\d[\d,]*(\.\d+)?$/.test(it.value) && Number.isFinite(Number(it.value.replace(/,/g, ''))), `${it.label}: value '${it.value}' is not a number`);
    assert(/\b(ok|bad)\b/.test(it.cls), `${it.label}: not marked ok/bad`);
    assert(/(✓|✗)\s*(Interactive|Too slow)/.test(it.status), `${it.label}: no icon+text status ('${it.status}')`);
  }
  log(`  metrics: ${items.map((i) => `${i.label}=${i.value}`).join(', ')}`);
  const bars = await page.locator('#session-chart rect.bar').count();
  assert(bars === 1, `session chart has ${bars} bars, want 1`);
  const cost = await page.textContent('#session-cost');
  assert(/^\$\d/.test(cost) && cost !== '$0', `session running cost '${cost}'`);
});

await check('chat: a second answer uses the history; the chart grows and the cost accumulates', async () => {
  const cost1 = await page.textContent('#session-cost');
  await setSetting('#max-tokens', 32);
  await send('And what happened next?');
  await page.locator('#messages .msg.assistant').nth(1).locator('.metrics-panel').waitFor({ timeout: 60000 });
  await waitIdle();
  const bars = await page.locator('#session-chart rect.bar').count();
  assert(bars === 2, `session chart has ${bars} bars, want 2`);
  const cost2 = await page.textContent('#session-cost');
  assert(Number(cost2.slice(1)) > Number(cost1.slice(1)), `running cost did not grow: ${cost1} -> ${cost2}`);
  const hist = await page.evaluate(() => window.cpuchat.state.history.length);
  assert(hist === 4, `history has ${hist} messages, want 4`);
});

await check('stop: cancels a long answer; the server stops generating', async () => {
  await page.click('#new-chat'); // a fresh context: the story model has only 512 positions
  // The slowest backend (the libtorch baseline), so that 400 tokens take long enough for
  // Stop to land mid-answer: int4 on this tiny model can finish before the page renders.
  const chatModel = await page.inputValue('#model');
  const slow = models.find((m) => /-(bf16|fp32)$/.test(m)) || chatModel;
  await setSetting('#model', slow);
  const before = await scrapeMetrics(base);
  await setSetting('#max-tokens', 400);
  // Press Stop from inside the page the moment the first token shows.
  await page.evaluate(() => {
    const obs = new MutationObserver(() => {
      const bubble = [...document.querySelectorAll('#messages .msg.assistant .bubble')].pop();
      if (bubble && bubble.classList.contains('streaming') && bubble.querySelector('.bubble-body').textContent.length > 0) {
        obs.disconnect();
        document.querySelector('#stop').click();
      }
    });
    obs.observe(document.querySelector('#messages'), { subtree: true, childList: true, characterData: true });
  });
  const n = await answers().count();
  const turn = answers().nth(n);
  await withIgnoreEos(async () => {
    await send('Tell me a very long story about a princess and a dragon.');
    await turn.locator('.tag.stopped, .metrics-panel').first().waitFor({ timeout: 30000 });
    await waitIdle();
  });
  assert(await turn.locator('.tag.stopped').count() === 1, 'the answer was not marked as stopped');
  assert(await turn.locator('.metrics-panel').count() === 0, 'a stopped answer shows final metrics (it completed?)');
  const len1 = await turn.locator('.bubble-body').evaluate((e) => e.textContent.length);
  await page.waitForTimeout(700);
  const len2 = await turn.locator('.bubble-body').evaluate((e) => e.textContent.length);
  assert(len1 === len2, `the answer kept growing after Stop (${len1} -> ${len2})`);
  let after;
  const deadline = Date.now() + 10000;
  for (;;) {
    after = await scrapeMetrics(base);
    if ((after.activeStreams ?? 0) === 0 && (after.activeRequests ?? 0) === 0) break;
    if (Date.now() > deadline) {
      throw new Error(`server still busy 10 s after Stop: active_streams=${after.activeStreams} active_requests=${after.activeRequests}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!useMock) assert(after.activeStreams !== null, '/metrics has no cpuchat_active_streams gauge');
  const generated = after.generated !== null && before.generated !== null ? after.generated - before.generated : null;
  const cancelled = after.cancelled !== null ? after.cancelled - (before.cancelled || 0) : null;
  log(`  after Stop (${slow}): active_streams=${after.activeStreams}, tokens generated=${generated ?? 'n/a'} of 400, cancelled generations +${cancelled ?? 'n/a'}`);
  if (generated !== null) assert(generated < 400, `the server generated all ${generated} tokens: it did not stop`);
  const hist = await page.evaluate(() => window.cpuchat.state.history.length);
  assert(hist === 2 || hist === 0, `history after stop has ${hist} messages`);
  await setSetting('#model', chatModel);
});

await check('XSS: user text and model output are rendered as text', async () => {
  const payload = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> **bold** `<b>code</b>`';
  await setSetting('#max-tokens', 24);
  const n = await answers().count();
  await send(payload);
  await answers().nth(n).locator('.metrics-panel, .error-box').first().waitFor({ timeout: 60000 });
  await waitIdle();
  const user = page.locator('#messages .msg.user').last();
  assert((await user.textContent()).includes('<img src=x onerror="window.__xss=1">'), 'user payload not shown literally');
  assert(await page.locator('#messages img, #messages script').count() === 0, 'an <img>/<script> element was created in the chat');

  // Hostile model output: serve one streamed answer with HTML in it.
  const evil = ['Here: <img src=x onerror="window.__xss=3">', ' and <script>window.__xss=4</script>',
    '\n\n```html\n<script>window.__xss=5</script>\n```\n\n- **ok** <b>not bold</b>',
    ' [link](javascript:window.__xss=6) <a href="javascript:window.__xss=7">x</a>'];
  const chunk = (delta, fin = null, extra = {}) => `data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', created: 0, model: 'm', choices: [{ index: 0, delta, finish_reason: fin }], ...extra })}\n\n`;
  const metrics = { ttft_s: 0.01, completion_tokens: 4, decode_tokens_per_s: 100, total_time_s: 0.05, cost_per_million_tokens_usd: 2.6, total_cost_usd: 0.00001, price_per_hour_usd: 0.9424, instance: 'r8g.4xlarge', interactive: { ttft_ok: true, decode_ok: true } };
  const body = chunk({ role: 'assistant', content: '' }) + evil.map((t) => chunk({ content: t })).join('') +
    chunk({}, 'stop', { metrics }) + 'data: [DONE]\n\n';
  await page.route('**/v1/chat/completions', (route) => route.fulfill({ status: 200, contentType: 'text/event-stream', body }));
  await send('show me some html');
  await answers().nth(n + 1).locator('.metrics-panel').waitFor();
  await page.unroute('**/v1/chat/completions');
  await waitIdle();
  const ans = answers().nth(n + 1).locator('.bubble-body');
  const text = await ans.textContent();
  assert(text.includes('<img src=x onerror="window.__xss=3">') && text.includes('<script>window.__xss=5</script>'), `hostile output not shown as text: ${text}`);
  assert(await ans.locator('img, script, b, a[href^="javascript"]').count() === 0, 'hostile markup became elements');
  assert(await ans.locator('pre code').count() === 1 && await ans.locator('strong').count() === 1 && await ans.locator('li').count() === 1,
    'markdown (code block, bold, list) not rendered');
  assert(await page.evaluate(() => window.__xss === undefined), `an XSS payload ran (window.__xss=${await page.evaluate(() => window.__xss)})`);
});

await check('markdown renderer: escapes all HTML and renders the supported syntax', async () => {
  const cases = await page.evaluate(async () => {
    const { renderMarkdown } = await import('/markdown.js');
    const root = document.createElement('div');
    const out = {};
    const probe = (name, md) => {
      root.innerHTML = renderMarkdown(md);
      const els = [...root.querySelectorAll('*')];
      const bad = els.filter((el) => ['IMG', 'SCRIPT', 'SVG', 'IFRAME', 'B', 'I', 'STYLE'].includes(el.tagName.toUpperCase()) ||
        [...el.attributes].some((a) => a.name.startsWith('on')) ||
        (el.tagName === 'A' && !/^(https?:|mailto:)/.test(el.getAttribute('href') || ''))).map((el) => el.outerHTML);
      out[name] = { html: root.innerHTML, text: root.textContent, bad };
    };
    probe('xss', '<img src=x onerror=alert(1)><script>alert(2)</script><svg onload=alert(3)>');
    probe('attr', '[a](https://x.test/"onmouseover="alert(1)) ![i](x" onerror="alert(1))');
    probe('code', '```js\nconst a = "<b>";\n```');
    probe('unclosed', '```\nstill streaming <i>');
    probe('inline', 'use `a<b>` and **bold** and *it* and _it2_ and snake_case_name');
    probe('list', '- one\n- two\n  - nested\n1. first\n2. second');
    probe('para', 'line one\nline two\n\nsecond para');
    probe('heading', '## Title\n> quote');
    return out;
  });
  for (const [name, c] of Object.entries(cases)) assert(c.bad.length === 0, `${name}: unsafe elements ${c.bad.join(' ')}`);
  assert(cases.xss.text.includes('<img src=x onerror=alert(1)>'), `xss not shown as text: ${cases.xss.html}`);
  assert(cases.attr.text.includes('onmouseover'), `attr: ${cases.attr.html}`);
  assert(/<pre>.*<code class="language-js">const a = (&quot;|")&lt;b&gt;(&quot;|");<\/code><\/pre>/s.test(cases.code.html), `code: ${cases.code.html}`);
  assert(/<pre><code>still streaming &lt;i&gt;<\/code><\/pre>/.test(cases.unclosed.html), `unclosed: ${cases.unclosed.html}`);
  assert(cases.inline.html.includes('<code>a&lt;b&gt;</code>') && cases.inline.html.includes('<strong>bold</strong>') &&
    cases.inline.html.includes('<em>it</em>') && cases.inline.html.includes('<em>it2</em>') && cases.inline.html.includes('snake_case_name'),
  `inline: ${cases.inline.html}`);
  assert(/<ul><li>one<\/li><li>two<ul><li>nested<\/li><\/ul><\/li><\/ul><ol><li>first<\/li><li>second<\/li><\/ol>/.test(cases.list.html), `list: ${cases.list.html}`);
  assert(cases.para.html === '<p>line one<br>line two</p><p>second para</p>', `para: ${cases.para.html}`);
  assert(/<h2>Title<\/h2><blockquote><p>quote<\/p><\/blockquote>/.test(cases.heading.html), `heading: ${cases.heading.html}`);
});

await check('errors: context too long (400) is readable and the page recovers', async () => {
  const n = await answers().count();
  const long = 'The cat sat on the mat and looked at the moon. '.repeat(300);
  await send(long);
  const box = answers().nth(n).locator('.error-box');
  await box.waitFor({ timeout: 30000 });
  await waitIdle();
  const t = await box.textContent();
  log(`  shown: ${t.replace(/\s+/g, ' ').slice(0, 200)}`);
  assert(/too long/i.test(t) && /\d/.test(t), `unexpected message: ${t}`);
  assert((await page.inputValue('#composer-input')).startsWith('The cat sat'), 'the message was not given back for editing');
  assert(await page.evaluate(() => window.cpuchat.state.history.every((m) => m.content.length < 5000)), 'the failed message was kept in the history');
  await page.fill('#composer-input', '');
});

await check('errors: overload 429 with Retry-After is readable and the page recovers', async () => {
  const n = await answers().count();
  await page.route('**/v1/chat/completions', (route) => route.fulfill({
    status: 429, contentType: 'application/json', headers: { 'Retry-After': '3' },
    body: JSON.stringify({ error: { message: 'server overloaded: the request queue is full', type: 'server_error', param: null, code: 'queue_full' } }),
  }));
  await send('Are you busy?');
  const box = answers().nth(n).locator('.error-box');
  await box.waitFor();
  await page.unroute('**/v1/chat/completions');
  await waitIdle();
  const t = await box.textContent();
  assert(/busy/i.test(t) && /3 s/.test(t), `unexpected message: ${t}`);
});

await check('errors: a stream cut before [DONE] is reported, partial text kept', async () => {
  const n = await answers().count();
  const chunk = (c) => `data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', created: 0, model: 'm', choices: [{ index: 0, delta: { content: c }, finish_reason: null }] })}\n\n`;
  await page.route('**/v1/chat/completions', (route) => route.fulfill({ status: 200, contentType: 'text/event-stream', body: chunk('Partial') + chunk(' answer') }));
  await page.fill('#composer-input', '');
  await send('Cut me off');
  const box = answers().nth(n).locator('.error-box');
  await box.waitFor();
  await page.unroute('**/v1/chat/completions');
  await waitIdle();
  assert((await answers().nth(n).locator('.bubble-body').textContent()).includes('Partial answer'), 'partial text lost');
  assert(/closed the stream/i.test(await box.textContent()), `unexpected message: ${await box.textContent()}`);
  await page.fill('#composer-input', '');
});

await check('errors: the page recovers: New chat clears the conversation and it answers again', async () => {
  await page.click('#new-chat');
  assert(await answers().count() === 0, 'New chat left messages');
  assert(await page.evaluate(() => window.cpuchat.state.history.length) === 0, 'New chat left history');
  assert(await page.locator('#session-chart rect.bar').count() === 0, 'New chat did not reset the session chart');
  const n = 0;
  await setSetting('#max-tokens', 32);
  await send('Tell me about the sun.');
  await answers().nth(n).locator('.metrics-panel').waitFor({ timeout: 60000 });
  await waitIdle();
});

await check('theme: toggle switches light/dark and is remembered', async () => {
  const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const light = await bg();
  await page.click('#theme-toggle');
  assert(await page.getAttribute('html', 'data-theme') === 'dark', 'toggle did not set data-theme=dark');
  const dark = await bg();
  assert(light !== dark, `background did not change (${light})`);
  await page.reload();
  await page.waitForSelector('#composer-input');
  assert(await page.getAttribute('html', 'data-theme') === 'dark', 'theme not remembered after reload');
  await page.click('#theme-toggle');
  assert(await page.getAttribute('html', 'data-theme') === 'light', 'toggle did not go back to light');
  await page.evaluate(() => { localStorage.removeItem('cpuchat.theme'); document.documentElement.removeAttribute('data-theme'); });
});

await check('keyboard: arrow keys switch views, the focus ring is visible, Escape closes the drawer', async () => {
  await page.focus('#tab-chat');
  await page.keyboard.press('ArrowRight');
  assert(await page.isVisible('#compare-view'), 'ArrowRight did not show the comparison view');
  assert(await page.evaluate(() => document.activeElement.id) === 'tab-compare', 'focus did not move to the tab');
  const ring = await page.evaluate(() => getComputedStyle(document.activeElement).boxShadow);
  assert(ring && ring !== 'none', 'no visible focus ring on the focused tab');
  await page.keyboard.press('ArrowLeft');
  assert(await page.isVisible('#chat-view'), 'ArrowLeft did not go back to the chat');
  await page.keyboard.press('Tab');
  assert(await page.evaluate(() => document.activeElement.id) === 'new-chat', 'Tab order: New chat should follow the tabs');
});

// Screenshots of a conversation in light and dark, desktop and phone.
async function screenshots() {
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.reload();
  await page.waitForFunction(() => document.querySelector('#model').value !== '');
  await setSetting('#max-tokens', 60);
  await setSetting('#temperature', 0.7);
  await send('Tell me a short story about a friendly robot.');
  await answers().first().locator('.metrics-panel').waitFor({ timeout: 60000 });
  await waitIdle();
  await send('What did the robot do next?');
  await answers().nth(1).locator('.metrics-panel').waitFor({ timeout: 60000 });
  await waitIdle();
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  const shots = [];
  for (const [w, hgt, name] of [[1280, 800, 'desktop'], [390, 844, 'phone']]) {
    await page.setViewportSize({ width: w, height: hgt });
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme });
      await page.evaluate(() => { const m = document.querySelector('#messages'); m.scrollTop = m.scrollHeight; });
      await page.waitForTimeout(150);
      const file = path.join(artifacts, `chat-${name}-${scheme}.png`);
      await page.screenshot({ path: file });
      shots.push(file);
    }
  }
  return shots;
}

await check('screenshots: desktop 1280x800 and phone 390x844, light and dark; no horizontal overflow on phone', async () => {
  const shots = await screenshots();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(overflow <= 0, `the phone layout overflows horizontally by ${overflow}px`);
  const box = await page.locator('#composer').boundingBox();
  assert(box && box.y + box.height <= 844 && box.width <= 390, 'composer not fully visible on the phone');
  // The settings drawer opens on the phone.
  await page.click('#sidebar-toggle');
  await page.locator('#sidebar').waitFor({ state: 'visible' });
  await page.waitForTimeout(300);
  await page.emulateMedia({ colorScheme: 'light' });
  await page.screenshot({ path: path.join(artifacts, 'settings-phone-light.png') });
  await page.keyboard.press('Escape');
  await page.setViewportSize({ width: 1280, height: 800 });
  for (const f of shots) assert(fs.statSync(f).size > 10000, `${f} looks empty`);
  log(`  saved ${shots.length + 1} screenshots in ${artifacts}`);
});

await check(`before/after comparison (${backends}): both backends, same prompt, side-by-side bar charts`, async () => {
  await page.click('#tab-compare');
  assert(await page.isVisible('#compare-view'), 'compare view not shown');
  const sel = await page.evaluate(() => [document.querySelector('#compare-before').value, document.querySelector('#compare-after').value]);
  const bk = backends.split(',');
  const baseline = bk.includes('bf16') ? 'bf16' : bk[1];
  assert(sel[0].endsWith(`-${baseline}`), `baseline select is ${sel[0]}, want the ${baseline} model`);
  assert(sel[0] !== sel[1], 'before and after are the same model');
  if (bk.includes('int4')) assert(sel[1].endsWith('-int4'), `after select is ${sel[1]}, want int4`);
  else assert(await page.isVisible('#compare-notice'), 'no notice that int4 is not loaded');
  await page.fill('#compare-max-tokens', '64');
  await page.click('#compare-run');
  await page.waitForFunction(() => /complete/i.test(document.querySelector('#compare-status').textContent) ||
    document.querySelector('#compare-status').classList.contains('error'), null, { timeout: 120000 });
  const status = await page.textContent('#compare-status');
  assert(/complete/i.test(status), `comparison failed: ${status}`);
  for (const col of ['#compare-col-before', '#compare-col-after']) {
    const labels = await page.locator(`${col} .metric dt`).allTextContents();
    assert(JSON.stringify(labels) === JSON.stringify(METRIC_LABELS), `${col} metrics ${labels}`);
  }
  for (const svg of ['#compare-chart-speed', '#compare-chart-ttft']) {
    const n = await page.locator(`${svg} rect.bar`).count();
    assert(n === 2, `${svg} has ${n} bars, want 2`);
  }
  const summary = await page.textContent('#compare-summary');
  assert(/×/.test(summary), `no speedup summary: ${summary}`);
  log(`  summary: ${summary.replace(/\s+/g, ' ').slice(0, 220)}`);
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.waitForTimeout(100);
    await page.screenshot({ path: path.join(artifacts, `compare-desktop-${scheme}.png`) });
  }
  await page.setViewportSize({ width: 390, height: 844 });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.evaluate(() => { document.querySelector('#compare-results').scrollIntoView(); });
  await page.screenshot({ path: path.join(artifacts, 'compare-phone-light.png') });
  await page.setViewportSize({ width: 1280, height: 800 });
});

await check('before/after with one backend: the page says how to start both', async () => {
  const p2 = await context.newPage();
  const all = (await (await fetch(`${base}/v1/models`)).json()).data;
  await p2.route('**/v1/models', (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ object: 'list', data: all.slice(0, 1) }) }));
  await p2.goto(`${base}/`);
  await p2.click('#tab-compare');
  await p2.locator('#compare-notice').waitFor({ state: 'visible' });
  const t = await p2.textContent('#compare-notice');
  assert(t.includes('cpuchat serve --model PATH --backend int4,bf16'), `notice: ${t}`);
  assert(await p2.isDisabled('#compare-run'), 'Run is enabled with one backend');
  await p2.close();
});

await check('offline: the page made no request outside the server', async () => {
  assert(foreignRequests.length === 0, `external requests: ${foreignRequests.join(', ')}`);
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
});

await check('errors: server gone gives a readable message and the page recovers', async () => {
  await page.click('#tab-chat');
  const n = await answers().count();
  server.child.kill('SIGTERM');
  await new Promise((resolve) => {
    if (server.child.exitCode !== null) resolve();
    server.child.once('exit', resolve);
    setTimeout(() => { server.child.kill('SIGKILL'); resolve(); }, 5000);
  });
  await send('Are you still there?');
  const box = answers().nth(n).locator('.error-box');
  await box.waitFor({ timeout: 20000 });
  await waitIdle();
  const t = await box.textContent();
  assert(/can't reach the server/i.test(t), `unexpected message: ${t}`);
  assert(await page.isEnabled('#send') && await page.isEditable('#composer-input'), 'composer not usable after the error');
});

await browser.close();
for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
finish();
