// VQModel: config parsing/writing, the errors a user sees, and a full-size random-weight decode.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include "pipelines/components.h"
#include "amused/error.h"
#include "core/config.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "models/vq_model.h"
#include "nn/execution.h"
#include "support/golden.h"

namespace {
using amused::models::VQModel;
using amused::models::VQModelConfig;
using nlohmann::json;

// A small valid config (tiny-a-like, but written here so these tests need no golden data).
json small_config() {
  return json::parse(R"({"_class_name": "VQModel", "_diffusers_version": "0.27.2",
    "act_fn": "silu", "block_out_channels": [8, 16], "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "latent_channels": 6,
    "layers_per_block": 1, "lookup_from_codebook": true, "mid_block_add_attention": false,
    "norm_num_groups": 4, "norm_type": "group", "num_vq_embeddings": 10, "sample_size": 16,
    "scaling_factor": 0.18215, "vq_embed_dim": null, "force_upcast": true})");
}

template <typename E>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

TEST(VQModelConfig, DefaultsAreDiffusersDefaults) {
  const auto c = VQModelConfig::from_json(json::parse(R"({"_class_name": "VQModel",
      "mid_block_add_attention": false})"),
                                          "config.json");
  EXPECT_EQ(c.in_channels, 3);
  EXPECT_EQ(c.latent_channels, 3);
  EXPECT_EQ(c.block_out_channels, std::vector<int64_t>{64});
  EXPECT_EQ(c.layers_per_block, 1);
  EXPECT_EQ(c.num_vq_embeddings, 256);
  EXPECT_EQ(c.norm_num_groups, 32);
  EXPECT_FALSE(c.vq_embed_dim.has_value());
  EXPECT_EQ(c.embed_dim(), 3);
  EXPECT_EQ(c.scale_factor(), 1);
  EXPECT_FALSE(c.lookup_from_codebook);
  EXPECT_FALSE(c.force_upcast);
  EXPECT_TRUE(VQModelConfig{}.mid_block_add_attention);
}

TEST(VQModelConfig, RoundTripsThroughJson) {
  auto j = small_config();
  j["vq_embed_dim"] = 5;
  const auto c = VQModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.embed_dim(), 5);
  EXPECT_EQ(c.scale_factor(), 2);
  const auto back = c.to_json();
  EXPECT_EQ(back["_class_name"], "VQModel");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key()[0] == '_') continue;
    EXPECT_EQ(back.at(it.key()), it.value()) << it.key();
  }
  EXPECT_TRUE(VQModelConfig::from_json(small_config(), "c").to_json()["vq_embed_dim"].is_null());
}

TEST(VQModelErrors, WrongClassName) {
  auto j = small_config();
  j["_class_name"] = "AutoencoderKL";
  const auto msg =
      error_of<amused::ConfigError>([&] { VQModelConfig::from_json(j, "vq/config.json"); });
  EXPECT_NE(msg.find("vq/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("AutoencoderKL"), std::string::npos) << msg;
  EXPECT_NE(msg.find("VQModel"), std::string::npos) << msg;
}

TEST(VQModelErrors, UnsupportedNormTypeAndAttention) {
  auto j = small_config();
  j["norm_type"] = "spatial";
  auto msg = error_of<amused::Unsupported>([&] { VQModelConfig::from_json(j, "vq/config.json"); });
  EXPECT_NE(msg.find("norm_type 'spatial'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vq/config.json"), std::string::npos) << msg;

  j = small_config();
  j["mid_block_add_attention"] = true;
  msg = error_of<amused::Unsupported>([&] { VQModelConfig::from_json(j, "vq/config.json"); });
  EXPECT_NE(msg.find("mid_block_add_attention"), std::string::npos) << msg;

  j = small_config();
  j["up_block_types"][1] = "AttnUpDecoderBlock2D";
  msg = error_of<amused::Unsupported>([&] { VQModelConfig::from_json(j, "vq/config.json"); });
  EXPECT_NE(msg.find("AttnUpDecoderBlock2D"), std::string::npos) << msg;

  VQModelConfig c = VQModelConfig::from_json(small_config(), "c");
  c.norm_type = "layer";
  msg = error_of<amused::Unsupported>([&] { VQModel m(c); });
  EXPECT_NE(msg.find("norm_type 'layer'"), std::string::npos) << msg;
}

TEST(VQModelErrors, MalformedConfig) {
  auto j = small_config();
  j["block_out_channels"] = {8, 18};
  auto msg = error_of<amused::ConfigError>([&] { VQModelConfig::from_json(j, "vq/config.json"); });
  EXPECT_NE(msg.find("norm_num_groups"), std::string::npos) << msg;
  j = small_config();
  j["down_block_types"] = {"DownEncoderBlock2D"};
  msg = error_of<amused::ConfigError>([&] { VQModelConfig::from_json(j, "vq/config.json"); });
  EXPECT_NE(msg.find("down_block_types"), std::string::npos) << msg;
}

TEST(VQModelErrors, ImageSizeNotAMultipleOfScaleFactor) {
  VQModel vq(VQModelConfig::from_json(small_config(), "c"));
  vq->init_weights();
  torch::NoGradGuard no_grad;
  const auto msg = error_of<amused::InvalidArgument>([&] {
    vq->encode(torch::rand({1, 3, 16, 15}));
  });
  EXPECT_NE(msg.find("16x15"), std::string::npos) << msg;
  EXPECT_NE(msg.find("multiple"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2"), std::string::npos) << msg;
  EXPECT_THROW(vq->encode(torch::rand({1, 4, 16, 16})), amused::InvalidArgument);
  EXPECT_THROW(vq->encode(torch::zeros({1, 3, 16, 16}, torch::kUInt8)), amused::InvalidArgument);
  EXPECT_EQ(vq->encode(torch::rand({2, 3, 16, 12})).sizes(), (std::vector<int64_t>{2, 6, 8, 6}));
}

TEST(VQModelErrors, TokenIdsOutOfRange) {
  VQModel vq(VQModelConfig::from_json(small_config(), "c"));
  vq->init_weights();
  torch::NoGradGuard no_grad;
  auto ids = torch::zeros({1, 4, 4}, torch::kLong);
  EXPECT_EQ(vq->decode_tokens(ids).sizes(), (std::vector<int64_t>{1, 3, 8, 8}));
  ids[0][1][2] = 10;  // == num_vq_embeddings, e.g. a mask token
  const auto msg = error_of<amused::InvalidArgument>([&] { vq->decode_tokens(ids); });
  EXPECT_NE(msg.find("[0, 10)"), std::string::npos) << msg;
  EXPECT_THROW(vq->decode_tokens(torch::zeros({4, 4}, torch::kLong)), amused::InvalidArgument);
}

TEST(VQModelLoader, LoadsFilesAndReportsMissingWeights) {
  amused::testing::TempDir dir;
  VQModel source(VQModelConfig::from_json(small_config(), "c"));
  source->init_weights();
  { std::ofstream(dir / "config.json") << small_config().dump(); }
  auto msg = error_of<amused::CheckpointError>([&] { amused::load_vqvae(dir.path()); });
  EXPECT_NE(msg.find("diffusion_pytorch_model.safetensors"), std::string::npos) << msg;

  amused::io::StateDict half;
  for (const auto& [k, v] : amused::io::module_state_dict(*source)) half[k] = v.to(torch::kFloat16);
  amused::io::save_safetensors(dir / "diffusion_pytorch_model.fp16.safetensors", half);
  auto vq = amused::load_vqvae(dir.path(), {}, "fp16");
  EXPECT_EQ(vq->quantize->embedding->weight.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(
      torch::equal(vq->decoder->conv_out->weight,
                   source->decoder->conv_out->weight.to(torch::kFloat16).to(torch::kFloat32)));
}

// Full-size amused VQ (146M parameters, random weights): 16x16 tokens -> 256x256 image.
TEST(VQModelSlow, FullSizeDecode16x16RandomWeights) {
  AMUSED_REQUIRE_GOLDEN();
  const auto config_path =
      amused::testing::golden_path("full-configs/amused-256/vqvae/config.json");
  VQModel vq(VQModelConfig::from_json(amused::read_json_file(config_path), config_path.string()));
  torch::manual_seed(0);
  vq->init_weights();
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(0, 8192, {1, 16, 16}, torch::kLong);
  const auto raw = vq->decode_tokens(ids);
  ASSERT_EQ(raw.sizes(), (std::vector<int64_t>{1, 3, 256, 256}));
  EXPECT_TRUE(torch::isfinite(raw).all().item<bool>());
  const auto image = amused::models::to_uint8_nhwc(raw);
  EXPECT_EQ(image.sizes(), (std::vector<int64_t>{1, 256, 256, 3}));
  // And back: the encoder reduces 256x256 to the same 16x16 grid.
  const auto latents = vq->encode(image.permute({0, 3, 1, 2}).to(torch::kFloat32) / 255.0);
  EXPECT_EQ(latents.sizes(), (std::vector<int64_t>{1, 64, 16, 16}));
  EXPECT_EQ(vq->quantize_indices(latents).sizes(), (std::vector<int64_t>{1, 16, 16}));
}

}  // namespace

// The inference fast path of the VQ blocks (norm -> activation -> 16-bit convolution made a few
// groups at a time, in-place bias, up-sampling after the cast) gives exactly what the plain,
// autograd-friendly sequence gives with the same 16-bit weights.
TEST(VQModelMixed, InferencePathEqualsTheAutogradPath) {
  torch::manual_seed(3);
  amused::models::ResnetBlock2D block(64, 32, 32, 1e-6, "silu");
  amused::models::Upsample2D up(32, 32);
  for (auto& p : block->parameters()) p.detach().uniform_(-0.2, 0.2);
  for (auto& p : up->parameters()) p.detach().uniform_(-0.2, 0.2);
  auto mixed = [](torch::nn::Module& m) {
    amused::io::convert_parameters(m, amused::precision_load_options(m, amused::Precision::kMixedBFloat16, torch::kCPU));
  };
  mixed(*block);
  mixed(*up);
  ASSERT_EQ(block->conv1->weight.scalar_type(), torch::kBFloat16);
  ASSERT_EQ(block->norm1->weight.scalar_type(), torch::kFloat32);
  // A whole up block: resnets with a shortcut (64 -> 32 channels) handed their input, up-sampling.
  amused::models::UpDecoderBlock2D up_block(64, 32, 2, 1e-6, "silu", 32, true);
  for (auto& p : up_block->parameters()) p.detach().uniform_(-0.2, 0.2);
  mixed(*up_block);
  for (int64_t batch : {1, 2}) {
    const auto x = torch::randn({batch, 64, 12, 10});
    torch::Tensor fast, fast_owned, fast_block, plain, plain_block;
    {
      amused::nn::ExecutionScope inference(amused::nn::ExecutionMode::kInference);
      fast = up(block(x));
      fast_owned = up(block->forward_owned(x.clone()));
      fast_block = up_block(x.clone());
    }
    plain = up(block(x)).detach();
    plain_block = up_block(x).detach();
    EXPECT_EQ(fast.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(fast, plain)) << "batch " << batch << ": max diff "
                                           << (fast - plain).abs().max().item<float>();
    EXPECT_TRUE(torch::equal(fast_owned, plain)) << "batch " << batch;
    EXPECT_TRUE(torch::equal(fast_block, plain_block)) << "batch " << batch;
  }
}
