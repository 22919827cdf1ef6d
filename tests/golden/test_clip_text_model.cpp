// CLIPTextModelWithProjection against transformers' outputs on the tiny models (legacy argmax
// pooling with quick_gelu in tiny-a; eos_token_id pooling with gelu in tiny-b).
#include <gtest/gtest.h>

#include "pipelines/components.h"
#include "models/clip_text_model.h"
#include "support/golden.h"

namespace {
using amused::testing::golden_case;
using amused::testing::golden_path;
using amused::testing::golden_tensor;
using amused::testing::matches_descriptor;

void check_text_encoder_case(const std::string& id) {
  const auto& c = golden_case(id);
  auto model = amused::load_text_encoder(
      golden_path(c["model_path"].get<std::string>()) / "text_encoder");
  const auto input_ids = golden_tensor(c["inputs"]["input_ids"]);
  torch::NoGradGuard no_grad;
  const auto out = model->forward(input_ids, /*output_hidden_states=*/true);
  const auto& o = c["outputs"];
  EXPECT_TRUE(
      matches_descriptor(out.last_hidden_state, o["last_hidden_state"], id + " last_hidden_state"));
  EXPECT_TRUE(matches_descriptor(out.penultimate_hidden_state, o["penultimate_hidden_state"],
                                 id + " penultimate_hidden_state"));
  EXPECT_TRUE(matches_descriptor(out.text_embeds, o["text_embeds"], id + " text_embeds"));
  EXPECT_TRUE(matches_descriptor(out.pooled_output, o["pooled_output"], id + " pooled_output"));
  ASSERT_EQ(static_cast<int64_t>(out.hidden_states.size()), model->config().num_hidden_layers + 1);
  EXPECT_TRUE(matches_descriptor(torch::stack(out.hidden_states), o["all_hidden_states"],
                                 id + " all_hidden_states"));

  // Without output_hidden_states the same tensors come out and no list is kept.
  const auto lean = model->forward(input_ids);
  EXPECT_TRUE(lean.hidden_states.empty());
  EXPECT_TRUE(torch::equal(lean.penultimate_hidden_state, out.penultimate_hidden_state));
  EXPECT_TRUE(torch::equal(lean.text_embeds, out.text_embeds));
}
}  // namespace

TEST(CLIPTextModelGolden, TinyA) {
  AMUSED_REQUIRE_GOLDEN();
  check_text_encoder_case("text_encoder/tiny-a");
}

TEST(CLIPTextModelGolden, TinyB) {
  AMUSED_REQUIRE_GOLDEN();
  check_text_encoder_case("text_encoder/tiny-b");
}
