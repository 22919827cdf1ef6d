#include "nn/embeddings.h"

#include <cmath>

#include "amused/error.h"

namespace amused::nn {

torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos, double downscale_freq_shift,
                                     double scale, double max_period) {
  if (timesteps.dim() != 1)
    throw InvalidArgument("get_timestep_embedding: timesteps: expected a 1-D tensor, got " +
                          std::to_string(timesteps.dim()) + " dimensions");
  const int64_t half_dim = embedding_dim / 2;
  auto exponent = -std::log(max_period) *
                  torch::arange(0, half_dim, timesteps.options().dtype(torch::kFloat32));
  exponent = exponent / (static_cast<double>(half_dim) - downscale_freq_shift);

  auto emb = torch::exp(exponent);
  // [N, 1] * [1, half] -> [N, half]
  emb = timesteps.unsqueeze(1).to(torch::kFloat32) * emb.unsqueeze(0);
  emb = scale * emb;
  emb = torch::cat({torch::sin(emb), torch::cos(emb)}, -1);
  if (flip_sin_to_cos) {
    emb = torch::cat({emb.slice(1, half_dim), emb.slice(1, 0, half_dim)}, -1);
  }
  if (embedding_dim % 2 == 1) {
    emb = torch::constant_pad_nd(emb, {0, 1, 0, 0});
  }
  return emb;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim,
                                             bool sample_proj_bias) {
  linear_1 = register_module("linear_1", Linear(in_channels, time_embed_dim, sample_proj_bias));
  linear_2 = register_module("linear_2", Linear(time_embed_dim, time_embed_dim, sample_proj_bias));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& sample) {
  return linear_2(torch::silu(linear_1(sample)));
}

void TimestepEmbeddingImpl::reset_parameters() {
  linear_1->reset_parameters();
  linear_2->reset_parameters();
}

}  // namespace amused::nn
