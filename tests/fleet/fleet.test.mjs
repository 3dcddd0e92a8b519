// The fleet, end to end on 127.0.0.1: three `cpuchat serve` replicas of the tiny model
// behind a real nginx running deploy/nginx/cpuchat.conf, and a real Prometheus running
// deploy/prometheus/prometheus.yml with its recording rules. Scenarios (issue 15):
//   1. two 4-turn conversations with different X-Session-Id: each stays on one replica
//      (X-Cpuchat-Instance) and turns 2-4 find the previous turn's prompt cached;
//   2. Prometheus' summed cpuchat_generated_tokens_total = the tokens the clients received;
//   3. SIGTERM a replica while it streams: its streams finish normally, new requests go to
//      the others, nothing fails, the replica exits 0;
//   4. kill -9 a replica: requests that had not started streaming are retried by nginx;
//      zero of them fail;
//   5. a second SIGTERM during a drain exits at once (status 1).
// Env (set by CTest): CPUCHAT_BINARY, CPUCHAT_TEST_MODEL, CPUCHAT_SOURCE_DIR, CPUCHAT_NGINX,
// CPUCHAT_PROMETHEUS.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { startServer } from '../server/server_harness.mjs';

const SOURCE = process.env.CPUCHAT_SOURCE_DIR;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cpuchat-fleet-'));
const children = [];  // everything we started, stopped on the way out
const log = (...a) => console.log('[fleet]', ...a);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Replaces the lines between "# BEGIN <tag>" and "# END" (markers kept) in `text`.
function replaceBetween(text, tag, lines) {
  const re = new RegExp(`(# BEGIN ${tag}[^\\n]*\\n)[\\s\\S]*?(\\n[ \\t]*# END)`, 'g');
  const hits = text.match(re)?.length ?? 0;
  assert.ok(hits > 0, `no "# BEGIN ${tag}" block to rewrite`);
  return text.replace(re, (_, begin, end) => begin + lines.join('\n') + end);
}

async function waitFor(what, fn, timeoutMs, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last.ok) return last;
    } catch (e) {
      last = { error: String(e) };
    }
    if (Date.now() > deadline) throw new Error(`${what}: not reached in ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
    await sleep(intervalMs);
  }
}

function startDaemon(name, cmd, args) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (d) => { output += d; });
  proc.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const d = { name, proc, exited, output: () => output };
  children.push(d);
  return d;
}

// ---- the fleet -------------------------------------------------------------------------

async function startReplicas() {
  const names = ['fleet-a', 'fleet-b', 'fleet-c'];
  const replicas = await Promise.all(names.map((id) =>
    startServer(['--instance-id', id, '--parallel', '2', '--drain-timeout', '20'])));
  return replicas.map((r, i) => {
    const rep = { ...r, id: names[i], hostport: r.url.replace('http://', '') };
    children.push({ name: rep.id, proc: r.proc, exited: r.exited, output: r.stderr });
    return rep;
  });
}

async function startNginx(replicas) {
  const port = await freePort();
  let site = fs.readFileSync(path.join(SOURCE, 'deploy/nginx/cpuchat.conf'), 'utf8');
  for (const tag of ['instances \\(cpuchat_by_session\\)', 'instances \\(cpuchat_least_conn\\)'])
    site = replaceBetween(site, tag, replicas.map((r) => `    server ${r.hostport} max_fails=1 fail_timeout=10s;`));
  assert.match(site, /^\s*listen 80;/m);
  site = site.replace(/^(\s*)listen 80;/m, `$1listen 127.0.0.1:${port};`);
  fs.writeFileSync(path.join(tmp, 'cpuchat.conf'), site);
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.mkdirSync(path.join(tmp, d));
  fs.writeFileSync(path.join(tmp, 'nginx.conf'), [
    process.getuid?.() === 0 ? 'user root;' : '',
    'daemon off;', 'worker_processes 1;', `pid ${tmp}/nginx.pid;`, `error_log ${tmp}/nginx-error.log warn;`,
    'events { worker_connections 512; }',
    'http {',
    `  access_log ${tmp}/nginx-access.log;`,
    ...['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((d) => `  ${d === 'body' ? 'client_body' : d}_temp_path ${tmp}/${d};`),
    `  include ${tmp}/cpuchat.conf;`,
    '}', ''].join('\n'));
  const nginx = startDaemon('nginx', process.env.CPUCHAT_NGINX ?? 'nginx', ['-p', tmp, '-c', path.join(tmp, 'nginx.conf'), '-e', path.join(tmp, 'nginx-error.log')]);
  const url = `http://127.0.0.1:${port}`;
  await waitFor('nginx', async () => ({ ok: (await fetch(url + '/health')).status === 200 }), 10000);
  return { ...nginx, url };
}

async function startPrometheus(replicas) {
  const port = await freePort();
  let cfg = fs.readFileSync(path.join(SOURCE, 'deploy/prometheus/prometheus.yml'), 'utf8');
  cfg = replaceBetween(cfg, 'targets', replicas.map((r) => `          - ${r.hostport}`));
  cfg = cfg.replace(/scrape_interval: \S+/, 'scrape_interval: 500ms').replace(/evaluation_interval: \S+/, 'evaluation_interval: 500ms');
  cfg = cfg.replace(/- cpuchat-rules.yml/, `- ${path.join(SOURCE, 'deploy/prometheus/cpuchat-rules.yml')}`);
  fs.writeFileSync(path.join(tmp, 'prometheus.yml'), cfg);
  const prom = startDaemon('prometheus', process.env.CPUCHAT_PROMETHEUS ?? 'prometheus', [
    `--config.file=${tmp}/prometheus.yml`, `--storage.tsdb.path=${tmp}/tsdb`,
    `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn']);
  const url = `http://127.0.0.1:${port}`;
  await waitFor('prometheus', async () => ({ ok: (await fetch(url + '/-/ready')).status === 200 }), 20000);
  return { ...prom, url };
}

async function promQuery(prom, q) {
  const r = await (await fetch(`${prom.url}/api/v1/query?query=${encodeURIComponent(q)}`)).json();
  assert.equal(r.status, 'success', JSON.stringify(r));
  return r.data.result.length ? Number(r.data.result[0].value[1]) : NaN;
}

// Requests a replica holds now (its own /metrics): generating and waiting for a slot.
async function load(replica) {
  const text = await (await fetch(replica.url + '/metrics')).text();
  const gauge = (name) => Number(text.match(new RegExp(`^${name}\\{[^}]*\\} (\\d+)`, 'm'))?.[1]);
  return { active: gauge('cpuchat_active_requests'), queued: gauge('cpuchat_queue_depth') };
}

// ---- clients ---------------------------------------------------------------------------

const story = [{ role: 'user', content: 'Tell me a story about a cat.' }];

async function chat(base, body, sessionId) {
  const headers = { 'Content-Type': 'application/json' };
  if (sessionId) headers['X-Session-Id'] = sessionId;
  const res = await fetch(base + '/v1/chat/completions', { method: 'POST', headers, body: JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: res.status, json, text, instance: res.headers.get('x-cpuchat-instance'),
           upstream: res.headers.get('x-upstream-addr') ?? '' };
}

// A streamed chat through `base`. Resolves to what arrived; `started` resolves at the
// first content delta. Never rejects: a cut stream is a result like any other.
function stream(base, body, sessionId) {
  let markStarted;
  const started = new Promise((r) => { markStarted = r; });
  const done = (async () => {
    const out = { status: 0, instance: null, upstream: '', deltas: 0, finish: null, usage: null,
                  errors: [], sawDone: false, gotBytes: false, doneAt: 0, failure: null };
    try {
      const headers = { 'Content-Type': 'application/json', 'X-Session-Id': sessionId };
      const res = await fetch(base + '/v1/chat/completions', { method: 'POST', headers,
        body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }) });
      out.status = res.status;
      out.instance = res.headers.get('x-cpuchat-instance');
      out.upstream = res.headers.get('x-upstream-addr') ?? '';
      if (res.status !== 200) { out.failure = await res.text(); return out; }
      const decoder = new TextDecoder();
      let buf = '';
      for await (const bytes of res.body) {
        out.gotBytes = true;
        buf += decoder.decode(bytes, { stream: true });
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          for (const line of event.split('\n')) {
            if (!line.startsWith('data: ')) continue;
            const data = line.slice(6);
            if (data === '[DONE]') { out.sawDone = true; continue; }
            const chunk = JSON.parse(data);
            if (chunk.error) out.errors.push(chunk.error);
            if (chunk.usage) out.usage = chunk.usage;
            const choice = chunk.choices?.[0];
            if (choice?.delta?.content) { if (++out.deltas === 1) markStarted(); }
            if (choice?.finish_reason) out.finish = choice.finish_reason;
          }
        }
      }
    } catch (e) {
      out.failure = String(e?.cause ?? e);
    } finally {
      out.doneAt = Date.now();
      markStarted();  // never leave a waiter hanging
    }
    return out;
  })();
  return { started, done };
}

const long = { messages: story, max_tokens: 100000, ignore_eos: true, temperature: 0 };

// ---- the scenarios ---------------------------------------------------------------------

let tokensReceived = 0;

async function conversationsKeepTheirReplica(nginx) {
  const keys = ['conversation-alpha', 'conversation-bravo'];
  const servedBy = {};
  await Promise.all(keys.map(async (key) => {
    const messages = [{ role: 'user', content: `Tell me a story (${key}).` }];
    let prevPrompt = 0;
    for (let turn = 1; turn <= 4; ++turn) {
      const r = await chat(nginx.url, { messages, max_tokens: 24, temperature: 0 }, key);
      assert.equal(r.status, 200, r.text);
      servedBy[key] ??= r.instance;
      assert.equal(r.instance, servedBy[key], `${key} turn ${turn} moved from ${servedBy[key]} to ${r.instance}`);
      const cached = r.json.usage.prompt_tokens_details.cached_tokens;
      if (turn > 1) {
        // The whole previous prompt (and so more than the shared template prefix) was cached there.
        assert.ok(cached >= prevPrompt, `${key} turn ${turn}: cached_tokens ${cached} < previous prompt ${prevPrompt}`);
      }
      log(`${key} turn ${turn}: ${r.instance}, prompt ${r.json.usage.prompt_tokens}, cached ${cached}`);
      prevPrompt = r.json.usage.prompt_tokens;
      tokensReceived += r.json.usage.completion_tokens;
      messages.push({ role: 'assistant', content: r.json.choices[0].message.content },
                    { role: 'user', content: `And then? (turn ${turn + 1})` });
    }
  }));
  return servedBy;
}

async function requestsWithoutKeySpread(nginx) {
  // least_conn over the replicas: concurrent requests without a key land on several.
  const results = await Promise.all(Array.from({ length: 6 }, () =>
    chat(nginx.url, { messages: story, max_tokens: 200, ignore_eos: true, temperature: 0 })));
  const seen = new Set();
  for (const r of results) {
    assert.equal(r.status, 200, r.text);
    tokensReceived += r.json.usage.completion_tokens;
    seen.add(r.instance);
  }
  assert.ok(seen.size >= 2, `6 concurrent keyless requests all went to ${[...seen]}`);
}

async function prometheusSumsTheFleet(prom, replicas) {
  // Every replica scraped since the last answer: the fleet's counter is what clients got.
  const got = await waitFor('prometheus fleet token sum', async () => {
    const up = await promQuery(prom, 'count(up{job="cpuchat"} == 1)');
    const sum = await promQuery(prom, 'sum(cpuchat_generated_tokens_total)');
    return { ok: up === 3 && sum === tokensReceived, up, sum, expected: tokensReceived };
  }, 20000);
  log(`prometheus: sum(cpuchat_generated_tokens_total) = ${got.sum} = tokens received ${tokensReceived}`);
  // The recording rules load and evaluate over the same series.
  await waitFor('recording rule cpuchat:ready_replicas', async () => {
    const ready = await promQuery(prom, 'cpuchat:ready_replicas');
    return { ok: ready === 3, ready };
  }, 10000);
  const queue = await promQuery(prom, 'cpuchat:queue_depth:sum');
  assert.equal(queue, 0);
  // Independent of Prometheus: the replicas' own counters agree.
  let direct = 0;
  for (const r of replicas) {
    const text = await (await fetch(r.url + '/metrics')).text();
    for (const line of text.split('\n'))
      if (line.startsWith('cpuchat_generated_tokens_total{')) direct += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  assert.equal(direct, tokensReceived);
}

async function drainOnSigterm(nginx, victim, victimKey, others) {
  // Eight long streams on the victim (2 slots: 2 run, 6 wait in its queue).
  const streams = Array.from({ length: 8 }, () => stream(nginx.url, long, victimKey));
  // Polled tightly: on a fast machine the first two streams (the model's whole 512-token
  // context) finish about 0.1 s after they start.
  await waitFor(`8 streams accepted by ${victim.id}`, async () => {
    const { active, queued } = await load(victim);
    return { ok: active + queued === 8, active, queued };
  }, 5000, 2);
  await streams[0].started;
  const signalledAt = Date.now();
  victim.proc.kill('SIGTERM');
  // At once (as soon as the signal is delivered): the replica says it is draining, so balancers route away.
  await waitFor('/health 503 shutting_down after SIGTERM', async () => {
    const health = await fetch(victim.url + '/health');
    const body = await health.json();
    return { ok: health.status === 503 && body.status === 'shutting_down', status: health.status, body };
  }, 1000);
  const live = await fetch(victim.url + '/health/live');
  assert.equal(live.status, 200);
  // New requests meanwhile, for the victim's conversation and without a key: all answered, elsewhere.
  const fresh = await Promise.all([
    ...Array.from({ length: 4 }, () => chat(nginx.url, { messages: story, max_tokens: 16 }, victimKey)),
    ...Array.from({ length: 2 }, () => chat(nginx.url, { messages: story, max_tokens: 16 })),
  ]);
  const freshDoneAt = Date.now();
  for (const r of fresh) {
    assert.equal(r.status, 200, r.text);
    assert.ok(others.includes(r.instance), `a new request reached the draining ${r.instance}`);
  }
  const results = await Promise.all(streams.map((s) => s.done));
  let finishedAfterSignal = 0;
  for (const [i, r] of results.entries()) {
    assert.equal(r.failure, null, `stream ${i}: ${r.failure}`);
    assert.equal(r.instance, victim.id, `stream ${i} was not on the victim`);
    assert.deepEqual(r.errors, [], `stream ${i} got error events`);
    assert.ok(['stop', 'length'].includes(r.finish), `stream ${i} finish_reason ${r.finish}`);
    assert.ok(r.sawDone, `stream ${i} without [DONE]`);
    assert.ok(r.deltas >= 1 && r.usage.completion_tokens >= r.deltas, `stream ${i}: ${r.deltas} deltas, usage ${JSON.stringify(r.usage)}`);
    if (r.doneAt > freshDoneAt) ++finishedAfterSignal;
  }
  // The drain mattered: streams were still running after the replica had turned traffic away.
  assert.ok(finishedAfterSignal >= 1, 'every stream had finished before the drain was observed: make them longer');
  const exit = await Promise.race([victim.exited, sleep(30000).then(() => ({ code: 'timeout' }))]);
  assert.deepEqual(exit, { code: 0, signal: null }, `drained replica exit: ${JSON.stringify(exit)}\n${victim.stderr()}`);
  log(`drain: 8 streams on ${victim.id} completed (${finishedAfterSignal} after the new requests were served elsewhere), ` +
      `6 new requests served by ${[...new Set(fresh.map((r) => r.instance))]}, exit 0 ` +
      `${Date.now() - signalledAt} ms after SIGTERM`);
}

async function killNine(nginx, victim, survivor) {
  // Keys that hash onto the victim (among the live replicas).
  const keys = [];
  for (let i = 0; i < 40 && keys.length < 3; ++i) {
    const r = await chat(nginx.url, { messages: story, max_tokens: 4 }, `kill-key-${i}`);
    assert.equal(r.status, 200, r.text);
    if (r.instance === victim.id) keys.push(`kill-key-${i}`);
  }
  assert.ok(keys.length > 0, `no key of 40 hashed onto ${victim.id}`);
  // Two long streams take the victim's two slots; four blocking requests (nothing is sent to
  // their clients until the answer is complete) wait in its queue. Then kill -9.
  const streams = Array.from({ length: 2 }, (_, i) => stream(nginx.url, long, keys[i % keys.length]));
  await Promise.all(streams.map((x) => x.started));
  const blocking = Array.from({ length: 4 }, (_, i) => chat(nginx.url, long, keys[i % keys.length]));
  await waitFor(`4 requests queued on ${victim.id}`, async () => {
    const { queued } = await load(victim);
    return { ok: queued === 4, queued };
  }, 3000, 2);  // tightly: the streams ahead of them end ~0.1 s after they start
  victim.proc.kill('SIGKILL');
  const after = await Promise.all(Array.from({ length: 4 }, (_, i) =>
    chat(nginx.url, { messages: story, max_tokens: 16 }, keys[i % keys.length])));
  let notStartedFailures = 0, retried = 0, cutStreams = 0;
  for (const r of [...(await Promise.all(blocking)), ...after]) {
    if (r.status !== 200) { ++notStartedFailures; log('failed before streaming:', r.status, r.text); continue; }
    assert.equal(r.instance, survivor.id);
    if (r.upstream.includes(',')) ++retried;  // "victim, survivor": nginx tried the next one
  }
  for (const s of await Promise.all(streams.map((x) => x.done))) {
    if (s.sawDone && s.errors.length === 0) continue;  // finished on the victim before the kill
    if (s.gotBytes) { ++cutStreams; continue; }      // started, then cut: cannot be retried
    ++notStartedFailures;
    log('stream failed before starting:', s.status, s.failure);
  }
  assert.equal(notStartedFailures, 0, 'requests that had not started streaming failed');
  assert.ok(retried >= 1, 'no request was retried on the survivor');
  log(`kill -9 ${victim.id}: ${retried} request(s) retried on ${survivor.id}, ${cutStreams} started stream(s) cut, 0 failed`);
}

async function secondSignalExitsAtOnce(replica) {
  // Straight to the replica (nginx has nowhere else to send it now).
  const streams = Array.from({ length: 4 }, () => stream(replica.url, long, 'last-words'));
  await streams[0].started;
  replica.proc.kill('SIGTERM');
  await waitFor('draining', async () => ({ ok: (await fetch(replica.url + '/health')).status === 503 }), 1000, 2);
  const t = Date.now();
  replica.proc.kill('SIGTERM');
  const exit = await Promise.race([replica.exited, sleep(5000).then(() => ({ code: 'timeout' }))]);
  assert.deepEqual(exit, { code: 1, signal: null }, `second SIGTERM: ${JSON.stringify(exit)}`);
  const results = await Promise.all(streams.map((x) => x.done));
  assert.ok(results.some((r) => !r.sawDone || r.errors.length), 'every stream had finished: the second signal was not tested');
  log(`second SIGTERM: ${replica.id} exited 1 after ${Date.now() - t} ms, cutting ${results.filter((r) => !r.sawDone || r.errors.length).length} stream(s)`);
}

// ---- main ------------------------------------------------------------------------------

async function main() {
  const t0 = Date.now();
  const replicas = await startReplicas();
  const [nginx, prom] = await Promise.all([startNginx(replicas), startPrometheus(replicas)]);
  log(`3 replicas, nginx ${nginx.url}, prometheus ${prom.url} up in ${Date.now() - t0} ms`);

  const servedBy = await conversationsKeepTheirReplica(nginx);
  await requestsWithoutKeySpread(nginx);
  await prometheusSumsTheFleet(prom, replicas);

  const byId = Object.fromEntries(replicas.map((r) => [r.id, r]));
  const drainVictim = byId[servedBy['conversation-alpha']];
  const others = replicas.filter((r) => r !== drainVictim);
  await drainOnSigterm(nginx, drainVictim, 'conversation-alpha', others.map((r) => r.id));
  await killNine(nginx, others[0], others[1]);
  await secondSignalExitsAtOnce(others[1]);
  log(`passed in ${Date.now() - t0} ms`);
}

// nginx's master must stop its workers itself (SIGTERM: fast shutdown); a SIGKILLed master
// would leave them running, holding our pipes open.
async function cleanup() {
  const running = children.filter((c) => c.proc.exitCode === null && c.proc.signalCode === null);
  for (const c of running) c.proc.kill(c.name === 'nginx' ? 'SIGTERM' : 'SIGKILL');
  await Promise.race([Promise.all(running.map((c) => c.exited)), sleep(5000)]);
}

const watchdog = setTimeout(async () => {
  console.error('[fleet] timed out after 150 s');
  await cleanup();
  process.exit(1);
}, 150000);

main().then(async () => {
  clearTimeout(watchdog);
  await cleanup();
  fs.rmSync(tmp, { recursive: true, force: true });
  process.exit(0);  // idle keep-alive sockets need not hold the test open
}, async (e) => {
  clearTimeout(watchdog);
  console.error(e);
  for (const f of ['nginx-error.log']) {
    const p = path.join(tmp, f);
    if (fs.existsSync(p)) console.error(`--- ${f}\n` + fs.readFileSync(p, 'utf8').slice(-3000));
  }
  for (const c of children) console.error(`--- ${c.name}\n` + String(c.output()).slice(-2000));
  await cleanup();
  process.exit(1);
});
