#!/usr/bin/env bash
# Builds (once) an arm64 Debian sysroot with libtorch and every other build dependency of cpuchat,
# for cross-compiling the whole binary (cmake/aarch64-sysroot.cmake) and running it under qemu-user.
#
# Why a sysroot and not multiarch: Debian's arm64 libtorch-dev / libsentencepiece-dev are not
# Multi-Arch: same, so installing them beside the amd64 ones would remove the amd64 packages.
# Here apt runs with a private state (empty dpkg status, arm64 only) to resolve the closure,
# `apt-get download`s it and `dpkg -x`es each .deb; nothing on the host changes.
#
#   scripts/aarch64-sysroot.sh SYSROOT_DIR     (re-used when SYSROOT_DIR/.complete exists)
set -euo pipefail
SYSROOT="$(realpath -m "${1:?usage: aarch64-sysroot.sh SYSROOT_DIR}")"
[[ -f "$SYSROOT/.complete" ]] && { echo "== arm64 sysroot: re-using $SYSROOT"; exit 0; }

PACKAGES=(libtorch-dev libspdlog-dev libfmt-dev libcpp-httplib-dev libsentencepiece-dev nlohmann-json3-dev libgtest-dev)
WORK="$SYSROOT.apt"
rm -rf "$SYSROOT" "$WORK"
mkdir -p "$SYSROOT" "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs"
: >"$WORK/status"
APT=(-o Dir::State::Lists="$WORK/lists" -o Dir::State::status="$WORK/status" -o Dir::Cache="$WORK/cache"
     -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1
     -o Acquire::Languages=none -q)

echo "== arm64 sysroot: package lists"
apt-get "${APT[@]}" update >"$WORK/update.log" 2>&1 || { cat "$WORK/update.log"; exit 1; }
# The closure as an install onto an empty system would see it (`Inst name (version ...`).
apt-get "${APT[@]}" install -s --no-install-recommends "${PACKAGES[@]}" >"$WORK/plan.txt"
mapfile -t wanted < <(awk '/^Inst /{ gsub(/[()]/, "", $3); print $2 "=" $3 }' "$WORK/plan.txt")
((${#wanted[@]} > 100)) || { echo "arm64 sysroot: suspiciously small closure"; cat "$WORK/plan.txt"; exit 1; }
echo "== arm64 sysroot: downloading ${#wanted[@]} packages"
(cd "$WORK/debs" && apt-get "${APT[@]}" download "${wanted[@]}" >"$WORK/download.log" 2>&1) ||
  { tail -20 "$WORK/download.log"; exit 1; }
echo "== arm64 sysroot: unpacking into $SYSROOT"
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done

# What update-alternatives would do on the target: the reference BLAS/LAPACK.
lib="$SYSROOT/usr/lib/aarch64-linux-gnu"
for so in libblas.so.3 liblapack.so.3; do
  impl=""
  for dir in blas lapack openblas-pthread; do [[ -e "$lib/$dir/$so" && -z "$impl" ]] && impl="$dir/$so"; done
  [[ -n "$impl" ]] || { echo "arm64 sysroot: no $so implementation unpacked"; exit 1; }
  ln -sfn "$impl" "$lib/$so"
done
# Absolute symlinks point into the host; make them relative to the sysroot.
while IFS= read -r link; do
  target=$(readlink "$link")
  [[ "$target" == /* ]] || continue
  ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$SYSROOT$target")" "$link"
done < <(find "$SYSROOT" -type l)
rm -rf "$WORK"
touch "$SYSROOT/.complete"
echo "== arm64 sysroot: ready ($(du -sh "$SYSROOT" | cut -f1))"
