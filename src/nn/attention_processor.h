// diffusers' `Attention` with the plain `AttnProcessor` math: softmax(q k^T / sqrt(d)) v, computed
// with matmuls (LibTorch 1.13 has no scaled_dot_product_attention), no masks, no norms, no
// residual. Ref: diffusers/models/attention_processor.py (Attention, AttnProcessor).
#pragma once

#include <torch/torch.h>

#include <optional>

#include "nn/layers.h"

namespace amused::nn {

class AttentionImpl : public torch::nn::Module {
 public:
  // `cross_attention_dim` = width of the context (to_k / to_v input); nullopt = query_dim.
  AttentionImpl(int64_t query_dim, std::optional<int64_t> cross_attention_dim, int64_t heads,
                int64_t dim_head, double dropout = 0.0, bool bias = false, bool out_bias = true);

  // hidden_states [B, N, query_dim]; encoder_hidden_states [B, M, cross_attention_dim] or undefined
  // (self-attention). Returns [B, N, query_dim].
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states = {});

  void reset_parameters();

  int64_t heads, dim_head;
  double scale;
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [0] Linear, [1] Dropout (as in diffusers)
  Linear to_out_0{nullptr};
  torch::nn::Dropout to_out_1{nullptr};
};
TORCH_MODULE(Attention);

}  // namespace amused::nn
