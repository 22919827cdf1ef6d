// Gradient checkpointing (nn/checkpoint.h): the recomputed backward gives the gradients of the
// plain one, through the U-ViT's transformer layers, for every parameter and for the inputs.
#include <gtest/gtest.h>

#include "nn/checkpoint.h"
#include "pipelines/components.h"
#include "support/golden.h"

namespace {

TEST(GradientCheckpointing, SameGradientsThroughTheUVit) {
  AMUSED_REQUIRE_GOLDEN();
  const auto& c = amused::testing::golden_case("transformer/tiny-b/mixed_cfg");
  auto model = amused::load_transformer(amused::testing::golden_path("models/tiny-b/transformer"));
  model->train();
  const auto& in = c.at("inputs");
  const auto ids = amused::testing::golden_tensor(in.at("input_ids"));
  auto run = [&](bool checkpointing) {
    model->gradient_checkpointing = checkpointing;
    for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    auto ehs = amused::testing::golden_tensor(in.at("encoder_hidden_states")).clone().requires_grad_(true);
    auto pooled = amused::testing::golden_tensor(in.at("pooled_text_emb"));
    auto logits = model->forward(ids, ehs, pooled, amused::testing::golden_tensor(in.at("micro_conds")));
    torch::manual_seed(0);
    (logits * torch::randn(logits.sizes())).sum().backward();
    std::vector<torch::Tensor> grads{logits.detach(), ehs.grad().clone()};
    for (const auto& p : model->parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  const auto plain = run(false);
  const auto recomputed = run(true);
  ASSERT_EQ(plain.size(), recomputed.size());
  EXPECT_TRUE(torch::equal(plain[0], recomputed[0])) << "the forward must not change";
  for (size_t i = 1; i < plain.size(); ++i)
    EXPECT_TRUE(torch::allclose(plain[i], recomputed[i], 1e-6, 1e-5))
        << "gradient " << i << ": max diff " << (plain[i] - recomputed[i]).abs().max().item<float>();
}

TEST(GradientCheckpointing, RecordsOnlyTheResult) {
  auto w = torch::randn({8, 8}, torch::requires_grad());
  auto x = torch::randn({4, 8}, torch::requires_grad());
  int calls = 0;
  auto fn = [&](const std::vector<torch::Tensor>& in) {
    ++calls;
    return torch::tanh(in[0].matmul(w)).pow(2);
  };
  auto y = amused::nn::checkpoint(fn, {x});
  EXPECT_EQ(calls, 1);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_EQ(calls, 2);  // recomputed once, in backward
  const auto gx = x.grad().clone(), gw = w.grad().clone();
  x.mutable_grad() = torch::Tensor();
  w.mutable_grad() = torch::Tensor();
  fn({x}).sum().backward();
  EXPECT_TRUE(torch::allclose(gx, x.grad(), 1e-6, 1e-5));
  EXPECT_TRUE(torch::allclose(gw, w.grad(), 1e-6, 1e-5));
  // Without autograd recording it is just the function.
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(amused::nn::checkpoint(fn, {x}).requires_grad());
}

}  // namespace
