// The analytic work counts used by `amused bench` against the figures in the performance issue
// (about 211 GFLOP per amused-256 transformer forward per image, about 0.47 TFLOP per 256x256 VQ
// decode and 1.9 TFLOP per 512x512 decode).
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
