#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang + ASan + UBSan, no libtorch) into build-fuzz/
# and runs each for SECONDS (default 30; one target per core at a time), after replaying the inputs it once crashed on
# (fuzz/regressions/<target>/). Any finding fails the script; the crashing input is left in
# build-fuzz/findings/<target>/ to be kept as a regression.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(gguf safetensors llama2c packed_cache tokenizer_files streaming_decoder chat_template request_parser)
compiler="$(command -v clang++-14 || command -v clang++ || true)"
[[ -n "$compiler" ]] || { echo "fuzz.sh: clang++ is not installed (scripts/install-deps.sh --test)"; exit 1; }

cmake -S . -B build-fuzz -DCPUCHAT_FUZZ=ON -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target $(printf 'fuzz_%s ' "${targets[@]}") >/dev/null

shared=../shared
seed() {  # seed TARGET FILE [PREFIX_BYTE]: copies a file (optionally behind a prefix byte) into the corpus
  local dir="build-fuzz/corpus/$1" name
  name="$(basename "$2")"
  [[ -f "$2" && -d "$dir" ]] || return 0  # a target not selected has no corpus folder
  if [[ -n "${3:-}" ]]; then { printf "\\x$3"; head -c 65536 "$2"; } > "$dir/seed-$name"; else cp "$2" "$dir/seed-$name"; fi
}
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/findings/$t"
  [[ -d "fuzz/seeds/$t" ]] && cp fuzz/seeds/"$t"/* "build-fuzz/corpus/$t/" 2>/dev/null || true
done
seed gguf "$shared/models/gguf/stories260K.gguf"
seed safetensors "$shared/models/hf/stories260K/model.safetensors"
seed safetensors "$shared/models/hf/llama31-tiny-random/model.safetensors"
seed llama2c "$shared/models/llama2c/stories260K.bin"
seed tokenizer_files "$shared/models/llama2c/tok512.bin" 01
seed tokenizer_files "$shared/models/llama2c/tok512.model" 02
seed tokenizer_files "$shared/models/llama2c/tokenizer.model" 02

fuzz_one() {  # fuzz_one TARGET: replays its kept regressions, then fuzzes; prints one verdict, exits 1 on a finding
  local t=$1 bin="build-fuzz/fuzz/fuzz_$1"
  if [[ -d "fuzz/regressions/$t" ]] && compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    if ! "$bin" -runs=0 fuzz/regressions/"$t"/* >"build-fuzz/findings/$t/regressions.log" 2>&1; then
      echo "fuzz $t: a kept regression input fails again:"; tail -30 "build-fuzz/findings/$t/regressions.log"; return 1
    fi
  fi
  # -rss_limit_mb: a parser must not need more; -timeout: nor hang on one input.
  if "$bin" -max_total_time="$seconds" -max_len=2000000 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/findings/$t/" "build-fuzz/corpus/$t" >"build-fuzz/findings/$t/run.log" 2>&1; then
    echo "fuzz $t: ${seconds}s, $(grep -o 'stat::number_of_executed_units: [0-9]*' "build-fuzz/findings/$t/run.log" | grep -o '[0-9]*$') runs, no findings"
  else
    echo "fuzz $t: FINDING (input kept in build-fuzz/findings/$t/):"; grep -A25 "ERROR\|runtime error\|deadly signal" "build-fuzz/findings/$t/run.log" | head -40
    return 1
  fi
}

# One target per core at a time (each fuzzer is single-threaded); verdicts print as targets finish.
pids=()
for t in "${targets[@]}"; do
  while (( $(jobs -rp | wc -l) >= $(nproc) )); do wait -n || true; done
  fuzz_one "$t" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done  # bash keeps each job's status until waited for
exit $status
