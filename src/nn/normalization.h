// Conditioning-aware and ConvNeXt-V2 normalisations used by the U-ViT (RMSNorm and LayerNorm
// themselves live in nn/layers.h). Ref: diffusers/models/normalization.py
// (AdaLayerNormContinuous, GlobalResponseNorm).
#pragma once

#include <torch/torch.h>

#include <string>

#include "nn/layers.h"

namespace amused::nn {

// y = norm(x) * (1 + scale) + shift with [scale, shift] = linear(silu(c)) (scale first).
// norm_type "layer_norm" (optionally bias-free, mean-centred) or "rms_norm".
class AdaLayerNormContinuousImpl : public torch::nn::Module {
 public:
  AdaLayerNormContinuousImpl(int64_t embedding_dim, int64_t conditioning_embedding_dim,
                             bool elementwise_affine = true, double eps = 1e-5, bool bias = true,
                             const std::string& norm_type = "layer_norm");
  // x [B, N, D], conditioning_embedding [B, cond_dim] -> [B, N, D]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& conditioning_embedding);
  void reset_parameters();

  Linear linear{nullptr};
  LayerNorm layer_norm{nullptr};  // registered as "norm" when norm_type == "layer_norm"
  RMSNorm rms_norm{nullptr};      // registered as "norm" when norm_type == "rms_norm"
};
TORCH_MODULE(AdaLayerNormContinuous);

// ConvNeXt-V2 global response normalisation on NHWC input:
// gamma * (x * n) + beta + x with n = ||x||_2 over (H, W) / (mean over channels + 1e-6).
class GlobalResponseNormImpl : public torch::nn::Module {
 public:
  explicit GlobalResponseNormImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);  // [B, H, W, C] -> [B, H, W, C]
  void reset_parameters();                        // zeros, as the reference

  torch::Tensor gamma, beta;  // [1, 1, 1, C]
};
TORCH_MODULE(GlobalResponseNorm);

}  // namespace amused::nn
