// The pieces of VQ-GAN training (amused::VQTrainer): vector quantisation with the straight-through
// estimator and its two terms, the EMA codebook, restarts of dead codes, taming's PatchGAN
// discriminator with the hinge loss, and the validation metrics (PSNR, codebook usage).
//
//   auto z = vq->encode(pixels);                               // [B, D, h, w]
//   restart_dead_codes(state, codebook, flat(z), step, 100, gen);
//   auto q = quantize_straight_through(vq->quantize, z);       // z_q (values) with z's gradient
//   auto recon = vq->decode(q.quantized);
//   loss = l1 + l2 + 0.25 * q.commit_loss;  backward; optimizer step;
//   ema_update(state, codebook, flat(z), q.indices.flatten(), 0.99);
//   mark_used(state, q.indices, step);
//
// Ref: van den Oord et al. 2017 (VQ-VAE: straight-through, codebook and commitment terms; the
//      EMA update of its appendix, with Laplace smoothing as sonnet's VectorQuantizerEMA);
//      Dhariwal et al. 2020 (Jukebox: restarting codes from encoder outputs);
//      taming-transformers taming/modules/discriminator/model.py (NLayerDiscriminator, weights_init),
//      taming/modules/losses/vqperceptual.py (hinge_d_loss, the generator's -mean(logits_fake)).
#pragma once

#include <ATen/core/Generator.h>
#include <torch/torch.h>

#include <cstdint>

#include "models/vq_model.h"

namespace amused::training {

struct StraightThrough {
  torch::Tensor quantized;      // [B, D, h, w]: the codes' values, the encoder output's gradient
  torch::Tensor indices;        // int64 [B, h, w]
  torch::Tensor commit_loss;    // mean((z - sg(z_q))^2): its gradient reaches the encoder only
  torch::Tensor codebook_loss;  // mean((sg(z) - z_q)^2): the codebook only (undefined when the
                                // codebook does not require grad, i.e. EMA updates)
};
// Nearest-code quantisation of z [B, D, h, w] (VectorQuantizer::nearest_indices).
StraightThrough quantize_straight_through(models::VectorQuantizerImpl& quantizer,
                                          const torch::Tensor& z);

// [B, D, h, w] -> [B*h*w, D], detached (rows in the order of indices.flatten()).
torch::Tensor flatten_latents(const torch::Tensor& z);

// The codebook's moving averages and usage record (saved in checkpoints).
struct CodebookState {
  torch::Tensor cluster_size;  // float32 [K]: EMA of how many vectors each code received
  torch::Tensor embed_sum;     // float32 [K, D]: EMA of their sum
  torch::Tensor last_used;     // int64 [K]: the last step whose batch used the code (0: never)
  // cluster_size 1 and embed_sum = codebook, so the codes keep their values until used.
  static CodebookState init(const torch::Tensor& codebook);
};

// One EMA step with the vectors z_flat [N, D] assigned to codes `indices` [N]:
//   n_k = #{i: indices_i = k},  s_k = sum of those z_i
//   cluster_size = decay * cluster_size + (1 - decay) * n
//   embed_sum    = decay * embed_sum    + (1 - decay) * s
//   codebook_k   = embed_sum_k / ((cluster_size_k + eps) / (total + K eps) * total),
//   total = sum(cluster_size)   (Laplace smoothing: no division by zero for unused codes)
// `codebook` [K, D] is overwritten in place (no autograd).
void ema_update(CodebookState& state, torch::Tensor& codebook, const torch::Tensor& z_flat,
                const torch::Tensor& indices, double decay, double eps = 1e-5);

// last_used[k] = step for every code in `indices`.
void mark_used(CodebookState& state, const torch::Tensor& indices, int64_t step);

// Before step `step` (1-based): every code unused in the last `dead_steps` steps (last_used <=
// step - 1 - dead_steps), or every code when `all`, is set to a row of z_flat [N, D] drawn from
// `generator` (distinct rows when N >= their number), with cluster_size 1, embed_sum = the row and
// last_used = step - 1. Returns how many were restarted. dead_steps <= 0 and !all: nothing.
int64_t restart_dead_codes(CodebookState& state, torch::Tensor& codebook, const torch::Tensor& z_flat,
                           int64_t step, int64_t dead_steps, at::Generator& generator, bool all = false);

// taming's NLayerDiscriminator (PatchGAN): conv 4x4/2 + LeakyReLU(0.2); then n_layers - 1 times
// conv 4x4/2 (no bias) + BatchNorm + LeakyReLU, doubling the width up to 8 ndf; conv 4x4/1 +
// BatchNorm + LeakyReLU; conv 4x4/1 to one logit per patch. Input in [0, 1] (scaled to [-1, 1]).
class NLayerDiscriminatorImpl : public torch::nn::Module {
 public:
  NLayerDiscriminatorImpl(int64_t input_nc = 3, int64_t ndf = 64, int64_t n_layers = 3);
  torch::Tensor forward(const torch::Tensor& images);
  // taming's weights_init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0.
  void init_weights();
  torch::nn::Sequential main{nullptr};
};
TORCH_MODULE(NLayerDiscriminator);

// 0.5 * (mean(relu(1 - logits_real)) + mean(relu(1 + logits_fake))).
torch::Tensor hinge_d_loss(const torch::Tensor& logits_real, const torch::Tensor& logits_fake);

// Per-image PSNR in dB of `reconstructions` (clipped to [0, 1]) against `images` [B, C, H, W] in
// [0, 1]: 10 log10(1 / mean squared error), the MSE floored at 1e-10. Returns float64 [B].
torch::Tensor psnr_per_image(const torch::Tensor& reconstructions, const torch::Tensor& images);

struct CodeUsage {
  int64_t codes_used = 0;  // distinct codes
  double fraction = 0;     // codes_used / K
  double perplexity = 0;   // exp(-sum p log p) of the histogram (1: one code; K: uniform)
};
// Usage of a histogram of code counts [K].
CodeUsage code_usage(const torch::Tensor& counts);

}  // namespace amused::training
