#!/usr/bin/env bash
# `cpuchat serve` smoke test for a binary that may run through an emulator (scripts/test-aarch64.sh):
# int4 backend on 127.0.0.1, /v1/models reports the expected kernel ISA, one non-streamed and one
# streamed chat completion (curl) return the same text at temperature 0. One "ok:"/"FAIL:" line
# per check; exit status 0 only if all pass.
#
#   server_smoke_test.sh MODEL EXPECTED_ISA COMMAND...     e.g. ... i8mm qemu-aarch64 -L SYSROOT build/aarch64/cpuchat
set -uo pipefail
MODEL=${1:?model} ISA=${2:?expected isa}
shift 2
WORK=$(mktemp -d)
PID=
FAILURES=0
cleanup() { [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; FAILURES=$((FAILURES + 1)); }
pass() { echo "ok: $*"; }
field() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }

"$@" serve --model "$MODEL" --backend int4 --threads 2 --host 127.0.0.1 --port 0 >"$WORK/stdout" 2>"$WORK/stderr" &
PID=$!
URL=
for _ in $(seq 1200); do  # emulated start-up (libtorch's relocations) takes a while
  URL=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/stdout" 2>/dev/null | head -1)
  [[ -n $URL ]] && break
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $URL ]]; then
  fail "no 'listening on' line: $(tail -5 "$WORK/stderr")"
  exit 1
fi
pass "listening on $URL"
for _ in $(seq 1200); do  # the model loads after the socket is up (503 model_loading until then)
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/health") == 200 ]] && break
  sleep 0.1
done

curl -s -o "$WORK/models.json" "$URL/v1/models"
got=$(field "$WORK/models.json" 'j["data"][0]["isa"] + " " + j["data"][0]["backend"]')
[[ $got == "$ISA int4" ]] && pass "/v1/models: isa $ISA, backend int4" || fail "/v1/models: $(cat "$WORK/models.json")"

body='{"messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":24,"temperature":0}'
status=$(curl -s -o "$WORK/full.json" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$body" \
  "$URL/v1/chat/completions")
text=$(field "$WORK/full.json" 'j["choices"][0]["message"]["content"]')
tokens=$(field "$WORK/full.json" 'j["usage"]["completion_tokens"]')
if [[ $status == 200 && -n $text && $tokens -gt 0 ]]; then
  pass "chat completion: $tokens tokens: ${text:0:60}"
else
  fail "chat completion: status $status: $(head -c 300 "$WORK/full.json")"
fi

curl -sN -H 'Content-Type: application/json' --data-binary "${body%\}},\"stream\":true}" "$URL/v1/chat/completions" >"$WORK/sse"
streamed=$(python3 - "$WORK/sse" <<'EOF'
import json, sys
events = [e[6:] for e in open(sys.argv[1]).read().split("\n\n") if e.startswith("data: ")]
assert events and events[-1] == "[DONE]", "no [DONE]"
chunks = [json.loads(e) for e in events[:-1]]
print("".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]))
EOF
)
if [[ -n $streamed && $streamed == "$text" ]]; then
  pass "streamed chat completion: $(grep -c '^data: ' "$WORK/sse") events, the same text"
else
  fail "streamed: '${streamed:0:80}' vs non-streamed '${text:0:80}'"
fi

kill -TERM "$PID"
wait "$PID"
rc=$?
PID=
[[ $rc == 0 ]] && pass "SIGTERM -> exit 0" || fail "exit code $rc after SIGTERM"
((FAILURES == 0))
