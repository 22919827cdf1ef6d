// One training step against the reference, llm.c-style: logits, loss (plain and label-smoothed
// cross-entropy), dLoss/dlogits and the gradient of every transformer parameter by name; then
// five AdamW steps (train_amused.py's parameter groups): losses, all weights after steps 1 and 5.
#include <gtest/gtest.h>

#include <set>

#include "models/uvit_2d.h"
#include "pipelines/components.h"
#include "support/golden.h"
#include "training/objective.h"
#include "training/optimizer.h"

namespace {

namespace golden = amused::testing;
using amused::models::UVit2DModel;
using amused::training::masked_token_loss;

struct StepBatch {
  torch::Tensor input_ids, labels, encoder_hidden_states, pooled_text_emb, micro_conds;
};

StepBatch load_batch(const nlohmann::json& inputs) {
  return {golden::golden_tensor(inputs.at("input_ids")), golden::golden_tensor(inputs.at("labels")),
          golden::golden_tensor(inputs.at("encoder_hidden_states")),
          golden::golden_tensor(inputs.at("pooled_text_emb")),
          golden::golden_tensor(inputs.at("micro_conds"))};
}

UVit2DModel load_train_model(const nlohmann::json& c) {
  auto model = amused::load_transformer(golden::golden_path(c.at("model_path").get<std::string>()) / "transformer");
  model->train();
  return model;
}

torch::Tensor forward(UVit2DModel& model, const StepBatch& b) {
  return model->forward(b.input_ids, b.encoder_hidden_states, b.pooled_text_emb, b.micro_conds);
}

// ||g - g_ref|| / ||g_ref|| < 1e-4 (the README's complementary per-tensor check).
::testing::AssertionResult relative_norm_ok(const torch::Tensor& g, const torch::Tensor& ref,
                                            const std::string& name) {
  const double ref_norm = ref.to(torch::kDouble).norm().item<double>();
  const double diff_norm = (g.to(torch::kDouble) - ref.to(torch::kDouble)).norm().item<double>();
  if (ref_norm == 0.0 ? diff_norm == 0.0 : diff_norm / ref_norm < 1e-4)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << name << ": ||g - g_ref|| / ||g_ref|| = " << diff_norm / ref_norm
         << " (||g_ref|| = " << ref_norm << "), limit 1e-4";
}

// Compares the gradient of every parameter with the golden ones (same name set); returns the first
// mismatching parameter name, or "" when all match.
std::string check_grads(UVit2DModel& model, const nlohmann::json& expected,
                        const std::string& label) {
  std::set<std::string> golden_names;
  for (const auto& [name, d] : expected.items()) golden_names.insert(name);
  std::set<std::string> model_names;
  std::string first_bad;
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    model_names.insert(name);
    if (!expected.contains(name)) {
      ADD_FAILURE() << label << ": parameter " << name << " has no golden gradient";
      if (first_bad.empty()) first_bad = name;
      continue;
    }
    const auto& grad = item.value().grad();
    if (!grad.defined()) {
      ADD_FAILURE() << label << ": parameter " << name << " got no gradient";
      if (first_bad.empty()) first_bad = name;
      continue;
    }
    const auto per_element =
        golden::matches_descriptor(grad, expected.at(name), label + " grad " + name);
    const auto norm =
        relative_norm_ok(grad, golden::golden_tensor(expected.at(name)), label + " grad " + name);
    EXPECT_TRUE(per_element);
    EXPECT_TRUE(norm);
    if ((!per_element || !norm) && first_bad.empty()) first_bad = name;
  }
  for (const auto& name : golden_names)
    if (!model_names.count(name))
      ADD_FAILURE() << label << ": golden gradient " << name << " has no parameter";
  EXPECT_EQ(model_names.size(), golden_names.size());
  return first_bad;
}

class TrainStepGradsGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainStepGradsGolden, MatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const std::string id = GetParam();
  const auto& c = golden::golden_case(id);
  const auto batch = load_batch(c.at("inputs"));
  const auto& o = c.at("outputs");
  const auto& t = c.at("teacher");
  auto model = load_train_model(c);

  struct Variant {
    double label_smoothing;
    std::string loss_key, grads_key, dlogits_key;
  };
  for (const Variant& v : {Variant{0.0, "loss_ce", "grads_ce", "dloss_dlogits_ce"},
                           Variant{0.1, "loss_ce_ls", "grads_ce_ls", "dloss_dlogits_ce_ls"}}) {
    SCOPED_TRACE(id + " " + v.loss_key);
    for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    auto logits = forward(model, batch);
    ASSERT_TRUE(logits.requires_grad());
    logits.retain_grad();
    EXPECT_TRUE(golden::matches_descriptor(logits, o.at("logits"), id + " logits"));
    const auto loss = masked_token_loss(logits, batch.labels, v.label_smoothing);
    EXPECT_TRUE(
        golden::matches_descriptor(loss.reshape({1}), o.at(v.loss_key), id + " " + v.loss_key));
    loss.backward();
    EXPECT_TRUE(
        golden::matches_descriptor(logits.grad(), t.at(v.dlogits_key), id + " " + v.dlogits_key));
    const auto first_bad = check_grads(model, o.at(v.grads_key), id + " " + v.grads_key);
    EXPECT_EQ(first_bad, "") << "first mismatching gradient (" << v.grads_key << "): " << first_bad;
  }
}

INSTANTIATE_TEST_SUITE_P(TrainCases, TrainStepGradsGolden,
                         ::testing::Values("train/step_grads/tiny-a", "train/step_grads/tiny-b"),
                         [](const auto& info) {
                           return std::string(info.param).back() == 'a' ? std::string("TinyA")
                                                                        : std::string("TinyB");
                         });

// The weights of every parameter against a golden group of weight tensors.
std::string check_weights(UVit2DModel& model, const nlohmann::json& expected,
                          const std::string& label) {
  std::string first_bad;
  size_t n = 0;
  for (const auto& item : model->named_parameters()) {
    if (!expected.contains(item.key())) {
      ADD_FAILURE() << label << ": no golden weight for " << item.key();
      continue;
    }
    ++n;
    const auto r = golden::matches_descriptor(item.value().detach(), expected.at(item.key()),
                                              label + " " + item.key());
    EXPECT_TRUE(r);
    if (!r && first_bad.empty()) first_bad = item.key();
  }
  EXPECT_EQ(n, expected.size()) << label << ": parameter count";
  return first_bad;
}

void check_adamw_steps(bool fused) {
  const auto& c = golden::golden_case("train/adamw_steps/tiny-a");
  const auto& batch_case =
      golden::golden_case(c.at("sources").at("batch").get<std::string>().substr(
          0, c.at("sources").at("batch").get<std::string>().rfind(".inputs")));
  const auto batch = load_batch(batch_case.at("inputs"));
  auto model = load_train_model(c);

  const auto& oc = c.at("optimizer");
  ASSERT_EQ(oc.at("class").get<std::string>(), "AdamW");
  ASSERT_FALSE(oc.at("amsgrad").get<bool>());
  EXPECT_EQ(oc.at("no_decay_substrings").get<std::vector<std::string>>(),
            amused::training::no_decay_substrings());
  std::vector<std::string> no_decay;
  for (const auto& item : model->named_parameters())
    if (amused::training::is_no_decay(item.key())) no_decay.push_back(item.key());
  EXPECT_EQ(no_decay, oc.at("no_decay_params").get<std::vector<std::string>>());

  amused::training::AdamWOptions opts;
  opts.lr = oc.at("lr").get<double>();
  opts.beta1 = oc.at("betas").at(0).get<double>();
  opts.beta2 = oc.at("betas").at(1).get<double>();
  opts.weight_decay = oc.at("weight_decay").get<double>();
  opts.eps = oc.at("eps").get<double>();
  opts.fused = fused;
  auto optimizer = amused::training::make_adamw(*model, opts);
  ASSERT_EQ(optimizer->param_groups().size(), 2u);
  EXPECT_EQ(dynamic_cast<amused::training::FusedAdamW*>(optimizer.get()) != nullptr, fused);
  EXPECT_EQ(optimizer->param_groups()[1].params().size(), no_decay.size());

  const auto& o = c.at("outputs");
  const int64_t num_steps = c.at("num_steps").get<int64_t>();
  std::vector<float> losses;
  for (int64_t step = 1; step <= num_steps; ++step) {
    const auto logits = forward(model, batch);
    const auto loss = masked_token_loss(logits, batch.labels);
    losses.push_back(loss.item<float>());
    loss.backward();
    optimizer->step();
    amused::training::zero_grad(*optimizer);
    if (step == 1) {
      const auto bad = check_weights(model, o.at("weights_step1"), "after step 1");
      EXPECT_EQ(bad, "") << "first mismatching weight after step 1: " << bad;
    }
  }
  EXPECT_TRUE(golden::matches_descriptor(torch::tensor(losses), o.at("losses"), "losses"));
  const auto bad = check_weights(model, o.at("weights_final"), "after step 5");
  EXPECT_EQ(bad, "") << "first mismatching weight after step 5: " << bad;

  const auto& summary = c.at("summary_final");
  for (const auto& item : model->named_parameters()) {
    ASSERT_TRUE(summary.contains(item.key())) << item.key();
    const auto w = item.value().detach().to(torch::kDouble);
    const double sum = w.sum().item<double>(), l2 = w.norm().item<double>();
    const double ref_sum = summary.at(item.key()).at("sum").get<double>();
    const double ref_l2 = summary.at(item.key()).at("l2").get<double>();
    EXPECT_LE(std::abs(sum - ref_sum), 1e-4 * std::abs(ref_sum))
        << item.key() << " sum " << sum << " vs " << ref_sum;
    EXPECT_LE(std::abs(l2 - ref_l2), 1e-4 * std::abs(ref_l2))
        << item.key() << " l2 " << l2 << " vs " << ref_l2;
  }
}

TEST(TrainAdamWGolden, FiveStepsMatchReference) {
  AMUSED_REQUIRE_GOLDEN();
  check_adamw_steps(/*fused=*/false);
}

// The trainer's one-pass AdamW: the same five steps within the same tolerances.
TEST(TrainAdamWGolden, FusedFiveStepsMatchReference) {
  AMUSED_REQUIRE_GOLDEN();
  check_adamw_steps(/*fused=*/true);
}

}  // namespace
