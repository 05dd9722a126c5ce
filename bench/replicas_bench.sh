#!/usr/bin/env bash
# Several replicas as one: aggregate proxied requests/s through HAProxy with
# 1 and with 3 gateway replicas sharing one Redis (state.backend: redis, with
# a per-key rate limit and budget so that every request takes the shared state
# path), in front of one upstream (an embedded stories260K answering one token),
# and the same single replica with state.backend: local for the state path's
# share. wrk at 64 connections. On a machine with fewer cores than processes
# the replicas compete with the upstream and wrk: read the figures with the
# core count this prints.
# Usage: bench/replicas_bench.sh [SECONDS=10]   (after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
bin=${FORESHORE_BINARY:-build/foreshore}
export FORESHORE_MODEL_PATH=${FORESHORE_MODEL_PATH:-$(pwd)/models:$(pwd)/../shared/data/models}
for tool in redis-server haproxy wrk; do
  command -v "$tool" >/dev/null || { echo "replicas_bench: $tool is not installed (scripts/setup.sh)" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {  # start NAME ARGS... : prints the port once it listens
  local name=$1; shift
  "$bin" serve "$@" --port 0 -q >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 1 200); do
    grep -q "listening on" "$work/$name.out" 2>/dev/null && { grep -o '[0-9]*$' "$work/$name.out" | head -1; return; }
    sleep 0.05
  done
  cat "$work/$name.err" >&2; exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

cat >"$work/upstream.yaml" <<YAML
server: {max_concurrent_requests: 2048}
tiers:
  edge: {kind: embedded, placement: device, model: stories260K, max_concurrency: 8, max_queue: 4096, kv_memory_mb: 64}
routing: {policy: edge}
YAML
up=$(start upstream --config "$work/upstream.yaml")

gateway_yaml() {  # gateway_yaml BACKEND
  cat <<YAML
server: {max_concurrent_requests: 2048, log_requests: false}
tiers:
  cloud: {kind: openai, placement: cloud, model: stories260K, endpoint: "http://127.0.0.1:$up/v1", max_concurrency: 512, max_queue: 4096, price: {input_per_mtok: 1, output_per_mtok: 1}}
routing: {policy: cloud}
state: {backend: $1, url: "redis://127.0.0.1:$redis_port"}
limits: {requests_per_minute: 100000000, budget_usd: 1000000}
YAML
}
gateway_yaml redis >"$work/redis.yaml"
gateway_yaml local >"$work/local.yaml"

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
wrk.body = '{"model":"foreshore","max_tokens":1,"temperature":0,"messages":[{"role":"user","content":"Once upon a time"}]}'
LUA

balance() {  # balance NAME PORTS... : HAProxy round robin; prints its port
  local name=$1; shift
  local port; port=$(free_port)
  {
    printf 'global\n  maxconn 8192\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n'
    printf 'frontend f\n  bind 127.0.0.1:%s\n  default_backend b\nbackend b\n  balance roundrobin\n' "$port"
    local i=0
    for p in "$@"; do printf '  server r%s 127.0.0.1:%s\n' "$i" "$p"; i=$((i + 1)); done
  } >"$work/$name.cfg"
  haproxy -db -f "$work/$name.cfg" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  echo "$port"
}

run() {  # run LABEL PORT
  local out
  out=$(wrk -t2 -c64 -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.1:$2/v1/chat/completions")
  printf '%-34s %s | p50 %s p99 %s | non-2xx %s\n' "$1" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2 " req/s"}')" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" "$(echo "$out" | awk '$1=="99%" {print $2}')" \
    "$(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)"
}

echo "cores: $(nproc); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
l1=$(start local1 --config "$work/local.yaml")
run "1 replica, state local, HAProxy" "$(balance lb_local "$l1")"
r1=$(start redis1 --config "$work/redis.yaml")
run "1 replica, state redis, HAProxy" "$(balance lb1 "$r1")"
r2=$(start redis2 --config "$work/redis.yaml")
r3=$(start redis3 --config "$work/redis.yaml")
run "3 replicas, state redis, HAProxy" "$(balance lb3 "$r1" "$r2" "$r3")"
echo "requests counted in Redis for the key: $(redis-cli -p "$redis_port" --scan --pattern 'fsh:rpm:*' | xargs -r redis-cli -p "$redis_port" mget | awk '{s += $1} END {print s + 0}')"
