// AmusedScheduler: config parsing, argument errors, the mask-count schedule, generator helper.
#include <gtest/gtest.h>

#include "amused/error.h"
#include "schedulers/scheduling_amused.h"

using amused::AmusedScheduler;
using amused::AmusedSchedulerConfig;
using amused::ConfigError;
using amused::InvalidArgument;
using amused::make_cpu_generator;
using amused::TemperatureSchedule;
using nlohmann::json;

namespace {

AmusedScheduler make_scheduler(const std::string& schedule = "cosine", int64_t mask_id = 39) {
  AmusedSchedulerConfig c;
  c.mask_token_id = mask_id;
  c.masking_schedule = schedule;
  return AmusedScheduler(c);
}

// Tokens still masked after each step when every step re-masks exactly mask_len tokens, starting
// from an all-masked grid of seq_len tokens (what step does, ties aside).
std::vector<int64_t> masked_counts(const AmusedScheduler& s, int64_t seq_len) {
  std::vector<int64_t> counts;
  int64_t unknown = seq_len;
  for (int64_t i = 0; i < s.timesteps.size(0); ++i) {
    const int64_t t = s.timesteps[i].item<int64_t>();
    if (t == 0) {
      unknown = 0;
    } else {
      const torch::Tensor unknown_map = (torch::arange(seq_len) < unknown).unsqueeze(0);  // [1, L]
      unknown = s.mask_len(t, unknown_map).item<int64_t>();
    }
    counts.push_back(unknown);
  }
  return counts;
}

}  // namespace

TEST(SchedulerConfig, FromJsonAndBack) {
  const json j = {{"_class_name", "AmusedScheduler"},
                  {"_diffusers_version", "0.25.0"},
                  {"mask_token_id", 8255},
                  {"masking_schedule", "linear"}};
  const auto c = AmusedSchedulerConfig::from_json(j, "scheduler_config.json");
  EXPECT_EQ(c.mask_token_id, 8255);
  EXPECT_EQ(c.masking_schedule, "linear");
  const auto back = AmusedSchedulerConfig::from_json(c.to_json(), "round trip");
  EXPECT_EQ(back.mask_token_id, 8255);
  EXPECT_EQ(back.masking_schedule, "linear");
  EXPECT_EQ(c.to_json()["_class_name"], "AmusedScheduler");
  // Default schedule.
  EXPECT_EQ(AmusedSchedulerConfig::from_json({{"mask_token_id", 1}}, "x").masking_schedule,
            "cosine");
}

TEST(SchedulerConfig, Errors) {
  EXPECT_THROW(AmusedSchedulerConfig::from_json({{"masking_schedule", "cosine"}}, "s.json"),
               ConfigError);
  EXPECT_THROW(AmusedSchedulerConfig::from_json(
                   {{"_class_name", "DDPMScheduler"}, {"mask_token_id", 1}}, "s.json"),
               ConfigError);
  try {
    AmusedSchedulerConfig::from_json({{"mask_token_id", 1}, {"masking_schedule", "sqrt"}},
                                     "s.json");
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("s.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sqrt"), std::string::npos) << msg;
  }
  AmusedSchedulerConfig bad;
  bad.masking_schedule = "sqrt";
  EXPECT_THROW(AmusedScheduler{bad}, InvalidArgument);
  EXPECT_THROW(make_scheduler().with_masking_schedule("sqrt"), InvalidArgument);
}

TEST(SchedulerUnit, SetTimestepsArguments) {
  AmusedScheduler s = make_scheduler();
  EXPECT_THROW(s.set_timesteps(0), InvalidArgument);
  EXPECT_THROW(s.set_timesteps(-3), InvalidArgument);
  EXPECT_THROW(s.set_timesteps(12, TemperatureSchedule::list({1.0, 0.5, 0.2})), InvalidArgument);
  EXPECT_THROW(s.set_timesteps(3, TemperatureSchedule::list({})), InvalidArgument);
  EXPECT_THROW(TemperatureSchedule::from_json(json("hot")), InvalidArgument);
  EXPECT_THROW(TemperatureSchedule::from_json(json::array({1, "x"})), InvalidArgument);

  // One value per step is taken as is.
  s.set_timesteps(3, TemperatureSchedule::list({3.0, 1.0, 0.25}));
  EXPECT_TRUE(torch::equal(s.temperatures, torch::tensor({3.0f, 1.0f, 0.25f})));
  EXPECT_TRUE(torch::equal(s.timesteps, torch::tensor({int64_t{2}, int64_t{1}, int64_t{0}})));
  // Two values are a (start, end) pair, as in the reference.
  s.set_timesteps(5, TemperatureSchedule::list({2.0, 0.0}));
  EXPECT_TRUE(torch::equal(s.temperatures, torch::linspace(2.0, 0.0, 5)));
  EXPECT_EQ(s.temperatures.scalar_type(), torch::kFloat32);
}

TEST(SchedulerUnit, StepArguments) {
  AmusedScheduler s = make_scheduler();
  at::Generator g = make_cpu_generator(0);
  const torch::Tensor logits = torch::randn({1, 32, 4, 4});
  const torch::Tensor sample = torch::full({1, 4, 4}, 39, torch::kLong);
  // set_timesteps not called yet.
  EXPECT_THROW(s.step(logits, 3, sample, g), InvalidArgument);
  EXPECT_THROW(s.add_noise(sample, 3, g), InvalidArgument);
  s.set_timesteps(4);
  EXPECT_THROW(s.step(logits, 4, sample, g), InvalidArgument);  // not in [3, 2, 1, 0]
  EXPECT_THROW(s.add_noise(sample, -1, g), InvalidArgument);
  EXPECT_THROW(s.step(logits, 3, torch::full({1, 4, 5}, 39, torch::kLong), g), InvalidArgument);
  EXPECT_THROW(s.step(logits, 3, sample.to(torch::kInt32), g), InvalidArgument);
  EXPECT_THROW(s.step(torch::randn({1, 16}), 3, torch::full({1, 16}, 39, torch::kLong), g),
               InvalidArgument);
  const torch::Tensor tokens = torch::zeros({1, 4, 4}, torch::kLong);
  EXPECT_THROW(s.step_with_noise(logits, 3, sample, tokens, torch::Tensor()), InvalidArgument);
  EXPECT_THROW(s.step_with_noise(logits, 3, sample, tokens, torch::zeros({1, 15})),
               InvalidArgument);
  EXPECT_THROW(s.step_with_noise(logits, 3, sample, tokens + 32, torch::zeros({1, 16})),
               InvalidArgument);
  EXPECT_THROW(s.step_with_noise(logits, 3, sample, tokens.reshape({1, 16}).narrow(1, 0, 15),
                                 torch::zeros({1, 16})),
               InvalidArgument);
  // A known token outside the codebook (e.g. a scheduler config for another model).
  EXPECT_THROW(s.step(logits, 3, torch::full({1, 4, 4}, 35, torch::kLong), g), InvalidArgument);
  // The flat [B, L, K] form is accepted.
  const auto r =
      s.step(logits.reshape({1, 32, 16}).permute({0, 2, 1}), 3, sample.reshape({1, 16}), g);
  EXPECT_EQ(r.prev_sample.sizes(), (std::vector<int64_t>{1, 16}));
}

// The documented counts of still-masked tokens for the 12 default cosine steps (reference doc §6,
// float32 math: step 8 leaves 127 / 511, not 128 / 512, because fp32 cos(pi/3) < 0.5).
TEST(SchedulerUnit, CosineMaskCountsTwelveSteps) {
  AmusedScheduler s = make_scheduler();
  s.set_timesteps(12);
  EXPECT_EQ(masked_counts(s, 256),
            (std::vector<int64_t>{253, 247, 236, 221, 203, 181, 155, 127, 97, 66, 33, 0}));
  EXPECT_EQ(masked_counts(s, 1024),
            (std::vector<int64_t>{1015, 989, 946, 886, 812, 724, 623, 511, 391, 265, 133, 0}));
}

TEST(SchedulerUnit, MaskLenClamps) {
  AmusedScheduler s = make_scheduler("linear");
  s.set_timesteps(4);
  // Never more than (#unknown - 1), never fewer than 1 (even with nothing unknown: a reference
  // quirk, one known token is re-masked).
  const torch::Tensor unknown =
      torch::tensor({{true, true, false, false, false, false, false, false},
                     {false, false, false, false, false, false, false, false}});
  const torch::Tensor ml = s.mask_len(3, unknown);  // linear: floor(8 * 0.75) = 6
  EXPECT_TRUE(torch::equal(ml, torch::tensor({{int64_t{1}}, {int64_t{1}}})));
  const torch::Tensor all = torch::ones({1, 8}, torch::kBool);
  EXPECT_EQ(s.mask_len(3, all).item<int64_t>(), 6);
  EXPECT_EQ(s.mask_len(3, all, 0.5).item<int64_t>(), 3);
  EXPECT_EQ(s.mask_len(1, all).item<int64_t>(), 2);  // floor(8 * 0.25)
}

TEST(SchedulerUnit, WithMaskingScheduleIsACopy) {
  AmusedScheduler s = make_scheduler("cosine");
  s.set_timesteps(12);
  AmusedScheduler lin = s.with_masking_schedule("linear");
  EXPECT_EQ(s.config().masking_schedule, "cosine");
  EXPECT_EQ(lin.config().masking_schedule, "linear");
  EXPECT_TRUE(torch::equal(lin.timesteps, s.timesteps));
  // timestep 6 of 12 is step index 5: ratio 6/12.
  EXPECT_NEAR(lin.mask_ratio(6).item<float>(), 0.5f, 1e-7);
  EXPECT_NEAR(s.mask_ratio(6).item<float>(), std::cos(M_PI / 4), 1e-6);
}

TEST(SchedulerUnit, GeneratorIsSeededAndReproducible) {
  at::Generator a = make_cpu_generator(1234);
  at::Generator b = make_cpu_generator(1234);
  at::Generator c = make_cpu_generator(1235);
  const torch::Tensor ra = torch::rand({8}, a);
  EXPECT_TRUE(torch::equal(ra, torch::rand({8}, b)));
  EXPECT_FALSE(torch::equal(ra, torch::rand({8}, c)));
  EXPECT_EQ(a.current_seed(), 1234u);
}

// The same draws give the same step whether they come from the generator or are passed in.
TEST(SchedulerUnit, StepWithNoiseMatchesStep) {
  AmusedScheduler s = make_scheduler();
  s.set_timesteps(6, TemperatureSchedule::scalar(3.0));
  torch::manual_seed(3);
  const torch::Tensor logits = torch::randn({2, 32, 4, 4});
  torch::Tensor sample = torch::randint(0, 32, {2, 4, 4});
  sample.index_put_({torch::rand({2, 4, 4}) < 0.6}, 39);
  at::Generator g = make_cpu_generator(9);
  const auto r = s.step(logits, 3, sample, g);
  const auto replay = s.step_with_noise(logits, 3, sample, r.pred_original_sample, r.gumbel_noise);
  EXPECT_TRUE(torch::equal(r.prev_sample, replay.prev_sample));
  EXPECT_TRUE(torch::equal(r.masking, replay.masking));
  // Known tokens are kept; re-masked ones were unknown.
  const torch::Tensor known = sample != 39;
  EXPECT_TRUE(
      torch::equal(r.pred_original_sample.masked_select(known), sample.masked_select(known)));
  EXPECT_EQ((r.prev_sample == 39).sum().item<int64_t>(), r.mask_len.sum().item<int64_t>());
}
