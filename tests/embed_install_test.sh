#!/usr/bin/env bash
# An app's view of libforeshore: `cmake --install` into a temporary prefix,
# then the examples of examples/embed built against that prefix only and run
# against a real cloud tier (`foreshore serve` on a loopback port it picks):
#   C with pkg-config, C++ with find_package, Python with ctypes.
# Usage: tests/embed_install_test.sh BUILD_DIR SOURCE_DIR MODEL_FOLDER
set -euo pipefail
build=$(realpath "$1")
source=$(realpath "$2")
models=$(realpath "$3")
work=$(mktemp -d)
upstream_pid=
cleanup() {
  if [ -n "$upstream_pid" ]; then kill "$upstream_pid" 2>/dev/null || true; wait "$upstream_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "embed_install: $*" >&2; exit 1; }

prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libforeshore.so' | head -1)")
[ -n "$libdir" ] || fail "no libforeshore.so under $prefix after cmake --install"
soname=$(objdump -p "$libdir/libforeshore.so" | awk '/SONAME/ {print $2}')
[ "$soname" = "libforeshore.so.0" ] || fail "SONAME is '$soname', expected libforeshore.so.0"
# Only the C API is exported.
others=$(nm -D --defined-only "$libdir/libforeshore.so" | awk '$2 ~ /[TDBRVW]/ {print $3}' |
  grep -v '^foreshore_' | grep -v '^FORESHORE_0$' || true)
[ -z "$others" ] || fail "libforeshore.so exports more than foreshore_*: $(echo "$others" | head -5)"

# The cloud tier: a real OpenAI-compatible server on a port it chooses.
: >"$work/upstream.out"
"$build/foreshore" serve -m "$models/stories260K.gguf" --port 0 --quiet >"$work/upstream.out" 2>"$work/upstream.err" &
upstream_pid=$!
url=
for _ in $(seq 600); do
  url=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$work/upstream.out" | head -1)
  [ -n "$url" ] && break
  kill -0 "$upstream_pid" 2>/dev/null || fail "the upstream exited: $(cat "$work/upstream.err")"
  sleep 0.1
done
[ -n "$url" ] || fail "the upstream printed no URL: $(cat "$work/upstream.err")"
cloud=$url/v1

check_routed() {  # $1: name, $2: output file
  grep -q '"tier":"cloud"' "$2" || fail "$1: no answer from the cloud tier: $(cat "$2")"
}

echo "== C, pkg-config"
export PKG_CONFIG_PATH=$libdir/pkgconfig
cc -std=c99 -Wall -Wextra -Werror "$source/examples/embed/c/hybrid_chat.c" \
  $(pkg-config --cflags --libs foreshore) -Wl,-rpath,"$libdir" -o "$work/c_app"
"$work/c_app" "$models" "$cloud" >"$work/c.out" || fail "C example failed: $(cat "$work/c.out")"
cat "$work/c.out"
check_routed C "$work/c.out"
grep -q 'chat (device-only): HTTP 200 .*"tier":"edge"' "$work/c.out" || fail "C: device-only data did not stay on the edge"
grep -q '"memory_pressure": 3' "$work/c.out" || fail "C: the app's memory-pressure level was not used"

echo "== C++, find_package"
cmake -S "$source/examples/embed/cpp" -B "$work/cpp" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_RPATH="$libdir" >/dev/null
cmake --build "$work/cpp" >/dev/null
"$work/cpp/hybrid_chat_cpp" "$models" "$cloud" >"$work/cpp.out" || fail "C++ example failed: $(cat "$work/cpp.out")"
cat "$work/cpp.out"
check_routed C++ "$work/cpp.out"

echo "== Python, ctypes"
python3 "$source/examples/embed/python/hybrid_chat.py" "$libdir/libforeshore.so.0" "$models" "$cloud" \
  >"$work/py.out" || fail "Python example failed: $(cat "$work/py.out")"
cat "$work/py.out"
grep -q "tier cloud" "$work/py.out" || fail "Python: no answer from the cloud tier"
echo "embed_install: ok"
