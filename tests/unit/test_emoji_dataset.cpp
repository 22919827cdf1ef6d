// `amused dataset emoji`: the emoji-test.txt and CLDR parsers, captions, the split, the area
// resampler, the FreeType/HarfBuzz renderer and the whole build (deterministic, read back by the
// training data reader). The renderer and build tests use the Debian packages scripts/setup.sh
// installs (fonts-noto-color-emoji, unicode-data, unicode-cldr-core).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "amused/dataset.h"
#include "amused/image_io.h"
#include "support/golden.h"
#include "training/dataset.h"
#include "training/emoji_dataset.h"

namespace fs = std::filesystem;
using namespace amused::training;
using amused::testing::TempDir;

namespace {

const char* kEmojiTest = R"(# emoji-test.txt
# Version: 15.0

# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face

# group: People & Body

# subgroup: person-role
1F9D1 200D 2696 FE0F                                   ; fully-qualified     # 🧑‍⚖️ E12.1 judge
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone
1F44B 1F3FB                                            ; fully-qualified     # 👋🏻 E1.0 waving hand: light skin tone
)";

const char* kCldr = R"(<ldml><annotations>
  <annotation cp="😀">face | grin | grinning face</annotation>
  <annotation cp="😀" type="tts">grinning face</annotation>
  <annotation cp="☺">face | outlined | relaxed | smile &amp; happy</annotation>
  <annotation cp="&#x1F44B;">hand | wave | waving</annotation>
</annotations></ldml>)";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST(EmojiDataset, ParsesFullyQualifiedEntriesWithTheirGroups) {
  const auto e = parse_emoji_test(kEmojiTest, "emoji-test.txt");
  ASSERT_EQ(e.size(), 4u);  // unqualified and component lines are not images
  EXPECT_EQ(e[0].name, "grinning face");
  EXPECT_EQ(e[0].emoji, "😀");
  EXPECT_EQ(e[0].version, "E1.0");
  EXPECT_EQ(e[0].group, "Smileys & Emotion");
  EXPECT_EQ(e[0].subgroup, "face-smiling");
  EXPECT_EQ(e[1].codepoints, std::u32string(U"\u263A\uFE0F"));
  EXPECT_EQ(e[2].hex(), "1F9D1 200D 2696 FE0F");
  EXPECT_EQ(e[2].file_stem(), "1f9d1-200d-2696-fe0f");
  EXPECT_EQ(e[2].group, "People & Body");
  EXPECT_EQ(e[3].name, "waving hand: light skin tone");  // a name with a colon
}

TEST(EmojiDataset, MalformedEmojiTestLinesNameTheLine) {
  try {
    parse_emoji_test("1F600 ; fully-qualified # 😀 E1.0 grinning face\nZZZZ ; fully-qualified # x E1.0 bad\n", "t.txt");
    FAIL() << "expected IoError";
  } catch (const amused::IoError& err) {
    EXPECT_NE(std::string(err.what()).find("t.txt line 2"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("ZZZZ"), std::string::npos) << err.what();
  }
  EXPECT_THROW(parse_emoji_test("1F600 fully-qualified grinning face\n", "t.txt"), amused::IoError);
  EXPECT_THROW(parse_emoji_test("1F600 ; fully-qualified # 😀 E1.0\n", "t.txt"), amused::IoError);
}

TEST(EmojiDataset, ParsesCldrAnnotationsAndFindsThemWithoutVariationSelectors) {
  const auto a = parse_cldr_annotations(kCldr, "en.xml");
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a.at("😀").keywords, (std::vector<std::string>{"face", "grin", "grinning face"}));
  EXPECT_EQ(a.at("😀").tts, "grinning face");
  EXPECT_EQ(a.at("☺").keywords.back(), "smile & happy");  // entities decoded
  EXPECT_EQ(a.count("👋"), 1u);                            // in the cp attribute too
  const auto e = parse_emoji_test(kEmojiTest, "emoji-test.txt");
  const CldrAnnotation* smiling = find_annotation(a, e[1].emoji);  // "☺️" = U+263A U+FE0F
  ASSERT_NE(smiling, nullptr);
  EXPECT_EQ(smiling->keywords.front(), "face");
  EXPECT_EQ(find_annotation(a, e[2].emoji), nullptr);
  EXPECT_THROW(parse_cldr_annotations("<annotation cp=\"x\">a | b", "en.xml"), amused::IoError);
  EXPECT_THROW(parse_cldr_annotations("<annotation cp=\"x\">&bogus;</annotation>", "en.xml"), amused::IoError);
}

TEST(EmojiDataset, CaptionsAddKeywordsNotInTheNameAndTheGroup) {
  const auto e = parse_emoji_test(kEmojiTest, "emoji-test.txt");
  const auto a = parse_cldr_annotations(kCldr, "en.xml");
  const auto c = emoji_captions(e[0], find_annotation(a, e[0].emoji));
  // "face", "grin" and "grinning face" are all in the name already.
  EXPECT_EQ(c, (std::vector<std::string>{"grinning face", "grinning face, smileys & emotion, face-smiling"}));
  const auto wave = emoji_captions(e[3], find_annotation(a, "👋"));
  EXPECT_EQ(wave.front(), "waving hand: light skin tone");
  EXPECT_EQ(wave[1], "waving hand: light skin tone, wave");
  EXPECT_EQ(emoji_captions(e[2], nullptr).size(), 2u);  // no CLDR entry: name + group
}

TEST(EmojiDataset, SplitIsAFunctionOfTheCodePointsAlone) {
  const auto e = parse_emoji_test(kEmojiTest, "emoji-test.txt");
  for (const auto& x : e) {
    EXPECT_FALSE(in_validation_split(x, 0.0));
    EXPECT_TRUE(in_validation_split(x, 0.999999999));
    EmojiEntry renamed = x;
    renamed.name = "something else";
    renamed.group = "elsewhere";
    EXPECT_EQ(in_validation_split(x, 0.5), in_validation_split(renamed, 0.5));
  }
  // About the asked share over many code points.
  int validation = 0;
  for (char32_t cp = 0x1F300; cp < 0x1F300 + 4000; ++cp) {
    EmojiEntry x;
    x.codepoints = std::u32string(1, cp);
    validation += in_validation_split(x, 0.1) ? 1 : 0;
  }
  EXPECT_GT(validation, 300);
  EXPECT_LT(validation, 500);
}

TEST(EmojiDataset, AreaResamplingAveragesAndTreatsOutsideAsTransparent) {
  // 2x2 -> 1x1 is the mean.
  std::vector<float> px = {1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1};
  auto one = area_resample(px, 2, 2, 0, 0, 2, 1);
  ASSERT_EQ(one.size(), 4u);
  EXPECT_FLOAT_EQ(one[0], 0.5f);
  EXPECT_FLOAT_EQ(one[1], 0.5f);
  EXPECT_FLOAT_EQ(one[2], 0.5f);
  EXPECT_FLOAT_EQ(one[3], 1.0f);
  // A constant 7x5 image seen through a square twice its width: the inside stays constant, the
  // covered share of alpha is the covered share of area, and the total is conserved.
  std::vector<float> grey(7 * 5 * 4, 0.25f);
  const auto out = area_resample(grey, 7, 5, -3.5, -4.5, 14, 6);
  double total_alpha = 0;
  for (size_t i = 0; i < out.size(); i += 4) total_alpha += out[i + 3];
  EXPECT_NEAR(total_alpha * (14.0 / 6) * (14.0 / 6), 7 * 5 * 0.25, 1e-4);
  EXPECT_FLOAT_EQ(out[(0 * 6 + 0) * 4 + 3], 0.0f);  // a corner cell sees nothing of the image
  EXPECT_NEAR(out[(2 * 6 + 2) * 4 + 3], 0.25f, 1e-6);  // a centre cell lies fully inside
}

TEST(EmojiDataset, RendersSingleEmojiSequencesAndFlagsAndRefusesWhatTheFontLacks) {
  amused::EmojiDatasetOptions defaults;
  EmojiRenderer r(defaults.font);
  const std::array<uint8_t, 3> white = {255, 255, 255};
  const auto apple = r.render("🍎", 32, white, 1.0 / 16);
  ASSERT_TRUE(apple.has_value());
  ASSERT_EQ(apple->width, 32);
  ASSERT_EQ(apple->pixels.size(), 32u * 32 * 3);
  const auto at = [&](int x, int y, int c) { return apple->pixels[(static_cast<size_t>(y) * 32 + x) * 3 + c]; };
  for (int c = 0; c < 3; ++c) EXPECT_EQ(at(0, 0, c), 255);  // background in the margin
  EXPECT_GT(at(16, 18, 0), at(16, 18, 1) + 60) << "the apple's centre should be red";
  EXPECT_TRUE(r.render("👨‍👩‍👧", 16, white, 0).has_value());  // ZWJ family: one glyph
  EXPECT_TRUE(r.render("🇯🇵", 16, white, 0).has_value());      // regional indicators
  EXPECT_TRUE(r.render("👋🏽", 16, white, 0).has_value());      // skin tone modifier
  EXPECT_FALSE(r.render("🍎🍎", 16, white, 0).has_value());     // two glyphs
  EXPECT_FALSE(r.render("A", 16, white, 0).has_value());        // not in the font
  // The background shows where the glyph is transparent.
  const auto black = r.render("🍎", 32, {0, 0, 0}, 1.0 / 16);
  ASSERT_TRUE(black.has_value());
  EXPECT_EQ(black->pixels[0], 0);
}

TEST(EmojiDataset, MissingFontOrDataNamesThePackage) {
  TempDir tmp;
  amused::EmojiDatasetOptions o;
  o.output = (tmp / "out").string();
  o.font = (tmp / "none.ttf").string();
  try {
    amused::build_emoji_dataset(o);
    FAIL();
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("fonts-noto-color-emoji"), std::string::npos) << e.what();
  }
  o = {};
  o.output = (tmp / "out").string();
  o.cldr_annotations = (tmp / "en.xml").string();
  try {
    amused::build_emoji_dataset(o);
    FAIL();
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("unicode-cldr-core"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp / "out" / "metadata.jsonl"));
  o = {};
  o.output = (tmp / "out").string();
  o.size = 4;
  EXPECT_THROW(amused::build_emoji_dataset(o), amused::InvalidArgument);
}

TEST(EmojiDataset, BuildIsDeterministicAndReadsBackAsTrainingData) {
  TempDir tmp;
  amused::EmojiDatasetOptions o;
  o.size = 16;
  o.limit = 40;
  o.validation_fraction = 0.2;
  o.output = (tmp / "a").string();
  int calls = 0;
  const auto s = amused::build_emoji_dataset(o, [&](const amused::EmojiDatasetProgress& p) {
    EXPECT_EQ(p.total, 40);
    ++calls;
    return true;
  });
  EXPECT_GE(calls, 1);
  EXPECT_EQ(s.images, 40);
  EXPECT_EQ(s.train + s.validation, 40);
  EXPECT_TRUE(s.not_rendered.empty());
  o.output = (tmp / "b").string();
  amused::build_emoji_dataset(o);
  // Same bytes, file by file.
  int files = 0;
  for (const auto& f : fs::recursive_directory_iterator(tmp / "a")) {
    if (!f.is_regular_file()) continue;
    const auto rel = fs::relative(f.path(), tmp / "a");
    EXPECT_EQ(slurp(f.path()), slurp(tmp / "b" / rel)) << rel;
    ++files;
  }
  EXPECT_EQ(files, 40 + 1 + 1 + 1 + 3);  // images, metadata, README, preview, licences
  // Every row names an existing image, a caption and a split.
  std::ifstream meta(tmp / "a" / "metadata.jsonl");
  int rows = 0, validation = 0;
  for (std::string line; std::getline(meta, line); ++rows) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_TRUE(fs::exists(tmp / "a" / j.at("file_name").get<std::string>()));
    EXPECT_FALSE(j.at("text").get<std::string>().empty());
    EXPECT_EQ(j.at("captions").at(0), j.at("text"));
    validation += j.at("split") == "validation" ? 1 : 0;
  }
  EXPECT_EQ(rows, 40);
  EXPECT_EQ(validation, s.validation);
  // The trainer's reader takes the folder as it is.
  DatasetOptions d;
  d.data = (tmp / "a").string();
  d.resolution = 16;
  d.on_bad_sample = BadSamplePolicy::Fail;
  auto ds = ImageCaptionDataset::open(d);
  EXPECT_EQ(ds->size(), 40);
  const Sample first = ds->next();
  EXPECT_EQ(first.image.width, 16);
  EXPECT_FALSE(first.caption.empty());
  // A stopped build writes no metadata.
  o.output = (tmp / "c").string();
  EXPECT_THROW(amused::build_emoji_dataset(o, [](const amused::EmojiDatasetProgress&) { return false; }),
               amused::Cancelled);
  EXPECT_FALSE(fs::exists(tmp / "c" / "metadata.jsonl"));
}

TEST(EmojiDataset, CommandLine) {
  TempDir tmp;
  const auto r = amused::testing::run_cli("dataset emoji '" + (tmp / "e").string() + "' --size 16 --limit 3 -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(tmp / "e" / "images" / "1f600.png"));
  const auto img = amused::load_image(tmp / "e" / "images" / "1f600.png");
  EXPECT_EQ(img.width, 16);
  const auto bad = amused::testing::run_cli("dataset emoji '" + (tmp / "f").string() + "' --background pink");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--background"), std::string::npos) << bad.err;
}
