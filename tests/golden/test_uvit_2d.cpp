// UVit2DModel parity with diffusers on the tiny golden models: logits of every `transformer` case,
// and for the cases that carry them, every captured module output in forward order so that a
// failure names the first diverging module.
#include <gtest/gtest.h>

#include <set>

#include "pipelines/components.h"
#include "models/uvit_2d.h"
#include "support/golden.h"

namespace {

using amused::models::UVit2DModel;
namespace golden = amused::testing;

const std::vector<std::string> kCaseIds = {
    "transformer/tiny-a/allmask", "transformer/tiny-a/mixed_cfg", "transformer/tiny-a/nonsquare",
    "transformer/tiny-b/allmask", "transformer/tiny-b/mixed_cfg", "transformer/tiny-b/nonsquare"};

UVit2DModel load_model(const nlohmann::json& c, torch::Dtype dtype = torch::kFloat32) {
  auto model = amused::load_transformer(golden::golden_path(c.at("model_path").get<std::string>()) / "transformer");
  model->to(dtype);
  return model;
}

struct Inputs {
  torch::Tensor input_ids, encoder_hidden_states, pooled_text_emb, micro_conds;
};

Inputs load_inputs(const nlohmann::json& c) {
  const auto& in = c.at("inputs");
  return {golden::golden_tensor(in.at("input_ids")),
          golden::golden_tensor(in.at("encoder_hidden_states")),
          golden::golden_tensor(in.at("pooled_text_emb")),
          golden::golden_tensor(in.at("micro_conds"))};
}

// The module outputs in the order forward() produces them.
std::vector<std::string> debug_order(const UVit2DModel& model) {
  std::vector<std::string> names = {
      "encoder_proj_layer_norm", "cond_embed_input", "cond_embed", "embed", "down_block",
      "project_to_hidden"};
  for (int64_t i = 0; i < model->config().num_hidden_layers; ++i)
    names.push_back("transformer_layers." + std::to_string(i));
  names.insert(names.end(), {"project_from_hidden", "up_block"});
  return names;
}

class UVit2DGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(UVit2DGolden, MatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const auto& c = golden::golden_case(GetParam());
  auto model = load_model(c);
  const auto in = load_inputs(c);
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> debug;
  const auto logits = model->forward(in.input_ids, in.encoder_hidden_states, in.pooled_text_emb,
                                     in.micro_conds, &debug);

  const auto& outputs = c.at("outputs");
  std::set<std::string> checked;
  for (const auto& name : debug_order(model)) {
    const std::string key = "debug." + name;
    if (!outputs.contains(key)) continue;
    ASSERT_TRUE(debug.count(name)) << "forward() did not record debug tensor " << name;
    const auto result =
        golden::matches_descriptor(debug.at(name), outputs.at(key), GetParam() + " " + key);
    // Stop at the first diverging module: everything after it diverges too.
    ASSERT_TRUE(result) << "first diverging module: " << name << "\n" << result.message();
    checked.insert(key);
  }
  for (const auto& [key, descriptor] : outputs.items()) {
    if (key.rfind("debug.", 0) == 0) {
      EXPECT_TRUE(checked.count(key)) << "golden debug tensor " << key << " was not compared";
    }
  }
  EXPECT_TRUE(golden::matches_descriptor(logits, outputs.at("logits"), GetParam() + " logits"));
}

INSTANTIATE_TEST_SUITE_P(Cases, UVit2DGolden, ::testing::ValuesIn(kCaseIds),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param.substr(std::string("transformer/").size());
                           for (auto& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

TEST(UVit2DGoldenManifest, EveryTransformerCaseIsCovered) {
  AMUSED_REQUIRE_GOLDEN();
  for (const auto& c : golden::golden_cases_of_kind("transformer")) {
    const auto id = c.at("id").get<std::string>();
    EXPECT_NE(std::find(kCaseIds.begin(), kCaseIds.end(), id), kCaseIds.end())
        << "manifest case " << id << " has no test";
  }
}

// bfloat16 weights follow the reference's dtype rules (RMSNorm casts to the weight dtype, the
// conditioning vector is cast to the model dtype) and stay close to the float32 result.
TEST(UVit2DDtypes, BFloat16WeightsRunOnCpu) {
  AMUSED_REQUIRE_GOLDEN();
  const auto& c = golden::golden_case("transformer/tiny-b/mixed_cfg");
  const auto in = load_inputs(c);
  torch::NoGradGuard no_grad;
  auto f32 = load_model(c)->forward(in.input_ids, in.encoder_hidden_states, in.pooled_text_emb,
                                    in.micro_conds);
  auto model = load_model(c, torch::kBFloat16);
  EXPECT_EQ(model->dtype(), torch::kBFloat16);
  auto bf16 = model->forward(in.input_ids, in.encoder_hidden_states.to(torch::kBFloat16),
                             in.pooled_text_emb.to(torch::kBFloat16), in.micro_conds);
  EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bf16.sizes(), f32.sizes());
  const double scale = f32.abs().max().item<double>();
  const double err = (bf16.to(torch::kFloat32) - f32).abs().max().item<double>();
  EXPECT_LT(err, 0.1 * scale) << "bf16 max error " << err << " vs logit scale " << scale;
}

}  // namespace
