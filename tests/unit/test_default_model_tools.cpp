// The tools that build the embedded default model: a CLIP-format BPE tokenizer learned from
// captions, list-valued captions (one drawn per epoch), pre-training on a trained VQ-GAN with the
// text encoder, float16 conversion, the retrieval feature and `amused eval`, and the CLI's model
// default (AMUSED_MODEL / the embedded model).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "amused/convert.h"
#include "amused/eval.h"
#include "amused/image_io.h"
#include "amused/tokenizer.h"
#include "amused/train_tokenizer.h"
#include "core/config.h"
#include "eval/retrieval.h"
#include "io/safetensors.h"
#include "support/golden.h"
#include "support/scoped_env.h"
#include "training/dataset.h"

namespace {
namespace fs = std::filesystem;
namespace gt = amused::testing;

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

amused::Image solid(int size, uint8_t r, uint8_t g, uint8_t b, int mark = -1) {
  amused::Image im;
  im.width = im.height = size;
  for (int i = 0; i < size * size; ++i) {
    const bool m = mark >= 0 && (i % size) < size / 2 && (i / size) == mark % size;
    im.pixels.insert(im.pixels.end(), {m ? uint8_t(255 - r) : r, g, b});
  }
  return im;
}

// An emoji-like set: name/keywords/captions/split rows over coloured squares, some with skin tones.
fs::path make_emoji_like_set(const fs::path& dir, int size = 16) {
  fs::create_directories(dir / "images");
  struct E {
    const char* name;
    std::vector<std::string> keywords;
    const char* split;
    uint8_t rgb[3];
  };
  const std::vector<E> rows = {
      {"red apple", {"apple", "fruit", "red"}, "train", {220, 30, 30}},
      {"green apple", {"apple", "fruit", "green"}, "train", {30, 200, 40}},
      {"blue heart", {"blue", "heart"}, "train", {40, 60, 220}},
      {"thumbs up", {"hand", "thumb", "up"}, "train", {250, 200, 40}},
      {"thumbs up: light skin tone", {"hand", "thumb", "up", "light skin tone"}, "train", {250, 220, 190}},
      {"thumbs up: dark skin tone", {"hand", "thumb", "up", "dark skin tone"}, "validation", {90, 60, 40}},
      {"yellow circle", {"circle", "yellow"}, "validation", {240, 230, 20}},
  };
  std::ofstream meta(dir / "metadata.jsonl");
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& e = rows[i];
    const std::string file = "images/" + std::to_string(i) + ".png";
    amused::save_png(dir / file, solid(size, e.rgb[0], e.rgb[1], e.rgb[2], static_cast<int>(i)));
    std::vector<std::string> captions = {e.name, std::string(e.name) + ", " + e.keywords.back()};
    meta << nlohmann::json{{"file_name", file}, {"text", e.name},     {"captions", captions},
                           {"name", e.name},    {"keywords", e.keywords}, {"split", e.split}}
                .dump()
         << "\n";
  }
  return dir;
}

// ------------------------------------------------------------------------------ tokenizer

TEST(TrainTokenizer, LearnsWholeWordsThatClipTokenizerReadsAndStillTokenizesAnything) {
  gt::TempDir tmp;
  const fs::path cap = tmp / "captions.txt";
  {
    std::ofstream f(cap);
    for (int i = 0; i < 3; ++i) f << "grinning face\nsmiling face with heart eyes\nred apple, fruit\n";
  }
  amused::TokenizerTrainOptions o;
  o.text_files = {cap.string()};
  o.vocab_size = 600;
  o.output = (tmp / "tok").string();
  const auto s = amused::train_tokenizer(o);
  EXPECT_EQ(s.captions, 9);
  EXPECT_EQ(s.distinct_words, 10);  // grinning face smiling with heart eyes red apple , fruit
  auto tok = amused::ClipTokenizer::from_folder(tmp / "tok");
  EXPECT_EQ(tok->vocab_size(), s.vocab_size);
  // The specials sit at the two highest ids (pooling at argmax(input_ids) finds the end token).
  EXPECT_EQ(tok->bos_token_id(), s.vocab_size - 2);
  EXPECT_EQ(tok->eos_token_id(), s.vocab_size - 1);
  EXPECT_EQ(tok->pad_token_id(), 0);  // "!", as CLIP
  EXPECT_EQ(tok->tokenize("Grinning FACE"), (std::vector<std::string>{"grinning</w>", "face</w>"}));
  EXPECT_EQ(tok->tokenize("smiling face with heart eyes").size(), 5u);
  // Unseen text still tokenizes (down to byte symbols) and decodes back.
  const std::string unseen = "zebra crossing \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80";
  const auto ids = tok->encode(unseen);
  EXPECT_GT(ids.size(), 4u);
  EXPECT_EQ(tok->decode(ids), "zebra crossing \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80");
  // The same input gives the same files.
  o.output = (tmp / "tok2").string();
  amused::train_tokenizer(o);
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"})
    EXPECT_EQ(file_bytes(tmp / "tok" / f), file_bytes(tmp / "tok2" / f)) << f;
  EXPECT_EQ(file_bytes(tmp / "tok" / "merges.txt").rfind("#version: 0.2\n", 0), 0u);
}

TEST(TrainTokenizer, ReadsListCaptionsOfOneSplitAndRefusesBadInput) {
  gt::TempDir tmp;
  const fs::path data = make_emoji_like_set(tmp / "set");
  amused::TokenizerTrainOptions o;
  o.data = data.string();
  o.caption_key = "captions";
  o.split = "train";
  o.output = (tmp / "tok").string();
  const auto s = amused::train_tokenizer(o);
  EXPECT_EQ(s.captions, 10);  // 5 training rows x 2 captions
  auto tok = amused::ClipTokenizer::from_folder(tmp / "tok");
  EXPECT_EQ(tok->tokenize("thumbs up"), (std::vector<std::string>{"thumbs</w>", "up</w>"}));
  // "circle" is only in the validation split: not learned as a word.
  EXPECT_GT(tok->tokenize("circle").size(), 1u);
  o.vocab_size = 100;
  EXPECT_THROW(amused::train_tokenizer(o), amused::InvalidArgument);
  o.vocab_size = 4096;
  o.caption_key = "nope";
  EXPECT_THROW(amused::train_tokenizer(o), amused::IoError);
}

// ------------------------------------------------------------------------------ list captions

TEST(ListCaptions, OneCaptionPerImageAndEpochTheSameAfterAReopen) {
  gt::TempDir tmp;
  const fs::path data = make_emoji_like_set(tmp / "set");
  amused::training::DatasetOptions o;
  o.data = data.string();
  o.resolution = 16;
  o.caption_key = "captions";
  o.split = "train";
  o.seed = 4;
  auto read = [&] {
    auto ds = amused::training::ImageCaptionDataset::open(o);
    std::vector<std::string> caps;
    for (const auto& s : ds->next_batch(5 * 20)) caps.push_back(s.id + "|" + s.caption);
    return caps;
  };
  const auto a = read();
  EXPECT_EQ(a, read());
  std::set<std::string> seen(a.begin(), a.end());
  EXPECT_EQ(seen.size(), 10u) << "every caption of every image is drawn over 20 epochs";
  // A list holding a non-string is refused, naming the key.
  {
    std::ofstream f(data / "metadata.jsonl", std::ios::app);
    f << R"({"file_name": "images/0.png", "captions": ["ok", 3], "split": "train"})" << "\n";
  }
  try {
    amused::training::ImageCaptionDataset::open(o);
    FAIL() << "no error";
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("\"captions\""), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------------------------ retrieval

TEST(Retrieval, TheTargetItselfRanksFirstAndDuplicatesTie) {
  std::vector<amused::Image> g = {solid(64, 200, 0, 0), solid(64, 0, 200, 0), solid(64, 0, 0, 200),
                                  solid(64, 200, 0, 0)};
  amused::eval::RetrievalIndex idx(g);
  EXPECT_EQ(idx.rank(g[1], 1), 0);
  EXPECT_EQ(idx.nearest(g[2]), 2u);
  EXPECT_EQ(idx.rank(g[0], 3), 0) << "an exact duplicate of the target is not nearer";
  EXPECT_GE(idx.rank(g[1], 0), 1);
  EXPECT_EQ(idx.rank(solid(64, 10, 190, 5), 1), 0);
  EXPECT_EQ(idx.nearest_among(solid(64, 10, 10, 190), {0, 1, 2}), 2u);
  EXPECT_EQ(idx.nearest_among(solid(64, 190, 10, 10), {1, 3}), 3u);
  // Another size is compared at the same 16x16 feature.
  EXPECT_EQ(idx.rank(solid(48, 0, 0, 200), 2), 0);
  // match(): rank and nearest from one computation, as the separate calls give them.
  const auto q = solid(64, 150, 60, 20);
  for (size_t t = 0; t < g.size(); ++t) {
    const auto m = idx.match(q, t);
    EXPECT_EQ(m.rank, idx.rank(q, t)) << t;
    EXPECT_EQ(m.nearest, idx.nearest(q)) << t;
  }
  // Equal distances: the first candidate listed wins (g[0] and g[3] are the same image).
  EXPECT_EQ(idx.nearest_among(g[0], {3, 0}), 3u);
  EXPECT_EQ(idx.nearest_among(g[0], {0, 3}), 0u);
}

// ------------------------------------------------------------------------------ pre-training

// tiny-a's configs and tokenizer, with the VQ-GAN's weights only.
fs::path config_folder_with_vq(const fs::path& dir) {
  const fs::path src = gt::golden_path("models/tiny-a");
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    const auto rel = fs::relative(e.path(), src);
    if (e.is_directory())
      fs::create_directories(dir / rel);
    else if (e.path().extension() != ".safetensors" || rel.begin()->string() == "vqvae")
      fs::copy_file(e.path(), dir / rel);
  }
  return dir;
}

TEST(PretrainOnTrainedVq, KeepsTheVqGanTrainsTheTextEncoderOnListCaptions) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path data = make_emoji_like_set(tmp / "set", 16);
  const fs::path model = config_folder_with_vq(tmp / "init");
  const fs::path out = tmp / "run";
  auto r = gt::run_cli("train -m '" + model.string() + "' --data '" + data.string() + "' --output '" + out.string() +
                       "' --split train --caption-key captions --train-text-encoder --pre-encode --center-crop "
                       "--cond-dropout-prob 0.5 --max-steps 3 --batch-size 2 --threads 1 --checkpointing-steps 10");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("vqvae loaded from"), std::string::npos) << r.err;
  const auto vq_a = amused::io::load_safetensors(model / "vqvae/diffusion_pytorch_model.safetensors");
  const auto vq_b = amused::io::load_safetensors(out / "vqvae/diffusion_pytorch_model.safetensors");
  for (const auto& [k, t] : vq_a) EXPECT_TRUE(torch::equal(t, vq_b.at(k))) << k;
  EXPECT_TRUE(fs::is_regular_file(out / "text_encoder/model.safetensors"));
  // Transformer weights without a VQ-GAN's: refused before step 1, naming the missing part.
  gt::TempDir tmp2;
  const fs::path half = config_folder_with_vq(tmp2 / "m");
  fs::copy_file(gt::golden_path("models/tiny-a/transformer/diffusion_pytorch_model.safetensors"),
                half / "transformer/diffusion_pytorch_model.safetensors");
  auto bad = gt::run_cli("train -m '" + half.string() + "' --data '" + data.string() + "' --output '" +
                         (tmp2 / "o").string() + "' --max-steps 1");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("text_encoder"), std::string::npos) << bad.err;
}

TEST(PretrainOnTrainedVq, ResumingAFinishedRunReportsItsFinalLoss) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path data = make_emoji_like_set(tmp / "set", 16);
  const fs::path model = config_folder_with_vq(tmp / "init");
  const std::string args = "train -m '" + model.string() + "' --data '" + data.string() + "' --output '" +
                           (tmp / "run").string() + "' --max-steps 2 --batch-size 2 --threads 1 --resume";
  auto first = gt::run_cli(args);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  auto again = gt::run_cli(args);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out.find("nan"), std::string::npos) << again.out;
  const auto at = [](const std::string& out) { return out.substr(out.find("final loss")); };
  EXPECT_EQ(at(first.out).substr(0, 17), at(again.out).substr(0, 17)) << first.out << again.out;
}

// ------------------------------------------------------------------------------ convert

TEST(Convert, Float16FilesUnderThePlainNamesThatLoadAndGenerateLikeTheOriginal) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path src = gt::golden_path("models/tiny-a");
  amused::ConvertOptions o;
  o.model = src.string();
  o.output = (tmp / "half").string();
  const auto s = amused::convert_pipeline(o);
  EXPECT_GT(s.parameters, 0);
  for (const char* f : {"transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                        "vqvae/diffusion_pytorch_model.safetensors"}) {
    const auto sd = amused::io::load_safetensors(tmp / "half" / f);
    for (const auto& [k, t] : sd)
      if (torch::isFloatingType(t.scalar_type())) EXPECT_EQ(t.scalar_type(), torch::kFloat16) << f << " " << k;
  }
  EXPECT_EQ(amused::read_json_file(tmp / "half/text_encoder/config.json")["torch_dtype"], "float16");
  EXPECT_EQ(file_bytes(tmp / "half/tokenizer/vocab.json"), file_bytes(src / "tokenizer/vocab.json"));
  auto a = gt::run_cli("generate -m '" + src.string() + "' -p cat --seed 3 --dtype float32 --steps 4 -o '" +
                       (tmp / "a.png").string() + "' -q --offline");
  auto b = gt::run_cli("generate -m '" + (tmp / "half").string() + "' -p cat --seed 3 --dtype float32 --steps 4 -o '" +
                       (tmp / "b.png").string() + "' -q --offline");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(amused::load_image(tmp / "a.png").width, amused::load_image(tmp / "b.png").width);
  // Bad requests name the option.
  EXPECT_THROW(amused::parse_dtype("int8"), amused::InvalidArgument);
  o.dtype = amused::DType::BFloat16;  // a format the converter does not write
  EXPECT_THROW(amused::convert_pipeline(o), amused::InvalidArgument);
  o.dtype = amused::DType::Float32;
  o.variant = "fp16";
  EXPECT_THROW(amused::convert_pipeline(o), amused::InvalidArgument);
  o.variant.clear();
  o.output = src.string();
  EXPECT_THROW(amused::convert_pipeline(o), amused::InvalidArgument);
}

// ------------------------------------------------------------------------------ eval

TEST(Eval, ScoresEverySetWritesTheReportAndCurves) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path data = make_emoji_like_set(tmp / "set", 16);
  amused::EvalOptions o;
  o.model = gt::golden_path("models/tiny-a").string();
  o.data = data.string();
  o.output = (tmp / "eval").string();
  o.load.dtype = amused::DType::Float32;
  o.load.threads = 1;
  o.load.offline = true;
  o.samples = 3;
  o.curve_samples = 2;
  o.steps = 2;
  o.steps_curve = {1, 2};
  o.guidance_curve = {1, 3};
  o.batch_size = 2;
  int64_t last_done = 0, total = 0;
  o.progress = [&](const std::string&, int64_t done, int64_t all) {
    EXPECT_GT(done, last_done);
    last_done = done;
    total = all;
  };
  const auto r = amused::evaluate(o);
  ASSERT_EQ(r.scores.size(), 4u);
  EXPECT_EQ(r.scores[0].set, "train");
  EXPECT_EQ(r.scores[0].n, 3);
  EXPECT_EQ(r.scores[1].n, 3);
  EXPECT_EQ(r.scores[2].n, 2);  // the validation rows
  EXPECT_EQ(r.scores[3].n, 1);  // thumbs up: dark skin tone (its family is in the set)
  for (const auto& s : r.scores) {
    EXPECT_GE(s.top1, 0);
    EXPECT_LE(s.top1, s.top5);
    EXPECT_LE(s.top5, 1);
  }
  EXPECT_EQ(last_done, total);
  EXPECT_EQ(total, 3 + 3 + 2 + 2 * 4);
  ASSERT_EQ(r.steps_curve.size(), 2u);
  ASSERT_EQ(r.guidance_curve.size(), 2u);
  EXPECT_GT(r.images_per_second, 0);
  for (const char* f : {"report.md", "results.json", "train-and-paraphrase.png", "held-out.png",
                        "accuracy-vs-steps.svg", "accuracy-vs-guidance.svg"})
    EXPECT_TRUE(fs::is_regular_file(tmp / "eval" / f)) << f;
  const auto j = amused::read_json_file(tmp / "eval/results.json");
  EXPECT_EQ(j["scores"].size(), 4u);
  // The paraphrase is made of keywords, not the name.
  EXPECT_NE(file_bytes(tmp / "eval/report.md").find("fruit, apple"), std::string::npos);
  // Not an emoji set: a clear error.
  o.data = tmp.path().string();
  EXPECT_THROW(amused::evaluate(o), amused::IoError);
}

// ------------------------------------------------------------------------------ the default model

TEST(DefaultModel, GenerateWithoutModelUsesAmusedModel) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  gt::ScopedEnv env("AMUSED_MODEL", gt::golden_path("models/tiny-a").string());
  auto r = gt::run_cli("generate -p cat --seed 1 --steps 2 --dtype float32 -o '" + (tmp / "a.png").string() +
                       "' -q --offline");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ref = gt::run_cli("generate -m '" + gt::golden_path("models/tiny-a").string() +
                         "' -p cat --seed 1 --steps 2 --dtype float32 -o '" + (tmp / "b.png").string() + "' -q --offline");
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  EXPECT_EQ(amused::load_image(tmp / "a.png").pixels, amused::load_image(tmp / "b.png").pixels);
  gt::ScopedEnv missing("AMUSED_MODEL", (tmp / "nowhere").string());
  auto bad = gt::run_cli("generate -p cat -o '" + (tmp / "c.png").string() + "' -q --offline");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("nowhere"), std::string::npos) << bad.err;
}

TEST(GenerateQuiet, PrintsNothingButErrorsLibraryMessagesIncluded) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const std::string base = "generate -m '" + gt::golden_path("models/tiny-a").string() +
                           "' -p cat --seed 1 --steps 1 --threads 100000 -o '" + (tmp / "a.png").string() + "' --offline";
  auto loud = gt::run_cli(base);
  ASSERT_EQ(loud.exit_code, 0) << loud.err;
  EXPECT_NE(loud.err.find("threads"), std::string::npos) << "the library warns about --threads 100000";
  auto quiet = gt::run_cli(base + " --quiet");
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(quiet.err, "");
  EXPECT_EQ(quiet.out, "");
}

TEST(DefaultModel, GenerationConfigSetsTheDefaultsTheFlagsDoNotGive) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path m = tmp / "m";
  fs::copy(gt::golden_path("models/tiny-a"), m, fs::copy_options::recursive);
  {
    std::ofstream f(m / "generation_config.json");
    f << R"({"guidance_scale": 1.5, "num_inference_steps": 3})";
  }
  const std::string base = "generate -m '" + m.string() + "' -p cat --seed 1 --dtype float32 -o '" +
                           (tmp / "a.png").string() + "' --json --offline";
  auto r = gt::run_cli(base);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["steps"], 3);
  EXPECT_EQ(j["guidance_scale"], 1.5);
  r = gt::run_cli(base + " --steps 2 --guidance 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["steps"], 2);
  EXPECT_EQ(j["guidance_scale"], 4.0);
  {
    std::ofstream f(m / "generation_config.json");
    f << R"({"num_inference_steps": "many"})";
  }
  r = gt::run_cli(base);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("generation_config.json"), std::string::npos) << r.err;
}

}  // namespace
