#!/usr/bin/env bash
# The main job: installs what is needed, builds, starts a cloud tier (a second
# foreshore standing in for a cloud API) and the edge gateway in front of it,
# sends routed requests and prints where each ran and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/setup.sh
# Only the binary: the tests' setting in the CMake cache stays as test.sh left it.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFSH_BUILD_BENCH=OFF >/dev/null
cmake --build build -j "$(nproc)" --target foreshore
. scripts/shared-data.sh
bin=$root/build/foreshore
work=$(mktemp -d)
pids=()
# Stops every server this script started, however it ends: success, an error
# (set -e) or Ctrl-C. The pids are collected in this shell, never inside a
# $(...) subshell, whose variables die with it.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a server in the background, in this shell so that its pid is kept.
start() {
  local name=$1; shift
  "$bin" serve "$@" --port 0 >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
}

# Prints the URL of a started server once it listens.
url_of() {
  local name=$1
  for _ in $(seq 1 200); do
    if grep -q "listening on" "$work/$name.out" 2>/dev/null; then
      grep -o 'http://[^ ]*' "$work/$name.out" | head -1
      return 0
    fi
    sleep 0.05
  done
  echo "demo: $name did not start:" >&2; cat "$work/$name.err" >&2; return 1
}

start cloud -m stories260K -q
cloud_url=$(url_of cloud)
echo "cloud tier (stand-in for a cloud API) at $cloud_url"
sed -e "s#http://127.0.0.1:8081/v1#$cloud_url/v1#" -e 's/^  port: 8080/  port: 0/' \
  examples/gateway.yaml >"$work/gateway.yaml"
start gateway --config "$work/gateway.yaml"
gateway_url=$(url_of gateway)
echo "edge gateway at $gateway_url"
echo

ask() {  # ask LABEL PROMPT [extra curl args...]
  local label=$1 prompt=$2; shift 2
  local body="{\"model\":\"foreshore\",\"max_tokens\":40,\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"$prompt\"}]}"
  local t
  t=$(curl -s -o "$work/body.json" -D "$work/headers.txt" -w '%{time_total}' \
        -H 'content-type: application/json' "$@" -d "$body" "$gateway_url/v1/chat/completions")
  local status tier model
  status=$(head -1 "$work/headers.txt" | awk '{print $2}')
  tier=$(grep -i '^x-foreshore-tier:' "$work/headers.txt" | tr -d '\r' | awk '{print $2}' || true)
  model=$(grep -i '^x-foreshore-model:' "$work/headers.txt" | tr -d '\r' | awk '{print $2}' || true)
  printf '%-34s -> HTTP %s, tier %-6s model %-12s %s ms\n' "$label" "$status" "${tier:--}" "${model:--}" \
    "$(awk -v t="$t" 'BEGIN { printf "%.1f", t * 1000 }')"
  # The answer, or the error message when the gateway refused.
  { grep -o '"content":"[^"]*"' "$work/body.json" || grep -o '"message":"[^"]*"' "$work/body.json" || true; } |
    head -1 | cut -c1-130 | sed 's/^/    /'
}

ask "forced edge (x-foreshore-tier)" "Once upon a time" -H 'x-foreshore-tier: edge'
ask "forced cloud (x-foreshore-tier)" "Once upon a time" -H 'x-foreshore-tier: cloud'
ask "routed (policy decides)" "Once upon a time there was a cat"
ask "SSN in prompt, asks for the cloud" "My SSN is 123-45-6789, once upon a time" -H 'x-foreshore-tier: cloud'
echo
echo "The last request asked for the cloud but carries an SSN: the router refuses to send it."
echo
echo "The routing decision for a prompt, explained without running it (POST /v1/route):"
curl -s -d '{"messages":[{"role":"user","content":"Prove that sqrt(2) is irrational, step by step"}]}' \
  "$gateway_url/v1/route" | sed -n -e '/^  "plan": {/,/^  }/p' -e '/"decision_us"/p' -e '/^  "policy"/p'
