// Starts the real `cpuchat serve` binary on a free port for the integration tests.
// Env: CPUCHAT_BINARY, CPUCHAT_TEST_MODEL (set by CTest), CPUCHAT_NODE_DIR (node_modules).
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

export const BINARY = process.env.CPUCHAT_BINARY;
export const MODEL = process.env.CPUCHAT_TEST_MODEL;
export const MODEL_NAME = MODEL ? path.basename(MODEL) : '';

// The OpenAI SDK lives in tests/node/node_modules (ESM imports ignore NODE_PATH).
export function loadOpenAI() {
  const nodeDir = process.env.CPUCHAT_NODE_DIR;
  const require = createRequire(path.join(nodeDir, 'node_modules', 'noop.js'));
  const mod = require('openai');
  return mod.default ?? mod.OpenAI ?? mod;
}

export async function startServer(args = [], { readyTimeoutMs = 60000, model = MODEL } = {}) {
  const proc = spawn(BINARY, ['serve', '--model', model, '--port', '0', '--threads', '1', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('no "listening on" line; stderr:\n' + stderr)), readyTimeoutMs);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`server exited (${code}) before listening:\n${stderr}`)); });
  });
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {  // the port is open while the model loads: wait for /health "ok"
    try {
      const r = await fetch(url + '/health');
      if (r.status === 200) break;
    } catch {}
    if (Date.now() > deadline) throw new Error('not ready in time; stderr:\n' + stderr);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url, proc, exited,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

// One Prometheus sample's value (first line starting with `prefix`), or NaN.
export async function metric(url, prefix, headers = {}) {
  const text = await (await fetch(url + '/metrics', { headers })).text();
  const line = text.split('\n').find((l) => l.startsWith(prefix));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : NaN;
}

export async function waitFor(fn, timeoutMs = 5000, stepMs = 10) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
