// Watching a generation (issue 18): StepDetails per step when asked (and nothing otherwise, the
// result unchanged), token-colour previews, the exact decode of any grid, and `generate
// --save-steps`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "amused/amused.h"
#include "support/golden.h"

namespace {
namespace fs = std::filesystem;
namespace gt = amused::testing;

amused::TextToImageParams params(int steps) {
  amused::TextToImageParams p;
  p.prompts = {"a red apple", "a cat"};
  p.num_images_per_prompt = 1;
  p.num_inference_steps = steps;
  p.seed = 11;
  return p;
}

TEST(StepDetails, EveryStepReportsTokensPredictionsAndConfidence) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), gt::reference_options());
  const int64_t mask_id = pipe->summary().mask_token_id;

  // Off by default: no details, and asking for them changes nothing in the result.
  auto plain = params(6);
  int calls = 0;
  plain.progress = [&](const amused::StepInfo& s) {
    EXPECT_EQ(s.details, nullptr);
    ++calls;
    return true;
  };
  const auto without = pipe->text_to_image(plain);
  EXPECT_EQ(calls, 6);

  auto asked = params(6);
  asked.step_details = true;
  std::vector<amused::StepDetails> seen;
  asked.progress = [&](const amused::StepInfo& s) {
    EXPECT_NE(s.details, nullptr);
    if (s.details) seen.push_back(*s.details);
    return true;
  };
  const auto with = pipe->text_to_image(asked);
  ASSERT_EQ(seen.size(), 6u);
  for (size_t i = 0; i < with.tokens.size(); ++i) EXPECT_EQ(with.tokens[i].ids, without.tokens[i].ids) << i;

  size_t masked_before = SIZE_MAX;
  for (size_t k = 0; k < seen.size(); ++k) {
    const auto& d = seen[k];
    EXPECT_EQ(d.mask_token_id, mask_id);
    ASSERT_EQ(d.tokens.size(), 2u);
    ASSERT_EQ(d.predicted.size(), 2u);
    ASSERT_EQ(d.confidence.size(), 2u);
    size_t masked = 0;
    for (size_t b = 0; b < 2; ++b) {
      const auto& t = d.tokens[b].ids;
      const auto& p = d.predicted[b].ids;
      ASSERT_EQ(t.size(), p.size());
      ASSERT_EQ(d.confidence[b].size(), t.size());
      for (size_t j = 0; j < t.size(); ++j) {
        EXPECT_NE(p[j], mask_id);  // a guess for every position
        EXPECT_GE(d.confidence[b][j], 0.0f);
        EXPECT_LE(d.confidence[b][j], 1.0f);
        if (t[j] == mask_id) {
          ++masked;
        } else {
          EXPECT_EQ(t[j], p[j]);  // a fixed token is the prediction
          // and stays fixed with confidence 1 at every later step
          for (size_t l = k + 1; l < seen.size(); ++l) {
            EXPECT_EQ(seen[l].tokens[b].ids[j], t[j]);
            EXPECT_EQ(seen[l].confidence[b][j], 1.0f);
          }
        }
      }
    }
    EXPECT_LE(masked, masked_before) << "step " << k + 1;
    masked_before = masked;
  }
  EXPECT_EQ(masked_before, 0u);  // the last step fixes everything
  for (size_t b = 0; b < 2; ++b) EXPECT_EQ(seen.back().tokens[b].ids, with.tokens[b].ids);
}

TEST(StepDetails, PreviewsAndExactDecode) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), gt::reference_options());
  const auto& colours = pipe->token_colours();
  EXPECT_EQ(static_cast<int64_t>(colours.size()), pipe->summary().codebook_size);
  std::set<std::array<uint8_t, 3>> distinct(colours.begin(), colours.end());
  EXPECT_GT(distinct.size(), 1u);  // decoded, not a constant

  auto p = params(4);
  p.prompts = {"a red apple"};
  const auto r = pipe->text_to_image(p);
  amused::TokenGrid g = r.tokens[0];
  g.ids[0] = pipe->summary().mask_token_id;
  const amused::Image pv = pipe->preview(g, 3);
  EXPECT_EQ(pv.width, g.width * 3);
  EXPECT_EQ(pv.height, g.height * 3);
  EXPECT_EQ(pv.pixels[0], 128);  // masked: grey
  const auto& c1 = colours[static_cast<size_t>(g.ids[1])];
  EXPECT_EQ(pv.pixels[3 * 3], c1[0]);  // token 1's cell starts at x = 3
  EXPECT_THROW(pipe->preview(g, 0), amused::InvalidArgument);

  // The exact decode of the final grid is the generated image.
  const auto decoded = pipe->decode({r.tokens[0]});
  ASSERT_EQ(decoded.size(), 1u);
  EXPECT_EQ(decoded[0].pixels, r.images[0].pixels);
  EXPECT_THROW(pipe->decode({g}), amused::InvalidArgument);  // the mask id is not a codebook entry
}

TEST(StepDetails, GenerateSaveStepsWritesPanelsSheetAndAnimation) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path dir = tmp / "steps";
  for (const auto& [exact, images] : std::vector<std::pair<std::string, int>>{{"", 2}, {" --save-steps-exact", 1}}) {
    fs::remove_all(dir);
    auto r = gt::run_cli("generate -m '" + gt::golden_path("models/tiny-a").string() + "' -p 'a red apple' --num-images " +
                         std::to_string(images) + " --steps 3 --seed 1 -o '" + (tmp / "out.png").string() +
                         "' --save-steps '" + dir.string() + "'" + exact + " --offline");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto out = amused::load_image(tmp / (images > 1 ? "out-0.png" : "out.png"));
    for (int i = 0; i < images; ++i) {
      const std::string img = "img" + std::to_string(i);
      // Square panels at least as large as the image, 4 px apart.
      const int panel = amused::load_image(dir / (img + "-step01.png")).height;
      EXPECT_GE(panel, out.height);
      for (int k = 1; k <= 3; ++k) {
        const auto step = amused::load_image(dir / (img + "-step0" + std::to_string(k) + ".png"));
        EXPECT_EQ(step.height, panel);
        EXPECT_EQ(step.width, 3 * panel + 2 * 4);  // prediction, fixed tokens, confidence
      }
      const auto sheet = amused::load_image(dir / (img + "-sheet.png"));  // 3 rows x 3 steps
      EXPECT_EQ(sheet.width, 3 * panel + 2 * 4);
      EXPECT_EQ(sheet.height, 3 * panel + 2 * 4);
      std::ifstream webp(dir / (img + "-steps.webp"), std::ios::binary);
      std::string head(12, '\0');
      webp.read(head.data(), 12);
      EXPECT_EQ(head.substr(0, 4), "RIFF");
      EXPECT_EQ(head.substr(8, 4), "WEBP");
    }
  }
  // A file where the folder should be is refused before the work.
  std::ofstream(tmp / "file") << "x";
  auto bad = gt::run_cli("generate -m '" + gt::golden_path("models/tiny-a").string() + "' -p x -o '" +
                         (tmp / "o.png").string() + "' --save-steps '" + (tmp / "file").string() + "' --offline");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("--save-steps"), std::string::npos) << bad.err;
}

}  // namespace
