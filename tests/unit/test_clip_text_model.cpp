// CLIPTextModelWithProjection: config parsing and its errors, parameter names/shapes against the
// checkpoints, strict loading errors, dtype handling, init, and a (slow) full-size forward.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "pipelines/components.h"
#include "amused/error.h"
#include "core/config.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "models/clip_text_model.h"
#include "support/golden.h"

namespace {
namespace fs = std::filesystem;
using amused::models::CLIPTextConfig;
using amused::models::CLIPTextModelWithProjection;
using amused::testing::golden_path;
using nlohmann::json;

using Shapes = std::map<std::string, std::vector<int64_t>>;

Shapes model_shapes(const torch::nn::Module& m) {
  Shapes out;
  for (const auto& [k, t] : amused::io::module_state_dict(m)) out[k] = t.sizes().vec();
  return out;
}

Shapes checkpoint_shapes(const fs::path& file) {
  Shapes out;
  auto f = amused::io::SafeTensorsFile::open(file);
  for (const auto& k : f->keys()) out[k] = f->info(k).shape;
  return out;
}

CLIPTextConfig full_config() {
  const auto p = golden_path("full-configs/amused-256/text_encoder/config.json");
  return CLIPTextConfig::from_json(amused::read_json_file(p), p.string());
}

CLIPTextConfig tiny_config(const std::string& model) {
  const auto p = golden_path("models/" + model + "/text_encoder/config.json");
  return CLIPTextConfig::from_json(amused::read_json_file(p), p.string());
}

template <typename Fn>
std::string config_error_of(Fn fn) {
  try {
    fn();
  } catch (const amused::ConfigError& e) {
    return e.what();
  }
  return "<no ConfigError>";
}

json minimal_config() {
  return json{{"architectures", {"CLIPTextModelWithProjection"}},
              {"model_type", "clip_text_model"},
              {"hidden_size", 32},
              {"intermediate_size", 64},
              {"num_attention_heads", 4},
              {"num_hidden_layers", 2},
              {"projection_dim", 16}};
}
}  // namespace

TEST(CLIPTextConfig, DefaultsAreTransformers) {
  const auto c = CLIPTextConfig::from_json(json::object(), "config.json");
  EXPECT_EQ(c.vocab_size, 49408);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 2048);
  EXPECT_EQ(c.projection_dim, 512);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.max_position_embeddings, 77);
  EXPECT_EQ(c.hidden_act, "quick_gelu");
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
  EXPECT_EQ(c.pad_token_id, 1);
  EXPECT_EQ(c.bos_token_id, 49406);
  EXPECT_EQ(c.eos_token_id, 49407);
}

TEST(CLIPTextConfig, FullConfigRoundTrips) {
  AMUSED_REQUIRE_GOLDEN();
  const auto c = full_config();
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.eos_token_id, 2);
  const auto again = CLIPTextConfig::from_json(c.to_json(), "written");
  EXPECT_EQ(again.to_json(), c.to_json());
  const auto raw =
      amused::read_json_file(golden_path("full-configs/amused-256/text_encoder/config.json"));
  for (const auto& [key, value] : raw.items())
    if (c.to_json().contains(key)) EXPECT_EQ(c.to_json()[key], value) << key;
}

TEST(CLIPTextConfig, WrongModelIsConfigError) {
  auto with = [](const char* key, json value) {
    auto j = minimal_config();
    j[key] = std::move(value);
    return j;
  };
  std::string msg = config_error_of(
      [&] { CLIPTextConfig::from_json(with("_class_name", "UVit2DModel"), "te.json"); });
  EXPECT_NE(msg.find("UVit2DModel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("te.json"), std::string::npos) << msg;
  msg = config_error_of([&] { CLIPTextConfig::from_json(with("model_type", "t5"), "te.json"); });
  EXPECT_NE(msg.find("model_type is 't5', expected 'clip_text_model'"), std::string::npos) << msg;
  msg = config_error_of([&] {
    CLIPTextConfig::from_json(with("architectures", json::array({"T5EncoderModel"})), "te.json");
  });
  EXPECT_NE(msg.find("T5EncoderModel"), std::string::npos) << msg;
  // Plain CLIPTextModel configs describe the same tower and are accepted.
  EXPECT_NO_THROW(
      CLIPTextConfig::from_json(with("architectures", json::array({"CLIPTextModel"})), "te.json"));
}

TEST(CLIPTextConfig, BadFieldsAreConfigErrors) {
  auto with = [](const char* key, json value) {
    auto j = minimal_config();
    j[key] = std::move(value);
    return j;
  };
  std::string msg =
      config_error_of([&] { CLIPTextConfig::from_json(with("hidden_size", "768"), "te.json"); });
  EXPECT_EQ(msg, "te.json: key 'hidden_size': expected an integer, got string \"768\"");
  msg = config_error_of(
      [&] { CLIPTextConfig::from_json(with("layer_norm_eps", json::array()), "te.json"); });
  EXPECT_NE(msg.find("layer_norm_eps"), std::string::npos) << msg;
  msg = config_error_of([&] { CLIPTextConfig::from_json(with("hidden_act", "mish"), "te.json"); });
  EXPECT_NE(msg.find("hidden_act is 'mish'"), std::string::npos) << msg;
  msg = config_error_of(
      [&] { CLIPTextConfig::from_json(with("num_attention_heads", 5), "te.json"); });
  EXPECT_NE(msg.find("multiple of num_attention_heads"), std::string::npos) << msg;
  msg =
      config_error_of([&] { CLIPTextConfig::from_json(with("num_hidden_layers", 0), "te.json"); });
  EXPECT_NE(msg.find("num_hidden_layers"), std::string::npos) << msg;
}

TEST(CLIPTextModel, TinyModelKeysEqualCheckpoints) {
  AMUSED_REQUIRE_GOLDEN();
  for (const std::string m : {"tiny-a", "tiny-b"}) {
    CLIPTextModelWithProjection model(tiny_config(m));
    EXPECT_EQ(model_shapes(*model),
              checkpoint_shapes(golden_path("models/" + m + "/text_encoder/model.safetensors")))
        << m;
  }
}

TEST(CLIPTextModel, FullSizeParameterCountAndKeys) {
  AMUSED_REQUIRE_GOLDEN();
  const auto config = full_config();
  CLIPTextModelWithProjection model(config);  // torch::empty parameters: no init cost
  int64_t count = 0;
  for (const auto& p : model->parameters()) count += p.numel();
  EXPECT_EQ(count, 123650304);

  // Expected keys: tiny-b's checkpoint (hidden 24, ffn 40, projection 20, 3 layers) with its layer
  // keys repeated for 12 layers and its sizes mapped to the full ones.
  const auto tiny = checkpoint_shapes(golden_path("models/tiny-b/text_encoder/model.safetensors"));
  const std::map<int64_t, int64_t> size_map{
      {24, 768}, {40, 3072}, {20, 768}, {49408, 49408}, {77, 77}};
  const std::regex layer_re(R"(^text_model\.encoder\.layers\.(\d+)\.(.*)$)");
  Shapes expected;
  for (const auto& [key, shape] : tiny) {
    std::vector<int64_t> full_shape;
    for (auto d : shape) full_shape.push_back(size_map.at(d));
    std::smatch m;
    if (std::regex_match(key, m, layer_re)) {
      if (m[1] != "0") continue;
      for (int i = 0; i < 12; ++i)
        expected["text_model.encoder.layers." + std::to_string(i) + "." + m[2].str()] = full_shape;
    } else {
      expected[key] = full_shape;
    }
  }
  EXPECT_EQ(expected.size(), 197u);  // 2 embeddings + 12 x 16 + final LN (2) + projection
  EXPECT_EQ(model_shapes(*model), expected);
}

TEST(CLIPTextModel, MissingKeyIsCheckpointErrorNamingIt) {
  AMUSED_REQUIRE_GOLDEN();
  amused::testing::TempDir tmp;
  const auto src = golden_path("models/tiny-a/text_encoder");
  fs::copy_file(src / "config.json", tmp / "config.json");
  auto sd = amused::io::load_safetensors(src / "model.safetensors");
  sd.erase("text_model.encoder.layers.1.mlp.fc2.bias");
  amused::io::save_safetensors(tmp / "model.safetensors", sd);
  try {
    amused::load_text_encoder(tmp.path());
    FAIL() << "expected CheckpointError";
  } catch (const amused::CheckpointError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("text_model.encoder.layers.1.mlp.fc2.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find((tmp / "model.safetensors").string()), std::string::npos) << msg;
  }
  // A missing variant file names the file.
  try {
    amused::load_text_encoder(tmp.path(), {}, "fp16");
    FAIL() << "expected CheckpointError";
  } catch (const amused::CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("model.fp16.safetensors"), std::string::npos) << e.what();
  }
}

TEST(CLIPTextModel, VariantFileAndSixteenBitWeights) {
  AMUSED_REQUIRE_GOLDEN();
  amused::testing::TempDir tmp;
  const auto src = golden_path("models/tiny-b/text_encoder");
  fs::copy_file(src / "config.json", tmp / "config.json");
  auto sd = amused::io::load_safetensors(src / "model.safetensors");
  for (auto& [k, t] : sd) t = t.to(torch::kBFloat16);
  amused::io::save_safetensors(tmp / "model.bf16.safetensors", sd);
  auto ref = amused::load_text_encoder(src);
  auto model = amused::load_text_encoder(tmp.path(), {}, "bf16");
  EXPECT_EQ(model->text_projection->weight.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(model->is_training());

  torch::NoGradGuard no_grad;
  auto ids = torch::full({2, 77}, 49407, torch::kLong);
  ids.index_put_({torch::indexing::Slice(), 0}, 49406);
  ids.index_put_({0, torch::indexing::Slice(1, 4)}, torch::tensor({320, 1125, 539}));
  const auto expected = ref->forward(ids);
  const auto got32 = model->forward(ids);
  EXPECT_TRUE(torch::allclose(got32.text_embeds, expected.text_embeds, 0.05, 0.05));
  // Running in bfloat16 (softmax in float32 internally) stays close to the float32 result.
  model->to(torch::kBFloat16);
  const auto got16 = model->forward(ids);
  EXPECT_EQ(got16.penultimate_hidden_state.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::isfinite(got16.last_hidden_state).all().item<bool>());
  EXPECT_TRUE(
      torch::allclose(got16.text_embeds.to(torch::kFloat32), expected.text_embeds, 0.1, 0.1));
  EXPECT_TRUE(torch::allclose(got16.penultimate_hidden_state.to(torch::kFloat32),
                              expected.penultimate_hidden_state, 0.1, 0.1));
}

TEST(CLIPTextModel, RejectsBadInputIds) {
  auto j = minimal_config();
  CLIPTextModelWithProjection model(CLIPTextConfig::from_json(j, "te.json"));
  model->init_weights();
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(torch::zeros({1, 78}, torch::kLong)), amused::InvalidArgument);
  EXPECT_THROW(model->forward(torch::full({1, 5}, 49408, torch::kLong)), amused::InvalidArgument);
  EXPECT_THROW(model->forward(torch::zeros({1, 5}, torch::kFloat32)), amused::InvalidArgument);
  EXPECT_THROW(model->forward(torch::zeros({5}, torch::kLong)), amused::InvalidArgument);
  // Shorter sequences and int32 ids are fine.
  const auto out = model->forward(torch::arange(5, torch::kInt).unsqueeze(0));
  EXPECT_EQ(out.last_hidden_state.sizes(), (std::vector<int64_t>{1, 5, 32}));
  EXPECT_EQ(out.text_embeds.sizes(), (std::vector<int64_t>{1, 16}));
}

TEST(CLIPTextModel, InitWeightsFollowsTransformers) {
  auto j = minimal_config();
  j["hidden_size"] = 64;
  j["intermediate_size"] = 128;
  j["num_hidden_layers"] = 2;
  j["vocab_size"] = 4096;
  CLIPTextModelWithProjection model(CLIPTextConfig::from_json(j, "te.json"));
  torch::manual_seed(0);
  model->init_weights();
  auto& layer = *model->text_model->encoder->layers->ptr<amused::models::CLIPEncoderLayerImpl>(0);
  EXPECT_TRUE(torch::equal(layer.layer_norm1->weight, torch::ones({64})));
  EXPECT_TRUE(torch::equal(layer.layer_norm2->bias, torch::zeros({64})));
  EXPECT_TRUE(torch::equal(layer.self_attn->q_proj->bias, torch::zeros({64})));
  EXPECT_TRUE(torch::equal(model->text_model->final_layer_norm->weight, torch::ones({64})));
  const double in_proj_std = std::pow(64.0, -0.5) * std::pow(4.0, -0.5);
  EXPECT_NEAR(layer.self_attn->q_proj->weight.std().item<double>(), in_proj_std, 0.1 * in_proj_std);
  EXPECT_NEAR(layer.mlp->fc1->weight.std().item<double>(), std::pow(128.0, -0.5), 0.01);
  EXPECT_NEAR(model->text_model->embeddings->token_embedding->weight.std().item<double>(), 0.02,
              0.001);
  EXPECT_NEAR(model->text_projection->weight.std().item<double>(), 0.125, 0.0125);
}

// Full-size (123.7M parameters) forward with random weights: shapes and finiteness. Optional
// (Slow).
TEST(CLIPTextModelSlow, FullSizeForwardRandomWeights) {
  AMUSED_REQUIRE_GOLDEN();
  CLIPTextModelWithProjection model(full_config());
  // The size bound (see UVit2DKeys): at most the real count, and most of it.
  int64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel();
  EXPECT_LE(full_config().min_parameters().parameters, static_cast<double>(total));
  EXPECT_GE(full_config().min_parameters().parameters, 0.95 * static_cast<double>(total));
  torch::manual_seed(0);
  model->init_weights();
  model->eval();
  torch::NoGradGuard no_grad;
  auto ids = torch::full({1, 77}, 49407, torch::kLong);
  ids.index_put_({0, torch::indexing::Slice(0, 6)},
                 torch::tensor({49406, 320, 1125, 539, 320, 2368}));
  const auto out = model->forward(ids, /*output_hidden_states=*/true);
  EXPECT_EQ(out.penultimate_hidden_state.sizes(), (std::vector<int64_t>{1, 77, 768}));
  EXPECT_EQ(out.text_embeds.sizes(), (std::vector<int64_t>{1, 768}));
  EXPECT_EQ(out.hidden_states.size(), 13u);
  EXPECT_TRUE(torch::equal(out.hidden_states[11], out.penultimate_hidden_state));
  EXPECT_TRUE(torch::isfinite(out.last_hidden_state).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(out.text_embeds).all().item<bool>());
  // Legacy eos_token_id 2: pooled at the first 49407 (position 6).
  EXPECT_TRUE(torch::equal(out.pooled_output[0], out.last_hidden_state[0][6]));
}
