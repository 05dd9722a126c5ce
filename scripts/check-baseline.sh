#!/usr/bin/env bash
# Checks that the foreshore binary runs on any x86-64 CPU: only the kernel
# files of an instruction-set level (src/engine/kernels_avx2*.cpp,
# kernels_avx512*.cpp) may hold AVX instructions, and nothing of theirs may
# end up in baseline code.
#
# Usage: scripts/check-baseline.sh [BUILD_DIR]   (a Release build of foreshore; ctest runs it)
#
# Three checks, each printing what breaks it:
#  1. no object of the binary other than a level's kernel files holds a VEX or
#     EVEX instruction (mnemonic v..., or a ymm/zmm register);
#  2. a level's kernel objects define no weak (COMDAT) function: the linker
#     keeps one copy of an inline function or template instantiation for the
#     whole program, and an AVX2 copy would then run from baseline code;
#  3. in the linked binary, every function with such an instruction is one
#     the level objects define (catches anything linked in from elsewhere);
#  4. where qemu-user is installed, the binary starts on an emulated CPU
#     without AVX (qemu64) and chooses the scalar level there.
set -euo pipefail
build=${1:-build}
binary="$build/foreshore"
[ -x "$binary" ] || { echo "not found: $binary (scripts/build.sh $build)" >&2; exit 2; }

mapfile -t objects < <(find "$build/CMakeFiles" -name '*.o' \
  \( -path '*/fsh_*.dir/*' -o -path '*/foreshore.dir/*' \) | sort)
[ ${#objects[@]} -gt 0 ] || { echo "no objects under $build/CMakeFiles" >&2; exit 2; }

# Instruction lines of `objdump -d` using AVX: VEX/EVEX mnemonics start with v.
avx='^ +[0-9a-f]+:[[:space:]]+(v[a-z0-9]+([[:space:]]|$)|.*%[yz]mm)'
status=0
level_objects=()
for o in "${objects[@]}"; do
  case "$(basename "$o")" in
    kernels_avx2* | kernels_avx512*)
      level_objects+=("$o")
      weak=$(nm -C --defined-only "$o" | awk '$2 == "W" || $2 == "u" || $2 == "i"')
      if [ -n "$weak" ]; then
        echo "FAIL: $o defines weak functions the linker may share with baseline code:" >&2
        echo "$weak" >&2
        status=1
      fi
      ;;
    *)
      hits=$(objdump -d --no-show-raw-insn "$o" | grep -E "$avx" | head -5 || true)
      if [ -n "$hits" ]; then
        echo "FAIL: $o is baseline code but holds AVX instructions, e.g.:" >&2
        echo "$hits" >&2
        status=1
      fi
      ;;
  esac
done
[ ${#level_objects[@]} -gt 0 ] || { echo "FAIL: no level kernel objects found" >&2; exit 1; }

allowed=$(for o in "${level_objects[@]}"; do nm --defined-only "$o"; done |
  awk '$2 == "t" || $2 == "T" {print $3}' | sort -u)
used=$(objdump -d --no-show-raw-insn "$binary" | awk -v avx="$avx" '
  /^[0-9a-f]+ <.*>:$/ { fn = substr($2, 2, length($2) - 3) }
  $0 ~ avx { print fn }' | sort -u)
stray=$(comm -23 <(echo "$used") <(echo "$allowed"))
if [ -n "$stray" ]; then
  echo "FAIL: functions of $binary outside the level kernels use AVX:" >&2
  echo "$stray" | c++filt >&2
  status=1
fi
if command -v qemu-x86_64 >/dev/null; then
  version=$(qemu-x86_64 -cpu qemu64 "$binary" --version 2>&1 || true)
  if ! grep -q 'kernels: scalar (this CPU: scalar)' <<<"$version"; then
    echo "FAIL: on a CPU without AVX (qemu-x86_64 -cpu qemu64), --version says:" >&2
    echo "$version" >&2
    status=1
  fi
fi
[ "$status" -eq 0 ] && echo "ok: AVX only in $(echo "$used" | grep -c .) kernel functions of $binary"
exit "$status"
