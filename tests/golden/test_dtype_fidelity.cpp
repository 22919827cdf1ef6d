// Faithfulness of the 16-bit CPU path (bfloat16), fed the reference's own per-step inputs and random
// draws (the pipeline goldens' `teacher` data): transformer logits NMSE against the float32
// reference and the share of sampled tokens equal to the reference's at every step.
#include <gtest/gtest.h>

#include "amused/pipeline.h"
#include "core/config.h"
#include "io/state_dict.h"
#include "models/uvit_2d.h"
#include "nn/cond_cache.h"
#include "nn/execution.h"
#include "pipelines/components.h"
#include "pipelines/pipeline_amused.h"
#include "support/golden.h"

namespace {
using nlohmann::json;
using namespace amused::testing;

double nmse(const torch::Tensor& a, const torch::Tensor& ref) {
  auto r = ref.to(torch::kFloat64);
  return (a.to(torch::kFloat64) - r).pow(2).sum().item<double>() / r.pow(2).sum().item<double>();
}

struct Fidelity {
  double worst_nmse = 0;
  double worst_step_agreement = 1;
  int64_t tokens = 0, equal = 0;
  int64_t sampled = 0, sampled_equal = 0;  // positions still masked at the step's input
};

// Replays every step of a t2i golden with `dtype` weights: our logits for the teacher's inputs, the
// scheduler step with a generator consumed exactly like the reference's.
Fidelity replay(const json& c, const std::string& dtype) {
  amused::LoadOptions lo;
  lo.dtype = amused::parse_dtype(dtype);
  auto pipe = amused::Pipeline::load(golden_path(c["model_path"].get<std::string>()).string(), lo);
  auto& m = amused::PipelineAccess::impl(*pipe);
  const json& t = c["teacher"];
  const json& args = c["call_args"];
  const double g = args.value("guidance_scale", 10.0);
  const bool cfg = g > 1.0;
  auto ehs = golden_tensor(t["cond_encoder_hidden_states"]).to(m.dtype);
  auto pooled = golden_tensor(t["cond_pooled_text_emb"]).to(m.dtype);
  auto micro = golden_tensor(t["cond_micro_conds"]).to(m.dtype);
  auto samples = golden_tensor(t["step_sample_in"]);
  auto raw = golden_tensor(t["step_transformer_out"]);
  auto preds = golden_tensor(t["step_pred_original_sample"]);
  auto timesteps = golden_tensor(t["step_timesteps"]);
  const int steps = static_cast<int>(samples.size(0));
  const int n = args.value("num_inference_steps", 12);
  amused::AmusedScheduler scheduler(m.scheduler_config);
  amused::Temperature temp = amused::Temperature::pair(2, 0);
  if (args.contains("temperature")) {
    const auto& tv = args["temperature"];
    temp = tv.is_number() ? amused::Temperature::single(tv.get<double>())
                          : amused::Temperature::pair(tv[0].get<double>(), tv[1].get<double>());
  }
  scheduler.set_timesteps(n, amused::to_scheduler_temperature(temp));
  at::Generator gen = amused::make_cpu_generator(args["generator"].get<uint64_t>());
  Fidelity f;
  amused::nn::ExecutionScope inference(amused::nn::ExecutionMode::kInference);  // as the pipeline runs
  amused::nn::ConditioningCache cache;
  for (int s = 0; s < steps; ++s) {
    auto sample = samples[s];
    auto input = cfg ? torch::cat({sample, sample}) : sample;
    auto logits = m.transformer->forward(input, ehs, pooled, micro).to(torch::kFloat32);
    f.worst_nmse = std::max(f.worst_nmse, nmse(logits, raw[s]));
    if (cfg) {
      auto ch = logits.chunk(2);
      logits = ch[0] + g * (ch[1] - ch[0]);
    }
    auto out = scheduler.step(logits, timesteps[s].item<int64_t>(), sample, gen);
    const auto same = out.pred_original_sample.eq(preds[s]);
    const double agree = same.to(torch::kFloat64).mean().item<double>();
    f.worst_step_agreement = std::min(f.worst_step_agreement, agree);
    f.tokens += same.numel();
    f.equal += same.sum().item<int64_t>();
    const auto unknown = sample.eq(m.scheduler_config.mask_token_id);
    f.sampled += unknown.sum().item<int64_t>();
    f.sampled_equal += same.logical_and(unknown).sum().item<int64_t>();
  }
  return f;
}

TEST(DtypeFidelity, Float32ReplayIsExact) {
  AMUSED_REQUIRE_GOLDEN();
  for (const auto& c : golden_cases_of_kind("pipeline_t2i")) {
    auto f = replay(c, "float32");
    EXPECT_LT(f.worst_nmse, 1e-10) << c["id"];
    EXPECT_EQ(f.equal, f.tokens) << c["id"];
  }
}

TEST(DtypeFidelity, BFloat16TokensAndLogits) {
  AMUSED_REQUIRE_GOLDEN();
  int64_t tokens = 0, equal = 0;
  for (const auto& c : golden_cases_of_kind("pipeline_t2i")) {
    auto f = replay(c, "bfloat16");
    std::printf("%-40s nmse %.2e  worst step %.4f  all %lld/%lld  sampled %lld/%lld\n",
                c["id"].get<std::string>().c_str(), f.worst_nmse, f.worst_step_agreement,
                static_cast<long long>(f.equal), static_cast<long long>(f.tokens),
                static_cast<long long>(f.sampled_equal), static_cast<long long>(f.sampled));
    EXPECT_LT(f.worst_nmse, 1e-3) << c["id"];
    tokens += f.tokens;
    equal += f.equal;
  }
  EXPECT_GE(static_cast<double>(equal) / tokens, 0.99);
}

}  // namespace

namespace {

TEST(DtypeFidelity, BFloat16DecodedImages) {
  AMUSED_REQUIRE_GOLDEN();
  amused::LoadOptions lo;
  lo.dtype = amused::DType::BFloat16;
  for (const auto& c : golden_cases_of_kind("pipeline_t2i")) {
    auto pipe = amused::Pipeline::load(golden_path(c["model_path"].get<std::string>()).string(), lo);
    amused::Timings t;
    amused::nn::ExecutionScope inference(amused::nn::ExecutionMode::kInference);
    auto tokens = golden_tensor(c["outputs"]["final_tokens"]);
    auto& impl = amused::PipelineAccess::impl(*pipe);
    auto images = impl.decode(tokens, t).permute({0, 2, 3, 1});  // [B, 3, H, W] -> [B, H, W, 3]
    const double e = nmse(images, golden_tensor(c["outputs"]["images_np"]));
    EXPECT_LT(e, 1e-3) << c["id"];
  }
}

// Full-size amused-256 transformer, random N(0, 0.02) weights: bfloat16 mixed precision against
// float32 logits.
TEST(DtypeFidelitySlow, FullSizeTransformerLogits) {
  AMUSED_REQUIRE_GOLDEN();
  auto cfg = amused::models::UVit2DConfig::from_json(
      amused::read_json_file(golden_path("full-configs/amused-256/transformer/config.json")), "config");
  amused::models::UVit2DModel f32(cfg), mixed(cfg);
  amused::nn::ExecutionScope inference(amused::nn::ExecutionMode::kInference);
  torch::manual_seed(0);
  for (auto& p : f32->parameters()) p.normal_(0, 0.02);
  auto src = f32->named_parameters();
  for (auto& p : mixed->named_parameters()) p.value().copy_(src[p.key()]);
  amused::io::convert_parameters(*mixed, amused::precision_load_options(*mixed, amused::Precision::kMixedBFloat16,
                                                                        torch::kCPU));
  auto ids = torch::randint(0, cfg.codebook_size, {2, 16, 16});
  ids.index_put_({ids.lt(cfg.codebook_size / 2)}, cfg.vocab_size - 1);  // about half masked
  auto ehs = torch::randn({2, 77, cfg.encoder_hidden_size});
  auto pooled = torch::randn({2, cfg.cond_embed_dim});
  auto micro = torch::tensor({256.f, 256.f, 0.f, 0.f, 6.f}).unsqueeze(0).expand({2, 5});
  auto ref = f32->forward(ids, ehs, pooled, micro);
  auto got = mixed->forward(ids, ehs, pooled, micro);
  const double e = nmse(got, ref);
  std::printf("full-size amused-256 logits NMSE bfloat16-mixed vs float32: %.3e\n", e);
  EXPECT_LT(e, 1e-3);
}

}  // namespace
