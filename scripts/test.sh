#!/usr/bin/env bash
# The whole test suite from a fresh checkout (with ../shared beside it): installs what
# the tests need, builds, runs the aarch64 kernel tests under qemu, then every CTest test.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d ../shared/models ]] || { echo "test.sh: ../shared/models is missing (models and fixtures live there)"; exit 1; }
bash scripts/install-deps.sh --test
bash scripts/build.sh
if [[ -f scripts/test-aarch64.sh ]]; then bash scripts/test-aarch64.sh; fi
cd build
ctest --output-on-failure -j2 --timeout 900
