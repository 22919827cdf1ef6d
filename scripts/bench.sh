#!/usr/bin/env bash
# The standard benchmark matrix behind docs/PERFORMANCE.md: full-size amused-256 and amused-512 on
# random weights (no checkpoint needed), 12 steps, guidance 10. Writes one JSON per run.
#   bash scripts/bench.sh [OUT_DIR]        (default: bench-results/)
# Run it on an otherwise idle machine: timings of a loaded machine mean nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
amused="${AMUSED:-$here/build/amused}"
golden="${AMUSED_GOLDEN_DIR:-$here/../shared/golden}"
out="${1:-$here/bench-results}"
mkdir -p "$out"
tok="$golden/models/tiny-a/tokenizer"
run() {  # name, model, extra args...
  local name="$1" model="$2"
  shift 2
  echo "==> $name"
  "$amused" bench -m "$golden/full-configs/$model" --random-weights --tokenizer "$tok" --json "$@" \
    > "$out/$name.json"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('   end_to_end %.2f s, step %.3f s, decode %.2f s, peak RSS %.0f MiB' % (d['end_to_end_s'], d['transformer_step_s'], d['vq_decode_s'], d['peak_rss_mib']))" "$out/$name.json"
}
run amused256-bf16-b1 amused-256 --dtype bfloat16
run amused256-f32-b1 amused-256 --dtype float32
run amused512-bf16-b1 amused-512 --dtype bfloat16
run amused256-bf16-b4 amused-256 --dtype bfloat16 --batch 4 --no-ceilings
run amused256-bf16-b8 amused-256 --dtype bfloat16 --batch 8 --no-ceilings
if [ "${BENCH_ALL:-0}" = 1 ]; then
  run amused512-f32-b1 amused-512 --dtype float32 --no-ceilings
  run amused512-bf16-b8 amused-512 --dtype bfloat16 --batch 8 --no-ceilings
fi
