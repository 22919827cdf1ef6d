#!/usr/bin/env bash
# Builds the libFuzzer targets (clang; a separate build folder instrumented with
# fuzzer-no-link,address,undefined) and runs them. See docs/RELIABILITY.md.
#   scripts/fuzz.sh                    # every target, 60 s each
#   scripts/fuzz.sh tokenizer 600      # one target, 10 minutes
# Targets: safetensors config tokenizer image server_request http. Environment: BUILD_DIR (default build-fuzz),
# JOBS (build parallelism, default 2), AMUSED_GOLDEN_DIR (golden folder for the seeds).
# The corpus grows in $BUILD_DIR/corpus/<target>; crashes land in $BUILD_DIR/artifacts/<target>/;
# the full libFuzzer log is $BUILD_DIR/fuzz-<target>.log.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-all}"
seconds="${2:-60}"
build="${BUILD_DIR:-$root/build-fuzz}"
golden="${AMUSED_GOLDEN_DIR:-$root/../shared/golden}"
all=(safetensors config tokenizer image server_request http)
if [[ "$target" == all ]]; then targets=("${all[@]}"); else targets=("$target"); fi

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DAMUSED_BUILD_FUZZERS=ON -DAMUSED_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"${JOBS:-2}" --target "${targets[@]/#/fuzz_}"
python3 "$root/fuzz/make_corpus.py" "$build/seeds" "$golden"

# Leaks inside (uninstrumented) LibTorch/OpenBLAS start-up are not ours: see the file.
export LSAN_OPTIONS="suppressions=$root/scripts/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t"
  extra=()
  # Long prompts reach the bounded-prefix path of encode_padded (over 8 KiB).
  [[ "$t" == tokenizer ]] && extra=(-max_len=12000)
  echo "== fuzz_$t for ${seconds}s"
  if ! AMUSED_GOLDEN_DIR="$golden" "$build/fuzz/fuzz_$t" -max_total_time="$seconds" \
      -print_final_stats=1 -rss_limit_mb=4096 -timeout=30 \
      -artifact_prefix="$build/artifacts/$t/" "${extra[@]}" \
      "$build/corpus/$t" "$build/seeds/$t" >"$build/fuzz-$t.log" 2>&1; then
    status=1
    echo "fuzz_$t FAILED: see $build/fuzz-$t.log and $build/artifacts/$t/"
  fi
  grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|ERROR|SUMMARY|stat::number_of_executed_units|stat::peak_rss" \
    "$build/fuzz-$t.log" | tail -n 8
done
exit $status
