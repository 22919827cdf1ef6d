// Unit tests of the masking and objective pieces beyond the golden cases: CPython `random` seeding
// (values printed by CPython 3.11), argument checks, masking invariants, the dropout's edge
// probabilities and the label-smoothed loss by hand.
#include <gtest/gtest.h>

#include "amused/error.h"
#include "schedulers/scheduling_amused.h"
#include "training/masking.h"
#include "training/objective.h"

namespace {

using namespace amused::training;

TEST(TrainPythonRandom, Seeding) {
  // random.Random(0).random(), random.Random(42).random(); the seed's sign is ignored.
  EXPECT_EQ(PythonRandom(0).random(), 0.8444218515250481);
  EXPECT_EQ(PythonRandom(42).random(), 0.6394267984578837);
  EXPECT_EQ(PythonRandom(-42).random(), 0.6394267984578837);
  EXPECT_EQ(PythonRandom(INT64_MAX).random(), 0.3166448820870279);  // two 32-bit key words
  // r = random.Random(2**40 + 5): getrandbits(32), getrandbits(40), randint(0, 10**12)
  PythonRandom r((int64_t{1} << 40) + 5);
  EXPECT_EQ(r.getrandbits(32), 2166296868u);
  EXPECT_EQ(r.getrandbits(40), 294277936956u);
  EXPECT_EQ(r.randint(0, 1'000'000'000'000), 579938387080);
  EXPECT_EQ(r.getrandbits(0), 0u);
  // r = random.Random(12); [r.getrandbits(32) for _ in range(8)]
  PythonRandom twelve(12);
  for (uint64_t expected : {2038265566u, 1155324522u, 2823822892u, 2272599372u, 2862211193u,
                            1502316763u, 612463845u, 1639135743u})
    EXPECT_EQ(twelve.getrandbits(32), expected);
  EXPECT_THROW(r.randint(3, 2), amused::InvalidArgument);
  EXPECT_THROW(r.getrandbits(65), amused::InvalidArgument);
}

TEST(TrainPythonRandom, StateRoundTrip) {
  PythonRandom a(7);
  for (int i = 0; i < 700; ++i) a.next_uint32();  // past one regeneration
  const auto s = a.state();
  PythonRandom b(1);
  b.set_state(s);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.next_uint32(), b.next_uint32());
}

TEST(TrainMasking, InvariantsAndDeterminism) {
  const auto tokens = torch::randint(0, 32, {5, 16 * 16}, torch::kLong);
  at::Generator g1 = amused::make_cpu_generator(3), g2 = amused::make_cpu_generator(3);
  const auto a = mask_tokens(tokens, 39, 0.25, g1, 16, 16);
  const auto b = mask_tokens(tokens, 39, 0.25, g2, 16, 16);
  EXPECT_TRUE(torch::equal(a.mask, b.mask));
  EXPECT_EQ(a.input_ids.sizes(), torch::IntArrayRef({5, 16, 16}));
  EXPECT_EQ(a.labels.sizes(), torch::IntArrayRef({5, 256}));
  EXPECT_TRUE(torch::equal(a.mask.sum(-1), a.num_token_masked.to(torch::kLong)));
  EXPECT_TRUE((a.mask_prob >= 0.25).all().item<bool>());
  const auto flat_ids = a.input_ids.reshape({5, -1});
  EXPECT_TRUE(torch::equal(flat_ids.masked_select(a.mask),
                           torch::full({a.mask.sum().item<int64_t>()}, 39, torch::kLong)));
  EXPECT_TRUE(torch::equal(flat_ids.masked_select(~a.mask), tokens.masked_select(~a.mask)));
  EXPECT_TRUE(torch::equal(a.labels.masked_select(a.mask), tokens.masked_select(a.mask)));
  EXPECT_TRUE((a.labels.masked_select(~a.mask) == -100).all().item<bool>());
  // Non-square grids are fine for the random-subset path.
  at::Generator g3 = amused::make_cpu_generator(3);
  EXPECT_EQ(mask_tokens(tokens.narrow(1, 0, 128), 39, 0.0, g3, 8, 16).input_ids.sizes(),
            torch::IntArrayRef({5, 8, 16}));
}

TEST(TrainMasking, RejectsBadArguments) {
  at::Generator g = amused::make_cpu_generator(0);
  const auto tokens = torch::zeros({2, 64}, torch::kLong);
  EXPECT_THROW(mask_tokens(tokens, 39, 0.0, g, 8, 4), amused::InvalidArgument);  // L != h*w
  EXPECT_THROW(mask_tokens(tokens.reshape({2, 8, 8}), 39, 0.0, g, 8, 8), amused::InvalidArgument);
  EXPECT_THROW(mask_tokens(tokens.to(torch::kFloat), 39, 0.0, g, 8, 8), amused::InvalidArgument);
  EXPECT_THROW(mask_tokens(tokens, -1, 0.0, g, 8, 8), amused::InvalidArgument);
  EXPECT_THROW(mask_tokens(tokens, 39, 1.5, g, 8, 8), amused::InvalidArgument);
  PythonRandom py(0);
  EXPECT_THROW(
      mask_tokens_open_muse(torch::zeros({2, 32}, torch::kLong), 39, 0.0, 0.5, g, py, 4, 8),
      amused::InvalidArgument);  // the rectangle path needs a square grid
}

TEST(TrainMasking, ContiguousRectangleCoversTheMask) {
  const auto tokens = torch::randint(0, 32, {6, 64}, torch::kLong);
  at::Generator g = amused::make_cpu_generator(11);
  PythonRandom py(5);
  const auto m = mask_tokens_open_muse(tokens, 39, 0.0, 1.0, g, py, 8, 8);
  ASSERT_EQ(m.rectangles.size(), 6u);
  for (int64_t b = 0; b < 6; ++b) {
    const auto [hh, ww, top, left] = m.rectangles[b];
    EXPECT_EQ(m.mask[b].sum().item<int64_t>(), hh * ww);
    EXPECT_TRUE(
        m.mask[b].reshape({8, 8}).narrow(0, top, hh).narrow(1, left, ww).all().item<bool>());
  }
}

TEST(TrainCondDropout, EdgeProbabilities) {
  const auto ehs = torch::randn({3, 77, 8}), pooled = torch::randn({3, 4});
  const auto empty = torch::randn({1, 77, 8}), empty_clip = torch::randn({1, 4});
  at::Generator g = amused::make_cpu_generator(0);
  const auto none = apply_cond_dropout(ehs, pooled, empty, empty_clip, 0.0, g);
  EXPECT_FALSE(none.u.defined());
  EXPECT_TRUE(torch::equal(none.encoder_hidden_states, ehs));
  EXPECT_FALSE(none.dropped.any().item<bool>());
  const auto all = apply_cond_dropout(ehs, pooled, empty.squeeze(0), empty_clip.squeeze(0), 1.0, g);
  EXPECT_TRUE(all.dropped.all().item<bool>());
  EXPECT_TRUE(torch::equal(all.encoder_hidden_states, empty.expand({3, 77, 8})));
  EXPECT_TRUE(torch::equal(all.cond_embeds, empty_clip.expand({3, 4})));
  // An exact 0.0 in a kept row stays (the reference's element-wise (ehs * mask).bool() test would
  // take it from the empty caption).
  auto with_zero = ehs.clone();
  with_zero[0][0][0] = 0.0f;
  at::Generator g2 = amused::make_cpu_generator(0);
  const auto kept = apply_cond_dropout(with_zero, pooled, empty, empty_clip, 1e-9, g2);
  EXPECT_FALSE(kept.dropped.any().item<bool>());
  EXPECT_EQ(kept.encoder_hidden_states[0][0][0].item<float>(), 0.0f);
  EXPECT_THROW(apply_cond_dropout(ehs, pooled, empty, empty_clip, 1.5, g), amused::InvalidArgument);
  EXPECT_THROW(apply_cond_dropout(ehs, pooled, torch::zeros({1, 76, 8}), empty_clip, 0.5, g),
               amused::InvalidArgument);
  EXPECT_THROW(apply_cond_dropout(ehs, pooled, empty, torch::zeros({1, 5}), 0.5, g),
               amused::InvalidArgument);
}

// The loss by hand on a [1, K=3, 1, 2] batch with one masked position.
TEST(TrainLoss, MaskedCrossEntropyByHand) {
  const auto logits = torch::tensor({1.0f, 3.0f, 2.0f, 0.5f, -1.0f, 0.0f}).reshape({1, 3, 1, 2});
  // position 0 has logits (1, 2, -1), position 1 (3, 0.5, 0)
  const auto labels = torch::tensor({int64_t{1}, int64_t{-100}}).reshape({1, 2});
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(-1.0));
  const double ce = lse - 2.0;
  EXPECT_NEAR(masked_token_loss(logits, labels).item<double>(), ce, 1e-6);
  const double smooth = (3 * lse - (1.0 + 2.0 - 1.0)) / 3.0;  // mean_k -log softmax_k
  EXPECT_NEAR(masked_token_loss(logits, labels, 0.1).item<double>(), 0.9 * ce + 0.1 * smooth, 1e-6);
  EXPECT_THROW(masked_token_loss(logits, labels.reshape({2, 1})), amused::InvalidArgument);
  EXPECT_THROW(masked_token_loss(logits.reshape({1, 3, 2}), labels), amused::InvalidArgument);
  EXPECT_THROW(masked_token_loss(logits, labels, -0.1), amused::InvalidArgument);
}

}  // namespace
