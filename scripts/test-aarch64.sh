#!/usr/bin/env bash
# The whole of cpuchat on aarch64, without Arm hardware: cross-compiles the binary and the test
# suites against an arm64 Debian sysroot (scripts/aarch64-sysroot.sh, cached in build/) and runs
# them under qemu-user:
#   - kernel tests on -cpu max (i8mm, dotprod and scalar paths), on -cpu max with
#     CPUCHAT_ISA=dotprod, and on -cpu cortex-a72 (no dotprod: the scalar fallback);
#   - the fp32 logits fixtures (every checkpoint format) and the int4 op/engine tests;
#   - x86 vs aarch64 agreement of int4 (and fp32) logits and greedy ids on the stories260K
#     fixture prompts (tests/model/compare_arch_logits.py; needs the x86 build/cpuchat);
#   - `cpuchat serve` on 127.0.0.1: /v1/models reports the Arm ISA, one non-streamed and one
#     streamed chat completion give the same text.
# Prints which paths ran, and ends with "N passed, N failed". Exits non-zero on any failure.
#
#   scripts/test-aarch64.sh      (env: X86_CPUCHAT=path of the x86 binary [build/cpuchat], JOBS)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build/aarch64"
SYSROOT="$ROOT/build/aarch64-sysroot"
X86_CPUCHAT="${X86_CPUCHAT:-$ROOT/build/cpuchat}"
SHARED="$(cd "$ROOT/.." && pwd)/shared"
JOBS="${JOBS:-$(nproc)}"
START=$SECONDS
stamp() { echo "   [$((SECONDS - START)) s]"; }

# ---- 1. tools (scripts/install-deps.sh --test installs them too) and the sysroot ------------
missing=()
for tool in cmake:cmake aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64:qemu-user curl:curl python3:python3; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash "$ROOT/scripts/aarch64-sysroot.sh" "$SYSROOT"
stamp

# ---- 2. cross build: only what runs below ------------------------------------------------------
echo "== building cpuchat and its tests for aarch64 in $BUILD"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE="$ROOT/cmake/aarch64-sysroot.cmake" \
  -DCPUCHAT_AARCH64_SYSROOT="$SYSROOT" -DCPUCHAT_BUILD_BENCHMARKS=OFF "${launcher[@]}" >"$BUILD.configure.log" 2>&1 ||
  { cat "$BUILD.configure.log"; exit 1; }
cmake --build "$BUILD" -j"$JOBS" --target cpuchat cpuchat_model_fixture_tests cpuchat_kernels_tests cpuchat_kernels_isa \
  >"$BUILD.build.log" 2>&1 || { tail -40 "$BUILD.build.log"; exit 1; }
file_line=$(file -b "$BUILD/cpuchat" 2>/dev/null | cut -d, -f1-2 || true)
echo "   $BUILD/cpuchat: ${file_line:-built}"
stamp

qemu() {  # qemu CPU_MODEL BINARY [ARGS...]
  local cpu=$1
  shift
  QEMU_CPU="$cpu" qemu-aarch64 -L "$SYSROOT" "$@"
}

total_passed=0
total_failed=0
paths=()
count() {  # count PASSED FAILED
  total_passed=$((total_passed + $1))
  total_failed=$((total_failed + $2))
}

# ---- 3. kernel dispatch and kernel tests ----------------------------------------------------
expect_isa() {  # expect_isa CPU_MODEL CPUCHAT_ISA_VALUE EXPECTED_ACTIVE
  local line
  line=$(CPUCHAT_ISA="$2" qemu "$1" "$BUILD/kernels/cpuchat_kernels_isa")
  echo "   -cpu $1 CPUCHAT_ISA=${2:-<unset>}: $line"
  if [[ "$line" == *"active=$3 "* ]]; then count 1 0; else echo "   FAILED: expected active=$3"; count 0 1; fi
}
echo "== runtime dispatch"
expect_isa max "" i8mm
expect_isa max dotprod dotprod
expect_isa max scalar scalar
expect_isa cortex-a72 "" scalar
expect_isa cortex-a72 i8mm scalar   # an unsupported request: the best supported level below it

kernel_tests() {  # kernel_tests CPU_MODEL CPUCHAT_ISA_VALUE LABEL
  local log="$BUILD/kernel-tests-$1-${2:-auto}.log" rc=0 counts passed failed
  echo "== kernel tests: qemu -cpu $1${2:+, CPUCHAT_ISA=$2} ($3)"
  CPUCHAT_ISA="$2" qemu "$1" "$BUILD/kernels/cpuchat_kernels_tests" --gtest_brief=1 >"$log" 2>&1 || rc=$?
  grep -E "^cpuchat_kernels:|^\[ isa|FAILED|Failure" "$log" | head -20 || true
  counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
  if [[ -z "$counts" ]]; then
    echo "   the test binary did not finish (exit $rc):"
    tail -20 "$log"
    count 0 1
    return
  fi
  echo "   $counts"
  read -r passed _ failed _ <<<"$counts"
  ((rc != 0 && failed == 0)) && failed=1  # crashed after the count
  count "$passed" "$failed"
  paths+=("kernels $3")
}
echo "== ISA objects export only their kernels (nm on the NEON objects)"
if (cd "$BUILD" && ctest -R isa_objects_sealed --output-on-failure >"$BUILD/isa-objects.log" 2>&1); then
  echo "   ok"; count 1 0
else
  tail -20 "$BUILD/isa-objects.log"; count 0 1
fi
kernel_tests max "" "i8mm + dotprod + scalar"
kernel_tests max dotprod "dotprod as the best level"
kernel_tests cortex-a72 "" "scalar: a CPU without dotprod"
stamp

# ---- 4. model tests: fp32 logits fixtures (every checkpoint format), int4 op and engine ------
# The fixture suite is the longest (18 emulated cpuchat runs): it runs in the background, beside
# sections 5 and 6 (2 cores), and is reported after them.
run_gtest() {  # run_gtest LOG FILTER BINARY: under qemu -cpu max; the exit status goes to LOG.rc
  local rc=0
  qemu max "$3" --gtest_filter="$2" --gtest_brief=1 >"$1" 2>&1 || rc=$?
  echo "$rc" >"$1.rc"
}
report_gtest() {  # report_gtest LABEL LOG
  local log=$2 rc passed failed
  rc=$(cat "$log.rc")
  echo "== $1 (qemu -cpu max)"
  grep -E "^\[  FAILED  \]|Failure" "$log" | head -20 || true
  passed=$(grep -oE '^\[  PASSED  \] [0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  failed=$(grep -oE '^\[  FAILED  \] [0-9]+ tests?' "$log" | grep -oE '[0-9]+' || echo 0)
  ((rc != 0 && failed == 0)) && { echo "   exit $rc:"; tail -20 "$log"; failed=1; }
  echo "   $passed passed, $failed failed"
  count "$passed" "$failed"
  paths+=("$1")
}
model_tests="$BUILD/tests/model/cpuchat_model_fixture_tests"
run_gtest "$BUILD/logits-fixtures.log" "Fixtures/LogitsFixture.*:LogitsFixtureList.*" "$model_tests" &
fixtures_pid=$!
run_gtest "$BUILD/int4.log" "Int4Op.*:Int4Engine.*" "$model_tests"
report_gtest "int4 op and engine" "$BUILD/int4.log"
stamp

# ---- 5. x86 vs aarch64: the same model, the same ids ------------------------------------------
checks() {  # checks LABEL LOG COMMAND...: runs a checker that prints one "ok:"/"FAIL:" line per check
  local label=$1 log=$2 rc=0 passed failed
  shift 2
  "$@" >"$log" 2>&1 || rc=$?
  sed 's/^/   /' "$log"
  passed=$(grep -cE '^ok:' "$log" || true)
  failed=$(grep -cE '^FAIL:' "$log" || true)
  ((rc != 0 && failed == 0)) && failed=1
  count "$passed" "$failed"
  paths+=("$label")
}
echo "== x86 vs aarch64 agreement on the stories260K fixture prompts"
if [[ -x "$X86_CPUCHAT" ]]; then
  checks "x86 vs aarch64 logits + greedy ids" "$BUILD/agreement.log" \
    python3 "$ROOT/tests/model/compare_arch_logits.py" --fixture "$SHARED/fixtures/logits_stories260K.json" \
    --model "$SHARED/models/hf/stories260K" --work "$BUILD/agreement" --x86 "$X86_CPUCHAT" \
    --arm qemu-aarch64 -L "$SYSROOT" -cpu max "$BUILD/cpuchat"
else
  echo "   FAIL: no x86 binary at $X86_CPUCHAT (scripts/build.sh builds it; or set X86_CPUCHAT)"
  count 0 1
fi
stamp

# ---- 6. the server on aarch64 ----------------------------------------------------------------
echo "== cpuchat serve on aarch64 (int4, qemu -cpu max)"
checks "server: /v1/models, chat completion, streamed chat completion" "$BUILD/server.log" \
  bash "$ROOT/tests/server/server_smoke_test.sh" "$SHARED/models/hf/stories260K" i8mm \
  qemu-aarch64 -L "$SYSROOT" -cpu max "$BUILD/cpuchat"
stamp

wait "$fixtures_pid" || true
report_gtest "logits fixtures fp32: hf, llama2.c, gguf, meta checkpoints" "$BUILD/logits-fixtures.log"
stamp

echo "aarch64 paths run: $(IFS=';'; echo "${paths[*]}" | sed 's/;/; /g')"
echo "aarch64 total time: $((SECONDS - START)) s"
echo "${total_passed} passed, ${total_failed} failed"
((total_failed == 0))
