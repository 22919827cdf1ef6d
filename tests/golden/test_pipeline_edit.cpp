// Image-to-image and inpainting parity: every pipeline/i2i and pipeline/inpaint golden through the
// public API and one of each through the CLI (the golden input image and mask written to PNG files).
#include <gtest/gtest.h>

#include <fstream>

#include "amused/image_io.h"
#include "amused/pipeline.h"
#include "pipelines/pipeline_amused.h"
#include "support/golden.h"

namespace {
using nlohmann::json;
using namespace amused::testing;

amused::Image image_from(const torch::Tensor& u8_hwc) {  // [1, H, W, C] or [H, W, C] uint8
  auto t = u8_hwc.dim() == 4 ? u8_hwc[0] : u8_hwc;
  t = t.contiguous();
  amused::Image im;
  im.height = static_cast<int>(t.size(0));
  im.width = static_cast<int>(t.size(1));
  im.channels = static_cast<int>(t.size(2));
  im.pixels.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
  return im;
}

// The golden masks are binary float [1, 1, H, W]: as an 8-bit grey image they are exactly 0 / 255.
amused::Image mask_from(const torch::Tensor& f) {
  return image_from(f[0].permute({1, 2, 0}).mul(255).round().to(torch::kUInt8));  // [1, H, W] -> [H, W, 1]
}

void fill_common(amused::GenerationParams& p, const json& args) {
  p.prompts = {args.at("prompt").get<std::string>()};
  if (args.contains("guidance_scale")) p.guidance_scale = args["guidance_scale"].get<double>();
  if (args.contains("num_inference_steps")) p.num_inference_steps = args["num_inference_steps"].get<int>();
  if (args.contains("num_images_per_prompt")) p.num_images_per_prompt = args["num_images_per_prompt"].get<int>();
  p.seed = args.at("generator").get<uint64_t>();
}

class PipelineEdit : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelineEdit, MatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const json& c = golden_case(GetParam());
  const json& args = c["call_args"];
  auto pipe = amused::Pipeline::load(golden_path(c["model_path"].get<std::string>()).string(), reference_options());
  const amused::Image image = image_from(golden_tensor(c["inputs"]["image_uint8"]));
  const bool inpaint = c["kind"] == "pipeline_inpaint";
  amused::GenerationResult r;
  if (inpaint) {
    amused::InpaintParams p;
    fill_common(p, args);
    p.image = image;
    p.strength = args.value("strength", 1.0);
    p.mask = mask_from(golden_tensor(c["inputs"]["mask_image"]));
    r = pipe->inpaint(p);
  } else {
    amused::ImageToImageParams p;
    fill_common(p, args);
    p.image = image;
    p.strength = args.value("strength", 0.5);
    r = pipe->image_to_image(p);
  }
  ASSERT_TRUE(matches_descriptor(tokens_tensor(r.tokens), c["outputs"]["final_tokens"], "final_tokens"));
  EXPECT_TRUE(matches_descriptor(images_tensor(r.images), c["outputs"]["images_uint8"], "images_uint8"));
  EXPECT_EQ(r.timings.step_s.size(), static_cast<size_t>(c["num_steps_run"].get<int>()));
}

// The VQ encoder is loaded on the first edit, not at load time nor by text-to-image; an edit after
// other work still matches the reference, and mixed precision gives its weights the same dtypes
// as loading them up front would.
TEST(PipelineEditLazyEncoder, LoadedOnFirstEditOnly) {
  AMUSED_REQUIRE_GOLDEN();
  const auto cases = golden_cases_of_kind("pipeline_i2i");
  ASSERT_FALSE(cases.empty());
  const json& c = cases.front();
  const json& args = c["call_args"];
  auto pipe = amused::Pipeline::load(golden_path(c["model_path"].get<std::string>()).string(), reference_options());
  auto& m = amused::PipelineAccess::impl(*pipe);
  EXPECT_TRUE(static_cast<bool>(m.vq_encoder_loader));
  amused::TextToImageParams t2i;
  t2i.prompts = {"a red fox"};
  t2i.num_inference_steps = 2;
  t2i.seed = 1;
  pipe->text_to_image(t2i);
  EXPECT_TRUE(static_cast<bool>(m.vq_encoder_loader)) << "text-to-image loaded the VQ encoder";
  amused::ImageToImageParams p;
  fill_common(p, args);
  p.image = image_from(golden_tensor(c["inputs"]["image_uint8"]));
  p.strength = args.value("strength", 0.5);
  const auto r = pipe->image_to_image(p);
  EXPECT_FALSE(static_cast<bool>(m.vq_encoder_loader));
  EXPECT_TRUE(matches_descriptor(tokens_tensor(r.tokens), c["outputs"]["final_tokens"], "final_tokens"));

  amused::LoadOptions bf16;
  bf16.dtype = amused::DType::BFloat16;
  auto mixed = amused::Pipeline::load(golden_path(c["model_path"].get<std::string>()).string(), bf16);
  mixed->image_to_image(p);
  for (const auto& item : amused::PipelineAccess::impl(*mixed).vqvae->named_parameters()) {
    const std::string& key = item.key();
    const torch::Tensor& param = item.value();
    const bool matrix = param.dim() >= 2 && key.rfind("quantize.", 0) != 0;
    EXPECT_EQ(param.scalar_type(), matrix ? torch::kBFloat16 : torch::kFloat32) << key;
  }
}

std::vector<std::string> edit_case_ids() {
  if (!golden_available()) return {"pipeline/i2i/a/strength05"};
  std::vector<std::string> ids;
  for (const char* kind : {"pipeline_i2i", "pipeline_inpaint"})
    for (const auto& c : golden_cases_of_kind(kind)) ids.push_back(c["id"].get<std::string>());
  return ids;
}

INSTANTIATE_TEST_SUITE_P(Golden, PipelineEdit, ::testing::ValuesIn(edit_case_ids()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param.substr(info.param.find('/') + 1);
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(EditCli, ImageToImageAndInpaintFromPngFiles) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  const std::string model = golden_path("models/tiny-a").string();
  {
    const json& c = golden_case("pipeline/i2i/a/strength09");
    amused::save_png(tmp / "in.png", image_from(golden_tensor(c["inputs"]["image_uint8"])));
    auto r = run_cli("generate --dtype float32 -m '" + model + "' -p 'an oil painting of a harbor' --init-image '" +
                     (tmp / "in.png").string() + "' --strength 0.9 --steps 10 --guidance 6 --seed 11 -o '" +
                     (tmp / "i2i.png").string() + "' --save-tokens '" + (tmp / "i2i.safetensors").string() +
                     "' --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(matches_descriptor(tokens_tensor(amused::load_token_grids(tmp / "i2i.safetensors")),
                                   c["outputs"]["final_tokens"], "cli i2i tokens"));
    auto meta = amused::read_png_text((tmp / "i2i.png").string());
    EXPECT_EQ(meta["mode"], "image-to-image");
    EXPECT_EQ(meta["init_image"], (tmp / "in.png").string());
  }
  {
    const json& c = golden_case("pipeline/inpaint/a/basic");
    amused::save_png(tmp / "in2.png", image_from(golden_tensor(c["inputs"]["image_uint8"])));
    amused::save_png(tmp / "mask.png", mask_from(golden_tensor(c["inputs"]["mask_image"])));
    auto r = run_cli("generate --dtype float32 -m '" + model + "' -p 'a yellow flower' --init-image '" + (tmp / "in2.png").string() +
                     "' --mask '" + (tmp / "mask.png").string() + "' --seed 20 -o '" + (tmp / "inp.png").string() +
                     "' --save-tokens '" + (tmp / "inp.safetensors").string() + "' --quiet");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(matches_descriptor(tokens_tensor(amused::load_token_grids(tmp / "inp.safetensors")),
                                   c["outputs"]["final_tokens"], "cli inpaint tokens"));
    auto meta = amused::read_png_text((tmp / "inp.png").string());
    EXPECT_EQ(meta["mode"], "inpaint");
    EXPECT_EQ(meta["mask"], (tmp / "mask.png").string());
  }
}

TEST(EditCli, BadInputsAreClearErrors) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  const std::string base = "generate --dtype float32 -m '" + golden_path("models/tiny-a").string() + "' -p x --steps 2 -o '" +
                           (tmp / "out.png").string() + "' ";
  amused::Image img;
  img.width = 16;
  img.height = 16;
  img.pixels.assign(16 * 16 * 3, 100);
  amused::save_png(tmp / "img.png", img);
  amused::Image wide;
  wide.width = 32;
  wide.height = 16;
  wide.pixels.assign(32 * 16 * 3, 255);
  amused::save_png(tmp / "wide.png", wide);
  amused::Image black = img;
  std::fill(black.pixels.begin(), black.pixels.end(), 0);
  amused::save_png(tmp / "black.png", black);
  { std::ofstream(tmp / "junk.png") << "not an image"; }
  {
    std::ifstream in(tmp / "img.png", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(tmp / "cut.png", std::ios::binary) << bytes.substr(0, bytes.size() - 20);
  }
  struct Case {
    std::string args, needle;
  } cases[] = {
      {"--init-image '" + (tmp / "missing.png").string() + "'", "does not exist"},
      {"--init-image '" + (tmp / "junk.png").string() + "'", "not a PNG, JPEG or BMP"},
      {"--init-image '" + (tmp / "cut.png").string() + "'", "cut.png"},
      {"--init-image '" + (tmp / "img.png").string() + "' --mask '" + (tmp / "wide.png").string() + "'",
       "aspect ratio"},
      {"--init-image '" + (tmp / "img.png").string() + "' --mask '" + (tmp / "black.png").string() + "'",
       "nothing to inpaint"},
      {"--init-image '" + (tmp / "img.png").string() + "' --strength 1.5", "strength"},
      {"--init-image '" + (tmp / "img.png").string() + "' --strength -0.1", "strength"},
      {"--mask '" + (tmp / "img.png").string() + "'", "--init-image"},
  };
  for (const auto& cs : cases) {
    auto r = run_cli(base + cs.args);
    EXPECT_NE(r.exit_code, 0) << cs.args;
    EXPECT_NE(r.err.find(cs.needle), std::string::npos) << cs.args << "\n" << r.err;
    EXPECT_FALSE(std::filesystem::exists(tmp / "out.png")) << cs.args;
  }
}

}  // namespace
