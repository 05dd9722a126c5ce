#!/usr/bin/env bash
# Fails on an include that goes up the layers of src/. Each folder has a
# rank; a file may include its own folder and folders of a lower rank only.
# Folders of one rank are beside each other and may not include each other.
#
#   0 common                 types every layer uses (Result, JSON text)
#   1 engine                 the CPU GGUF engine
#   2 backend compress observe state  tiers over the engine or HTTP; model
#                            compression; records and measurements; state
#                            shared by replicas (Redis or local)
#   3 route                  the routing decision
#   4 exec training          running a plan over the tiers (and the shadow
#                            sampler); training and evaluating the complexity
#                            model (linked by the CLI only, never by the gateway)
#   5 hybrid                 the hybrid pipeline: its typed configuration,
#                            decide, admit, execute, record; shared limits,
#                            virtual keys, online learning, replicas' pooled
#                            latencies; the OpenAI wire format (JSON requests,
#                            replies, errors) the gateway and the C API speak.
#                            No HTTP
#   6 sim                    the offline simulator
#   7 serve                  the HTTP gateway over the pipeline
#   8 capi                   the C API (include/foreshore.h)
#   9 cli                    the foreshore binary
#
# Usage: scripts/check-layers.sh [SOURCE_DIR]
set -euo pipefail
root=${1:-$(dirname "$0")/..}
declare -A rank=([common]=0 [engine]=1 [backend]=2 [compress]=2 [observe]=2 [state]=2 [route]=3 [exec]=4
  [training]=4 [hybrid]=5 [sim]=6 [serve]=7 [capi]=8 [cli]=9)
status=0
for dir in "$root"/src/*/; do
  folder=$(basename "$dir")
  if [ -z "${rank[$folder]+set}" ]; then
    echo "check-layers: src/$folder has no rank; add it to scripts/check-layers.sh" >&2
    status=1
    continue
  fi
  while IFS=: read -r file line include; do
    target=$(sed -n 's/^#include "\([a-z_]*\)\/.*/\1/p' <<<"$include")
    [ -n "$target" ] && [ "$target" != "$folder" ] || continue
    if [ -z "${rank[$target]+set}" ]; then
      continue  # not a folder of src/ (e.g. a test's support/)
    fi
    if [ "${rank[$target]}" -ge "${rank[$folder]}" ]; then
      echo "${file#"$root"/}:$line: src/$folder (layer ${rank[$folder]}) includes src/$target" \
        "(layer ${rank[$target]}): move the code it needs down a layer, or pass it in" >&2
      status=1
    fi
  done < <(grep -Hn '^#include "' "$dir"*.h "$dir"*.cpp 2>/dev/null | sed 's/^\([^:]*\):\([0-9]*\):/\1:\2:/')
done
[ "$status" -eq 0 ] && echo "check-layers: no include goes up the layers"
exit "$status"
