#!/usr/bin/env bash
# The real `cpuchat serve` with stories260K, driven by curl: the HTTP contract of
# docs/API.md -- shapes, SSE framing, every bad-input case (each followed by a request
# that must succeed), auth, CORS, the page, and a clean SIGTERM.
# Env (set by CTest): CPUCHAT_BINARY, CPUCHAT_TEST_MODEL.
set -uo pipefail
BIN=${CPUCHAT_BINARY:?}
MODEL=${CPUCHAT_TEST_MODEL:?}
NAME=$(basename "$MODEL")
WORK=$(mktemp -d)
PID=
FAILURES=0
cleanup() { [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

fail() { echo "FAIL: $*"; FAILURES=$((FAILURES + 1)); }
pass() { echo "ok: $*"; }
# json FILE EXPR: evaluates a JS expression over the parsed JSON `j` (node is needed anyway).
json() { node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); const v = eval(process.argv[2]); console.log(typeof v === "object" ? JSON.stringify(v) : v)' "$1" "$2"; }

start_server() {
  "$BIN" serve --model "$MODEL" --backend fp32 --threads 1 --port 0 "$@" >"$WORK/stdout" 2>"$WORK/stderr" &
  PID=$!
  for _ in $(seq 600); do
    URL=$(grep -o 'http://[0-9.:]*' "$WORK/stdout" 2>/dev/null | head -1)
    [[ -n $URL ]] && break
    sleep 0.05
  done
  [[ -n $URL ]] || { cat "$WORK/stderr"; echo "FAIL: no 'listening on' line"; exit 1; }
  for _ in $(seq 600); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/health") == 200 ]] && return 0
    sleep 0.05
  done
  cat "$WORK/stderr"; echo "FAIL: not healthy"; exit 1
}
stop_server() {
  kill -TERM "$PID"
  wait "$PID"
  local rc=$?
  PID=
  [[ $rc == 0 ]] && pass "SIGTERM -> exit 0" || fail "exit code $rc after SIGTERM"
}

# req METHOD PATH [BODY] [extra curl args...]: status code in $STATUS, body in $WORK/body, headers in $WORK/headers
req() {
  local method=$1 path=$2 body=${3-}
  shift 3 2>/dev/null || shift $#
  local args=(-s -X "$method" -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' "$@")
  [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
  STATUS=$(curl "${args[@]}" "$URL$path")
}
normal='{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"temperature":0}'
expect_error() {  # STATUS CODE DESCRIPTION
  local want=$1 code=$2 what=$3
  if [[ $STATUS != "$want" ]]; then fail "$what: status $STATUS, want $want: $(head -c 300 "$WORK/body")"; return; fi
  local shape
  shape=$(json "$WORK/body" '["message","type","param","code"].every(k => k in j.error) && typeof j.error.message === "string"')
  [[ $shape == true ]] || { fail "$what: error shape: $(cat "$WORK/body")"; return; }
  if [[ -n $code && $(json "$WORK/body" 'j.error.code') != "$code" ]]; then fail "$what: code $(json "$WORK/body" 'j.error.code'), want $code"; return; fi
  req POST /v1/chat/completions "$normal"
  [[ $STATUS == 200 ]] || { fail "$what: the next normal request got $STATUS"; return; }
  pass "$what -> $want"
}

start_server --max-body-bytes 65536 --cors-origin '*'

req GET /health && [[ $STATUS == 200 && $(json "$WORK/body" j.status) == ok ]] && pass "health" || fail "health $STATUS"
req GET /v1/models
[[ $(json "$WORK/body" 'j.data.map(m => m.id).join()') == "$NAME-fp32" ]] && pass "models" || fail "models: $(cat "$WORK/body")"
req GET /v1/instances
[[ $(json "$WORK/body" 'j.default') == r8g.4xlarge && $(json "$WORK/body" 'j.instances.length > 20') == true ]] && pass "instances" || fail "instances"

# Non-streaming vs streaming at temperature 0: the same text.
body='{"messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":40,"temperature":0,"seed":3}'
req POST /v1/chat/completions "$body"
cp "$WORK/body" "$WORK/full.json"
[[ $STATUS == 200 && $(json "$WORK/full.json" 'j.object') == chat.completion ]] && pass "chat completion" || fail "chat: $STATUS"
[[ $(json "$WORK/full.json" 'Math.abs(j.metrics.total_cost_usd - j.metrics.price_per_hour_usd * j.metrics.billed_time_s / 3600) < 1e-12') == true ]] \
  && pass "total cost = price x time / 3600" || fail "cost: $(json "$WORK/full.json" j.metrics)"
curl -sN -D "$WORK/sse_headers" -H 'Content-Type: application/json' \
  --data-binary "${body%\}},\"stream\":true,\"stream_options\":{\"include_usage\":true}}" "$URL/v1/chat/completions" >"$WORK/sse"
grep -qi '^content-type: text/event-stream' "$WORK/sse_headers" && pass "SSE content type" || fail "SSE content type"
[[ $(grep -c '^data: ' "$WORK/sse") -gt 5 ]] && pass "SSE events" || fail "few SSE events"
[[ $(grep '^data: ' "$WORK/sse" | tail -1) == 'data: [DONE]' ]] && pass "ends with [DONE]" || fail "no [DONE]"
node -e '
  const fs = require("fs");
  const events = fs.readFileSync(process.argv[1], "utf8").split("\n\n").filter(Boolean).map(e => e.slice(6));
  const chunks = events.slice(0, -1).map(e => JSON.parse(e));
  const full = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const text = chunks.map(c => c.choices[0]?.delta?.content ?? "").join("");
  if (chunks[0].choices[0].delta.role !== "assistant") throw new Error("first chunk has no role");
  if (text !== full.choices[0].message.content) throw new Error("streamed " + JSON.stringify(text) + " != " + JSON.stringify(full.choices[0].message.content));
  const fin = chunks.find(c => c.choices[0]?.finish_reason);
  if (!fin || !fin.metrics || fin.metrics.completion_tokens !== full.usage.completion_tokens) throw new Error("finish chunk/metrics");
  if (!chunks.at(-1).usage || chunks.at(-1).choices.length !== 0) throw new Error("usage chunk");
' "$WORK/sse" "$WORK/full.json" && pass "streamed deltas == non-streaming text" || fail "stream vs full"

# Bad inputs: each a JSON error with the right status, then a normal request succeeds.
req POST /v1/chat/completions '{"messages": [' ; expect_error 400 invalid_json "malformed JSON"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}' ; expect_error 400 invalid_type "temperature string"
req POST /v1/chat/completions '{"messages":"hi"}' ; expect_error 400 invalid_type "messages not an array"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":5}]}' ; expect_error 400 invalid_type "content a number"
req POST /v1/chat/completions '{"messages":[]}' ; expect_error 400 "" "empty messages"
req POST /v1/chat/completions '{"model":"x"}' ; expect_error 400 missing_required_parameter "missing messages"
req POST /v1/chat/completions '{"messages":[{"role":"narrator","content":"x"}]}' ; expect_error 400 "" "unknown role"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}' ; expect_error 400 "" "negative max_tokens"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"max_tokens":0}' ; expect_error 400 "" "zero max_tokens"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"max_tokens":1.5}' ; expect_error 400 invalid_type "non-integer max_tokens"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"max_tokens":99999999}' ; expect_error 400 "" "absurd max_tokens"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"temperature":2.1}' ; expect_error 400 "" "temperature > 2"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"top_p":0}' ; expect_error 400 "" "top_p 0"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"top_p":1.5}' ; expect_error 400 "" "top_p > 1"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"n":0}' ; expect_error 400 invalid_value "n=0"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"model":"llama-70b"}' ; expect_error 404 model_not_found "unknown model"
long=$(printf 'cat %.0s' $(seq 1500))
req POST /v1/chat/completions "{\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}]}" ; expect_error 400 context_length_exceeded "context overflow"
huge=$(head -c 70000 /dev/zero | tr '\0' 'a')
req POST /v1/chat/completions "{\"messages\":[{\"role\":\"user\",\"content\":\"$huge\"}]}" ; expect_error 413 request_too_large "body over the limit"
req GET /v1/chat/completions "" ; expect_error 405 method_not_allowed "GET on a POST route"
req POST /v1/models '{}' ; expect_error 405 method_not_allowed "POST on a GET route"
req GET /v1/unknown "" ; expect_error 404 unknown_route "unknown route"
req POST /v1/completions '{"prompt":["a","b"]}' ; expect_error 400 "" "several prompts"

# CORS preflight
STATUS=$(curl -s -o /dev/null -D "$WORK/headers" -w '%{http_code}' -X OPTIONS -H 'Origin: http://x.test' \
  -H 'Access-Control-Request-Method: POST' "$URL/v1/chat/completions")
[[ $STATUS == 204 ]] && grep -qi '^access-control-allow-origin: \*' "$WORK/headers" && pass "CORS preflight" || fail "CORS preflight $STATUS"

# The page
req GET / ""
if [[ $STATUS == 200 ]] && grep -qi '^content-type: text/html' "$WORK/headers" && grep -qi '^etag:' "$WORK/headers"; then
  etag=$(grep -i '^etag:' "$WORK/headers" | cut -d' ' -f2 | tr -d '\r')
  req GET /index.html "" -H "If-None-Match: $etag"
  [[ $STATUS == 304 ]] && pass "page + ETag revalidation" || fail "If-None-Match gave $STATUS"
else
  fail "GET / -> $STATUS"
fi
STATUS=$(curl -s --path-as-is -o /dev/null -w '%{http_code}' "$URL/../../etc/passwd")
[[ $STATUS == 404 || $STATUS == 400 ]] && pass "no path traversal ($STATUS)" || fail "traversal got $STATUS"

# /metrics
req GET /metrics ""
grep -q '^cpuchat_http_requests_total{route="chat_completions",status="400"}' "$WORK/body" \
  && grep -q "^cpuchat_generated_tokens_total{model=\"$NAME-fp32\"}" "$WORK/body" \
  && grep -q '^cpuchat_ttft_seconds_bucket' "$WORK/body" && pass "prometheus metrics" || fail "metrics: $(head -c 500 "$WORK/body")"
stop_server

# API key
start_server --api-key s3cret
req GET /v1/models "" ; [[ $STATUS == 401 ]] && pass "no key -> 401" || fail "no key -> $STATUS"
req GET /v1/models "" -H 'Authorization: Bearer nope' ; [[ $STATUS == 401 ]] && pass "wrong key -> 401" || fail "wrong key -> $STATUS"
req GET /v1/models "" -H 'Authorization: Bearer s3cret' ; [[ $STATUS == 200 ]] && pass "right key -> 200" || fail "right key -> $STATUS"
req GET /health "" ; [[ $STATUS == 200 ]] && pass "health open with a key" || fail "health -> $STATUS"
stop_server

# Flags
"$BIN" serve --model "$MODEL" --instance m9x.huge >/dev/null 2>"$WORK/err"
rc=$?
[[ $rc == 2 && $(wc -l <"$WORK/err") == 1 ]] && pass "unknown --instance: one line, exit 2" || fail "unknown instance: rc $rc: $(cat "$WORK/err")"

echo "$FAILURES failure(s)"
[[ $FAILURES == 0 ]]
