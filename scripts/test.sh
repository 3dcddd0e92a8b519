#!/usr/bin/env bash
# The whole test suite from a fresh checkout (with ../shared beside it): installs what
# the tests need, builds, runs the aarch64 kernel tests under qemu, then every CTest test,
# then every fuzz target for 30 s (scripts/fuzz.sh, ~6 min with its build).
#   scripts/test.sh              the above
#   scripts/test.sh --sanitize   instead: the unit/integration suite built with ASan + UBSan
#                                into build-asan/ (slow: run it niced, not in CI)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d ../shared/models ]] || { echo "test.sh: ../shared/models is missing (models and fixtures live there)"; exit 1; }
bash scripts/install-deps.sh --test
if [[ "${1:-}" == "--sanitize" ]]; then
  flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  # -O1 -g1 (line tables): the usual sanitizer build, much cheaper to compile than -O2 -g.
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DCPUCHAT_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
  cmake --build build-asan -j"$(nproc)"
  cd build-asan
  # Leaks are not checked: libtorch keeps its global allocations until exit.
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure -j2 --timeout 1800
  exit 0
fi
bash scripts/build.sh
if [[ -f scripts/test-aarch64.sh ]]; then bash scripts/test-aarch64.sh; fi
(cd build && ctest --output-on-failure -j2 --timeout 900)
bash scripts/fuzz.sh 30
