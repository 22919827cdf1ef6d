// Training-time text conditioning against the reference: captions -> (encoder_hidden_states,
// cond_embeds) with the tiny tokenizer and text encoder, the empty-caption embeddings, and the
// intended row-wise conditioning dropout (u drawn with uniform_ on the given generator).
#include <gtest/gtest.h>

#include "amused/tokenizer.h"
#include "models/clip_text_model.h"
#include "pipelines/components.h"
#include "schedulers/scheduling_amused.h"
#include "support/golden.h"
#include "training/objective.h"

namespace {

namespace golden = amused::testing;
using amused::training::apply_cond_dropout;
using amused::training::encode_captions;

class TrainTextCondGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainTextCondGolden, MatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const std::string id = GetParam();
  const auto& c = golden::golden_case(id);
  const auto model_dir = golden::golden_path(c.at("model_path").get<std::string>());
  const auto tokenizer = amused::ClipTokenizer::from_folder(model_dir / "tokenizer");
  auto text_encoder = amused::load_text_encoder(model_dir / "text_encoder");
  const auto captions = c.at("captions").get<std::vector<std::string>>();
  const auto& o = c.at("outputs");

  const auto cond = encode_captions(*tokenizer, text_encoder, captions);
  EXPECT_TRUE(golden::matches_descriptor(cond.input_ids, c.at("inputs").at("input_ids"),
                                         id + " input_ids"));
  EXPECT_TRUE(golden::matches_descriptor(cond.encoder_hidden_states, o.at("encoder_hidden_states"),
                                         id + " encoder_hidden_states"));
  EXPECT_TRUE(
      golden::matches_descriptor(cond.cond_embeds, o.at("cond_embeds"), id + " cond_embeds"));
  EXPECT_FALSE(cond.encoder_hidden_states.requires_grad());

  const auto empty = encode_captions(*tokenizer, text_encoder, {""});
  EXPECT_TRUE(golden::matches_descriptor(empty.input_ids, o.at("empty_input_ids"),
                                         id + " empty_input_ids"));
  EXPECT_TRUE(golden::matches_descriptor(empty.encoder_hidden_states, o.at("empty_embeds"),
                                         id + " empty_embeds"));
  EXPECT_TRUE(golden::matches_descriptor(empty.cond_embeds, o.at("empty_clip_embeds"),
                                         id + " empty_clip_embeds"));

  // Dropout on the golden (reference) embeddings, so the comparison isolates the dropout.
  const auto ehs = golden::golden_tensor(o.at("encoder_hidden_states"));
  const auto pooled = golden::golden_tensor(o.at("cond_embeds"));
  const auto ehs_before = ehs.clone(), pooled_before = pooled.clone();
  at::Generator gen = amused::make_cpu_generator(c.at("params").at("seed").get<uint64_t>());
  const auto dropped =
      apply_cond_dropout(ehs, pooled, golden::golden_tensor(o.at("empty_embeds")),
                         golden::golden_tensor(o.at("empty_clip_embeds")),
                         c.at("params").at("cond_dropout_prob").get<double>(), gen);
  const auto& t = c.at("teacher");
  EXPECT_TRUE(golden::matches_descriptor(dropped.u, t.at("dropout_u"), id + " dropout_u"));
  EXPECT_TRUE(golden::matches_descriptor(dropped.dropped.reshape({-1, 1, 1}), t.at("dropout_mask"),
                                         id + " dropout_mask"));
  std::vector<int64_t> dropped_rows;
  for (const auto& r : c.at("dropped_rows")) dropped_rows.push_back(r.get<bool>() ? 1 : 0);
  EXPECT_TRUE(torch::equal(dropped.dropped.to(torch::kLong), torch::tensor(dropped_rows)));
  EXPECT_TRUE(golden::matches_descriptor(dropped.encoder_hidden_states,
                                         o.at("dropout_encoder_hidden_states"),
                                         id + " dropout_encoder_hidden_states"));
  EXPECT_TRUE(golden::matches_descriptor(dropped.cond_embeds, o.at("dropout_cond_embeds"),
                                         id + " dropout_cond_embeds"));
  // The inputs are untouched (the reference's in-place reassignment compounds over steps).
  EXPECT_TRUE(torch::equal(ehs, ehs_before));
  EXPECT_TRUE(torch::equal(pooled, pooled_before));
}

INSTANTIATE_TEST_SUITE_P(TrainCases, TrainTextCondGolden,
                         ::testing::Values("train/text_cond/tiny-a", "train/text_cond/tiny-b"),
                         [](const auto& info) {
                           return std::string(info.param).back() == 'a' ? std::string("TinyA")
                                                                        : std::string("TinyB");
                         });

}  // namespace
