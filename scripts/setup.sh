#!/usr/bin/env bash
# Installs every Debian package the build, tests and benchmarks need.
# Idempotent: only missing packages are installed.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-14-dev clang-format
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcpp-httplib-dev libssl-dev libyaml-cpp-dev libcli11-dev
  libsqlite3-dev libpcre2-dev
  libhiredis-dev redis-server haproxy libpq-dev postgresql-15
  wrk curl ca-certificates jq
)
# Hyperscan's API (libhs) for the sensitivity scan: Intel's Hyperscan on
# x86-64, where it is the faster of the two (docs/PERFORMANCE.md), and its
# portable fork Vectorscan elsewhere (ARM64). Debian lets only one be
# installed.
if [ "$(dpkg --print-architecture)" = amd64 ]; then
  packages+=(libhyperscan-dev)
else
  packages+=(libvectorscan-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js (for the OpenAI client conformance test) may come from another
# packaging that bundles npm; Debian's own packages are the fallback.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to apt-get install: ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
