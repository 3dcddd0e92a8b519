#!/usr/bin/env bash
# Installs what cpuchat needs from Debian's packages (and, with --test, what its tests
# need: curl, chromium, the npm packages in tests/node, the aarch64 cross compiler and
# qemu-user for scripts/test-aarch64.sh, and nginx, prometheus and python3-yaml for the
# fleet tests). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

build_pkgs=(build-essential cmake pkg-config libtorch-dev libcpp-httplib-dev nlohmann-json3-dev
            libsentencepiece-dev libspdlog-dev libgtest-dev libbenchmark-dev libssl-dev)
# clang: the fuzz targets; libxxhash0: reference XXH64; the cross compiler and qemu: aarch64
# tests; nginx, prometheus, python3-yaml: the fleet tests (tests/fleet)
test_pkgs=(curl chromium nodejs npm python3 clang-14 libclang-rt-14-dev libxxhash0 g++-aarch64-linux-gnu qemu-user
           nginx prometheus python3-yaml)

want=("${build_pkgs[@]}")
[[ "${1:-}" == "--test" ]] && want+=("${test_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
  # node/npm may come from outside Debian (the machine image): count them present if on PATH
  if [[ "$p" == nodejs ]] && command -v node >/dev/null; then continue; fi
  if [[ "$p" == npm ]] && command -v npm >/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ "${1:-}" == "--test" ]]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
