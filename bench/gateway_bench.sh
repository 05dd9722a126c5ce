#!/usr/bin/env bash
# Gateway overhead: the same non-streaming request sent straight to an upstream
# and through the gateway (forced to its cloud tier, so it is proxied), with wrk
# at 1, 64 and 512 connections; then the gateway's RSS with no model loaded, right
# after the burst and once its idle worker threads have exited.
# Usage: bench/gateway_bench.sh [SECONDS=10]   (after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
bin=${FORESHORE_BINARY:-build/foreshore}
export FORESHORE_MODEL_PATH=${FORESHORE_MODEL_PATH:-$(pwd)/models:$(pwd)/../shared/data/models}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

start() {  # start NAME ARGS... : prints the port once it listens
  local name=$1; shift
  "$bin" serve "$@" --port 0 -q >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  echo $! >"$work/$name.pid"
  for _ in $(seq 1 200); do
    grep -q "listening on" "$work/$name.out" 2>/dev/null && { grep -o '[0-9]*$' "$work/$name.out" | head -1; return; }
    sleep 0.05
  done
  cat "$work/$name.err" >&2; exit 1
}

# The upstream: an embedded stories260K answering one token, with room for load.
cat >"$work/upstream.yaml" <<YAML
server: {max_concurrent_requests: 2048}
tiers:
  edge: {kind: embedded, placement: device, model: stories260K, max_concurrency: 8, max_queue: 4096, kv_memory_mb: 64}
routing: {policy: edge}
YAML
up=$(start upstream --config "$work/upstream.yaml")
cat >"$work/gateway.yaml" <<YAML
server: {max_concurrent_requests: 2048}
tiers:
  cloud: {kind: openai, placement: cloud, model: stories260K, endpoint: "http://127.0.0.1:$up/v1", max_concurrency: 512, max_queue: 4096}
routing: {policy: cloud}
YAML
gw=$(start gateway --config "$work/gateway.yaml")

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"stories260K","max_tokens":1,"temperature":0,"messages":[{"role":"user","content":"Once upon a time"}]}'
LUA

run() {  # run LABEL PORT CONNECTIONS
  local out
  out=$(wrk -t"$(( $3 < 2 ? 1 : 2 ))" -c"$3" -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.1:$2/v1/chat/completions")
  printf '%-8s c=%-4s %s | p50 %s p99 %s | non-2xx %s\n' "$1" "$3" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2 " req/s"}')" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" "$(echo "$out" | awk '$1=="99%" {print $2}')" \
    "$(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)"
}

for c in 1 64 512; do
  run direct "$up" "$c"
  run gateway "$gw" "$c"
done
rss() { awk '/VmRSS/ {print $2 " kB"}' /proc/"$(cat "$work/gateway.pid")"/status; }
workers() { curl -s "http://127.0.0.1:$gw/metrics" | awk '$1=="foreshore_http_worker_threads" {print $2}'; }
echo "gateway RSS without a model, right after the burst: $(rss) ($(workers) HTTP workers)"
# Idle workers beyond the floor exit after server.worker_idle_timeout_ms (10 s),
# once their connections close (httplib's keep-alive wait is 5 s); then freed
# memory goes back to the system. Wait for both, and for RSS to hold still 5 s.
last=$(rss); still=0
for _ in $(seq 1 90); do
  sleep 1
  now=$(rss)
  if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; last=$now; fi
  [ "$still" -ge 5 ] && [ "$(workers)" -le 8 ] && break
done
echo "gateway RSS without a model, once it settles: $(rss) ($(workers) HTTP workers)"
