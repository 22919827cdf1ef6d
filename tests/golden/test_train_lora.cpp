// LoRA against the reference (golden case train/lora/tiny-a: peft 0.10 on train_amused.py's
// --use_lora path): the adapted transformer's logits and loss, the gradients of all 48 adapter
// tensors (and none of the frozen base weights), the file diffusers' save_lora_weights writes
// (keys, shapes, values), and the logits after loading that file the way diffusers does (scale 1).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "io/lora_file.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "models/uvit_2d.h"
#include "nn/lora.h"
#include "pipelines/components.h"
#include "support/golden.h"
#include "training/objective.h"

namespace {

namespace golden = amused::testing;
namespace fs = std::filesystem;
using amused::models::UVit2DModel;

const nlohmann::json& lora_case() { return golden::golden_case("train/lora/tiny-a"); }

const nlohmann::json& batch_inputs() {
  const std::string src = lora_case().at("sources").at("batch").get<std::string>();
  return golden::golden_case(src.substr(0, src.rfind(".inputs"))).at("inputs");
}

UVit2DModel load_base() {
  auto model = amused::load_transformer(
      golden::golden_path(lora_case().at("model_path").get<std::string>()) / "transformer");
  model->train();
  return model;
}

torch::Tensor forward(UVit2DModel& model) {
  const auto& in = batch_inputs();
  return model->forward(golden::golden_tensor(in.at("input_ids")),
                        golden::golden_tensor(in.at("encoder_hidden_states")),
                        golden::golden_tensor(in.at("pooled_text_emb")),
                        golden::golden_tensor(in.at("micro_conds")));
}

// The case's adapter (r 4, alpha 8, to_q/to_k/to_v) with the golden weights copied in.
UVit2DModel adapted_model() {
  const auto& c = lora_case();
  auto model = load_base();
  amused::nn::LoraConfig lc;
  lc.rank = c.at("lora_config").at("r").get<int64_t>();
  lc.alpha = c.at("lora_config").at("lora_alpha").get<double>();
  lc.target_modules = c.at("lora_config").at("target_modules").get<std::vector<std::string>>();
  const auto layers = amused::nn::add_lora_adapters(*model, lc, "transformer");
  EXPECT_EQ(static_cast<int64_t>(layers.size()),
            c.at("lora_config").at("num_adapted_linears").get<int64_t>());
  amused::nn::freeze_all_but_lora(*model);
  const auto& weights = c.at("inputs").at("lora_weights");
  auto params = amused::nn::lora_parameters(*model);
  EXPECT_EQ(params.size(), weights.size());
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : params) {
    const std::string key = "transformer." + name;
    if (!weights.contains(key)) {
      ADD_FAILURE() << "adapter parameter " << key << " has no golden weight";
      continue;
    }
    p.copy_(golden::golden_tensor(weights.at(key)));
  }
  return model;
}

TEST(TrainLoraGolden, LogitsLossAndAdapterGradientsMatchReference) {
  AMUSED_REQUIRE_GOLDEN();
  const auto& c = lora_case();
  const auto& o = c.at("outputs");
  auto model = adapted_model();
  auto logits = forward(model);
  EXPECT_TRUE(golden::matches_descriptor(logits, o.at("logits"), "lora logits"));
  const auto loss = amused::training::masked_token_loss(
      logits, golden::golden_tensor(batch_inputs().at("labels")), 0.0);
  EXPECT_TRUE(golden::matches_descriptor(loss.reshape({1}), o.at("loss_ce"), "lora loss_ce"));
  loss.backward();
  const auto& grads = o.at("grads");
  size_t n = 0;
  for (const auto& item : model->named_parameters()) {
    const bool adapter = item.key().find(".lora_") != std::string::npos;
    if (!adapter) {
      EXPECT_FALSE(item.value().requires_grad()) << item.key();
      EXPECT_FALSE(item.value().grad().defined()) << "frozen " << item.key() << " got a gradient";
      continue;
    }
    const std::string key = "transformer." + item.key();
    ASSERT_TRUE(grads.contains(key)) << key;
    ASSERT_TRUE(item.value().grad().defined()) << key;
    EXPECT_TRUE(golden::matches_descriptor(item.value().grad(), grads.at(key), "grad " + key));
    const auto ref = golden::golden_tensor(grads.at(key)).to(torch::kDouble);
    const double rel = (item.value().grad().to(torch::kDouble) - ref).norm().item<double>() /
                       std::max(ref.norm().item<double>(), 1e-30);
    EXPECT_LT(rel, 1e-4) << key;
    ++n;
  }
  EXPECT_EQ(n, grads.size());
}

TEST(TrainLoraGolden, SavedFileEqualsDiffusersFile) {
  AMUSED_REQUIRE_GOLDEN();
  const auto& c = lora_case();
  auto model = adapted_model();
  const fs::path dir =
      fs::temp_directory_path() / ("amused-lora-golden-" + std::to_string(::getpid()));
  amused::io::LoraSaveInfo info;
  info.rank = 4;
  info.alpha = 8;
  amused::io::save_lora_file(dir, amused::nn::lora_parameters(*model), {}, info);
  auto ours = amused::io::SafeTensorsFile::open(dir / amused::io::kLoraWeightsFile);
  auto ref = amused::io::SafeTensorsFile::open(
      golden::golden_path(c.at("lora_file").at("path").get<std::string>()));
  EXPECT_EQ(ours->metadata().at("format"), "pt");
  EXPECT_EQ(ours->metadata().at("amused_lora_alpha"), "8");
  EXPECT_EQ(ours->metadata().at("amused_lora_rank"), "4");
  const auto a = ours->tensors(), b = ref->tensors();
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a.size(), c.at("lora_file").at("keys").size());
  for (const auto& [k, t] : b) {
    ASSERT_TRUE(a.count(k)) << "missing key " << k;
    EXPECT_EQ(a.at(k).sizes(), t.sizes()) << k;
    EXPECT_EQ(a.at(k).scalar_type(), t.scalar_type()) << k;
    EXPECT_TRUE(torch::equal(a.at(k), t)) << k;
  }
  fs::remove_all(dir);
}

// diffusers' load: no alpha in the file -> alpha = r, scale 1. Run-time and merged (float32) both.
TEST(TrainLoraGolden, LoadingTheFileAsDiffusersMatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const auto& c = lora_case();
  const auto file = amused::io::read_lora_file(
      golden::golden_path(c.at("lora_file").at("path").get<std::string>()));
  EXPECT_EQ(file.format, "diffusers");
  ASSERT_EQ(file.transformer.size(), 24u);
  EXPECT_TRUE(file.text_encoder.empty());
  for (const auto& l : file.transformer)
    EXPECT_EQ(l.alpha, static_cast<double>(l.A.size(0))) << l.module;
  EXPECT_NE(file.alpha_note.find("scale 1"), std::string::npos) << file.alpha_note;
  const auto& expected = c.at("outputs").at("logits_after_diffusers_load");
  torch::NoGradGuard no_grad;
  {
    auto model = load_base();
    amused::nn::check_lora_layers(*model, file.transformer, "transformer", file.source);
    amused::nn::attach_runtime_lora(*model, file.transformer, std::make_shared<double>(1.0));
    EXPECT_TRUE(golden::matches_descriptor(forward(model), expected, "run-time LoRA logits"));
  }
  {
    auto model = load_base();
    const auto base = amused::io::module_state_dict(*model);
    std::map<std::string, torch::Tensor> copy;
    for (const auto& [k, t] : base) copy.emplace(k, t.clone());
    amused::nn::merge_lora(*model, {{&file.transformer, 1.0}},
                           [&](const std::string& k) { return copy.at(k); });
    EXPECT_TRUE(golden::matches_descriptor(forward(model), expected, "merged LoRA logits"));
  }
}

}  // namespace
