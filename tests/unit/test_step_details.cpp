// Watching a generation (issue 18): StepDetails per step when asked (and nothing otherwise, the
// result unchanged), token-colour previews, the exact decode of any grid, cross-attention maps,
// `generate --save-steps` and `generate --attention-maps`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
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

TEST(StepDetails, AttentionMapsGiveEachPromptTokenItsShare) {
  AMUSED_REQUIRE_GOLDEN();
  auto pipe = amused::Pipeline::load(gt::golden_path("models/tiny-a").string(), gt::reference_options());
  auto tok = amused::ClipTokenizer::from_folder(gt::golden_path("models/tiny-a/tokenizer"));
  auto expected_tokens = [&](const std::string& prompt) {
    auto t = tok->tokenize(prompt);
    t.insert(t.begin(), tok->decode({tok->bos_token_id()}, false));
    t.push_back(tok->decode({tok->eos_token_id()}, false));
    return t;
  };
  for (const double guidance : {10.0, 1.0}) {  // with and without classifier-free guidance
    auto base = params(4);
    base.num_images_per_prompt = 2;  // 4 images: prompts tiled [p0, p1, p0, p1]
    base.guidance_scale = guidance;
    // step_details alone leaves the maps out.
    auto details_only = base;
    details_only.step_details = true;
    details_only.progress = [&](const amused::StepInfo& s) {
      EXPECT_TRUE(s.details && s.details->attention.maps.empty());
      return true;
    };
    const auto without = pipe->text_to_image(details_only);

    auto asked = base;
    asked.attention_maps = true;  // implies step_details
    std::vector<amused::AttentionMaps> seen;
    asked.progress = [&](const amused::StepInfo& s) {
      EXPECT_NE(s.details, nullptr);
      if (s.details) seen.push_back(s.details->attention);
      return true;
    };
    const auto with = pipe->text_to_image(asked);
    for (size_t i = 0; i < with.tokens.size(); ++i) EXPECT_EQ(with.tokens[i].ids, without.tokens[i].ids);
    ASSERT_EQ(seen.size(), 4u);
    for (const auto& a : seen) {
      EXPECT_EQ(a.height, with.tokens[0].height);
      EXPECT_EQ(a.width, with.tokens[0].width);
      ASSERT_EQ(a.tokens.size(), 4u);
      ASSERT_EQ(a.maps.size(), 4u);
      const size_t hw = static_cast<size_t>(a.height) * a.width;
      for (size_t b = 0; b < 4; ++b) {
        EXPECT_EQ(a.tokens[b], expected_tokens(base.prompts[b % 2])) << b;
        ASSERT_EQ(a.maps[b].size(), a.tokens[b].size() * hw);
        for (size_t p = 0; p < hw; ++p) {
          double sum = 0;
          for (size_t t = 0; t < a.tokens[b].size(); ++t) {
            const float v = a.maps[b][t * hw + p];
            EXPECT_GE(v, 0.0f);
            sum += v;
          }
          // The listed tokens' shares; the padding positions hold the rest.
          EXPECT_GT(sum, 0.0);
          EXPECT_LE(sum, 1.0 + 1e-5);
        }
      }
      // Same prompt, different image: different maps (they depend on the image's tokens).
      EXPECT_NE(a.maps[0], a.maps[2]);
    }
  }
}

TEST(StepDetails, GenerateAttentionMapsWritesSheetsAndNumbers) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path dir = tmp / "attention";
  auto r = gt::run_cli("generate -m '" + gt::golden_path("models/tiny-a").string() +
                       "' -p 'a red apple' --num-images 2 --steps 3 --seed 1 -o '" + (tmp / "out.png").string() +
                       "' --attention-maps '" + dir.string() + "' --offline");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto tok = amused::ClipTokenizer::from_folder(gt::golden_path("models/tiny-a/tokenizer"));
  const auto words = tok->tokenize("a red apple");
  for (int i = 0; i < 2; ++i) {
    const std::string img = "img" + std::to_string(i);
    std::ifstream in(dir / (img + "-attention.json"));
    ASSERT_TRUE(in) << img;
    const auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j["steps"], 3);
    const int h = j["grid"]["height"], w = j["grid"]["width"];
    EXPECT_EQ(j["tokens"].size(), words.size() + 2);
    ASSERT_EQ(j["words"].size(), words.size());  // tiny-a's vocabulary has each of these words whole
    double shares = 0;
    for (size_t k = 0; k < words.size(); ++k) {
      const auto& word = j["words"][k];
      EXPECT_EQ(word["text"].get<std::string>() + "</w>", words[k]);
      EXPECT_EQ(word["positions"], nlohmann::json::array({static_cast<int>(k) + 1}));
      ASSERT_EQ(word["map"].size(), static_cast<size_t>(h * w));
      ASSERT_EQ(word["share_per_step"].size(), 3u);
      double mean = 0;
      for (const auto& v : word["map"]) mean += v.get<double>();
      mean /= h * w;
      EXPECT_NEAR(mean, word["share"].get<double>(), 1e-6);
      shares += mean;
    }
    for (const auto& s : j["start_token_share_per_step"]) shares += s.get<double>() / 3;
    for (const auto& s : j["end_token_share_per_step"]) shares += s.get<double>() / 3;
    EXPECT_GT(shares, 0.0);
    EXPECT_LE(shares, 1.0 + 1e-5);
    // The run sheet: the image and one panel per word, side by side, labels below; the step sheet:
    // one row per step under a label row.
    const auto sheet = amused::load_image(dir / (img + "-attention.png"));
    const int panel = (sheet.width + 4) / static_cast<int>(words.size() + 1) - 4;
    EXPECT_GE(panel, 128);
    EXPECT_EQ(sheet.width, static_cast<int>(words.size() + 1) * (panel + 4) - 4);
    EXPECT_GT(sheet.height, panel);
    const auto steps = amused::load_image(dir / (img + "-attention-steps.png"));
    EXPECT_GT(steps.height, 3 * panel);
    EXPECT_GT(steps.width, static_cast<int>(words.size()) * panel);
  }
  // A file where the folder should be is refused before the work.
  std::ofstream(tmp / "file") << "x";
  auto bad = gt::run_cli("generate -m '" + gt::golden_path("models/tiny-a").string() + "' -p x -o '" +
                         (tmp / "o.png").string() + "' --attention-maps '" + (tmp / "file").string() + "' --offline");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("--attention-maps"), std::string::npos) << bad.err;
}

}  // namespace
