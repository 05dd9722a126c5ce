#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-batched-bench and llama-quantize, the
# reference the edge engine is measured against, and llama-server, which the
# gateway's tests use as a real OpenAI-compatible upstream, into
# build/llama.cpp/ (scripts/test.sh runs this; the project's own build does
# not need it). Debian 12 does not package llama.cpp; its source comes from
# the npm registry, inside the node-llama-cpp package (a git bundle of the
# llama.cpp release that package was built with), pinned below by version and
# checksum. Needs npm, git, cmake and a C++ compiler (scripts/setup.sh).
#
# By default llama.cpp is built for the instruction set the engine is built
# for (AVX2, FMA, F16C: the project's target machine), so the comparison is of
# the code, not of the instructions available. --native builds it for
# everything this CPU has (AVX-512, VNNI where present) into
# build/llama.cpp-native/ instead: what a user of this exact machine would get.
# Usage: bench/llama_cpp_build.sh [--native]    then  build/llama.cpp/bin/llama-bench --help
# Prints the bin/ folder; does nothing when every tool is already built.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.22.1
sha256=a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f
out=build/llama.cpp
native=OFF
if [ "${1:-}" = --native ]; then
  out=build/llama.cpp-native
  native=ON
elif [ $# -gt 0 ]; then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
tools=(llama-bench llama-batched-bench llama-quantize llama-server)
mkdir -p "$out"
built=1
for t in "${tools[@]}"; do [ -x "$out/bin/$t" ] || built=0; done
if [ "$built" = 0 ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "node-llama-cpp@$version" >/dev/null)
  tarball="$work/node-llama-cpp-$version.tgz"
  echo "$sha256  $tarball" | sha256sum --check --quiet
  tar -xzf "$tarball" -C "$work" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
  echo "llama.cpp release: $(tr -d '\n ' <"$work/package/llama/llama.cpp.info.json")"
  rm -rf "$out/src"
  git -c advice.detachedHead=false clone --quiet "$work/package/llama/gitRelease.bundle" "$out/src"
  # No web UI: llama.cpp would fetch its prebuilt assets from the network.
  cmake -S "$out/src" -B "$out/cmake" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=$native \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null
  cmake --build "$out/cmake" -j"$(nproc)" --target "${tools[@]}" >/dev/null
  mkdir -p "$out/bin"
  for t in "${tools[@]}"; do cp "$out/cmake/bin/$t" "$out/bin/"; done
fi
echo "$out/bin"
