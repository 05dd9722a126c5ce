#!/usr/bin/env bash
# Installs the official openai npm client for tests/openai_conformance from the
# npm registry. Idempotent: does nothing when the pinned version is present.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../tests/openai_conformance" && pwd)"
cd "$dir"
if ! command -v npm >/dev/null 2>&1; then
  echo "npm-install.sh: npm is not installed (apt-get install nodejs npm)" >&2
  exit 1
fi
want="$(node -p "require('./package.json').dependencies.openai")"
have="$(node -p "try { require('./node_modules/openai/package.json').version } catch { '' }")"
if [[ "$have" == "$want" ]]; then
  echo "openai@$have already installed in $dir"
  exit 0
fi
if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
echo "openai@$(node -p "require('./node_modules/openai/package.json').version") installed in $dir"
