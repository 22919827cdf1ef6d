// The conditioning cache: reused work is bit-identical to recomputing it, hits only for the same
// inputs, and stays off outside an inference scope (nn/execution.h).
#include <gtest/gtest.h>

#include "pipelines/components.h"
#include "models/uvit_2d.h"
#include "nn/cond_cache.h"
#include "nn/execution.h"
#include "support/golden.h"

using namespace amused::testing;

TEST(ConditioningCache, IdenticalLogitsAndHitsAcrossSteps) {
  AMUSED_REQUIRE_GOLDEN();
  auto m = amused::load_transformer(golden_path("models/tiny-b/transformer"));
  const auto& c = m->config();
  amused::nn::ExecutionScope inference(amused::nn::ExecutionMode::kInference);
  torch::manual_seed(0);
  auto ehs = torch::randn({2, 77, c.encoder_hidden_size});
  auto pooled = torch::randn({2, c.cond_embed_dim});
  auto micro = torch::tensor({32.f, 32.f, 0.f, 0.f, 6.f}).unsqueeze(0).expand({2, 5});
  auto ids1 = torch::randint(0, c.codebook_size, {2, 8, 8});
  auto ids2 = torch::randint(0, c.codebook_size, {2, 8, 8});
  auto ref1 = m->forward(ids1, ehs, pooled, micro);
  auto ref2 = m->forward(ids2, ehs, pooled, micro);
  amused::nn::ConditioningCache cache;
  auto out1 = m->forward(ids1, ehs, pooled, micro);
  const auto misses = cache.misses();
  EXPECT_GT(misses, 0);
  EXPECT_EQ(cache.hits(), 0);
  auto out2 = m->forward(ids2, ehs, pooled, micro);
  EXPECT_EQ(cache.misses(), misses) << "the second step must reuse every conditioning value";
  EXPECT_EQ(cache.hits(), misses);
  EXPECT_TRUE(torch::equal(out1, ref1));
  EXPECT_TRUE(torch::equal(out2, ref2));
  // Other conditioning: recomputed, and the result matches a plain forward.
  auto ehs2 = torch::randn({2, 77, c.encoder_hidden_size});
  auto out3 = m->forward(ids1, ehs2, pooled, micro);
  EXPECT_GT(cache.misses(), misses);
  {
    amused::nn::ConditioningCache off_scope_check;  // nested scope starts empty
    EXPECT_TRUE(torch::equal(out3, m->forward(ids1, ehs2, pooled, micro)));
  }
}

TEST(ConditioningCache, InactiveOutsideInference) {
  amused::nn::ConditioningCache cache;
  int calls = 0;
  auto x = torch::ones({2});
  amused::nn::ExecutionScope training(amused::nn::ExecutionMode::kTraining);
  amused::nn::memo(&calls, {x}, [&] { ++calls; return x * 2; });
  amused::nn::memo(&calls, {x}, [&] { ++calls; return x * 2; });
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(cache.hits(), 0);
}

TEST(ConditioningCache, InactiveWithoutAScopeEvenUnderNoGrad) {
  // Turning autograd off is not enough: only an inference scope selects the fast paths.
  amused::nn::ConditioningCache cache;
  int calls = 0;
  auto x = torch::ones({2});
  torch::NoGradGuard no_grad;
  amused::nn::memo(&calls, {x}, [&] { ++calls; return x * 2; });
  amused::nn::memo(&calls, {x}, [&] { ++calls; return x * 2; });
  EXPECT_EQ(calls, 2);
}

TEST(ExecutionScope, SetsModeAndAutogradAndRestoresBoth) {
  using amused::nn::ExecutionMode;
  EXPECT_EQ(amused::nn::execution_mode(), ExecutionMode::kTraining);
  {
    amused::nn::ExecutionScope inference(ExecutionMode::kInference);
    EXPECT_TRUE(amused::nn::inference_fast_paths());
    EXPECT_FALSE(torch::GradMode::is_enabled());
    {
      amused::nn::ExecutionScope training(ExecutionMode::kTraining);
      EXPECT_FALSE(amused::nn::inference_fast_paths());
      EXPECT_TRUE(torch::GradMode::is_enabled());
    }
    EXPECT_TRUE(amused::nn::inference_fast_paths());
    EXPECT_FALSE(torch::GradMode::is_enabled());
  }
  EXPECT_EQ(amused::nn::execution_mode(), ExecutionMode::kTraining);
  EXPECT_TRUE(torch::GradMode::is_enabled());
}
