#!/usr/bin/env bash
# Generates one image with the built CLI: with amused/amused-256 when it is in the Hugging Face
# cache (or AMUSED_DEMO_MODEL names a model), else with the tiny golden test model beside the
# checkout (a 16x16 image of a random-weight model: proof that everything runs, not a picture).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-$here/build}"
amused="$build_dir/amused"
golden="${AMUSED_GOLDEN_DIR:-$here/../shared/golden}"
hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
model="${AMUSED_DEMO_MODEL:-}"
if [ -z "$model" ]; then
  if [ -d "$hub/models--amused--amused-256" ]; then
    model="amused/amused-256"
  elif [ -d "$golden/models/tiny-a" ]; then
    model="$golden/models/tiny-a"
  else
    model="amused/amused-256"  # downloaded into the Hugging Face cache
  fi
fi
out="$here/demo.png"
echo "==> $amused generate -m $model -p 'a photo of a cat' --seed 0 -o $out"
"$amused" generate -m "$model" -p "a photo of a cat" --seed 0 -o "$out"
"$amused" inspect "$out"
