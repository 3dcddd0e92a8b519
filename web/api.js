// The HTTP API the page uses (docs/API.md): models, instances, streamed chat.

export class ApiError extends Error {
  // status: HTTP status, or 0 when the server could not be reached / the stream broke.
  constructor(message, { status = 0, code = null, type = null, retryAfter = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.type = type;
    this.retryAfter = retryAfter;
  }
}

async function errorFromResponse(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  let code = null;
  let type = null;
  try {
    const body = await res.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code ?? null;
      type = body.error.type ?? null;
    }
  } catch { /* not JSON: keep the status line */ }
  const ra = res.headers.get('Retry-After');
  return new ApiError(message, {
    status: res.status, code, type, retryAfter: ra !== null && ra !== '' ? Number(ra) : null,
  });
}

async function request(path, init = {}) {
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(`network error: ${err && err.message ? err.message : err}`, { status: 0, code: 'network' });
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res;
}

export async function getJSON(path, { signal } = {}) {
  const res = await request(path, { signal, headers: { Accept: 'application/json' } });
  return res.json();
}

export async function listModels() {
  const body = await getJSON('/v1/models');
  return Array.isArray(body.data) ? body.data : [];
}

export async function listInstances() {
  try {
    const body = await getJSON('/v1/instances');
    return { default: body.default || null, instances: Array.isArray(body.instances) ? body.instances : [] };
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return { default: null, instances: [] };
    throw err;
  }
}

// Splits a byte stream of Server-Sent Events into the `data:` payload of each event.
export async function* sseData(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  let buffer = '';
  let data = [];
  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
        throw new ApiError(`the connection to the server was lost (${err && err.message ? err.message : err})`,
          { status: 0, code: 'network' });
      }
      if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
        if (line === '') {
          if (data.length) yield data.join('\n');
          data = [];
        } else if (line.startsWith('data:')) {
          data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
        } // comments (":") and other fields are ignored
      }
    }
    buffer += decoder.decode();
    if (buffer.startsWith('data:')) data.push(buffer.slice(buffer.startsWith('data: ') ? 6 : 5));
    if (data.length) yield data.join('\n');
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

// POST /v1/chat/completions with stream: true. Yields
//   {type: 'delta', text}                      one per content delta
//   {type: 'tool_call', index, id, name, arguments}  a tool-call delta (fields as sent; arguments a fragment)
//   {type: 'finish', reason, metrics}          the chunk with finish_reason
//   {type: 'usage', usage}                     the include_usage chunk
// Throws ApiError for HTTP errors, in-stream errors and a stream cut before [DONE];
// throws an AbortError when `signal` aborts.
export async function* streamChat(params, { signal, sessionId } = {}) {
  const body = { ...params, stream: true, stream_options: { include_usage: true } };
  const headers = { 'Content-Type': 'application/json', Accept: 'text/event-stream' };
  if (sessionId) headers['X-Session-Id'] = sessionId; // the balancer's affinity key
  const res = await request('/v1/chat/completions', {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal,
  });
  let done = false;
  let finished = false;
  for await (const payload of sseData(res.body, signal)) {
    if (payload.trim() === '[DONE]') { done = true; break; }
    let chunk;
    try {
      chunk = JSON.parse(payload);
    } catch {
      continue; // not JSON: ignore
    }
    if (chunk.error) {
      const e = chunk.error;
      throw new ApiError(e.message || 'the server reported an error', {
        status: Number(e.status) || 500, code: e.code ?? null, type: e.type ?? null,
      });
    }
    const choice = Array.isArray(chunk.choices) && chunk.choices[0];
    if (choice) {
      const text = choice.delta && choice.delta.content;
      if (typeof text === 'string' && text !== '') yield { type: 'delta', text };
      for (const tc of (choice.delta && choice.delta.tool_calls) || []) {
        yield { type: 'tool_call', index: tc.index ?? 0, id: tc.id ?? null, name: tc.function?.name ?? null, arguments: tc.function?.arguments ?? '' };
      }
      if (choice.finish_reason) {
        finished = true;
        yield { type: 'finish', reason: choice.finish_reason, metrics: chunk.metrics || null };
      }
    } else if (chunk.metrics && !finished) {
      finished = true;
      yield { type: 'finish', reason: null, metrics: chunk.metrics };
    }
    if (chunk.usage) yield { type: 'usage', usage: chunk.usage };
  }
  if (!done && !finished) {
    throw new ApiError('the server closed the stream before the answer was complete', { status: 0, code: 'network' });
  }
}

// Polls /health; resolves {ok, status}.
export async function health() {
  try {
    const res = await fetch('/health', { headers: { Accept: 'application/json' } });
    let status = res.ok ? 'ok' : 'error';
    try { status = (await res.json()).status || status; } catch { /* ignore */ }
    return { ok: res.ok, status };
  } catch {
    return { ok: false, status: 'unreachable' };
  }
}

// A readable sentence for an error from the functions above.
const sentence = (s) => (/[.!?]$/.test(s.trim()) ? s.trim() : `${s.trim()}.`);

export function describeError(err) {
  if (!(err instanceof ApiError)) {
    return { title: 'Something went wrong', detail: String(err && err.message ? err.message : err) };
  }
  const detail = err.message;
  switch (err.status) {
    case 0:
      return { title: "Can't reach the server", detail: `${sentence(detail)} Is cpuchat still running? Check it and send again.` };
    case 400:
      if (/context|token/i.test(detail) || err.code === 'context_length_exceeded') {
        return { title: 'The conversation is too long for the model', detail: `${sentence(detail)} Start a new chat or send a shorter message.` };
      }
      return { title: 'The server rejected the request', detail };
    case 401:
      return { title: 'Not authorized', detail: `${sentence(detail)} This server needs an API key.` };
    case 404:
      return { title: 'Not found', detail: `${sentence(detail)} The model may not be loaded; pick another in Settings.` };
    case 413:
      return { title: 'The message is too large', detail };
    case 429: {
      const wait = Number.isFinite(err.retryAfter) && err.retryAfter > 0 ? ` Try again in ${err.retryAfter} s.` : ' Try again in a moment.';
      return { title: 'The server is busy', detail: `${sentence(detail)}${wait}` };
    }
    case 503:
      return { title: 'The server is not ready', detail: `${sentence(detail)} It may be loading the model or shutting down.` };
    default:
      return { title: `Server error (${err.status})`, detail };
  }
}
