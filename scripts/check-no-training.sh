#!/usr/bin/env bash
# Fails when a binary carries code of the training library (src/training,
# libfsh_training.a): the gateway and libforeshore route with a trained model
# and never link the trainer. Reads the binary's full symbol table (the
# library's hidden symbols are there until it is stripped) and looks for the
# functions the training library defines.
#
# Usage: scripts/check-no-training.sh BINARY LIBFSH_TRAINING_ARCHIVE
set -euo pipefail
binary=$1
archive=$2
# Strong function definitions only: inline functions and templates (weak)
# are defined by every library that uses them.
training=$(nm --defined-only --extern-only "$archive" | awk 'NF == 3 && $2 == "T" {print $3}' | sort -u)
if [ -z "$training" ]; then
  echo "check-no-training: $archive defines no functions; is it the training library?" >&2
  exit 1
fi
if ! symbols=$(nm --defined-only "$binary" 2>/dev/null) || [ -z "$symbols" ]; then
  echo "check-no-training: $binary has no symbol table to check; check an unstripped build" >&2
  exit 1
fi
found=$(comm -12 <(awk '{print $NF}' <<<"$symbols" | sort -u) <(cat <<<"$training"))
if [ -n "$found" ]; then
  echo "check-no-training: $binary holds code of the training library:" >&2
  c++filt <<<"$found" | head -20 >&2
  echo "  something it links calls into src/training; move what the gateway needs into" \
       "src/route, or link fsh_training only where training runs" >&2
  exit 1
fi
echo "check-no-training: $(basename "$binary") holds none of the $(wc -l <<<"$training") training functions"
