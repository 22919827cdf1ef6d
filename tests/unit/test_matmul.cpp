// nn/matmul.h: large float32 products split across LibTorch's OpenMP threads, each piece a
// single-threaded BLAS call. The split must be invisible: bit-identical to one single-threaded
// call (same kernel, same summation order per element), differentiable where autograd needs it,
// and usable under InferenceMode.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "core/threads.h"
#include "nn/matmul.h"

namespace {

class Matmul : public ::testing::Test {
 protected:
  void SetUp() override {
    previous_ = at::get_num_threads();
    amused::configure_threads(2);  // at least two pieces, even on a 1-core machine
  }
  void TearDown() override { amused::configure_threads(previous_); }
  // The product the split must reproduce: LibTorch's own with the BLAS single-threaded, as
  // configure_threads leaves OpenBLAS (with one thread nothing is split).
  template <typename F>
  static torch::Tensor unsplit(F f) {
    amused::configure_threads(1);
    torch::Tensor r = f();
    amused::configure_threads(2);
    return r;
  }
  int previous_ = 1;
};

TEST_F(Matmul, SplitsOnlyWhereItCan) {
  if (!amused::blas_single_threaded()) GTEST_SKIP() << "the BLAS here is not OpenBLAS";
  EXPECT_TRUE(amused::nn::splits_products());
  amused::configure_threads(1);
  EXPECT_FALSE(amused::nn::splits_products());
}

TEST_F(Matmul, LinearEqualsUnsplitBitForBit) {
  // Elsewhere nothing is split, and the comparison below would compare F.linear with itself.
  if (!amused::blas_single_threaded()) GTEST_SKIP() << "the BLAS here is not OpenBLAS: products are not split";
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  struct Case {
    std::vector<int64_t> x_shape;
    int64_t n;
    bool bias, transposed_input;
    bool splits = true;
  };
  const std::vector<Case> cases = {
      {{512, 1024}, 1024, true, false},      // rows, 2-d, bias inside the product (addmm)
      {{2, 256, 1024}, 2816, true, false},   // rows, contiguous 3-d
      {{2, 256, 768}, 3072, false, false},   // rows, no bias
      {{2, 256, 1024}, 1024, true, true},    // rows, strided 3-d: bias added after the product
      {{154, 768}, 768, true, false},        // two prompts' tokens (77 each): a piece off the tiles
      {{3, 333, 1000}, 1300, true, false},   // sizes off the kernel tiles
      {{8, 768}, 4096, true, false, false},  // too few rows to split
      {{4, 64}, 64, true, false, false},     // too small to split
  };
  for (const auto& c : cases) {
    auto x = torch::randn(c.x_shape);
    if (c.transposed_input) x = x.transpose(0, 1).contiguous().transpose(0, 1);
    const int64_t k = c.x_shape.back();
    auto w = torch::randn({c.n, k}) / std::sqrt(static_cast<double>(k));
    auto b = c.bias ? torch::randn({c.n}) : torch::Tensor();
    const auto expected = unsplit([&] { return torch::nn::functional::linear(x, w, b); });
    const int64_t splits_before = amused::nn::split_product_count();
    const auto got = amused::nn::linear(x, w, b);
    EXPECT_EQ(amused::nn::split_product_count() - splits_before, c.splits ? 1 : 0)
        << "x " << x.sizes() << " n " << c.n << (c.splits ? ": the split path did not run" : ": split unexpectedly");
    ASSERT_EQ(got.sizes(), expected.sizes()) << "x " << x.sizes() << " n " << c.n;
    EXPECT_TRUE(torch::equal(got, expected)) << "x " << x.sizes() << " n " << c.n << " bias " << c.bias
                                             << " max diff " << (got - expected).abs().max().item<float>();
  }
}

TEST_F(Matmul, WrongShapesAreRefusedNotReinterpreted) {
  torch::NoGradGuard no_grad;
  // 2 x 256 x 512 values would reshape into 256 rows of 1024: the product must refuse, as F.linear does.
  EXPECT_THROW(amused::nn::linear(torch::randn({2, 256, 512}), torch::randn({1024, 1024})), c10::Error);
  EXPECT_THROW(amused::nn::batched_matmul(torch::randn({4, 64, 32}), torch::randn({4, 64, 32})), c10::Error);
}

TEST_F(Matmul, BatchedMatmulEqualsUnsplitBitForBit) {
  torch::manual_seed(1);
  torch::NoGradGuard no_grad;
  // Attention's two products: [B, heads, T, d] x [B, heads, d, S] (a transposed view) and back.
  auto q = torch::randn({2, 256, 16, 64}).transpose(1, 2);
  auto k = torch::randn({2, 256, 16, 64}).transpose(1, 2);
  auto scores_expected = unsplit([&] { return torch::matmul(q, k.transpose(-1, -2)); });
  auto scores = amused::nn::batched_matmul(q, k.transpose(-1, -2));
  EXPECT_TRUE(torch::equal(scores, scores_expected));
  auto probs = scores.softmax(-1);
  EXPECT_TRUE(torch::equal(amused::nn::batched_matmul(probs, k),
                           unsplit([&] { return torch::matmul(probs, k); })));
  // 3-d, as the CLIP text encoder calls it.
  auto a = torch::randn({24, 77, 64}), bt = torch::randn({24, 77, 64});
  EXPECT_TRUE(torch::equal(amused::nn::batched_matmul(a, bt.transpose(1, 2)),
                           unsplit([&] { return torch::bmm(a, bt.transpose(1, 2)); })));
}

TEST_F(Matmul, AutogradStillSeesTheProduct) {
  auto x = torch::randn({512, 256}, torch::requires_grad());
  auto w = torch::randn({512, 256}, torch::requires_grad());
  auto y = amused::nn::linear(x, w);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(torch::allclose(w.grad(), x.detach().sum(0).expand({512, 256}), 1e-4, 1e-4));
  // Parameters that require grad, used under NoGradGuard, are split (and written through out=
  // variants on the worker threads, which must see the caller's grad mode).
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(amused::nn::linear(x, w).requires_grad());
}

// Training: under autograd the split runs through a custom function whose gradients are LibTorch's
// own linear backward (bit for bit where the BLAS splits exactly, within float32 rounding always).
TEST_F(Matmul, TrainingSplitGivesLibTorchsGradients) {
  if (!amused::blas_single_threaded()) GTEST_SKIP() << "the BLAS here is not OpenBLAS";
  torch::manual_seed(1);
  for (const bool bias : {true, false}) {
    auto x = torch::randn({2, 256, 512}, torch::requires_grad());
    auto w = torch::randn({768, 512}, torch::requires_grad());
    auto b = bias ? torch::randn({768}, torch::requires_grad()) : torch::Tensor();
    auto g = torch::randn({2, 256, 768});
    auto y = amused::nn::linear(x, w, b);
    // The split path ran: its node is the custom function, not LibTorch's linear.
    ASSERT_TRUE(y.grad_fn());
    EXPECT_NE(y.grad_fn()->name().find("SplitLinearFunction"), std::string::npos) << y.grad_fn()->name();
    y.backward(g);
    const auto gx = x.grad().clone(), gw = w.grad().clone();
    const auto gb = bias ? b.grad().clone() : torch::Tensor();
    x.mutable_grad().reset();
    w.mutable_grad().reset();
    if (bias) b.mutable_grad().reset();
    auto ref = unsplit([&] { return torch::nn::functional::linear(x, w, b); });
    EXPECT_TRUE(torch::allclose(y, ref, 1e-5, 1e-5));
    unsplit([&] {
      ref.backward(g);
      return ref;
    });
    EXPECT_TRUE(torch::allclose(gx, x.grad(), 1e-5, 1e-4)) << (gx - x.grad()).abs().max().item<float>();
    EXPECT_TRUE(torch::allclose(gw, w.grad(), 1e-5, 1e-3)) << (gw - w.grad()).abs().max().item<float>();
    if (bias) EXPECT_TRUE(torch::allclose(gb, b.grad(), 1e-5, 1e-3));
  }
}

TEST_F(Matmul, WorksUnderInferenceMode) {
  c10::InferenceMode guard;
  auto x = torch::randn({2, 256, 1024});
  auto w = torch::randn({1024, 1024});
  auto y = amused::nn::linear(x, w);
  EXPECT_TRUE(y.is_inference());
  EXPECT_TRUE(torch::allclose(y, torch::matmul(x, w.t()), 1e-4, 1e-4));
  auto q = torch::randn({2, 16, 256, 64});
  EXPECT_TRUE(torch::allclose(amused::nn::batched_matmul(q, q.transpose(-1, -2)),
                              torch::matmul(q, q.transpose(-1, -2)), 1e-4, 1e-4));
}

}  // namespace

namespace {

TEST(ParallelFor, CoversTheRangeOnceWithTheCallersState) {
  const int previous = at::get_num_threads();
  amused::configure_threads(2);
  std::vector<std::atomic<int>> hits(100000);
  std::atomic<int> grad_enabled{0}, inference{0}, chunks{0};
  {
    c10::InferenceMode guard;
    amused::parallel_for(0, static_cast<int64_t>(hits.size()), 1000, [&](int64_t b, int64_t e) {
      ++chunks;
      grad_enabled += torch::GradMode::is_enabled() ? 1 : 0;
      inference += c10::InferenceMode::is_enabled() ? 1 : 0;
      for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
    });
  }
  for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
  EXPECT_EQ(grad_enabled.load(), 0);
  EXPECT_EQ(inference.load(), chunks.load());
  if (amused::parallel_for_available()) EXPECT_EQ(chunks.load(), 2);

  // The first exception reaches the caller.
  EXPECT_THROW(amused::parallel_for(0, 1000, 1,
                                    [&](int64_t b, int64_t) {
                                      if (b == 0) throw std::runtime_error("piece failed");
                                    }),
               std::runtime_error);
  // Too short a range (under two grains) runs in one call.
  chunks = 0;
  amused::parallel_for(0, 10, 8, [&](int64_t b, int64_t e) {
    ++chunks;
    EXPECT_EQ(e - b, 10);
  });
  EXPECT_EQ(chunks.load(), 1);
  amused::configure_threads(previous);
}

}  // namespace
