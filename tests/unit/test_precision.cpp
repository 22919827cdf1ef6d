// The mixed-precision policy by module type (nn/precision.h) on the full-size models' structure
// (parameters allocated, never initialised: no weights needed).
#include <gtest/gtest.h>

#include "core/config.h"
#include "models/clip_text_model.h"
#include "models/uvit_2d.h"
#include "models/vq_model.h"
#include "nn/precision.h"
#include "support/golden.h"

namespace {
namespace gt = amused::testing;

template <typename Config>
Config full_config(const std::string& component) {
  const auto path = gt::golden_path("full-configs/amused-256/" + component + "/config.json");
  return Config::from_json(amused::read_json_file(path), path.string());
}

// Every matrix weight of a product or a lookup is 16-bit, except under the modules that decide
// tokens; nothing else is.
void expect_policy(const torch::nn::Module& model, const std::vector<std::string>& kept_prefixes,
                   int64_t expected_low_min) {
  const auto plan = amused::nn::mixed_precision_plan(model);
  int64_t low = 0;
  for (const auto& p : model.named_parameters()) {
    const std::string& key = p.key();
    bool kept = false;
    for (const auto& k : kept_prefixes) kept = kept || key.rfind(k, 0) == 0;
    const bool in_plan = plan.count(key) != 0;
    if (in_plan) {
      EXPECT_EQ(plan.at(key), torch::kBFloat16) << key;
      EXPECT_GE(p.value().dim(), 2) << key << ": only matrix weights are 16-bit";
      EXPECT_FALSE(kept) << key << " decides tokens and must stay float32";
      EXPECT_EQ(key.substr(key.size() - 7), ".weight") << key;
      low += p.value().numel();
    } else if (!kept) {
      // Not 16-bit: a bias, a norm's parameter or a GlobalResponseNorm's gamma/beta.
      const bool vector_like = p.value().dim() == 1 || key.find("channelwise_norm") != std::string::npos;
      EXPECT_TRUE(vector_like) << key << " " << p.value().sizes() << " is a matrix weight left in float32";
    }
  }
  EXPECT_GE(low, expected_low_min);
}

TEST(PrecisionPolicy, FullSizeTransformer) {
  AMUSED_REQUIRE_GOLDEN();
  amused::models::UVit2DModel m(full_config<amused::models::UVit2DConfig>("transformer"));
  expect_policy(*m, {"mlm_layer."}, 590'000'000);
  const auto plan = amused::nn::mixed_precision_plan(*m);
  // The adaptive norms' modulation projections are ordinary matrix weights.
  EXPECT_TRUE(plan.count("transformer_layers.0.norm1.linear.weight"));
  EXPECT_FALSE(plan.count("mlm_layer.conv2.weight"));
  EXPECT_FALSE(plan.count("down_block.res_blocks.0.channelwise_norm.gamma"));
}

TEST(PrecisionPolicy, FullSizeVqAndTextEncoder) {
  AMUSED_REQUIRE_GOLDEN();
  amused::models::VQModel vq(full_config<amused::models::VQModelConfig>("vqvae"));
  expect_policy(*vq, {"quantize."}, 140'000'000);
  EXPECT_FALSE(amused::nn::mixed_precision_plan(*vq).count("quantize.embedding.weight"));
  amused::models::CLIPTextModelWithProjection te(full_config<amused::models::CLIPTextConfig>("text_encoder"));
  expect_policy(*te, {}, 120'000'000);
}

}  // namespace
