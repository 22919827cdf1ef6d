// The public API as its users meet it: what amused.h and pipeline.h promise.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "amused/amused.h"
#include "core/threads.h"
#include "pipelines/pipeline_amused.h"
#include "support/golden.h"

namespace gt = amused::testing;

// amused.h: a thread count chosen with set_threads() before loading is kept by the load (a load
// used to apply all physical cores regardless); an explicit LoadOptions::threads still wins.
TEST(PublicApi, SetThreadsBeforeLoadIsKept) {
  AMUSED_REQUIRE_GOLDEN();
  const std::string model = gt::golden_path("models/tiny-a").string();
  ASSERT_EQ(amused::set_threads(1), 1);
  auto pipe = amused::Pipeline::load(model, gt::reference_options());
  EXPECT_EQ(pipe->summary().threads, 1);
  EXPECT_EQ(at::get_num_threads(), 1);

  amused::LoadOptions two = gt::reference_options();
  two.threads = 2;
  auto other = amused::Pipeline::load(model, two);
  EXPECT_EQ(other->summary().threads, 2);
  EXPECT_EQ(at::get_num_threads(), 2);

  // And a later load without a count goes back to the one the caller chose.
  auto again = amused::Pipeline::load(model, gt::reference_options());
  EXPECT_EQ(again->summary().threads, 1);
  amused::set_threads(0);  // all physical cores again, for tests run after this one in-process
}

// Without set_threads(), a load applies all physical cores, as before.
TEST(PublicApi, LoadWithoutSetThreadsUsesThePhysicalCores) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), gt::reference_options());
  EXPECT_EQ(pipe->summary().threads, amused::physical_core_count());
}

// pipeline.h: an InpaintParams cannot be passed where an ImageToImageParams is expected (that
// sliced the mask off silently); each keeps the reference's default strength.
TEST(PublicApi, InpaintParamsIsNotAnImageToImageParams) {
  static_assert(!std::is_convertible_v<const amused::InpaintParams&, const amused::ImageToImageParams&>);
  static_assert(!std::is_base_of_v<amused::ImageToImageParams, amused::InpaintParams>);
  EXPECT_EQ(amused::InpaintParams{}.strength, 1.0);
  EXPECT_EQ(amused::ImageToImageParams{}.strength, 0.5);
}

// types.h: the API takes DType, Device and MaskingSchedule; the text forms parse at the edges and
// round-trip, and an unknown one is an InvalidArgument that lists what is accepted.
TEST(PublicApi, DTypeDeviceAndScheduleParseAndPrint) {
  using amused::DType;
  for (DType d : {DType::Auto, DType::Float32, DType::BFloat16, DType::Float16})
    EXPECT_EQ(amused::parse_dtype(amused::to_string(d)), d);
  EXPECT_EQ(amused::parse_dtype("BF16"), DType::BFloat16);
  EXPECT_EQ(amused::parse_dtype("fp16"), DType::Float16);
  EXPECT_EQ(amused::parse_dtype("half"), DType::Float16);
  EXPECT_EQ(amused::parse_dtype("fp32"), DType::Float32);
  try {
    amused::parse_dtype("int8");
    ADD_FAILURE() << "int8 parsed";
  } catch (const amused::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'int8'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bfloat16"), std::string::npos) << e.what();
  }

  using amused::Device;
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("CUDA"), Device::cuda());
  EXPECT_EQ(Device::parse("cuda:1"), Device::cuda(1));
  EXPECT_EQ(Device::parse("cuda:1").str(), "cuda:1");
  EXPECT_EQ(Device::cuda().str(), "cuda");
  EXPECT_EQ(Device{}.str(), "cpu");
  EXPECT_TRUE(Device::parse("cuda:0").is_cuda());
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1x", "cuda:99999999", "mps", ""})
    EXPECT_THROW(Device::parse(bad), amused::InvalidArgument) << bad;

  using amused::MaskingSchedule;
  for (MaskingSchedule m : {MaskingSchedule::FromConfig, MaskingSchedule::Cosine, MaskingSchedule::Linear})
    EXPECT_EQ(amused::parse_masking_schedule(amused::to_string(m)), m);
  EXPECT_EQ(amused::parse_masking_schedule("Linear"), MaskingSchedule::Linear);
  EXPECT_THROW(amused::parse_masking_schedule("sqrt"), amused::InvalidArgument);
}

// The summary reports the resolved types: auto becomes the format the model runs in, the schedule
// is the scheduler config's.
TEST(PublicApi, SummaryReportsResolvedTypes) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), gt::reference_options());
  EXPECT_EQ(pipe->summary().dtype, amused::DType::Float32);
  EXPECT_EQ(pipe->summary().device, amused::Device::cpu());
  EXPECT_NE(pipe->summary().masking_schedule, amused::MaskingSchedule::FromConfig);
  amused::LoadOptions automatic;
  automatic.dtype = amused::DType::Auto;
  auto chosen = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), automatic);
  EXPECT_NE(chosen->summary().dtype, amused::DType::Auto);
  EXPECT_NE(chosen->summary().dtype, amused::DType::Float16);  // the CPU never runs float16
}

// Prompts are padded to the tokenizer's model_max_length, as diffusers' pipeline does: a small
// text encoder trained with 24 positions runs on 24 tokens, not CLIP-L's 77.
TEST(PublicApi, PromptsArePaddedToTheTokenizersLength) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const auto model = gt::link_golden_model("models/tiny-a", tmp / "model");
  const auto cfg_path = model / "tokenizer" / "tokenizer_config.json";
  nlohmann::json cfg;
  std::ifstream(cfg_path) >> cfg;
  cfg["model_max_length"] = 16;
  std::filesystem::remove(cfg_path);
  std::ofstream(cfg_path) << cfg.dump(2);

  auto pipe = amused::Pipeline::load(model.string(), gt::reference_options());
  amused::Timings t;
  const auto e = amused::PipelineAccess::impl(*pipe).encode_prompts({"a cat", "a red apple"}, t);
  EXPECT_EQ(e.encoder_hidden_states.sizes(), (std::vector<int64_t>{2, 16, 32}));
  amused::TextToImageParams p;
  p.prompts = {"a cat"};
  p.num_inference_steps = 2;
  p.seed = 0;
  EXPECT_EQ(pipe->text_to_image(p).images.size(), 1u);
}
