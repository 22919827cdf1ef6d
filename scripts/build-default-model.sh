#!/usr/bin/env bash
# Rebuilds the embedded default model, models/amused-emoji, from nothing but this repository and
# the Debian packages scripts/setup.sh installs: the emoji image-caption set, a VQ-GAN, a BPE
# tokenizer, then the text encoder and the U-ViT trained together, converted to float16 and
# measured with `amused eval`. Every stage resumes: run the script again after an interruption and
# it continues where it stopped (finished stages are skipped, a training stage resumes from its
# newest checkpoint).
#
#   bash scripts/build-default-model.sh            # build/amused must exist (scripts/setup.sh)
#   WORK=/tmp/emoji bash scripts/build-default-model.sh
#
# Environment: AMUSED (the binary, default build/amused), WORK (run folder, default
# runs/default-model), OUT (where the model goes, default models/amused-emoji), THREADS.
# docs/default-model.md (the model card) lists the steps, times and figures of the shipped build.
set -euo pipefail
cd "$(dirname "$0")/.."
AMUSED=${AMUSED:-build/amused}
WORK=${WORK:-runs/default-model}
OUT=${OUT:-models/amused-emoji}
THREADS=${THREADS:-0}
threads=()
[ "$THREADS" != 0 ] && threads=(--threads "$THREADS")
[ -x "$AMUSED" ] || { echo "error: $AMUSED is missing: build first (bash scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$WORK"
stage() { echo; echo "== $(date +%H:%M:%S) $*"; }
done_mark() { [ -f "$WORK/.done-$1" ]; }
mark_done() { touch "$WORK/.done-$1"; }

# 1. The data: 3655 emoji drawn at 64x64 from Noto Color Emoji, captions from Unicode CLDR
#    (3454 train, 201 validation).
if ! done_mark data; then
  stage "1/6 dataset"
  rm -rf "$WORK/emoji64"
  "$AMUSED" dataset emoji "$WORK/emoji64" --size 64
  mark_done data
fi

# 2. The VQ-GAN: 64x64 pixels -> 16x16 tokens of a 256-entry codebook (3.8 M parameters).
if ! done_mark vq; then
  stage "2/6 VQ-GAN (amused train-vq)"
  "$AMUSED" train-vq --data "$WORK/emoji64" --output "$WORK/vq64" --max-steps 2000 --batch-size 16 \
    --learning-rate 4e-4 --dead-code-steps 50 --validation-steps 250 --checkpointing-steps 250 \
    --random-flip --resume "${threads[@]}"
  mark_done vq
fi
# 2b. 500 more steps from that VQ-GAN with the learning rate decaying to 0 (cosine): at a constant
#     rate the validation PSNR wanders between 25.3 and 25.6 dB; the decay settles it.
if ! done_mark vqdecay; then
  stage "2b/6 VQ-GAN, learning-rate decay"
  "$AMUSED" train-vq -m "$WORK/vq64" --data "$WORK/emoji64" --output "$WORK/vq64-decay" --max-steps 500 \
    --batch-size 16 --learning-rate 4e-4 --lr-scheduler cosine --dead-code-steps 50 --validation-steps 250 \
    --checkpointing-steps 250 --random-flip --resume "${threads[@]}"
  mark_done vqdecay
fi

# 3. The tokenizer: 4096 BPE entries learned from the training captions, 24 positions (99% of the
#    captions fit; CLIP's 77 would be mostly padding, a quarter of each training step).
if ! done_mark tokenizer; then
  stage "3/6 tokenizer (amused train-tokenizer)"
  "$AMUSED" train-tokenizer --data "$WORK/emoji64" --caption-key captions --split train \
    --vocab-size 4096 --model-max-length 24 -o "$WORK/init/tokenizer"
  mark_done tokenizer
fi

# 4. The pipeline to pre-train: configs for a small CLIP text encoder and U-ViT, the trained VQ-GAN.
if ! done_mark init; then
  stage "4/6 configs"
  mkdir -p "$WORK/init/text_encoder" "$WORK/init/transformer" "$WORK/init/scheduler" "$WORK/init/vqvae"
  cp "$WORK/vq64-decay/config.json" "$WORK/vq64-decay/diffusion_pytorch_model.safetensors" "$WORK/init/vqvae/"
  cat > "$WORK/init/model_index.json" <<'JSON'
{
  "_class_name": "AmusedPipeline",
  "_diffusers_version": "0.27.2",
  "scheduler": ["diffusers", "AmusedScheduler"],
  "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "transformer": ["diffusers", "UVit2DModel"],
  "vqvae": ["diffusers", "VQModel"]
}
JSON
  cat > "$WORK/init/scheduler/scheduler_config.json" <<'JSON'
{
  "_class_name": "AmusedScheduler",
  "_diffusers_version": "0.27.2",
  "mask_token_id": 256,
  "masking_schedule": "cosine"
}
JSON
  cat > "$WORK/init/text_encoder/config.json" <<'JSON'
{
  "architectures": ["CLIPTextModelWithProjection"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 256,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 1024,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 24,
  "model_type": "clip_text_model",
  "num_attention_heads": 4,
  "num_hidden_layers": 4,
  "pad_token_id": 1,
  "projection_dim": 256,
  "torch_dtype": "float32",
  "transformers_version": "4.38.0.dev0",
  "vocab_size": 4096
}
JSON
  cat > "$WORK/init/transformer/config.json" <<'JSON'
{
  "_class_name": "UVit2DModel",
  "_diffusers_version": "0.27.2",
  "attention_dropout": 0.0,
  "block_num_heads": 4,
  "block_out_channels": 192,
  "codebook_size": 256,
  "cond_embed_dim": 256,
  "downsample": true,
  "encoder_hidden_size": 256,
  "hidden_dropout": 0.0,
  "hidden_size": 256,
  "in_channels": 192,
  "intermediate_size": 768,
  "layer_norm_eps": 1e-06,
  "ln_elementwise_affine": true,
  "micro_cond_embed_dim": 320,
  "micro_cond_encode_dim": 64,
  "num_attention_heads": 4,
  "num_hidden_layers": 6,
  "num_res_blocks": 1,
  "sample_size": 16,
  "upsample": true,
  "use_bias": false,
  "vocab_size": 257
}
JSON
  mark_done init
fi

# 5. Masked-image-model pre-training of the U-ViT with the text encoder (bf16 autocast, float32
#    weights). Each image has several captions (name; name + keywords; name + group); one is drawn
#    per epoch; 10% of captions are dropped for classifier-free guidance.
if ! done_mark train; then
  stage "5/6 text encoder + U-ViT (amused train)"
  "$AMUSED" train -m "$WORK/init" --data "$WORK/emoji64" --split train --caption-key captions \
    --train-text-encoder --pre-encode --center-crop --batch-size 32 --max-steps 4500 \
    --learning-rate 5e-4 --lr-scheduler cosine --lr-warmup-steps 200 --max-grad-norm 1.0 \
    --cond-dropout-prob 0.1 --mixed-precision bf16 --checkpointing-steps 250 --checkpoints-total-limit 2 \
    --validation-steps 500 --validation-prompt "grinning face" --validation-prompt "red apple" \
    --validation-prompt "thumbs up: dark skin tone" --validation-prompt "flag: Japan" \
    --output "$WORK/model" --resume "${threads[@]}"
  mark_done train
fi

# 6. float16, into the repository, with its generation defaults (the guidance scale that amused
#    eval's guidance curve found best; docs/default-model.md), card and licences.
stage "6/7 float16 model -> $OUT"
"$AMUSED" convert -m "$WORK/model" -o "$OUT" --dtype float16
cat > "$OUT/generation_config.json" <<'JSON'
{
  "guidance_scale": 2.0,
  "num_inference_steps": 12
}
JSON
cp docs/default-model-card.md "$OUT/README.md"
mkdir -p "$OUT/licenses"
cp "$WORK/emoji64/licenses/"*.txt "$OUT/licenses/"

# 7. How well it follows prompts (docs/default-model.md shows this run's report).
stage "7/7 amused eval"
"$AMUSED" eval -m "$OUT" --data "$WORK/emoji64" -o "$WORK/eval" "${threads[@]}"
echo "done: $OUT (amused generate -p \"red apple\"); report: $WORK/eval/report.md"
