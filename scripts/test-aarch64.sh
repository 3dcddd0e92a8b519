#!/usr/bin/env bash
# Cross-compiles the INT4 kernel library (kernels/) and its tests for aarch64 and runs them
# under qemu-user, twice:
#   -cpu max        : dotprod + i8mm available -> the tests run the scalar, dotprod and i8mm paths
#   -cpu cortex-a57 : no dotprod               -> detection must fall back to scalar
# Installs what it needs (Debian 12, as root, non-interactive). Exits non-zero on any failure.
# Output ends with the combined "N passed, N failed" line.
#
#   scripts/test-aarch64.sh                 (build dir: $BUILD_DIR, default build/aarch64-kernels in this checkout,
#                                            so two checkouts never share a CMake cache)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/aarch64-kernels}"
JOBS="${JOBS:-2}"
SYSROOT=/usr/aarch64-linux-gnu

# ---- 1. tools and arm64 GoogleTest ---------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
[[ -f /usr/lib/aarch64-linux-gnu/libgtest.a ]] || missing+=(libgtest-dev:arm64)
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  if [[ " ${missing[*]} " == *":arm64"* ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2. cross build -------------------------------------------------------------------------
echo "== building kernels/ for aarch64 in $BUILD_DIR"
cmake -S "$ROOT/kernels" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$ROOT/kernels/cmake/aarch64-linux-gnu.cmake" >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS" --target cpuchat_kernels_tests cpuchat_kernels_isa >/dev/null

run() {  # run CPU_MODEL BINARY [ARGS...]
  local cpu=$1
  shift
  qemu-aarch64 -cpu "$cpu" -L "$SYSROOT" "$@"
}

expect_isa() {  # expect_isa CPU_MODEL CPUCHAT_ISA_VALUE EXPECTED_ACTIVE
  local line
  line=$(CPUCHAT_ISA="$2" run "$1" "$BUILD_DIR/cpuchat_kernels_isa")
  echo "   -cpu $1 CPUCHAT_ISA=${2:-<unset>}: $line"
  if [[ "$line" != *"active=$3 "* ]]; then
    echo "FAILED: expected active=$3" >&2
    return 1
  fi
}

total_passed=0
total_failed=0
run_tests() {  # run_tests CPU_MODEL
  local log="$BUILD_DIR/tests-$1.log" rc=0
  echo "== tests under qemu-aarch64 -cpu $1"
  run "$1" "$BUILD_DIR/cpuchat_kernels_tests" --gtest_brief=1 >"$log" 2>&1 || rc=$?
  grep -E "^cpuchat_kernels:|^\[ isa|FAILED|Failure" "$log" | head -40 || true
  local counts
  counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
  if [[ -z "$counts" ]]; then
    echo "   test binary did not finish (exit $rc); last lines:"
    tail -20 "$log"
    total_failed=$((total_failed + 1))
    return
  fi
  echo "   $counts"
  local passed failed
  read -r passed _ failed _ <<<"$counts"
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
  if ((rc != 0 && failed == 0)); then total_failed=$((total_failed + 1)); fi  # crashed after the count
}

# ---- 3. which path is taken, then the tests ---------------------------------------------------
echo "== runtime dispatch"
isa_ok=1
expect_isa max "" i8mm || isa_ok=0
expect_isa max dotprod dotprod || isa_ok=0
expect_isa max scalar scalar || isa_ok=0
expect_isa cortex-a57 "" scalar || isa_ok=0
expect_isa cortex-a57 i8mm scalar || isa_ok=0   # unsupported request -> best supported below it
((isa_ok)) || total_failed=$((total_failed + 1))

run_tests max          # paths: scalar, dotprod, i8mm
run_tests cortex-a57   # path: scalar (fallback)

echo "aarch64 kernels: paths tested i8mm, dotprod, scalar (qemu -cpu max) and scalar fallback (-cpu cortex-a57)"
echo "${total_passed} passed, ${total_failed} failed"
((total_failed == 0))
