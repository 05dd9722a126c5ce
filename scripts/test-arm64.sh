#!/usr/bin/env bash
# Cross-builds the whole project (engine, gateway, CLI, libforeshore, tests)
# for ARM64 with Debian's cross toolchain and runs the test suite under
# user-mode QEMU.
#
# Usage: scripts/test-arm64.sh [--engine] [BUILD_DIR] [CTEST_ARGS...]
#   (default BUILD_DIR: build-arm64, or build-arm64-engine with --engine)
#   e.g. scripts/test-arm64.sh build-arm64 -R 'kernels|sensitivity'
#
# --engine: the subset CI runs (scripts/test.sh): an engine-only build
# (FSH_ENGINE_ONLY: the engine, kernels, GGUF reader and tokenizer, and
# their tests) that needs only the cross compiler, QEMU, and GoogleTest and
# PCRE2 for arm64. On `max`, all its tests, except that the whole-model
# suites (TinyPresets, AllTypes, RealModel: llama.cpp's logits, every weight
# type) run at the best level only and the batch scheduler's test on real
# shapes (not per level) not at all; then kernels_test's suites on
# `cortex-a72` and `neoverse-n1`.
#
# The test programs run under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR);
# the ones that start the foreshore binary start it through QEMU as well
# (tests/support/emulator.h). The servers tests start beside it (redis-server,
# postgres, haproxy, node) are the host's own, from scripts/setup.sh.
# embed_install does not run here (label needs_native: the host's compiler
# and Python cannot build or load an ARM64 library). QEMU shows correctness
# only: no speed measured under it means anything, and tests get ten times
# the usual time limit.
#
# The suite (or the CTEST_ARGS subset) runs on QEMU's `max` CPU model, which
# has the dot product and the int8 matrix multiply, so the kernel and model
# tests run at the scalar, neon, dotprod and i8mm levels, each checked
# against the scalar reference. Then the tests that differ by CPU (the ones
# per level, and CpuLevel) run again on `cortex-a72` (ARMv8.0-A, neither):
# at scalar and neon, the dotprod and i8mm runs show as skipped, and the
# kernel test checks that both are refused. Last, the level tests on
# `neoverse-n1` (dot product, no i8mm) check that i8mm alone is refused.
#
# In CI (.ci/run, through scripts/test.sh): the --engine subset. The whole
# project's suite is not: on the 2-core machine while other builds ran (load
# average 8-13, 2026-12-07), its cross build took 12 minutes with ccache
# holding the libraries' objects (about 45 without), and its 844 tests take
# well over an hour on `max` alone: the test programs other than the
# engine's 21 minutes at -j2 (DocsCommands 27 minutes by itself,
# ReadmeCommands 9), the model tests minutes each (RealModel, Batch,
# TinyPresets). docs/PERFORMANCE.md has the counts. The --engine subset took
# 6 minutes, its build included, on the same machine at load average 2-5. A
# larger subset for a machine with time for it (338 tests on `max`): the
# kernel tests at every level, and the pattern matching, routing, gateway
# end-to-end, C API, executor, privacy, gguf and tokenizer tests; measured
# apart, the latter took 15 minutes at -j2 and kernels_test (on cortex-a72,
# as the script's second run does) 8 minutes at -j1, under that load:
#   scripts/test-arm64.sh build-arm64 -R '^(Bf16|CpuLevel|Fp16|Layout|Matmul|Ops|RoundTrip|ThreadPool|GeneratedCorpus|PiiCorpus|Sensitivity|Router|GatewayE2E|GatewayFaults|GatewayLearning|GatewayLlamaServer|GatewayTools|CapiTest|ExecTest|Guard|ShadowTest|Similarity|PrivacyE2E|Gguf|ReferenceVectors|Tokenizer|Vocabular|layering)'
#
# Exit status 3: the packages it needs could not be installed (nothing was
# built or run); any other failure is the build's or the tests'.
#
# Installs what it lacks (root or sudo): arm64 as a dpkg foreign architecture,
# crossbuild-essential-arm64, qemu-user, and the project's libraries for arm64.
# libyaml-cpp-dev and libpq-dev are not Multi-Arch: same, so their arm64
# packages would replace the host's; libvectorscan-dev and libvectorscan5
# conflict with the host's libhyperscan-dev (x86-64 builds use Hyperscan).
# They are unpacked into BUILD_DIR/arm64-dev instead (libyaml-cpp's and
# libpq's runtime libraries are installed as usual; libhs is found in the
# unpacked tree through the RUNPATH of what links it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/shared-data.sh
engine_only=0
if [ "${1:-}" = --engine ]; then
  engine_only=1
  shift
fi
default_dir=build-arm64
[ $engine_only = 1 ] && default_dir=build-arm64-engine
dir=${1:-$default_dir}
shift $(($# > 0 ? 1 : 0))

packages=(crossbuild-essential-arm64 qemu-user libgtest-dev:arm64 libpcre2-dev:arm64
  libstdc++6:arm64 nlohmann-json3-dev)
side_packages=()
if [ $engine_only = 0 ]; then
  packages+=(libcli11-dev libssl-dev:arm64 libsqlite3-dev:arm64 libhiredis-dev:arm64
    libcpp-httplib-dev:arm64 libyaml-cpp0.7:arm64 libpq5:arm64)
  side_packages=(libyaml-cpp-dev:arm64 libyaml-cpp0.7:arm64 libpq-dev:arm64 libpq5:arm64
    libvectorscan-dev:arm64 libvectorscan5:arm64)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-arm64: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "test-arm64: need root (or sudo) to install: ${missing[*]}" >&2; exit 3; }
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  added_arch=0
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    "${sudo_cmd[@]}" dpkg --add-architecture arm64
    added_arch=1
  fi
  if ! "${sudo_cmd[@]}" apt-get update -qq ||
    ! "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    # Leave apt as it was: an arm64 architecture whose package lists cannot
    # be fetched would break every later apt-get update.
    [ $added_arch = 1 ] && "${sudo_cmd[@]}" dpkg --remove-architecture arm64 2>/dev/null &&
      "${sudo_cmd[@]}" apt-get update -qq || true
    echo "test-arm64: could not install ${missing[*]} (is arm64 served by this machine's apt sources?)" >&2
    exit 3
  fi
fi

# The side-installed packages: unpacked with their libraries, the pkg-config
# files pointed at the unpacked tree. The programs built here find the
# libraries only installed there (libhs) at run time through their RUNPATH,
# which CMake sets to the unpacked library folder because they link to it.
side=$dir/arm64-dev
if [ ${#side_packages[@]} -gt 0 ] && [ "$(cat "$side/unpacked" 2>/dev/null)" != "${side_packages[*]}" ]; then
  rm -rf "$side" && mkdir -p "$side/debs"
  (cd "$side/debs" && apt-get download -qq "${side_packages[@]}")
  for deb in "$side"/debs/*.deb; do dpkg-deb -x "$deb" "$side"; done
  sed -i -E "s#^(prefix|exec_prefix|libdir|includedir)=/usr#\1=$(realpath "$side")/usr#" \
    "$side"/usr/lib/aarch64-linux-gnu/pkgconfig/{libpq,libhs}.pc
  echo "${side_packages[*]}" >"$side/unpacked"
fi

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# The tests run on the multiarch arm64 runtime (/lib/ld-linux-aarch64.so.1,
# /usr/lib/aarch64-linux-gnu), as on an arm64 Debian. Not on the cross
# toolchain's copy under /usr/aarch64-linux-gnu (qemu-aarch64 -L): with it,
# creating a thread hung under Debian 12's QEMU 7.2.
mkdir -p "$side"
# The --engine subset: the suites that run whole models (llama.cpp's logits,
# every weight type) at the best level only, not the batch scheduler on real
# shapes (26 minutes under QEMU; the scheduler is not per level and runs
# natively), and kernels_test's suites again on cortex-a72 and neoverse-n1.
kernel_tests='^(Bf16|CpuLevel|Fp16|Interleaved|Layout|Matmul|Ops|RoundTrip|ThreadPool)\.'
export PKG_CONFIG_LIBDIR=$(realpath "$side")/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_PREFIX_PATH="$(realpath "$side")/usr" \
  -DCMAKE_CROSSCOMPILING_EMULATOR=qemu-aarch64 "${launcher[@]}" -DFSH_ENGINE_ONLY=$engine_only \
  -DFSH_BUILD_TESTS=ON -DFSH_BUILD_BENCH=OFF -DFSH_SHARED_DATA_DIR="$SHARED_DATA" >/dev/null
cmake --build "$dir" -j "$(nproc)"
if [ $engine_only = 1 ]; then
  # The best level built: i8mm where the compiler has it, else dotprod.
  below_best='scalar|neon'
  ctest --test-dir "$dir" -N -R '/i8mm$' | grep -q 'Total Tests: [1-9]' && below_best='scalar|neon|dotprod'
  echo "test-arm64 --engine: tests on qemu-aarch64 -cpu max (whole-model suites at the best level only)"
  QEMU_CPU=max ctest --test-dir "$dir" --no-tests=error -j "$(nproc)" --timeout 3000 \
    --output-on-failure -E "^(TinyPresets/|AllTypes/|RealModel\.).*/($below_best)\$|^Batch\.RealShapes" "$@"
  for cpu in cortex-a72 neoverse-n1; do
    echo "test-arm64 --engine: the kernel tests on qemu-aarch64 -cpu $cpu"
    QEMU_CPU=$cpu ctest --test-dir "$dir" --no-tests=error -j "$(nproc)" --timeout 3000 \
      --output-on-failure -R "$kernel_tests"
  done
  exit 0
fi
# The CPU model comes from QEMU_CPU (inherited by the binaries the tests
# start through the emulator), so one build serves both.
echo "test-arm64: tests on qemu-aarch64 -cpu max"
QEMU_CPU=max ctest --test-dir "$dir" --no-tests=error -j "$(nproc)" --timeout 3000 \
  --output-on-failure "$@"
echo "test-arm64: the per-level tests on qemu-aarch64 -cpu cortex-a72 (no dot product)"
QEMU_CPU=cortex-a72 ctest --test-dir "$dir" --no-tests=error -j "$(nproc)" --timeout 3000 \
  --output-on-failure -R '/(scalar|neon|dotprod|i8mm)$|^CpuLevel'
echo "test-arm64: the level tests on qemu-aarch64 -cpu neoverse-n1 (dot product, no i8mm)"
QEMU_CPU=neoverse-n1 ctest --test-dir "$dir" --no-tests=error -j "$(nproc)" --timeout 3000 \
  --output-on-failure -R '^CpuLevel'
