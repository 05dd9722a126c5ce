#!/usr/bin/env bash
# Builds the GGUF fuzzer with clang (libFuzzer, ASan, UBSan) and runs it on a
# seed corpus made from the real model files.
#
# Usage: scripts/fuzz.sh [SECONDS] [extra libFuzzer flags...]
#   SECONDS              run time, default 60
#   FSH_FUZZ_BUILD_DIR    build folder, default build-fuzz
#   FSH_FUZZ_JOBS         parallel fuzzing processes (libFuzzer -fork), default 1
#   FORESHORE_MODEL_PATH colon-separated folders searched for the seed models
# Crashes are written to $FSH_FUZZ_BUILD_DIR/gguf-crashes; reproduce one with
#   build-fuzz/tests/fuzz/gguf_fuzz build-fuzz/gguf-crashes/crash-...
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
shift || true
build=${FSH_FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${FSH_FUZZ_JOBS:-1}

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
CXX=${CXX:-clang++} cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DFSH_BUILD_FUZZ=ON -DFSH_BUILD_TESTS=OFF -DFSH_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" --target gguf_fuzz gguf_fuzz_seeds

# Seeds: the models shrunk to a few KiB each (see gguf_fuzz_seeds.cpp).
models=()
IFS=: read -r -a dirs <<<"${FORESHORE_MODEL_PATH:-}"
. "$root/scripts/shared-data.sh"
dirs+=("$SHARED_DATA/models")
for name in stories260K.gguf llama-2-tiny-random.gguf; do
  for dir in "${dirs[@]}"; do
    if [[ -n "$dir" && -f "$dir/$name" ]]; then
      models+=("$dir/$name")
      break
    fi
  done
done
if [[ ${#models[@]} -eq 0 ]]; then
  echo "fuzz.sh: no model files found; seeding with synthetic files only" >&2
fi
seeds=$build/gguf-seeds
corpus=$build/gguf-corpus
crashes=$build/gguf-crashes
mkdir -p "$seeds" "$corpus" "$crashes"
"$build/tests/fuzz/gguf_fuzz_seeds" "$seeds" "${models[@]}"

parallel=()
if [[ "$jobs" -gt 1 ]]; then parallel=(-fork="$jobs"); fi
# New inputs go to the first folder; the seeds stay untouched.
"$build/tests/fuzz/gguf_fuzz" "$corpus" "$seeds" \
  -dict="$root/tests/fuzz/gguf.dict" \
  -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$crashes/" "${parallel[@]}" "$@"
