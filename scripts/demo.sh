#!/usr/bin/env bash
# The main job: installs what is needed, builds, starts a cloud tier (a second
# foreshore standing in for a cloud API) and the edge gateway in front of it,
# and shows the hybrid at work, one line of "why" each: an edge answer, a
# cloud answer the policy chose, a cascade that escalates, device-only data
# refused the cloud, and a cloud failure answered by the edge (degraded); then
# the `foreshore report` of what just happened. Everything it started is
# stopped when it ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/setup.sh
# Only the binary, and no options: the CMake cache stays as test.sh left it.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
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
echo "cloud tier (a second foreshore standing in for a cloud API) at $cloud_url"
# stories260K is sure of every token it writes, so the demo's cascade asks for
# more (a mean log-probability of -0.5 instead of -2.0) to show an escalation.
sed -e "s#http://127.0.0.1:8081/v1#$cloud_url/v1#" -e 's/^  port: 8080/  port: 0/' \
  -e 's/min_mean_logprob: -2.0/min_mean_logprob: -0.5/' examples/gateway.yaml >"$work/gateway.yaml"
start gateway --config "$work/gateway.yaml" --audit-db "$work/audit.db" -q
gateway_url=$(url_of gateway)
echo "edge gateway at $gateway_url (edge: embedded stories260K; policy: threshold)"
echo

HARD="Prove that the square root of 2 is irrational. Then compute the integral of x^2 e^x from 0 to 1, explain each step, and show that the sum of 1/n^2 converges."

# ask LABEL MODEL PROMPT [extra curl args...]: sends one chat request, prints
# where it ran, the router's reason (POST /v1/route on the same request) and
# the start of the answer, or the refusal.
ask() {
  local label=$1 model=$2 prompt=$3; shift 3
  local body="{\"model\":\"$model\",\"max_tokens\":24,\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"$prompt\"}]}"
  local t status tier plan extra why
  t=$(curl -s -o "$work/body.json" -D "$work/headers.txt" -w '%{time_total}' \
        -H 'content-type: application/json' "$@" -d "$body" "$gateway_url/v1/chat/completions")
  status=$(head -1 "$work/headers.txt" | awk '{print $2}')
  header() { grep -i "^x-foreshore-$1:" "$work/headers.txt" | tr -d '\r' | awk '{print $2}' || true; }
  tier=$(header tier)
  plan=$(header plan)
  extra=""
  [ -n "$(header confidence)" ] && extra+=", edge confidence $(header confidence | cut -c1-4)"
  [ "$(header escalated)" = "true" ] && extra+=", ESCALATED"
  [ "$(header degraded)" = "true" ] && extra+=", DEGRADED"
  printf '%-32s HTTP %s  tier %-5s plan %-7s %s ms%s\n' "$label" "$status" "${tier:--}" "${plan:--}" \
    "$(awk -v t="$t" 'BEGIN { printf "%.0f", t * 1000 }')" "$extra"
  why=$(curl -s -H 'content-type: application/json' "$@" -d "$body" "$gateway_url/v1/route" |
    sed -n '/^  "plan": {/,/^  }/p' | grep -o '"reason": "[^"]*"' | cut -d'"' -f4 || true)
  [ -n "$why" ] && [ "$status" = 200 ] && echo "    why: $why"
  { grep -o '"content":"[^"]*"' "$work/body.json" | head -1 | cut -d'"' -f4 |
      sed 's/^/    answer: /' | cut -c1-110
    grep -o '"message":"[^"]*"' "$work/body.json" | head -1 | cut -d'"' -f4 |
      sed 's/^/    refused: /' | cut -c1-150; } || true
}

ask "1. small talk" foreshore "Hi there, how are you?"
ask "2. hard multi-part question" foreshore "$HARD"
ask "3. cascade (edge, then cloud)" foreshore/cascade "Explain step by step why the sky is blue."
ask "4. SSN, asks for the cloud" foreshore "My SSN is 123-45-6789, what can I do with it?" \
  -H 'x-foreshore-tier: cloud'
echo
echo "Now the cloud goes down (the demo stops it) and the hard question comes again:"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
ask "5. hard question, cloud down" foreshore "$HARD"
echo "    (the plan was the cloud; it failed, so the edge's answer is served, flagged degraded)"
echo
echo "What happened, from the audit store (foreshore report):"
"$bin" report --db "$work/audit.db"
