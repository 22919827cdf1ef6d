#include "nn/attention.h"

#include "nn/cond_cache.h"

namespace amused::nn {

FeedForwardImpl::FeedForwardImpl(int64_t dim, std::optional<int64_t> dim_out, int64_t mult,
                                 double dropout, std::optional<int64_t> inner_dim, bool bias) {
  const int64_t inner = inner_dim.value_or(dim * mult);
  net_0 = GEGLU(dim, inner, bias);
  net_1 = torch::nn::Dropout(dropout);
  net_2 = Linear(inner, dim_out.value_or(dim), bias);
  net = register_module("net", torch::nn::ModuleList(net_0, net_1, net_2));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& hidden_states) {
  return net_2(net_1(net_0(hidden_states)));
}

void FeedForwardImpl::reset_parameters() {
  net_0->reset_parameters();
  net_2->reset_parameters();
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(const BasicTransformerBlockOptions& o) {
  const int64_t cond_dim = o.ada_norm_continous_conditioning_embedding_dim;
  norm1 =
      register_module("norm1", AdaLayerNormContinuous(o.dim, cond_dim, o.norm_elementwise_affine,
                                                      o.norm_eps, o.ada_norm_bias, "rms_norm"));
  attn1 = register_module(
      "attn1", Attention(o.dim, std::nullopt, o.num_attention_heads, o.attention_head_dim,
                         o.dropout, o.attention_bias, o.attention_out_bias));
  if (o.cross_attention_dim) {
    norm2 =
        register_module("norm2", AdaLayerNormContinuous(o.dim, cond_dim, o.norm_elementwise_affine,
                                                        o.norm_eps, o.ada_norm_bias, "rms_norm"));
    attn2 = register_module("attn2", Attention(o.dim, o.cross_attention_dim, o.num_attention_heads,
                                               o.attention_head_dim, o.dropout, o.attention_bias,
                                               o.attention_out_bias));
  }
  // Mirrors the reference on purpose: the feed-forward norm is a (bias-free when ada_norm_bias is
  // false, but mean-centred) LayerNorm, not an RMSNorm like norm1/norm2.
  norm3 =
      register_module("norm3", AdaLayerNormContinuous(o.dim, cond_dim, o.norm_elementwise_affine,
                                                      o.norm_eps, o.ada_norm_bias, "layer_norm"));
  ff = register_module("ff",
                       FeedForward(o.dim, std::nullopt, 4, o.dropout, o.ff_inner_dim, o.ff_bias));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& hidden_states_in,
                                                 const torch::Tensor& encoder_hidden_states,
                                                 const torch::Tensor& pooled_text_emb) {
  auto norm_hidden_states = norm1(hidden_states_in, pooled_text_emb);
  auto attn_output = attn1(norm_hidden_states);
  auto hidden_states = attn_output + hidden_states_in;

  if (attn2) {
    norm_hidden_states = norm2(hidden_states, pooled_text_emb);
    attn_output = attn2(norm_hidden_states, encoder_hidden_states);
    hidden_states = attn_output + hidden_states;
  }

  norm_hidden_states = norm3(hidden_states, pooled_text_emb);
  auto ff_output = ff(norm_hidden_states);
  hidden_states = ff_output + hidden_states;
  return hidden_states;
}

void BasicTransformerBlockImpl::reset_parameters() {
  norm1->reset_parameters();
  attn1->reset_parameters();
  if (norm2) norm2->reset_parameters();
  if (attn2) attn2->reset_parameters();
  norm3->reset_parameters();
  ff->reset_parameters();
}

SkipFFTransformerBlockImpl::SkipFFTransformerBlockImpl(
    int64_t dim, int64_t num_attention_heads, int64_t attention_head_dim, int64_t kv_input_dim,
    bool kv_input_dim_proj_use_bias, double dropout, std::optional<int64_t> cross_attention_dim,
    bool attention_bias, bool attention_out_bias) {
  if (kv_input_dim != dim) {
    kv_mapper = register_module("kv_mapper", Linear(kv_input_dim, dim, kv_input_dim_proj_use_bias));
  }
  // eps is hard-coded to 1e-6 here in the reference (not layer_norm_eps).
  norm1 = register_module("norm1", RMSNorm(dim, 1e-6));
  attn1 = register_module(
      "attn1", Attention(dim, cross_attention_dim, num_attention_heads, attention_head_dim, dropout,
                         attention_bias, attention_out_bias));
  norm2 = register_module("norm2", RMSNorm(dim, 1e-6));
  attn2 = register_module(
      "attn2", Attention(dim, cross_attention_dim, num_attention_heads, attention_head_dim, dropout,
                         attention_bias, attention_out_bias));
}

torch::Tensor SkipFFTransformerBlockImpl::forward(const torch::Tensor& hidden_states_in,
                                                  const torch::Tensor& encoder_hidden_states_in) {
  auto encoder_hidden_states = encoder_hidden_states_in;
  if (kv_mapper) {
    encoder_hidden_states = memo(kv_mapper.get(), {encoder_hidden_states_in},
                                 [&] { return kv_mapper(torch::silu(encoder_hidden_states_in)); });
  }

  auto norm_hidden_states = norm1(hidden_states_in);
  auto attn_output = attn1(norm_hidden_states, encoder_hidden_states);
  auto hidden_states = attn_output + hidden_states_in;

  norm_hidden_states = norm2(hidden_states);
  attn_output = attn2(norm_hidden_states, encoder_hidden_states);
  hidden_states = attn_output + hidden_states;
  return hidden_states;
}

void SkipFFTransformerBlockImpl::reset_parameters() {
  if (kv_mapper) kv_mapper->reset_parameters();
  norm1->reset_parameters();
  attn1->reset_parameters();
  norm2->reset_parameters();
  attn2->reset_parameters();
}

}  // namespace amused::nn
