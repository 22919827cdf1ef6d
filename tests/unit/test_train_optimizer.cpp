// Unit tests of the training optimisation pieces: diffusers' learning-rate lambdas (values derived
// by hand from diffusers v0.27.2 optimization.py), the weight-decay grouping, AdamW's first step,
// set-to-none zero_grad, global-norm clipping and diffusers' EMAModel step semantics.
#include <gtest/gtest.h>

#include <cmath>

#include "amused/error.h"
#include "training/optimizer.h"

namespace {

using namespace amused::training;

// A module whose parameter names exercise the no-decay substrings.
struct ToyImpl : torch::nn::Module {
  ToyImpl() {
    using torch::nn::LayerNormOptions;
    // proj.weight: decay; proj.bias: none
    proj = register_module("proj", torch::nn::Linear(2, 2));
    // layer_norm.weight, layer_norm.bias: none
    layer_norm = register_module("layer_norm", torch::nn::LayerNorm(LayerNormOptions({2})));
    // embeddings.weight: none
    embeddings = register_module("embeddings", torch::nn::Embedding(3, 2));
    // norm.weight: decay (no substring matches); norm.bias: none
    norm = register_module("norm", torch::nn::LayerNorm(LayerNormOptions({2})));
    frozen = register_parameter("frozen", torch::ones({2}), /*requires_grad=*/false);
  }
  torch::nn::Linear proj{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr}, norm{nullptr};
  torch::nn::Embedding embeddings{nullptr};
  torch::Tensor frozen;
};
TORCH_MODULE(Toy);

TEST(TrainLrSchedule, Constant) {
  for (int64_t step : {0, 1, 7, 1000})
    EXPECT_DOUBLE_EQ(lr_at(step, 3e-4, LrSchedule::kConstant, 500, 1000), 3e-4);
}

TEST(TrainLrSchedule, ConstantWithWarmup) {
  const auto s = LrSchedule::kConstantWithWarmup;
  EXPECT_DOUBLE_EQ(lr_at(0, 1.0, s, 4, 100), 0.0);  // the first update runs at lr 0
  EXPECT_DOUBLE_EQ(lr_at(1, 1.0, s, 4, 100), 0.25);
  EXPECT_DOUBLE_EQ(lr_at(3, 1.0, s, 4, 100), 0.75);
  EXPECT_DOUBLE_EQ(lr_at(4, 1.0, s, 4, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(500, 1.0, s, 4, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(0, 2e-4, s, 0, 100), 2e-4);  // no warm-up
}

TEST(TrainLrSchedule, Linear) {
  const auto s = LrSchedule::kLinear;
  EXPECT_DOUBLE_EQ(lr_at(0, 1.0, s, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(5, 1.0, s, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(10, 1.0, s, 10, 110), 1.0);  // (110 - 10) / 100
  EXPECT_DOUBLE_EQ(lr_at(60, 1.0, s, 10, 110), 0.5);  // (110 - 60) / 100
  EXPECT_DOUBLE_EQ(lr_at(109, 1.0, s, 10, 110), 0.01);
  EXPECT_DOUBLE_EQ(lr_at(110, 1.0, s, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(200, 1.0, s, 10, 110), 0.0);  // clamped at 0
  EXPECT_DOUBLE_EQ(lr_at(0, 1.0, s, 0, 4), 1.0);       // 4 / max(1, 4)
  EXPECT_DOUBLE_EQ(lr_at(3, 1.0, s, 0, 4), 0.25);
}

TEST(TrainLrSchedule, Cosine) {
  const auto s = LrSchedule::kCosine;
  EXPECT_DOUBLE_EQ(lr_at(0, 1.0, s, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(5, 1.0, s, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(10, 1.0, s, 10, 110), 1.0);  // 0.5 * (1 + cos 0)
  EXPECT_NEAR(lr_at(35, 1.0, s, 10, 110), 0.5 * (1.0 + std::sqrt(0.5)), 1e-15);  // progress 1/4
  EXPECT_NEAR(lr_at(60, 1.0, s, 10, 110), 0.5, 1e-15);                           // progress 1/2
  EXPECT_DOUBLE_EQ(lr_at(110, 1.0, s, 10, 110), 0.0);  // 0.5 * (1 + cos pi)
  // diffusers' lambda is not clamped in progress: past the end the half cosine rises again.
  EXPECT_NEAR(lr_at(160, 1.0, s, 10, 110), 0.5, 1e-15);
  EXPECT_NEAR(lr_at(35, 4e-4, s, 10, 110), 4e-4 * 0.5 * (1.0 + std::sqrt(0.5)), 1e-19);
}

TEST(TrainLrSchedule, NamesAndErrors) {
  for (const auto* name : {"constant", "constant_with_warmup", "linear", "cosine"})
    EXPECT_EQ(to_string(parse_lr_schedule(name)), name);
  EXPECT_THROW(parse_lr_schedule("polynomial"), amused::InvalidArgument);
  EXPECT_THROW(lr_at(-1, 1.0, LrSchedule::kConstant, 0, 10), amused::InvalidArgument);
}

TEST(TrainOptimizer, WeightDecayGroups) {
  EXPECT_TRUE(is_no_decay("encoder_proj_layer_norm.weight"));
  EXPECT_TRUE(is_no_decay("embed.embeddings.weight"));
  EXPECT_TRUE(is_no_decay("mlm_layer.layer_norm.weight"));
  EXPECT_TRUE(is_no_decay("transformer_layers.0.attn1.to_out.0.bias"));
  EXPECT_FALSE(is_no_decay("transformer_layers.0.norm1.norm.weight"));
  EXPECT_FALSE(is_no_decay("down_block.res_blocks.0.channelwise_norm.gamma"));

  Toy toy;
  auto opt = make_adamw(*toy, {.lr = 0.1, .weight_decay = 0.01});
  ASSERT_EQ(opt->param_groups().size(), 2u);
  const auto& decay = opt->param_groups()[0];
  const auto& none = opt->param_groups()[1];
  // decayed: proj.weight, norm.weight; no decay: proj.bias, layer_norm.weight, layer_norm.bias,
  // embeddings.weight, norm.bias; the frozen parameter is left out.
  EXPECT_EQ(decay.params().size(), 2u);
  EXPECT_EQ(none.params().size(), 5u);
  EXPECT_DOUBLE_EQ(static_cast<const torch::optim::AdamWOptions&>(decay.options()).weight_decay(),
                   0.01);
  EXPECT_DOUBLE_EQ(static_cast<const torch::optim::AdamWOptions&>(none.options()).weight_decay(),
                   0.0);
  EXPECT_TRUE(decay.params()[0].is_same(toy->proj->weight));
  EXPECT_TRUE(decay.params()[1].is_same(toy->norm->weight));
  for (const auto& group : opt->param_groups())
    for (const auto& p : group.params()) EXPECT_FALSE(p.is_same(toy->frozen));

  set_lr(*opt, 0.5);
  for (const auto& group : opt->param_groups()) EXPECT_DOUBLE_EQ(group.options().get_lr(), 0.5);

  EXPECT_THROW(make_adamw(*toy, {.lr = -1.0}), amused::InvalidArgument);
  EXPECT_THROW(make_adamw(*toy, {.beta1 = 1.0}), amused::InvalidArgument);
}

// First AdamW step by hand: m = 0.1 g, v = 0.001 g^2, so p <- p (1 - lr wd) - lr g / (|g| + eps).
TEST(TrainOptimizer, AdamWFirstStepAndZeroGrad) {
  Toy toy;
  {
    torch::NoGradGuard g;
    for (auto& p : toy->parameters()) p.fill_(1.0);
  }
  auto opt = make_adamw(*toy, {.lr = 0.1, .weight_decay = 0.01});
  const auto loss = 2.0 * (toy->proj->weight.sum() + toy->proj->bias.sum());  // g = 2
  loss.backward();
  opt->step();
  const double g = 2.0, eps = 1e-8;
  EXPECT_NEAR(toy->proj->weight[0][0].item<double>(), 1.0 * (1 - 0.1 * 0.01) - 0.1 * g / (g + eps),
              1e-6);
  EXPECT_NEAR(toy->proj->bias[0].item<double>(), 1.0 - 0.1 * g / (g + eps), 1e-6);
  // Parameters without a gradient are not touched (not even decayed).
  EXPECT_EQ(toy->norm->weight[0].item<double>(), 1.0);
  zero_grad(*opt);
  for (const auto& p : toy->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(TrainOptimizer, ClipGradNorm) {
  auto a = torch::zeros({2}, torch::requires_grad());
  auto b = torch::zeros({1}, torch::requires_grad());
  auto c = torch::zeros({1}, torch::requires_grad());  // no gradient: ignored
  (a * torch::tensor({3.0f, 4.0f})).sum().add((b * 12.0f).sum()).backward();
  const double norm = clip_grad_norm({a, b, c}, 6.5);
  EXPECT_NEAR(norm, 13.0, 1e-5);
  const double coef = 6.5 / (13.0 + 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 * coef, 1e-6);
  EXPECT_NEAR(a.grad()[1].item<double>(), 4.0 * coef, 1e-6);
  EXPECT_NEAR(b.grad()[0].item<double>(), 12.0 * coef, 1e-6);
  EXPECT_FALSE(c.grad().defined());
  // Below the limit nothing changes; the pre-clip norm is still returned.
  EXPECT_NEAR(clip_grad_norm({a, b}, 100.0), 6.5, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 12.0 * coef, 1e-6);
  EXPECT_THROW(clip_grad_norm({a}, 0.0), amused::InvalidArgument);
}

TEST(TrainEma, DecaySchedule) {
  Toy toy;
  EmaModel ema(*toy);
  EXPECT_EQ(ema.get_decay(0), 0.0);
  EXPECT_EQ(ema.get_decay(1), 0.0);                // the first step copies the weights
  EXPECT_DOUBLE_EQ(ema.get_decay(2), 2.0 / 11.0);  // s = 1: (1 + s) / (10 + s)
  EXPECT_DOUBLE_EQ(ema.get_decay(3), 3.0 / 12.0);
  EXPECT_DOUBLE_EQ(ema.get_decay(10'000'000), 0.9999);  // capped at decay
  EmaModel late(*toy, {.update_after_step = 5});
  EXPECT_EQ(late.get_decay(6), 0.0);
  EXPECT_DOUBLE_EQ(late.get_decay(7), 2.0 / 11.0);
  EmaModel warm(*toy, {.use_ema_warmup = true});
  EXPECT_DOUBLE_EQ(warm.get_decay(2), 1.0 - std::pow(2.0, -2.0 / 3.0));
  EmaModel floored(*toy, {.min_decay = 0.5});
  EXPECT_DOUBLE_EQ(floored.get_decay(2), 0.5);
}

TEST(TrainEma, StepCopyStoreRestoreAndState) {
  Toy toy;
  torch::NoGradGuard g;
  for (auto& p : toy->parameters()) p.fill_(1.0);
  EmaModel ema(*toy);
  for (auto& p : toy->parameters()) p.fill_(3.0);
  ema.step(*toy);  // decay 0: shadow = weights
  EXPECT_EQ(ema.optimization_step(), 1);
  EXPECT_EQ(ema.shadow_params().at("proj.weight")[0][0].item<float>(), 3.0f);
  for (auto& p : toy->parameters()) p.fill_(5.0);
  ema.step(*toy);  // decay 2/11: s = 3 - (9/11) (3 - 5)
  EXPECT_NEAR(ema.shadow_params().at("proj.weight")[0][0].item<float>(), 3.0 + 18.0 / 11.0, 1e-6);
  EXPECT_DOUBLE_EQ(ema.cur_decay_value(), 2.0 / 11.0);
  // A frozen parameter's shadow is a plain copy.
  EXPECT_EQ(ema.shadow_params().at("frozen")[0].item<float>(), 5.0f);

  ema.store(*toy);
  ema.copy_to(*toy);
  EXPECT_NEAR(toy->proj->weight[0][0].item<float>(), 3.0 + 18.0 / 11.0, 1e-6);
  ema.restore(*toy);
  EXPECT_EQ(toy->proj->weight[0][0].item<float>(), 5.0f);
  EXPECT_THROW(ema.restore(*toy), amused::InvalidArgument);

  // Checkpoint round trip.
  EmaModel other(*toy);
  other.load_state(ema.shadow_params(), ema.optimization_step());
  EXPECT_EQ(other.optimization_step(), 2);
  for (const auto& [name, s] : ema.shadow_params())
    EXPECT_TRUE(torch::equal(other.shadow_params().at(name), s)) << name;
  auto broken = ema.shadow_params();
  broken.erase("proj.bias");
  EXPECT_THROW(other.load_state(broken, 2), amused::CheckpointError);
  broken = ema.shadow_params();
  broken["proj.weight"] = torch::zeros({3});
  EXPECT_THROW(other.load_state(broken, 2), amused::CheckpointError);
  broken = ema.shadow_params();
  broken["extra"] = torch::zeros({1});
  EXPECT_THROW(other.load_state(broken, 2), amused::CheckpointError);
}

}  // namespace
