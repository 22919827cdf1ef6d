// The training objective of aMUSEd: caption encoding for training, conditioning dropout and the
// masked-token cross-entropy.
//
//   auto cond = encode_captions(*tokenizer, text_encoder, captions);      // frozen, no grad
//   auto empty = encode_captions(*tokenizer, text_encoder, {""});
//   auto dropped = apply_cond_dropout(cond.encoder_hidden_states, cond.cond_embeds,
//                                     empty.encoder_hidden_states, empty.cond_embeds, p, gen);
//   auto logits = transformer->forward(batch.input_ids, dropped.encoder_hidden_states,
//                                      dropped.cond_embeds, micro_conds);
//   auto loss = masked_token_loss(logits, batch.labels);
//
// Ref: diffusers v0.27.2 examples/amused/train_amused.py lines 402-416 (tokenize_prompt,
//      encode_prompt), 789-805 (conditioning dropout), 819-839 (forward + loss);
//      huggingface/open-muse@64e1afe training/train_muse.py (label smoothing).
#pragma once

#include <ATen/core/Generator.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "amused/tokenizer.h"
#include "models/clip_text_model.h"

namespace amused::training {

struct TextConditioning {
  torch::Tensor input_ids;  // [B, L] int64, tokenizer(padding="max_length", truncation), L = model_max_length
  torch::Tensor encoder_hidden_states;  // [B, 77, H] = hidden_states[-2]
  torch::Tensor cond_embeds;            // [B, P] = text_embeds (the transformer's pooled_text_emb)
};

// train_amused.py's tokenize_prompt: the captions' ids, padded and cut to max_length (0: the
// tokenizer's model_max_length), as a [B, L] int64 tensor on the CPU.
torch::Tensor tokenize_captions(const ClipTokenizer& tokenizer, const std::vector<std::string>& captions,
                                int64_t max_length = 0);

// encode_prompt: the text encoder on `input_ids` (moved to its device), with autograd when the
// caller has it on (a text encoder that trains).
TextConditioning encode_ids(models::CLIPTextModelWithProjection& text_encoder, const torch::Tensor& input_ids);

// tokenize_captions + encode_ids for a frozen text encoder: runs under
// NoGradGuard and returns tensors on the text encoder's device and dtype. Throws InvalidArgument
// for an empty caption list.
TextConditioning encode_captions(const ClipTokenizer& tokenizer,
                                 models::CLIPTextModelWithProjection& text_encoder,
                                 const std::vector<std::string>& captions, int64_t max_length = 0);

struct CondDropout {
  torch::Tensor encoder_hidden_states;  // [B, T, H], new tensor
  torch::Tensor cond_embeds;            // [B, P], new tensor
  torch::Tensor u;                      // [B, 1, 1] float32 uniform draw (undefined when p == 0)
  torch::Tensor dropped;                // [B] bool, rows replaced by the empty caption
};

// Conditioning dropout as the reference intends it: rows with u < p (u = torch.zeros(B, 1, 1)
// .uniform_(0, 1) on `gen`, the draw after the two masking draws in train_amused.py) take the
// empty caption's embeddings, the other rows keep their own. The inputs are never modified (the
// reference's in-place reassignment compounds over steps; its inverted element-wise mask is not
// reproduced either, see golden README bugs 1-2). With p == 0 nothing is drawn and the inputs are
// returned as they are. empty_embeds [1, T, H] or [T, H], empty_clip_embeds [1, P] or [P].
// Throws InvalidArgument for p outside [0, 1] or mismatched shapes.
CondDropout apply_cond_dropout(const torch::Tensor& encoder_hidden_states,
                               const torch::Tensor& cond_embeds, const torch::Tensor& empty_embeds,
                               const torch::Tensor& empty_clip_embeds, double p,
                               at::Generator& gen);

// Cross-entropy over the masked positions: logits [B, K, h, w] -> [B*h*w, K]; labels [B, h*w]
// (-100 = not masked, ignored); mean over the counted positions. label_smoothing as torch's
// (open-muse pre-training uses 0.1; train_amused.py uses 0). Differentiable w.r.t. the logits.
// Throws InvalidArgument for mismatched shapes or label_smoothing outside [0, 1].
torch::Tensor masked_token_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                double label_smoothing = 0.0);

}  // namespace amused::training
