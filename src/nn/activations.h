// Gated activations. Ref: diffusers/models/activations.py (GEGLU).
#pragma once

#include <torch/torch.h>

#include "nn/layers.h"

namespace amused::nn {

// proj(x) split into halves [a, g] along the last dim; returns a * gelu(g) (exact erf GELU).
// Note the *second* half is the gate (diffusers' order).
class GEGLUImpl : public torch::nn::Module {
 public:
  GEGLUImpl(int64_t dim_in, int64_t dim_out, bool bias = true);
  torch::Tensor forward(const torch::Tensor& hidden_states);  // [..., dim_in] -> [..., dim_out]
  void reset_parameters();

  Linear proj{nullptr};  // dim_in -> 2 * dim_out
};
TORCH_MODULE(GEGLU);

}  // namespace amused::nn
