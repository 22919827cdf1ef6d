#include "nn/attention_processor.h"

#include "nn/attention_maps.h"
#include "nn/cond_cache.h"
#include "nn/execution.h"
#include "nn/matmul.h"

#include <cmath>

namespace amused::nn {

namespace {
// Cross-attention probabilities to the thread's AttentionMapRecorder, when one is live.
void record(const torch::Tensor& probs, const torch::Tensor& encoder_hidden_states) {
  if (!encoder_hidden_states.defined()) return;
  if (auto* recorder = AttentionMapRecorder::current()) recorder->add(probs);
}
}  // namespace

AttentionImpl::AttentionImpl(int64_t query_dim, std::optional<int64_t> cross_attention_dim,
                             int64_t heads_, int64_t dim_head_, double dropout, bool bias,
                             bool out_bias)
    : heads(heads_), dim_head(dim_head_), scale(1.0 / std::sqrt(static_cast<double>(dim_head_))) {
  const int64_t inner_dim = heads * dim_head;
  const int64_t context_dim = cross_attention_dim.value_or(query_dim);
  to_q = register_module("to_q", Linear(query_dim, inner_dim, bias));
  to_k = register_module("to_k", Linear(context_dim, inner_dim, bias));
  to_v = register_module("to_v", Linear(context_dim, inner_dim, bias));
  to_out_0 = Linear(inner_dim, query_dim, out_bias);
  to_out_1 = torch::nn::Dropout(dropout);
  to_out = register_module("to_out", torch::nn::ModuleList(to_out_0, to_out_1));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& hidden_states,
                                     const torch::Tensor& encoder_hidden_states) {
  const auto& context = encoder_hidden_states.defined() ? encoder_hidden_states : hidden_states;
  const int64_t batch_size = hidden_states.size(0);
  const auto wdtype = to_q->weight.scalar_type();
  const auto adtype = hidden_states.scalar_type();
  // [B, N, heads * dim_head] -> [B, heads, N, dim_head]
  auto split_heads = [&](const torch::Tensor& t) {
    return t.reshape({batch_size, -1, heads, dim_head}).transpose(1, 2);
  };

  if (wdtype != adtype && inference_fast_paths()) {
    // Mixed precision (16-bit weights, float32 activations), inference: the projections and both
    // attention products run on the 16-bit kernels and q, k, v and the attention output stay in
    // the weights' dtype between them. The plain path below casts each of them to float32 and
    // straight back, which is exact, so this is the same arithmetic with less memory traffic
    // (bit-identical, tests/unit/test_attention.cpp). Every projection goes through its Linear
    // (bias included). The softmax stays in float32.
    torch::Tensor key, value;
    if (encoder_hidden_states.defined()) {
      // Cross-attention: keys and values depend on the text only (reused across denoising steps).
      key = memo(to_k.get(), {context}, [&] { return to_k->forward_in_weight_dtype(context); });
      value = memo(to_v.get(), {context}, [&] { return to_v->forward_in_weight_dtype(context); });
    } else {
      key = to_k->forward_in_weight_dtype(context);
      value = to_v->forward_in_weight_dtype(context);
    }
    auto query = split_heads(to_q->forward_in_weight_dtype(hidden_states));
    auto scores = torch::matmul(query, split_heads(key).transpose(-1, -2)).to(adtype);
    auto attention_probs = (scores * scale).softmax(-1);
    record(attention_probs, encoder_hidden_states);
    auto out = torch::matmul(attention_probs.to(wdtype), split_heads(value));
    // [B, heads, N, dim_head] -> [B, N, heads * dim_head]
    out = out.transpose(1, 2).reshape({batch_size, -1, heads * dim_head});
    return to_out_1(to_out_0->forward_from_weight_dtype(out, adtype));
  }

  // Plain arithmetic (training, float32, or any forward outside an inference scope). With 16-bit
  // weights the products run in the weights' dtype (Linear's mixed rule); the softmax in float32.
  auto query = to_q(hidden_states);
  torch::Tensor key, value;
  if (encoder_hidden_states.defined()) {
    key = memo(to_k.get(), {context}, [&] { return to_k(context); });
    value = memo(to_v.get(), {context}, [&] { return to_v(context); });
  } else {
    key = to_k(context);
    value = to_v(context);
  }
  query = split_heads(query);
  key = split_heads(key);
  value = split_heads(value);

  // [B, heads, N, M]; softmax in the tensors' own dtype: the reference processor does not upcast.
  torch::Tensor out;
  const bool low_weights = wdtype == torch::kBFloat16 || wdtype == torch::kFloat16;
  if (low_weights && wdtype != query.scalar_type()) {
    auto scores = torch::matmul(query.to(wdtype), key.to(wdtype).transpose(-1, -2)).to(query.scalar_type());
    auto attention_probs = (scores * scale).softmax(-1);
    record(attention_probs, encoder_hidden_states);
    out = torch::matmul(attention_probs.to(wdtype), value.to(wdtype)).to(query.scalar_type());
  } else {
    auto attention_probs = (batched_matmul(query, key.transpose(-1, -2)) * scale).softmax(-1);
    record(attention_probs, encoder_hidden_states);
    out = batched_matmul(attention_probs, value);
  }
  // [B, heads, N, dim_head] -> [B, N, heads * dim_head]
  out = out.transpose(1, 2).reshape({batch_size, -1, heads * dim_head});

  out = to_out_0(out);
  out = to_out_1(out);
  return out;
}

void AttentionImpl::reset_parameters() {
  to_q->reset_parameters();
  to_k->reset_parameters();
  to_v->reset_parameters();
  to_out_0->reset_parameters();
}

}  // namespace amused::nn
