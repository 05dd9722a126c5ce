#!/usr/bin/env bash
# The shared state path's cost per request (bench/state_bench.cpp) against a
# redis-server started here on a free loopback port, without persistence.
# Usage: bench/state_bench.sh [BUILD_DIR] [benchmark flags...]
# With STATE_BENCH_REALTIME=1 (root only) redis-server and the bench run at
# real-time priority (chrt -f 50), both pinned to core 0 (taskset), so that on
# a shared, loaded machine the tail measures the path and not the scheduler:
# nothing else runs on that core while they want it, and each round trip
# hands over on one core (on two, every wake-up crossed cores and the median
# doubled). Prints the cores and load average first.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
command -v redis-server >/dev/null || { echo "state_bench: redis-server is not installed (scripts/setup.sh)" >&2; exit 1; }
redis_prefix=()
bench_prefix=()
if [ "${STATE_BENCH_REALTIME:-0}" = 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "state_bench: STATE_BENCH_REALTIME=1 needs root (chrt -f)" >&2; exit 1; }
  redis_prefix=(chrt -f 50 taskset -c 0)
  bench_prefix=(chrt -f 50 taskset -c 0)
fi
echo "state_bench: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "$([ "${STATE_BENCH_REALTIME:-0}" = 1 ] && echo "real-time priority" || echo "normal priority")"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${redis_prefix[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis=$!
trap 'kill "$redis"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
FORESHORE_BENCH_REDIS="redis://127.0.0.1:$port" "${bench_prefix[@]}" "$build/bench/state_bench" "$@"
