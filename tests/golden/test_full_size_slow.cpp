// Full-size amused-256 and amused-512 (configs from ../shared/golden/full-configs, random weights):
// one complete default generation each. Labelled `slow` (name contains "Slow"); run with
// `bash scripts/test.sh -L slow`. Peak memory and speed are measured by `amused bench`
// (docs/PERFORMANCE.md), never asserted here.
#include <gtest/gtest.h>

#include "amused/pipeline.h"
#include "support/golden.h"

namespace {
using namespace amused::testing;

void generate_full_size(const std::string& config, int expected_size, int expected_grid) {
  amused::LoadOptions lo;
  lo.random_weights = true;
  lo.tokenizer_dir = golden_path("models/tiny-a/tokenizer").string();
  auto pipe = amused::Pipeline::load(golden_path("full-configs/" + config).string(), lo);
  EXPECT_EQ(pipe->summary().default_width, expected_size);
  amused::TextToImageParams p;
  p.prompts = {"a photo of a cat"};
  p.seed = 0;
  auto r = pipe->text_to_image(p);
  ASSERT_EQ(r.images.size(), 1u);
  EXPECT_EQ(r.images[0].width, expected_size);
  EXPECT_EQ(r.images[0].height, expected_size);
  ASSERT_EQ(r.tokens[0].ids.size(), static_cast<size_t>(expected_grid * expected_grid));
  for (auto id : r.tokens[0].ids) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, pipe->summary().codebook_size);  // every token unmasked after the last step
  }
  EXPECT_EQ(r.timings.step_s.size(), 12u);
}

TEST(PipelineFullSizeSlow, Amused256RandomWeights) {
  AMUSED_REQUIRE_GOLDEN();
  generate_full_size("amused-256", 256, 16);
}

TEST(PipelineFullSizeSlow, Amused512RandomWeights) {
  AMUSED_REQUIRE_GOLDEN();
  generate_full_size("amused-512", 512, 32);
}

}  // namespace
