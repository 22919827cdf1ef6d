// Sinusoidal embeddings of scalars and the two-layer MLP that embeds them.
// Ref: diffusers/models/embeddings.py (get_timestep_embedding, TimestepEmbedding).
#pragma once

#include <torch/torch.h>

#include "nn/layers.h"

namespace amused::nn {

// timesteps [N] (any float/int dtype) -> [N, embedding_dim] float32:
// freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift)), arg = scale * t * freq_i,
// [sin(arg), cos(arg)] ([cos, sin] with flip_sin_to_cos); zero-padded when embedding_dim is odd.
torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos = false,
                                     double downscale_freq_shift = 1.0, double scale = 1.0,
                                     double max_period = 10000.0);

// linear_2(silu(linear_1(sample))) (act_fn "silu", no cond_proj, no post-activation: the
// configuration every aMUSEd model uses).
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, bool sample_proj_bias = true);
  torch::Tensor forward(const torch::Tensor& sample);
  void reset_parameters();

  Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace amused::nn
