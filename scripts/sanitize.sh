#!/usr/bin/env bash
# Builds everything with AddressSanitizer + UndefinedBehaviorSanitizer (gcc, build-asan/) and runs
# the default test suite under it, then LeakSanitizer on one CLI generation with the tiny model.
# See docs/RELIABILITY.md.
#   scripts/sanitize.sh            # build + ctest -LE slow + leak check
# Environment: BUILD_DIR (default build-asan), JOBS (default 2), AMUSED_GOLDEN_DIR.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build-asan}"
golden="${AMUSED_GOLDEN_DIR:-$root/../shared/golden}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ -DAMUSED_SANITIZE="address;undefined" >/dev/null
cmake --build "$build" -j"${JOBS:-2}"

export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The suite spawns the CLI many times; leaks are checked once, below, on a full generation.
ASAN_OPTIONS="detect_leaks=0:abort_on_error=0" ctest --test-dir "$build" -LE slow -j"${JOBS:-2}" \
  --output-on-failure

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
ASAN_OPTIONS="detect_leaks=1" \
LSAN_OPTIONS="suppressions=$root/scripts/sanitizers/lsan.supp:print_suppressions=1" \
  "$build/amused" generate -m "$golden/models/tiny-a" -p "a red fox" --steps 4 --seed 7 \
  -o "$out/fox.png" --offline
echo "leak check: clean (no LeakSanitizer report above)"
