// The analytic work counts used by `amused bench` (src/models/flops.cpp, derived from the configs:
// 2 x the multiply-adds of every matrix product and convolution) against figures obtained
// independently of them. Source: the project's performance issue (issue 5, "Performance: the
// fastest aMUSEd on a CPU, and ready for CUDA"), which states, for the official configs, "about 211
// GFLOP per transformer forward per image", "about 0.47 TFLOP for the VQ decode" at 256x256 and
// "about 1.9 TFLOP" at 512x512. The tolerances (3% and 5%) are that "about": two independent
// counts of the same network agree, and a missing or doubled transformer layer in flops.cpp (one of
// 22, about 4.5% of the forward) fails.
#include <gtest/gtest.h>

#include "core/config.h"
#include "models/flops.h"
#include "support/golden.h"

using namespace amused::testing;

TEST(Flops, MatchesPublishedEstimates) {
  AMUSED_REQUIRE_GOLDEN();
  auto uvit = amused::models::UVit2DConfig::from_json(
      amused::read_json_file(golden_path("full-configs/amused-256/transformer/config.json")), "uvit");
  auto vq = amused::models::VQModelConfig::from_json(
      amused::read_json_file(golden_path("full-configs/amused-256/vqvae/config.json")), "vq");
  EXPECT_NEAR(amused::models::uvit_2d_flops(uvit, 16, 16) / 1e9, 211, 211 * 0.03);
  EXPECT_NEAR(amused::models::vq_decode_flops(vq, 16, 16) / 1e12, 0.47, 0.47 * 0.05);
  EXPECT_NEAR(amused::models::vq_decode_flops(vq, 32, 32) / 1e12, 1.9, 1.9 * 0.05);
}
