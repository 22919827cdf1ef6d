// Text-to-image parity: every pipeline/t2i golden through the public API (final tokens exactly,
// images within the manifest tolerance), and the CLI on one of them.
#include <gtest/gtest.h>

#include "amused/image_io.h"
#include "amused/pipeline.h"
#include "pipelines/pipeline_amused.h"
#include "support/golden.h"

namespace {
using nlohmann::json;
using namespace amused::testing;

std::vector<std::string> as_list(const json& v) {
  if (v.is_string()) return {v.get<std::string>()};
  return v.get<std::vector<std::string>>();
}

// Reference call arguments -> our parameters.
amused::TextToImageParams params_from(const json& args) {
  amused::TextToImageParams p;
  p.prompts = as_list(args.at("prompt"));
  if (args.contains("negative_prompt")) p.negative_prompts = as_list(args["negative_prompt"]);
  if (args.contains("guidance_scale")) p.guidance_scale = args["guidance_scale"].get<double>();
  if (args.contains("num_inference_steps")) p.num_inference_steps = args["num_inference_steps"].get<int>();
  if (args.contains("num_images_per_prompt")) p.num_images_per_prompt = args["num_images_per_prompt"].get<int>();
  if (args.contains("height")) p.height = args["height"].get<int>();
  if (args.contains("width")) p.width = args["width"].get<int>();
  if (args.contains("micro_conditioning_aesthetic_score"))
    p.aesthetic_score = args["micro_conditioning_aesthetic_score"].get<double>();
  if (args.contains("micro_conditioning_crop_coord")) {
    auto c = args["micro_conditioning_crop_coord"].get<std::vector<int>>();
    p.crop_coord = {c.at(0), c.at(1)};
  }
  if (args.contains("temperature")) {
    const auto& t = args["temperature"];
    if (t.is_number()) {
      p.temperature = amused::Temperature::single(t.get<double>());
    } else {
      // The reference reads a list as the pair (first, second).
      auto v = t.get<std::vector<double>>();
      p.temperature = amused::Temperature::pair(v.at(0), v.at(1));
    }
  }
  p.seed = args.at("generator").get<uint64_t>();
  return p;
}

class PipelineT2I : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelineT2I, MatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const json& c = golden_case(GetParam());
  auto pipe = amused::Pipeline::load(golden_path(c["model_path"].get<std::string>()).string(), reference_options());
  auto result = pipe->text_to_image(params_from(c["call_args"]));
  auto tokens = tokens_tensor(result.tokens);
  ASSERT_TRUE(matches_descriptor(tokens, c["outputs"]["final_tokens"], "final_tokens"));
  EXPECT_TRUE(matches_descriptor(images_tensor(result.images), c["outputs"]["images_uint8"], "images_uint8"));
  // The float images: decode the final tokens through the same decoder the pipeline uses.
  amused::Timings t;
  torch::NoGradGuard g;
  auto& impl = amused::PipelineAccess::impl(*pipe);
  auto images = impl.decode(tokens, t).permute({0, 2, 3, 1});  // [B, 3, H, W] -> [B, H, W, 3]
  EXPECT_TRUE(matches_descriptor(images, c["outputs"]["images_np"], "images_np"));
  EXPECT_EQ(result.seed, c["call_args"]["generator"].get<uint64_t>());
  EXPECT_EQ(result.timings.step_s.size(), static_cast<size_t>(c["num_steps_run"].get<int>()));
}

std::vector<std::string> t2i_case_ids() {
  std::vector<std::string> ids;
  if (!golden_available()) return {"pipeline/t2i/a/basic"};
  for (const auto& c : golden_cases_of_kind("pipeline_t2i")) ids.push_back(c["id"].get<std::string>());
  return ids;
}

INSTANTIATE_TEST_SUITE_P(Golden, PipelineT2I, ::testing::ValuesIn(t2i_case_ids()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param.substr(info.param.rfind('/') + 1);
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(PipelineT2IErrors, RejectsBadParameters) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(golden_path("models/tiny-a").string(), reference_options());
  amused::TextToImageParams p;
  EXPECT_THROW(pipe->text_to_image(p), amused::InvalidArgument);  // no prompt
  p.prompts = {"a", "b"};
  p.negative_prompts = {"x", "y", "z"};
  EXPECT_THROW(pipe->text_to_image(p), amused::InvalidArgument);
  p.negative_prompts = {};
  p.num_inference_steps = 0;
  EXPECT_THROW(pipe->text_to_image(p), amused::InvalidArgument);
  p.num_inference_steps = 2;
  p.width = 21;  // tiny-a's VQ scale factor is 2
  EXPECT_THROW(pipe->text_to_image(p), amused::InvalidArgument);
}

TEST(PipelineT2IErrors, ProgressCallbackCancels) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(golden_path("models/tiny-a").string(), reference_options());
  amused::TextToImageParams p;
  p.prompts = {"a cat"};
  p.seed = 1;
  int calls = 0;
  p.progress = [&](const amused::StepInfo& s) {
    ++calls;
    EXPECT_EQ(s.num_steps, 12);
    return s.step < 3;
  };
  EXPECT_THROW(pipe->text_to_image(p), amused::Cancelled);
  EXPECT_EQ(calls, 3);
}

TEST(GenerateCli, WritesPngTokensAndMetadata) {
  AMUSED_REQUIRE_GOLDEN();
  const json& c = golden_case("pipeline/t2i/a/nipp2");
  TempDir tmp;
  const std::string cmd = "generate --dtype float32 -m '" + golden_path("models/tiny-a").string() +
                          "' -p 'a dog wearing a hat' --num-images 2 --steps 6 --seed 4 -o '" +
                          (tmp / "img.png").string() + "' --save-tokens '" + (tmp / "t.safetensors").string() +
                          "' --json";
  auto r = run_cli(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j["seed"], 4);
  ASSERT_EQ(j["outputs"].size(), 2u);
  EXPECT_TRUE(std::filesystem::exists(tmp / "img-0.png"));
  EXPECT_TRUE(std::filesystem::exists(tmp / "img-1.png"));
  auto grids = amused::load_token_grids(tmp / "t.safetensors");
  EXPECT_TRUE(matches_descriptor(tokens_tensor(grids), c["outputs"]["final_tokens"], "cli final_tokens"));
  auto meta = amused::read_png_text((tmp / "img-1.png").string());
  EXPECT_EQ(meta["prompt"], "a dog wearing a hat");
  EXPECT_EQ(meta["seed"], "4");
  EXPECT_EQ(meta["steps"], "6");
}

TEST(GenerateCli, BadInputsGiveOneClearError) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  const std::string m = "generate --dtype float32 -m '" + golden_path("models/tiny-a").string() + "' ";
  struct Case {
    std::string args, needle;
  } cases[] = {
      {"-p x --bogus-flag", "bogus"},
      {"-p a -p b -n x -n y -n z", "negative"},
      {"-p x --width 21", "multiple"},
      {"-p x --steps 0", "steps"},
      {"-p x -o '" + (tmp / "nope" / "x.png").string() + "'", "does not exist"},
  };
  for (const auto& cs : cases) {
    auto r = run_cli(m + cs.args + " -o '" + (tmp / "x.png").string() + "'");
    if (cs.args.find("nope") != std::string::npos) r = run_cli(m + cs.args);
    EXPECT_NE(r.exit_code, 0) << cs.args;
    EXPECT_NE(r.err.find(cs.needle), std::string::npos) << cs.args << "\n" << r.err;
    EXPECT_FALSE(std::filesystem::exists(tmp / "x.png")) << cs.args;
  }
}

}  // namespace
