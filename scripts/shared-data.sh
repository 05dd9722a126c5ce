# Sourced by the other scripts: sets SHARED_DATA to the folder of shared models
# and test data. It is ../shared/data beside the checkout; a clone of a local
# checkout (git clone . /tmp/x) uses the one beside the checkout it came from.
# FORESHORE_SHARED_DATA overrides both.
shared_data_dir() {
  local root=$1 origin
  if [ -n "${FORESHORE_SHARED_DATA:-}" ]; then echo "$FORESHORE_SHARED_DATA"; return; fi
  if [ -d "$root/../shared/data" ]; then (cd "$root/../shared/data" && pwd); return; fi
  origin=$(git -C "$root" remote get-url origin 2>/dev/null || true)
  if [ -n "$origin" ] && [ -d "$origin/../shared/data" ]; then
    (cd "$origin/../shared/data" && pwd); return
  fi
  echo "$root/../shared/data"
}
SHARED_DATA=$(shared_data_dir "$root")
export FORESHORE_MODEL_PATH=${FORESHORE_MODEL_PATH:-$root/models:$SHARED_DATA/models}
