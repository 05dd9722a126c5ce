#!/usr/bin/env bash
# Writes the llama.cpp reference the engine's tests compare against
# (tests/llama_cpp_reference/, committed): for each tiny preset of the newer
# architectures and each type, the logits of a fixed token sequence and 64
# greedy tokens, as llama.cpp computes them on the very file the tests write
# (build/bench/synthetic_model PRESET TYPE; weights are seeded, so the file is
# the same every time). Also prints how far llama.cpp moves from itself with
# an F16 KV cache and one token per batch, the yardstick for the tests' bounds.
# Needs the project built with -DFSH_BUILD_BENCH=ON, and llama.cpp's library,
# which bench/llama_cpp_build.sh builds (its source comes from npm).
# Usage: bench/llama_cpp_reference.sh [BUILD_DIR]    (default build/)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
llama=build/llama.cpp
if [ ! -f "$llama/cmake/src/libllama.a" ]; then
  bench/llama_cpp_build.sh >/dev/null
fi
tool=$llama/bin/reference-logits
mkdir -p "$llama/bin"
c++ -std=c++17 -O2 -o "$tool" bench/llama_cpp_reference/logits.cpp \
  -I"$llama/src/include" -I"$llama/src/ggml/include" \
  "$llama/cmake/src/libllama.a" "$llama/cmake/ggml/src/libggml.a" \
  "$llama/cmake/ggml/src/libggml-cpu.a" "$llama/cmake/ggml/src/libggml-base.a" -fopenmp -lpthread
out=tests/llama_cpp_reference
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for preset in qwen3-tiny smollm3-tiny gemma3-tiny phi3-tiny lfm2-tiny; do
  for type in F32 F16 Q8_0 Q4_K; do
    "$build/bench/synthetic_model" "$preset" "$type" "$work/model.gguf"
    "$tool" "$work/model.gguf" "$out/$preset-$type.logits" 2>/dev/null | sed "s|^$work/model.gguf|$preset $type|"
  done
done
# LongRoPE's long factors: a context past phi3-tiny's original 256 (the
# runs above, with 128, use the short ones).
for type in F32 Q4_K; do
  "$build/bench/synthetic_model" phi3-tiny $type "$work/model.gguf"
  "$tool" "$work/model.gguf" "$out/phi3-tiny-$type-ctx512.logits" 512 2>/dev/null |
    sed "s|^$work/model.gguf|phi3-tiny $type, context 512|"
done
