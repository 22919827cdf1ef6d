// The components module: one loader for every component (the precision policy applied by module
// type) and save_pretrained, whose folder is laid out as diffusers writes it and loads back to the
// same weights, configs and generated tokens.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "amused/error.h"
#include "core/config.h"
#include "io/diffusers_repo.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "core/memory.h"
#include "models/uvit_2d.h"
#include "pipelines/components.h"
#include "support/golden.h"

namespace {
namespace fs = std::filesystem;
namespace gt = amused::testing;

std::set<std::string> files_under(const fs::path& root) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) out.insert(fs::relative(e.path(), root).string());
  return out;
}

void expect_same_weights(const torch::nn::Module& a, const torch::nn::Module& b, const std::string& what) {
  const auto sa = amused::io::module_state_dict(a);
  const auto sb = amused::io::module_state_dict(b);
  ASSERT_EQ(sa.size(), sb.size()) << what;
  for (const auto& [k, t] : sa) {
    ASSERT_TRUE(sb.count(k)) << what << ": " << k;
    EXPECT_TRUE(torch::equal(t, sb.at(k))) << what << ": " << k;
  }
}

TEST(Components, LoadAppliesThePrecisionPolicy) {
  AMUSED_REQUIRE_GOLDEN();
  auto repo = amused::io::DiffusersRepo::open(gt::golden_path("models/tiny-b").string());
  amused::ComponentOptions o;
  o.precision = amused::Precision::kMixedBFloat16;
  auto c = amused::load_components(repo, o);
  EXPECT_EQ(c.transformer->encoder_proj->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(c.transformer->mlm_layer->conv2->weight.scalar_type(), torch::kFloat32);  // decides tokens
  EXPECT_EQ(c.transformer->encoder_proj_layer_norm->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(c.vqvae->quantize->embedding->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(c.vqvae->post_quant_conv->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(c.text_encoder->text_projection->weight.scalar_type(), torch::kBFloat16);
  EXPECT_FALSE(c.transformer->is_training());
  o.precision = amused::Precision::kFloat32;
  auto f = amused::load_components(repo, o);
  for (const auto& p : f.transformer->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
}

// The size bound of each config (checked before a model is built) against the models the golden
// folders build: never above the real count, so no good model is refused.
TEST(Components, SizeBoundsNeverExceedTheModels) {
  AMUSED_REQUIRE_GOLDEN();
  for (const char* name : {"models/tiny-a", "models/tiny-b"}) {
    auto repo = amused::io::DiffusersRepo::open(gt::golden_path(name).string());
    const auto c = amused::load_components(repo, {});
    auto count = [](const torch::nn::Module& m) {
      double n = 0;
      for (const auto& p : m.parameters()) n += static_cast<double>(p.numel());
      return n;
    };
    EXPECT_LE(c.text_encoder->config().min_parameters().parameters, count(*c.text_encoder)) << name;
    EXPECT_LE(c.transformer->config().min_parameters().parameters, count(*c.transformer)) << name;
    EXPECT_LE(c.vqvae->config().min_parameters().parameters, count(*c.vqvae)) << name;
    EXPECT_GT(c.transformer->config().min_parameters().parameters, 0.3 * count(*c.transformer)) << name;
  }
}

// A process that cannot hold the model a config describes refuses it when the config is parsed,
// naming the keys (ulimit -v made LibTorch's allocation-error path crash: issue 20, item 1).
TEST(Components, ConfigsBeyondMemoryAreRefusedWhenParsed) {
  amused::models::UVit2DConfig c;
  c.hidden_size = 1 << 20;
  c.num_attention_heads = 1;
  try {
    c.validate("transformer/config.json");
    ADD_FAILURE() << "a 2^20-wide U-ViT was accepted";
  } catch (const amused::ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("transformer/config.json"), std::string::npos) << m;
    EXPECT_NE(m.find("can allocate"), std::string::npos) << m;
    EXPECT_NE(m.find("hidden_size"), std::string::npos) << m;
  }
  EXPECT_GT(amused::allocatable_bytes(), 0u);
}

TEST(Components, SavePretrainedHasDiffusersLayoutAndRoundTrips) {
  AMUSED_REQUIRE_GOLDEN();
  const fs::path src = gt::golden_path("models/tiny-a");
  auto c = amused::load_components(amused::io::DiffusersRepo::open(src.string()));
  gt::TempDir tmp;
  const fs::path out = tmp / "saved";
  amused::save_pretrained(c, out);
  // Exactly the files AmusedPipeline.save_pretrained wrote for the golden model.
  EXPECT_EQ(files_under(out), files_under(src));
  // Configs: the diffusers ones equal the reference's files key for key.
  for (const char* f : {"model_index.json", "transformer/config.json", "vqvae/config.json",
                        "scheduler/scheduler_config.json"})
    EXPECT_EQ(amused::read_json_file(out / f), amused::read_json_file(src / f)) << f;
  // transformers writes only non-default keys; every key it wrote is ours too, with its value.
  const auto te_ref = amused::read_json_file(src / "text_encoder/config.json");
  const auto te = amused::read_json_file(out / "text_encoder/config.json");
  for (const auto& [k, v] : te_ref.items()) EXPECT_EQ(te.at(k), v) << "text_encoder/config.json: " << k;
  // Tokenizer files are copied byte for byte.
  for (const char* f : {"tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json"}) {
    std::ifstream a(src / f, std::ios::binary), b(out / f, std::ios::binary);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}), std::string(std::istreambuf_iterator<char>(b), {}))
        << f;
  }
  // Weight files: diffusers' metadata, the same tensors.
  const auto file = amused::io::SafeTensorsFile::open(out / "transformer/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  auto back = amused::load_components(amused::io::DiffusersRepo::open(out.string()));
  expect_same_weights(*back.transformer, *c.transformer, "transformer");
  expect_same_weights(*back.text_encoder, *c.text_encoder, "text_encoder");
  expect_same_weights(*back.vqvae, *c.vqvae, "vqvae");
}

TEST(Components, SavePretrainedFp16VariantAndGenerateLoadsIt) {
  AMUSED_REQUIRE_GOLDEN();
  const fs::path src = gt::golden_path("models/tiny-b");
  auto c = amused::load_components(amused::io::DiffusersRepo::open(src.string()));
  gt::TempDir tmp;
  amused::save_pretrained(c, tmp / "f32");
  amused::save_pretrained(c, tmp / "f16", {"fp16"});
  EXPECT_TRUE(fs::is_regular_file(tmp / "f16/transformer/diffusion_pytorch_model.fp16.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(tmp / "f16/text_encoder/model.fp16.safetensors"));
  const auto f16 = amused::io::load_safetensors(tmp / "f16/vqvae/diffusion_pytorch_model.fp16.safetensors");
  EXPECT_EQ(f16.at("decoder.conv_out.weight").scalar_type(), torch::kFloat16);
  // The same tokens from the original and the saved folder (same seed, float32).
  auto tokens = [&](const fs::path& model, const std::string& extra) {
    const auto r = gt::run_cli("generate -m '" + model.string() + "' -p 'a red apple' --seed 3 --dtype float32 " +
                               extra + " -o '" + (tmp / "img.png").string() + "' --save-tokens '" +
                               (tmp / "t.safetensors").string() + "' --quiet --offline");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return amused::io::load_safetensors(tmp / "t.safetensors").at("tokens").clone();
  };
  const auto reference = tokens(src, "");
  EXPECT_TRUE(torch::equal(tokens(tmp / "f32", ""), reference));
  EXPECT_EQ(tokens(tmp / "f16", "--variant fp16").sizes(), reference.sizes());
}

TEST(Components, SavePretrainedRefusesUnknownVariantAndMissingTokenizer) {
  AMUSED_REQUIRE_GOLDEN();
  auto c = amused::load_components(amused::io::DiffusersRepo::open(gt::golden_path("models/tiny-a").string()));
  gt::TempDir tmp;
  EXPECT_THROW(amused::save_pretrained(c, tmp / "x", {"bf16"}), amused::InvalidArgument);
  c.tokenizer_dir = tmp / "nowhere";
  EXPECT_THROW(amused::save_pretrained(c, tmp / "y"), amused::IoError);
}

TEST(Components, SingleFolderLoadersShareTheRules) {
  AMUSED_REQUIRE_GOLDEN();
  const fs::path src = gt::golden_path("models/tiny-a");
  amused::ComponentOptions o;
  o.precision = amused::Precision::kMixedBFloat16;
  auto t = amused::load_transformer(src / "transformer", o);
  EXPECT_EQ(t->encoder_proj->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(t->mlm_layer->conv1->weight.scalar_type(), torch::kFloat32);
  gt::TempDir tmp;
  try {
    amused::load_vqvae(tmp.path());
    FAIL() << "expected an error for a folder without config.json";
  } catch (const amused::Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
}

}  // namespace
