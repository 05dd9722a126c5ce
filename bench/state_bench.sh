#!/usr/bin/env bash
# The shared state path's cost per request (bench/state_bench.cpp) against a
# redis-server started here on a free loopback port, without persistence.
# Usage: bench/state_bench.sh [BUILD_DIR] [benchmark flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
command -v redis-server >/dev/null || { echo "state_bench: redis-server is not installed (scripts/setup.sh)" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis=$!
trap 'kill "$redis"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
FORESHORE_BENCH_REDIS="redis://127.0.0.1:$port" "$build/bench/state_bench" "$@"
