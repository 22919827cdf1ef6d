#include "nn/normalization.h"

#include "amused/error.h"
#include "nn/cond_cache.h"

namespace amused::nn {

AdaLayerNormContinuousImpl::AdaLayerNormContinuousImpl(int64_t embedding_dim,
                                                       int64_t conditioning_embedding_dim,
                                                       bool elementwise_affine, double eps,
                                                       bool bias, const std::string& norm_type) {
  linear = register_module("linear", Linear(conditioning_embedding_dim, embedding_dim * 2, bias));
  if (norm_type == "layer_norm") {
    layer_norm = register_module("norm", LayerNorm(embedding_dim, eps, elementwise_affine, bias));
  } else if (norm_type == "rms_norm") {
    rms_norm = register_module("norm", RMSNorm(embedding_dim, eps, elementwise_affine));
  } else {
    throw InvalidArgument(
        "AdaLayerNormContinuous: norm_type: expected \"layer_norm\" or \"rms_norm\", got \"" +
        norm_type + "\"");
  }
}

torch::Tensor AdaLayerNormContinuousImpl::forward(const torch::Tensor& x,
                                                  const torch::Tensor& conditioning_embedding) {
  // The cast of silu(c) to x's dtype follows newer diffusers; a no-op for the U-ViT, which already
  // casts its conditioning vector to the text embedding's dtype.
  auto emb = memo(linear.get(), {conditioning_embedding},
                  [&] { return linear(torch::silu(conditioning_embedding).to(x.scalar_type())); });
  auto chunks = emb.chunk(2, /*dim=*/1);
  const auto& scale = chunks[0];  // [B, D]
  const auto& shift = chunks[1];  // [B, D]
  auto normed = layer_norm ? layer_norm(x) : rms_norm(x);
  // [B, D] -> [B, 1, D] to broadcast over the tokens
  return normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

void AdaLayerNormContinuousImpl::reset_parameters() {
  linear->reset_parameters();
  if (layer_norm) layer_norm->reset_parameters();
  if (rms_norm) rms_norm->reset_parameters();
}

GlobalResponseNormImpl::GlobalResponseNormImpl(int64_t dim) {
  gamma = register_parameter("gamma", torch::empty({1, 1, 1, dim}));
  beta = register_parameter("beta", torch::empty({1, 1, 1, dim}));
}

torch::Tensor GlobalResponseNormImpl::forward(const torch::Tensor& x) {
  // [B, H, W, C] -> [B, 1, 1, C]
  auto gx = at::linalg_vector_norm(x, 2, std::vector<int64_t>{1, 2}, /*keepdim=*/true);
  auto nx = gx / (gx.mean(-1, /*keepdim=*/true) + 1e-6);
  return gamma * (x * nx) + beta + x;
}

void GlobalResponseNormImpl::reset_parameters() {
  torch::NoGradGuard g;
  gamma.zero_();
  beta.zero_();
}

}  // namespace amused::nn
