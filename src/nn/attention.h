// Transformer blocks of the U-ViT: the feed-forward, BasicTransformerBlock (with
// norm_type "ada_norm_continuous", the only variant aMUSEd uses) and SkipFFTransformerBlock.
// Ref: diffusers/models/attention.py (FeedForward, BasicTransformerBlock, SkipFFTransformerBlock).
#pragma once

#include <torch/torch.h>

#include <optional>

#include "nn/activations.h"
#include "nn/attention_processor.h"
#include "nn/layers.h"
#include "nn/normalization.h"

namespace amused::nn {

// net.0 = GEGLU(dim -> inner_dim), net.1 = Dropout, net.2 = Linear(inner_dim -> dim_out).
// (activation_fn "geglu", no final dropout: the configuration diffusers' BasicTransformerBlock uses
// by default.)
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t dim, std::optional<int64_t> dim_out = std::nullopt, int64_t mult = 4,
                  double dropout = 0.0, std::optional<int64_t> inner_dim = std::nullopt,
                  bool bias = true);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  void reset_parameters();

  torch::nn::ModuleList net{nullptr};
  GEGLU net_0{nullptr};
  torch::nn::Dropout net_1{nullptr};
  Linear net_2{nullptr};
};
TORCH_MODULE(FeedForward);

struct BasicTransformerBlockOptions {
  int64_t dim = 0;
  int64_t num_attention_heads = 0;
  int64_t attention_head_dim = 0;
  double dropout = 0.0;
  std::optional<int64_t> cross_attention_dim;
  bool attention_bias = false;
  bool norm_elementwise_affine = true;
  double norm_eps = 1e-5;
  int64_t ada_norm_continous_conditioning_embedding_dim = 0;  // (sic: diffusers' spelling)
  bool ada_norm_bias = true;
  std::optional<int64_t> ff_inner_dim;
  bool ff_bias = true;
  bool attention_out_bias = true;
};

// norm_type "ada_norm_continuous": norm1/norm2 are RMSNorm-based, norm3 LayerNorm-based
// AdaLayerNormContinuous; attn1 = self-attention, attn2 = cross-attention (when
// cross_attention_dim is set), ff = GEGLU feed-forward; pre-norm residuals.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  explicit BasicTransformerBlockImpl(const BasicTransformerBlockOptions& options);
  // hidden_states [B, N, dim], encoder_hidden_states [B, M, cross_attention_dim],
  // pooled_text_emb [B, cond_dim] (diffusers: added_cond_kwargs["pooled_text_emb"]).
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states,
                        const torch::Tensor& pooled_text_emb);
  void reset_parameters();

  AdaLayerNormContinuous norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

// Two pre-RMSNorm attention sub-blocks *both attending to the context* (the original model calls
// the first one "attention" but it is a cross-attention too), no feed-forward. The context is
// mapped by kv_mapper(silu(.)) when kv_input_dim != dim.
class SkipFFTransformerBlockImpl : public torch::nn::Module {
 public:
  SkipFFTransformerBlockImpl(int64_t dim, int64_t num_attention_heads, int64_t attention_head_dim,
                             int64_t kv_input_dim, bool kv_input_dim_proj_use_bias,
                             double dropout = 0.0,
                             std::optional<int64_t> cross_attention_dim = std::nullopt,
                             bool attention_bias = false, bool attention_out_bias = true);
  // hidden_states [B, N, dim], encoder_hidden_states [B, M, kv_input_dim] -> [B, N, dim]
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states);
  void reset_parameters();

  Linear kv_mapper{nullptr};  // only when kv_input_dim != dim
  RMSNorm norm1{nullptr}, norm2{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
};
TORCH_MODULE(SkipFFTransformerBlock);

}  // namespace amused::nn
