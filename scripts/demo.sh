#!/usr/bin/env bash
# Runs the built CLI once on a model: the real amused-256 when it is in the Hugging Face cache,
# else the tiny golden model beside the checkout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-$here/build}"
amused="$build_dir/amused"
model="amused/amused-256"
golden="${AMUSED_GOLDEN_DIR:-$here/../shared/golden}"
hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
if [ ! -d "$hub/models--amused--amused-256" ] && [ -d "$golden/models/tiny-a" ]; then
  model="$golden/models/tiny-a"
fi
echo "==> $amused version"
"$amused" version
echo "==> $amused tokenize -m $model 'a photo of a cat'"
"$amused" tokenize -m "$model" "a photo of a cat" || echo "(tokenize not available yet)"
