#!/usr/bin/env bash
# Generates one picture with the built CLI: with AMUSED_DEMO_MODEL when set (a folder or a hub repo id),
# else with the embedded default model when the checkout has it (models/amused-emoji, a small aMUSEd that
# amused.cpp trains itself; docs/default-model.md), else with amused/amused-256 when it is in the Hugging
# Face cache, else with the tiny golden test model beside the checkout (a 16x16 image of a random-weight
# model: proof that everything runs, not a picture).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-$here/build}"
amused="$build_dir/amused"
golden="${AMUSED_GOLDEN_DIR:-$here/../shared/golden}"
hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
model="${AMUSED_DEMO_MODEL:-}"
prompt="a photo of a cat"
if [ -z "$model" ]; then
  if [ -f "$here/models/amused-emoji/model_index.json" ]; then
    model="$here/models/amused-emoji"
    prompt="red apple"
  elif [ -d "$hub/models--amused--amused-256" ]; then
    model="amused/amused-256"
  elif [ -d "$golden/models/tiny-a" ]; then
    model="$golden/models/tiny-a"
  else
    model="amused/amused-256"  # downloaded into the Hugging Face cache
  fi
fi
out="$here/demo.png"
echo "==> $amused generate -m $model -p '$prompt' --seed 0 -o $out"
"$amused" generate -m "$model" -p "$prompt" --seed 0 -o "$out"
"$amused" inspect "$out"
echo "==> the picture: $out"
