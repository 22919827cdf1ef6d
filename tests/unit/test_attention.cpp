// nn::Attention's mixed-precision inference path (16-bit weights, float32 activations) keeps q, k,
// v and the attention output in 16 bits between the products. It must equal, bit for bit, the
// plain formulation that casts each product to float32 and back (what the path did before, and
// what the fidelity tests measured).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "nn/attention_maps.h"
#include "nn/attention_processor.h"
#include "nn/cond_cache.h"
#include "nn/execution.h"

namespace {

// The plain mixed formulation: every projection returns float32, every 16-bit product casts its
// float32 inputs down first.
torch::Tensor plain_mixed(amused::nn::AttentionImpl& a, const torch::Tensor& x, const torch::Tensor& ctx) {
  const auto w = a.to_q->weight.scalar_type();
  auto proj = [&](amused::nn::LinearImpl& l, const torch::Tensor& in) {
    auto y = torch::nn::functional::linear(in.to(w), l.weight).to(torch::kFloat32);
    return l.bias.defined() ? y.add_(l.bias.to(torch::kFloat32)) : y;
  };
  const auto& c = ctx.defined() ? ctx : x;
  const int64_t B = x.size(0);
  auto heads = [&](const torch::Tensor& t) { return t.reshape({B, -1, a.heads, a.dim_head}).transpose(1, 2); };
  auto q = heads(proj(*a.to_q, x)), k = heads(proj(*a.to_k, c)), v = heads(proj(*a.to_v, c));
  auto scores = torch::matmul(q.to(w), k.to(w).transpose(-1, -2)).to(torch::kFloat32);
  auto probs = (scores * a.scale).softmax(-1);
  auto out = torch::matmul(probs.to(w), v.to(w)).to(torch::kFloat32);
  out = out.transpose(1, 2).reshape({B, -1, a.heads * a.dim_head});
  return proj(*a.to_out_0, out);
}

void to_mixed(amused::nn::AttentionImpl& a) {
  torch::NoGradGuard g;
  for (auto* l : {a.to_q.get(), a.to_k.get(), a.to_v.get(), a.to_out_0.get()})
    l->weight.set_data(l->weight.to(torch::kBFloat16));  // biases stay float32, as the loader keeps them
}

TEST(AttentionMixed, SixteenBitIntermediatesAreBitIdentical) {
  torch::manual_seed(3);
  for (const bool cross : {false, true}) {
    amused::nn::Attention a(96, cross ? std::optional<int64_t>(48) : std::nullopt, 4, 24);
    a->reset_parameters();
    to_mixed(*a);
    a->eval();
    auto x = torch::randn({2, 37, 96});
    auto ctx = cross ? torch::randn({2, 11, 48}) : torch::Tensor();
    amused::nn::ExecutionScope inference(amused::nn::ExecutionMode::kInference);
    const auto expected = plain_mixed(*a, x, ctx);
    EXPECT_TRUE(torch::equal(a->forward(x, ctx), expected)) << (cross ? "cross" : "self");
    // With the conditioning cache (16-bit keys and values kept across steps), twice.
    amused::nn::ConditioningCache cache;
    EXPECT_TRUE(torch::equal(a->forward(x, ctx), expected));
    EXPECT_TRUE(torch::equal(a->forward(x, ctx), expected));
  }
}

// Biased projections go through the same 16-bit path (the bias added by Linear before the cast).
TEST(AttentionMixed, BiasedProjectionsAreBitIdentical) {
  torch::manual_seed(4);
  amused::nn::Attention a(64, std::nullopt, 2, 32, 0.0, /*bias=*/true);
  a->reset_parameters();
  to_mixed(*a);
  a->eval();
  auto x = torch::randn({1, 20, 64});
  const auto ctx = torch::randn({1, 9, 64});
  amused::nn::ExecutionScope inference(amused::nn::ExecutionMode::kInference);
  EXPECT_TRUE(torch::equal(a->forward(x), plain_mixed(*a, x, {})));
  amused::nn::ConditioningCache cache;
  EXPECT_TRUE(torch::equal(a->forward(x, ctx), plain_mixed(*a, x, ctx)));
  EXPECT_TRUE(torch::equal(a->forward(x, ctx), plain_mixed(*a, x, ctx)));
}

}  // namespace

// Attention maps (issue 18): a live AttentionMapRecorder receives each cross-attention's
// probabilities averaged over heads; take() gives [B, M, h, w], every layer resampled to the grid
// and averaged. Self-attention and calls outside a recorder are not recorded.
namespace {
torch::Tensor reference_map(amused::nn::AttentionImpl& a, const torch::Tensor& x, const torch::Tensor& ctx,
                            int64_t gh, int64_t gw) {
  const int64_t B = x.size(0);
  auto heads = [&](const torch::Tensor& t) { return t.reshape({B, -1, a.heads, a.dim_head}).transpose(1, 2); };
  auto probs = (torch::matmul(heads(a.to_q(x)), heads(a.to_k(ctx)).transpose(-1, -2)) * a.scale).softmax(-1);
  return probs.mean(1).permute({0, 2, 1}).reshape({B, ctx.size(1), gh, gw});  // [B, M, gh, gw]
}
}  // namespace

TEST(AttentionMaps, RecorderAveragesHeadsAndLayersOverTheGrid) {
  torch::manual_seed(5);
  torch::NoGradGuard g;
  amused::nn::Attention a(8, 6, 2, 4);
  a->reset_parameters();
  const auto x = torch::randn({2, 16, 8});  // a 4x4 grid
  const auto coarse = torch::randn({2, 4, 8});  // a 2x2 grid (a downsampled block)
  const auto ctx = torch::randn({2, 5, 6});
  a->forward(x, ctx);  // no recorder: nothing happens
  amused::nn::AttentionMapRecorder rec;
  EXPECT_EQ(amused::nn::AttentionMapRecorder::current(), &rec);
  amused::nn::Attention self_attention(8, std::nullopt, 2, 4);
  self_attention->reset_parameters();
  self_attention->forward(x);  // self-attention: not recorded
  EXPECT_EQ(rec.layers(), 0);
  a->forward(x, ctx);
  EXPECT_EQ(rec.layers(), 1);
  auto one = rec.take(4, 4);
  ASSERT_EQ(one.sizes(), (std::vector<int64_t>{2, 5, 4, 4}));
  EXPECT_TRUE(torch::allclose(one, reference_map(*a, x, ctx, 4, 4), 1e-6, 1e-6));
  // Shares over the text positions sum to 1 at every image position.
  EXPECT_TRUE(torch::allclose(one.sum(1), torch::ones({2, 4, 4}), 1e-5, 1e-5));
  EXPECT_EQ(rec.layers(), 0);  // take() clears
  EXPECT_FALSE(rec.take(4, 4).defined());

  a->forward(x, ctx);
  a->forward(coarse, ctx);
  auto two = rec.take(4, 4);
  const auto up = torch::nn::functional::interpolate(
      reference_map(*a, coarse, ctx, 2, 2),
      torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{4, 4}).mode(torch::kBilinear).align_corners(false));
  EXPECT_TRUE(torch::allclose(two, (reference_map(*a, x, ctx, 4, 4) + up) / 2, 1e-6, 1e-6));
  {
    amused::nn::AttentionMapRecorder inner;  // nests: the innermost is live
    a->forward(x, ctx);
    EXPECT_EQ(inner.layers(), 1);
    EXPECT_EQ(rec.layers(), 0);
  }
  EXPECT_EQ(amused::nn::AttentionMapRecorder::current(), &rec);
}
