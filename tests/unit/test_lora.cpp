// LoRA: file formats (diffusers, peft folders, our alpha metadata), the errors for files that do
// not fit, scale 0 = no adapter, merged vs run-time in float32 and bfloat16, the pipeline API
// (per-call scales), and `amused train --lora` end to end (one image, resume, generate --lora).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "amused/error.h"
#include "amused/image_io.h"
#include "amused/pipeline.h"
#include "io/lora_file.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "nn/lora.h"
#include "pipelines/components.h"
#include "support/golden.h"

namespace {
namespace fs = std::filesystem;
namespace gt = amused::testing;
using amused::models::UVit2DModel;

fs::path golden_lora() { return gt::golden_path("lora/tiny-a/pytorch_lora_weights.safetensors"); }

UVit2DModel tiny_transformer(amused::Precision precision = amused::Precision::kFloat32) {
  amused::ComponentOptions co;
  co.precision = precision;
  return amused::load_transformer(gt::golden_path("models/tiny-a/transformer"), co);
}

torch::Tensor tiny_logits(UVit2DModel& m) {
  torch::NoGradGuard g;
  const auto& in = gt::golden_case("train/step_grads/tiny-a").at("inputs");
  return m->forward(
      gt::golden_tensor(in.at("input_ids")), gt::golden_tensor(in.at("encoder_hidden_states")),
      gt::golden_tensor(in.at("pooled_text_emb")), gt::golden_tensor(in.at("micro_conds")));
}

// The golden file with its keys renamed / tensors replaced by `edit`, written to `path`.
void write_edited(const fs::path& path,
                  const std::function<void(std::map<std::string, torch::Tensor>&)>& edit,
                  const amused::io::Metadata& meta = {{"format", "pt"}}) {
  auto sd = amused::io::load_safetensors(golden_lora());
  std::map<std::string, torch::Tensor> m(sd.begin(), sd.end());
  edit(m);
  amused::io::save_safetensors(path, amused::io::StateDict(m.begin(), m.end()), meta);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const amused::Error& e) {
    return e.what();
  }
  return "";
}

TEST(LoraFile, PeftFolderTakesAlphaFromItsConfig) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  fs::create_directories(tmp / "adapter");
  write_edited(tmp / "adapter" / "adapter_model.safetensors", [](auto& m) {
    std::map<std::string, torch::Tensor> out;
    for (auto& [k, t] : m) out["base_model.model." + k.substr(12)] = t;  // drop "transformer."
    m = out;
  });
  std::ofstream(tmp / "adapter" / "adapter_config.json")
      << R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v"]})";
  const auto f = amused::io::read_lora_file(tmp / "adapter");
  EXPECT_EQ(f.format, "peft");
  ASSERT_EQ(f.transformer.size(), 24u);
  for (const auto& l : f.transformer) EXPECT_EQ(l.alpha, 8.0);
  // alpha 8 / r 4 = the training scale 2: the logits peft computed while training (golden).
  auto m = tiny_transformer();
  amused::nn::attach_runtime_lora(*m, f.transformer, std::make_shared<double>(1.0));
  EXPECT_TRUE(gt::matches_descriptor(
      tiny_logits(m), gt::golden_case("train/lora/tiny-a").at("outputs").at("logits"),
      "peft folder logits"));
}

TEST(LoraFile, OurAlphaMetadataIsRead) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  write_edited(tmp / "ours.safetensors", [](auto&) {},
               {{"format", "pt"}, {"amused_lora_alpha", "8"}, {"amused_lora_rank", "4"}});
  const auto f = amused::io::read_lora_file(tmp / "ours.safetensors");
  for (const auto& l : f.transformer) EXPECT_EQ(l.alpha, 8.0);
  EXPECT_NE(f.alpha_note.find("diffusers ignores it"), std::string::npos) << f.alpha_note;
}

TEST(LoraFile, FilesThatDoNotFitAreClearErrors) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  auto m = tiny_transformer();
  auto check = [&](const fs::path& p) {
    const auto f = amused::io::read_lora_file(p);
    amused::nn::check_lora_layers(*m, f.transformer, "transformer", f.source);
  };
  const std::string q = "transformer.transformer_layers.0.attn1.to_q.";
  // A key that matches no layer.
  write_edited(tmp / "nolayer.safetensors", [&](auto& mm) {
    mm["transformer.transformer_layers.9.attn1.to_q.lora_A.weight"] = mm.at(q + "lora_A.weight");
    mm["transformer.transformer_layers.9.attn1.to_q.lora_B.weight"] = mm.at(q + "lora_B.weight");
  });
  auto e = error_of([&] { check(tmp / "nolayer.safetensors"); });
  EXPECT_NE(e.find("transformer.transformer_layers.9.attn1.to_q.lora_A.weight"), std::string::npos)
      << e;
  EXPECT_NE(e.find("matches no linear layer"), std::string::npos) << e;
  // A and B with different ranks.
  write_edited(tmp / "rank.safetensors", [&](auto& mm) {
    mm[q + "lora_B.weight"] = torch::zeros({32, 3});
  });
  e = error_of([&] { check(tmp / "rank.safetensors"); });
  EXPECT_NE(e.find("rank mismatch"), std::string::npos) << e;
  EXPECT_NE(e.find(q + "lora_B.weight"), std::string::npos) << e;
  // Dimensions of another model.
  write_edited(tmp / "dims.safetensors", [&](auto& mm) {
    mm[q + "lora_A.weight"] = torch::zeros({4, 48});
    mm[q + "lora_B.weight"] = torch::zeros({48, 4});
  });
  e = error_of([&] { check(tmp / "dims.safetensors"); });
  EXPECT_NE(e.find("do not fit layer 'transformer_layers.0.attn1.to_q'"), std::string::npos) << e;
  // A LoRA for another pipeline (no transformer.* keys).
  amused::io::save_safetensors(
      tmp / "unet.safetensors",
      {{"unet.down_blocks.0.attentions.0.to_q.lora_A.weight", torch::zeros({4, 32})}},
      {{"format", "pt"}});
  e = error_of([&] { check(tmp / "unet.safetensors"); });
  EXPECT_NE(e.find("unet.down_blocks.0.attentions.0.to_q.lora_A.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("not an aMUSEd LoRA"), std::string::npos) << e;
  // lora_A without lora_B.
  write_edited(tmp / "half.safetensors", [&](auto& mm) { mm.erase(q + "lora_B.weight"); });
  e = error_of([&] { check(tmp / "half.safetensors"); });
  EXPECT_NE(e.find("no matching lora_B"), std::string::npos) << e;
}

TEST(LoraLinear, ScaleZeroIsTheModelWithoutAdapters) {
  AMUSED_REQUIRE_GOLDEN();
  const auto f = amused::io::read_lora_file(golden_lora());
  auto m = tiny_transformer();
  const auto base = tiny_logits(m);
  auto scale = std::make_shared<double>(0.0);
  amused::nn::attach_runtime_lora(*m, f.transformer, scale);
  EXPECT_TRUE(torch::equal(tiny_logits(m), base));
  *scale = 1.0;
  EXPECT_FALSE(torch::allclose(tiny_logits(m), base));
  // Merged at scale 0: the weights are the checkpoint's, bit for bit.
  auto m2 = tiny_transformer();
  const auto sd = amused::io::module_state_dict(*m2);
  std::map<std::string, torch::Tensor> copy;
  for (const auto& [k, t] : sd) copy.emplace(k, t.clone());
  amused::nn::merge_lora(*m2, {{&f.transformer, 0.0}},
                         [&](const std::string& k) { return copy.at(k); });
  EXPECT_TRUE(torch::equal(tiny_logits(m2), base));
}

// Merged (W + s(alpha/r)BA in float32, then one cast) and run-time adapters in mixed bfloat16:
// both within the bfloat16 mode's distance of the float32 run-time result.
TEST(LoraLinear, MergedAndRuntimeAgreeInBFloat16) {
  AMUSED_REQUIRE_GOLDEN();
  const auto f = amused::io::read_lora_file(golden_lora());
  auto ref_model = tiny_transformer();
  amused::nn::attach_runtime_lora(*ref_model, f.transformer, std::make_shared<double>(1.5));
  const auto ref = tiny_logits(ref_model);
  auto rt = tiny_transformer(amused::Precision::kMixedBFloat16);
  amused::nn::attach_runtime_lora(*rt, f.transformer, std::make_shared<double>(1.5));
  const auto rt_logits = tiny_logits(rt);
  auto merged = tiny_transformer(amused::Precision::kMixedBFloat16);
  const auto w32 = amused::io::load_safetensors(
      gt::golden_path("models/tiny-a/transformer/diffusion_pytorch_model.safetensors"));
  amused::nn::merge_lora(*merged, {{&f.transformer, 1.5}},
                         [&](const std::string& k) { return w32.at(k); });
  EXPECT_EQ(amused::nn::named_linears(*merged)
                .at("transformer_layers.0.attn1.to_q")
                ->weight.scalar_type(),
            torch::kBFloat16);
  const auto merged_logits = tiny_logits(merged);
  const double scale = ref.abs().max().item<double>();
  const double d_rt = (rt_logits - ref).abs().max().item<double>() / scale;
  const double d_merged = (merged_logits - ref).abs().max().item<double>() / scale;
  EXPECT_LT(d_rt, 0.05) << "run-time bf16 vs float32";
  EXPECT_LT(d_merged, 0.05) << "merged bf16 vs float32";
}

amused::TextToImageParams t2i() {
  amused::TextToImageParams p;
  p.prompts = {"a red square"};
  p.seed = 3;
  p.num_inference_steps = 4;
  return p;
}

TEST(LoraPipeline, ScalesPerCallAndMergedEqualsRuntimeAtScaleZero) {
  AMUSED_REQUIRE_GOLDEN();
  amused::LoadOptions lo;
  lo.dtype = amused::DType::Float32;
  lo.threads = 1;
  auto plain = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), lo);
  const auto base = plain->text_to_image(t2i()).tokens[0].ids;
  lo.loras = {{golden_lora().string(), 0.0, "style"}};
  lo.merge_loras = false;
  auto rt = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), lo);
  ASSERT_EQ(rt->loras().size(), 1u);
  EXPECT_EQ(rt->loras()[0].rank, 4);
  EXPECT_EQ(rt->loras()[0].alpha, 4.0);
  EXPECT_EQ(rt->text_to_image(t2i()).tokens[0].ids, base);
  auto p = t2i();
  p.lora_scales = {{"style", 8.0}};
  const auto strong = rt->text_to_image(p).tokens[0].ids;
  EXPECT_NE(strong, base);
  EXPECT_EQ(rt->loras()[0].scale, 0.0);  // restored after the call
  p.lora_scales = {{"nope", 1.0}};
  EXPECT_THROW(rt->text_to_image(p), amused::InvalidArgument);
  // Merged at scale 8 gives the run-time tokens; set_lora_scale(0) re-merges back to the model.
  lo.loras = {{golden_lora().string(), 8.0, "style"}};
  lo.merge_loras = true;
  auto merged = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), lo);
  EXPECT_EQ(merged->text_to_image(t2i()).tokens[0].ids, strong);
  merged->set_lora_scale("style", 0.0);
  EXPECT_EQ(merged->text_to_image(t2i()).tokens[0].ids, base);
  p.lora_scales = {{"style", 1.0}};
  EXPECT_THROW(merged->text_to_image(p), amused::InvalidArgument);
}

// A 24x20 striped image: big enough for random crops at tiny-a's 16 px.
fs::path make_style_image(const fs::path& dir) {
  fs::create_directories(dir);
  amused::Image im;
  im.width = 24;
  im.height = 20;
  im.pixels.resize(24 * 20 * 3);
  for (int y = 0; y < 20; ++y)
    for (int x = 0; x < 24; ++x)
      for (int k = 0; k < 3; ++k)
        im.pixels[static_cast<size_t>((y * 24 + x) * 3 + k)] =
            static_cast<uint8_t>(((x / 3 + y / 4) % 2) ? 230 : 20 + 60 * k);
  const fs::path p = dir / "style.png";
  amused::save_png(p, im);
  return p;
}

std::string lora_train_args(const fs::path& image, const fs::path& out, int steps) {
  return "train -m '" + gt::golden_path("models/tiny-a").string() + "' --instance-image '" +
         image.string() +
         "' --instance-prompt 'A mushroom in [V] style' --lora --lora-rank 4 --lora-alpha 8 "
         "--output '" +
         out.string() + "' --max-steps " + std::to_string(steps) +
         " --learning-rate 3e-2 --seed 2 --threads 1 --checkpointing-steps 2 --quiet --random-flip";
}

TEST(TrainLoraE2E, OneImageStyleRunResumesAndGenerateLoadsIt) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path image = make_style_image(tmp / "img");
  auto full =
      gt::run_cli(lora_train_args(image, tmp / "full", 4) +
                  " --validation-prompt 'A banana on the table in [V] style' --validation-steps 2");
  ASSERT_EQ(full.exit_code, 0) << full.err;
  const fs::path file = tmp / "full" / amused::io::kLoraWeightsFile;
  ASSERT_TRUE(fs::is_regular_file(file));
  EXPECT_TRUE(fs::is_regular_file(tmp / "full/validation/step-2/0.png"));
  EXPECT_TRUE(fs::is_regular_file(tmp / "full/validation/step-4/0.png"));
  EXPECT_FALSE(fs::exists(tmp / "full/transformer"));  // adapters only
  {
    auto st = amused::io::SafeTensorsFile::open(file);
    EXPECT_EQ(st->metadata().at("format"), "pt");
    EXPECT_EQ(st->metadata().at("amused_lora_alpha"), "8");
    EXPECT_EQ(st->tensors().size(), 48u);
    EXPECT_TRUE(st->tensors().count("transformer.transformer_layers.0.attn2.to_q.lora_B.weight"));
  }
  // Checkpoints hold the adapters and their optimizer state only.
  EXPECT_TRUE(fs::is_regular_file(tmp / "full/checkpoint-2" / amused::io::kLoraWeightsFile));
  EXPECT_FALSE(fs::exists(tmp / "full/checkpoint-2/transformer"));
  EXPECT_EQ(
      amused::io::load_safetensors(tmp / "full/checkpoint-2/optimizer.safetensors").size() > 0,
      true);
  // 2 steps, then --resume to 4: the same adapter as the straight run.
  auto half = gt::run_cli(lora_train_args(image, tmp / "resumed", 2));
  ASSERT_EQ(half.exit_code, 0) << half.err;
  fs::remove(tmp / "resumed" / amused::io::kLoraWeightsFile);
  auto resumed = gt::run_cli(lora_train_args(image, tmp / "resumed", 4) + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const auto a = amused::io::load_safetensors(file);
  const auto b = amused::io::load_safetensors(tmp / "resumed" / amused::io::kLoraWeightsFile);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, t] : a) EXPECT_TRUE(torch::equal(t, b.at(k))) << k;
  // amused generate --lora: scale 0 equals no LoRA; our alpha (scale 2) changes the tokens.
  auto gen = [&](const std::string& extra, const std::string& name) {
    auto r = gt::run_cli(
        "generate -m '" + gt::golden_path("models/tiny-a").string() +
        "' -p 'A mushroom in [V] style' --seed 1 --steps 6 --dtype float32 --threads 1 -o '" +
        (tmp / (name + ".png")).string() + "' --save-tokens '" + (tmp / (name + ".st")).string() +
        "' --quiet --offline " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return amused::io::load_safetensors(tmp / (name + ".st")).at("tokens");
  };
  const auto none = gen("", "none");
  const auto zero = gen("--lora '" + file.string() + ":0'", "zero");
  const auto one = gen("--lora '" + file.string() + "'", "one");
  const auto rt = gen("--lora '" + file.string() + ":1' --lora-mode runtime", "rt");
  EXPECT_TRUE(torch::equal(none, zero));
  EXPECT_FALSE(torch::equal(none, one)) << "the trained LoRA did not change any token";
  EXPECT_TRUE(torch::equal(one, rt));
  // A file that does not fit is one error line naming it.
  auto bad =
      gt::run_cli("generate -m '" + gt::golden_path("models/tiny-b").string() + "' -p x --lora '" +
                  file.string() + "' -o '" + (tmp / "bad.png").string() + "' --quiet --offline");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("error: LoRA '" + file.string() + "'"), std::string::npos) << bad.err;
}

}  // namespace
