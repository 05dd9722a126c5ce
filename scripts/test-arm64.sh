#!/usr/bin/env bash
# Cross-builds the engine for ARM64 with Debian's cross toolchain and runs its
# tests (gguf, kernels, tokenizer, model) under user-mode QEMU.
#
# Usage: scripts/test-arm64.sh [BUILD_DIR]   (default: build-arm64)
#
# Only the engine is built (FSH_ENGINE_ONLY): the rest of the project needs
# Hyperscan, which has no ARM64 package. The tests run twice: on QEMU's `max`
# CPU model, which has the dot product, so the kernel and model tests run at
# the scalar, neon and dotprod levels (each checked against the scalar
# reference); then on `cortex-a72` (ARMv8.0-A, no dot product), where they
# run at scalar and neon, the dotprod runs show as skipped, and the kernel
# test checks that dotprod is refused. QEMU shows correctness only: no speed
# measured under it means anything.
#
# Installs what it lacks (root or sudo): arm64 as a dpkg foreign architecture,
# crossbuild-essential-arm64, qemu-user, and the engine's libraries for arm64.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-arm64}

packages=(crossbuild-essential-arm64 qemu-user libgtest-dev:arm64 libpcre2-dev:arm64
  libstdc++6:arm64 nlohmann-json3-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-arm64: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "test-arm64: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  dpkg --print-foreign-architectures | grep -qx arm64 || "${sudo_cmd[@]}" dpkg --add-architecture arm64
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The tests run on the multiarch arm64 runtime (/lib/ld-linux-aarch64.so.1,
# /usr/lib/aarch64-linux-gnu), as on an arm64 Debian. Not on the cross
# toolchain's copy under /usr/aarch64-linux-gnu (qemu-aarch64 -L): with it,
# creating a thread hung under Debian 12's QEMU 7.2.
export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DCMAKE_CROSSCOMPILING_EMULATOR=qemu-aarch64 \
  -DFSH_ENGINE_ONLY=ON -DFSH_BUILD_BENCH=OFF >/dev/null
cmake --build "$dir" -j "$(nproc)"
# The CPU model comes from QEMU_CPU, so one build serves both.
for cpu in max cortex-a72; do
  echo "test-arm64: tests on qemu-aarch64 -cpu $cpu"
  QEMU_CPU=$cpu ctest --test-dir "$dir" -j "$(nproc)" --output-on-failure
done
