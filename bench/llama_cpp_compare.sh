#!/usr/bin/env bash
# The edge engine against llama.cpp on the same GGUF files: prompt processing
# (ppN, one pass over N random tokens) and generation (tgN, N tokens one at a
# time) in tokens/s, same thread count, same repetitions, the two tools
# alternating file by file. Prints a markdown table with their ratio.
#
# Usage: bench/llama_cpp_compare.sh [-p 128] [-n 32] [-t 2] [-r 3] [FILE.gguf ...]
# Without files it makes a standard set in $FORESHORE_BENCH_DIR/llama-cpp
# (default /tmp/foreshore-bench): SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B
# shapes with random weights (build/bench/synthetic_model, F16), each quantized
# by llama.cpp's own llama-quantize to Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q3_K_M,
# Q2_K and IQ4_XS; then the newer architectures, Qwen3-0.6B, Gemma-3-270M,
# SmolLM3-3B, Phi-4-mini and LFM2-350M shapes, to Q8_0, Q4_0 and Q4_K_M
# (their F16 files need about 18 GB of disk together).
# Needs: a build with -DFSH_BUILD_BENCH=ON, bench/llama_cpp_build.sh, jq.
# FORESHORE_BINARY and LLAMA_BENCH override the two tools' paths.
set -euo pipefail
cd "$(dirname "$0")/.."
p=128 n=32 t=2 r=3
while getopts p:n:t:r: opt; do
  case $opt in
    p) p=$OPTARG ;; n) n=$OPTARG ;; t) t=$OPTARG ;; r) r=$OPTARG ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
fsh=${FORESHORE_BINARY:-build/foreshore}
llama_bench=${LLAMA_BENCH:-build/llama.cpp/bin/llama-bench}
for tool in "$fsh" "$llama_bench"; do
  [ -x "$tool" ] || { echo "not found: $tool (scripts/build.sh; bench/llama_cpp_build.sh)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq is needed (scripts/setup.sh installs it)" >&2; exit 2; }

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  dir=${FORESHORE_BENCH_DIR:-/tmp/foreshore-bench}/llama-cpp
  synthetic=${SYNTHETIC_MODEL:-$(dirname "$fsh")/bench/synthetic_model}
  quantize=$(dirname "$llama_bench")/llama-quantize
  mkdir -p "$dir"
  for model in smollm2-135m qwen2.5-0.5b llama3.2-1b qwen3-0.6b gemma3-270m smollm3-3b phi4-mini \
    lfm2-350m; do
    [ -f "$dir/$model-F16.gguf" ] || "$synthetic" "$model" F16 "$dir/$model-F16.gguf"
    case $model in
      smollm2-135m | qwen2.5-0.5b | llama3.2-1b) types="Q8_0 Q4_0 Q4_K_M Q5_K_M Q3_K_M Q2_K IQ4_XS" ;;
      *) types="Q8_0 Q4_0 Q4_K_M" ;;
    esac
    for q in $types; do
      if [ ! -f "$dir/$model-$q.gguf" ]; then
        "$quantize" "$dir/$model-F16.gguf" "$dir/$model-$q.gguf" "$q" >"$dir/$model-$q.log" 2>&1
      fi
      files+=("$dir/$model-$q.gguf")
    done
  done
fi

echo "| file | test | foreshore t/s | llama.cpp t/s | ratio |"
echo "|---|---|---:|---:|---:|"
i=0
for f in "${files[@]}"; do
  run_ours() { "$fsh" bench -m "$f" -p "$p" -n "$n" -t "$t" -r "$r" --json; }
  run_theirs() { "$llama_bench" -m "$f" -p "$p" -n "$n" -t "$t" -r "$r" -o json 2>/dev/null; }
  if [ $((i % 2)) -eq 0 ]; then
    ours=$(run_ours); theirs=$(run_theirs)
  else
    theirs=$(run_theirs); ours=$(run_ours)
  fi
  i=$((i + 1))
  for test in "pp$p" "tg$n"; do
    if [ "${test:0:2}" = pp ]; then np=$p ng=0; else np=0 ng=$n; fi
    a=$(jq -r --arg t "$test" '.[] | select(.test == $t) | "\(.avg_ts) \(.stddev_ts)"' <<<"$ours")
    b=$(jq -r --argjson np "$np" --argjson ng "$ng" \
      '.[] | select(.n_prompt == $np and .n_gen == $ng) | "\(.avg_ts) \(.stddev_ts)"' <<<"$theirs")
    read -r a_ts a_sd <<<"$a"
    read -r b_ts b_sd <<<"$b"
    awk -v f="$(basename "$f")" -v t="$test" -v a="$a_ts" -v as="$a_sd" -v b="$b_ts" -v bs="$b_sd" \
      'BEGIN { printf "| %s | %s | %.1f ± %.1f | %.1f ± %.1f | %.2f |\n", f, t, a, as, b, bs, a / b }'
  done
done
