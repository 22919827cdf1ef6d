// `amused train` end to end on the tiny models, through the CLI exactly as a user runs it:
// pre-training a config from scratch (the loss falls, checkpoints are written, a run killed with
// SIGKILL resumes to the same losses and weights as an uninterrupted one, `amused generate` loads
// the result) and fine-tuning the tiny golden pipeline (its output laid out as diffusers writes it).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>

#include "amused/image_io.h"
#include "core/config.h"
#include "io/safetensors.h"
#include "support/golden.h"
#include "training/run_log.h"

namespace {
namespace fs = std::filesystem;
namespace gt = amused::testing;

// A small captioned image folder: coloured shapes on a plain background, `size` px.
void make_dataset(const fs::path& dir, int size, int count) {
  fs::create_directories(dir);
  const char* colours[] = {"red", "green", "blue", "yellow"};
  const uint8_t rgb[4][3] = {{220, 30, 30}, {30, 200, 40}, {40, 60, 220}, {230, 220, 30}};
  std::ofstream meta(dir / "metadata.jsonl");
  for (int i = 0; i < count; ++i) {
    amused::Image im;
    im.width = im.height = size;
    im.pixels.assign(static_cast<size_t>(size * size * 3), 245);
    const int c = i % 4;
    const bool square = (i / 4) % 2 == 0;
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x) {
        const int dx = x - size / 2, dy = y - size / 2;
        const bool inside = square ? (std::abs(dx) < size / 3 && std::abs(dy) < size / 3)
                                   : (dx * dx + dy * dy < size * size / 9);
        if (!inside) continue;
        for (int k = 0; k < 3; ++k) im.pixels[static_cast<size_t>((y * size + x) * 3 + k)] = rgb[c][k];
      }
    const std::string name = "img" + std::to_string(i) + ".png";
    amused::save_png(dir / name, im);
    meta << nlohmann::json{{"file_name", name},
                           {"text", std::string("a ") + colours[c] + (square ? " square" : " circle")}}
                .dump()
         << "\n";
  }
}

// tiny-a's configs and tokenizer without any weights: a model to pre-train from scratch.
fs::path make_config_folder(const fs::path& dir) {
  const fs::path src = gt::golden_path("models/tiny-a");
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    const auto rel = fs::relative(e.path(), src);
    if (e.is_directory()) fs::create_directories(dir / rel);
    else if (e.path().extension() != ".safetensors") fs::copy_file(e.path(), dir / rel);
  }
  return dir;
}

std::vector<double> losses(const fs::path& run) {
  std::vector<double> out;
  for (const auto& [step, loss] :
       amused::training::series_from_log(amused::training::read_step_log(run / "train_log.jsonl"), "loss"))
    out.push_back(loss);
  return out;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string train_args(const fs::path& model, const fs::path& data, const fs::path& out, int steps) {
  return "train -m '" + model.string() + "' --data '" + data.string() + "' --output '" + out.string() +
         "' --max-steps " + std::to_string(steps) +
         " --batch-size 4 --learning-rate 2e-3 --seed 5 --threads 1 --checkpointing-steps 10 "
         "--checkpoints-total-limit 2 --quiet";
}

TEST(TrainE2E, PretrainsFromConfigsLossFallsAndGenerateLoadsIt) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  make_dataset(tmp / "data", 16, 8);
  const fs::path model = make_config_folder(tmp / "config");
  const fs::path out = tmp / "run";
  auto r = gt::run_cli(train_args(model, tmp / "data", out, 40) + " --validation-prompt 'a red square'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("trained 40 steps"), std::string::npos) << r.out;
  const auto l = losses(out);
  ASSERT_EQ(l.size(), 40u);
  const double first = (l[0] + l[1] + l[2] + l[3]) / 4, last = (l[36] + l[37] + l[38] + l[39]) / 4;
  EXPECT_LT(last, 0.8 * first) << "loss did not fall: " << first << " -> " << last;
  // Checkpoints: the last two kept; the final pipeline, the plot, the config echo, validation.
  EXPECT_FALSE(fs::exists(out / "checkpoint-20"));
  EXPECT_TRUE(fs::is_regular_file(out / "checkpoint-30/trainer_state.json"));
  EXPECT_TRUE(fs::is_regular_file(out / "checkpoint-40/optimizer.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(out / "model_index.json"));
  EXPECT_TRUE(fs::is_regular_file(out / "loss.svg"));
  EXPECT_TRUE(fs::is_regular_file(out / "train_config.toml"));
  EXPECT_TRUE(fs::is_regular_file(out / "validation/step-40/0.png"));
  // `amused generate` loads the trained folder.
  auto g = gt::run_cli("generate -m '" + out.string() + "' -p 'a red square' --seed 1 --dtype float32 -o '" +
                       (tmp / "gen.png").string() + "' --quiet --offline");
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_TRUE(fs::is_regular_file(tmp / "gen.png"));
  // A second run into the same folder without --resume is refused: nothing is overwritten.
  auto again = gt::run_cli(train_args(model, tmp / "data", out, 40));
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.err.find("--resume"), std::string::npos) << again.err;
}

TEST(TrainE2E, KilledRunResumesToTheSameLossesAndWeights) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  make_dataset(tmp / "data", 16, 8);
  const fs::path model = make_config_folder(tmp / "config");
  const int steps = 120;
  // The uninterrupted run.
  auto full = gt::run_cli(train_args(model, tmp / "data", tmp / "full", steps));
  ASSERT_EQ(full.exit_code, 0) << full.err;
  // The same run, killed with SIGKILL once its first checkpoint exists, then resumed.
  const fs::path out = tmp / "killed";
  const bool killed_mid_run = gt::run_cli_killed_mid_run(
      train_args(model, tmp / "data", out, steps),
      [&] { return fs::exists(out / "checkpoint-10" / "trainer_state.json"); },
      [&] { return fs::exists(out / "model_index.json"); });
  ASSERT_TRUE(killed_mid_run) << "the run ended before it could be killed";
  auto resumed = gt::run_cli(train_args(model, tmp / "data", out, steps) + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed at"), std::string::npos) << resumed.out;
  // Same losses at every step (the log has each step once) and bit-identical final weights.
  EXPECT_EQ(losses(out), losses(tmp / "full"));
  for (const char* f : {"transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"})
    EXPECT_TRUE(file_bytes(out / f) == file_bytes(tmp / "full" / f)) << f;
}

TEST(TrainE2E, FineTunesTheGoldenPipelineIntoDiffusersLayout) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  make_dataset(tmp / "data", 16, 4);
  const fs::path src = gt::golden_path("models/tiny-a");
  const fs::path out = tmp / "ft";
  auto r = gt::run_cli(train_args(src, tmp / "data", out, 3) + " --use-ema --max-grad-norm 1 --lr-scheduler cosine "
                                                               "--lr-warmup-steps 1 --mixed-precision bf16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::set<std::string> expected, got;
  for (const auto& e : fs::recursive_directory_iterator(src))
    if (e.is_regular_file()) expected.insert(fs::relative(e.path(), src).string());
  for (const auto& e : fs::recursive_directory_iterator(out)) {
    const auto rel = fs::relative(e.path(), out).string();
    if (e.is_regular_file() && rel.find('/') != std::string::npos && rel.rfind("checkpoint-", 0) != 0 &&
        rel.rfind("validation", 0) != 0)
      got.insert(rel);
    else if (e.is_regular_file() && rel == "model_index.json")
      got.insert(rel);
  }
  EXPECT_EQ(got, expected);
  for (const char* f : {"transformer/config.json", "vqvae/config.json", "scheduler/scheduler_config.json"})
    EXPECT_EQ(amused::read_json_file(out / f), amused::read_json_file(src / f)) << f;
  // The VQ-GAN and the text encoder were frozen: saved unchanged.
  const auto vq_a = amused::io::load_safetensors(src / "vqvae/diffusion_pytorch_model.safetensors");
  const auto vq_b = amused::io::load_safetensors(out / "vqvae/diffusion_pytorch_model.safetensors");
  for (const auto& [k, t] : vq_a) EXPECT_TRUE(torch::equal(t, vq_b.at(k))) << k;
  // The transformer did change.
  const auto t_a = amused::io::load_safetensors(src / "transformer/diffusion_pytorch_model.safetensors");
  const auto t_b = amused::io::load_safetensors(out / "transformer/diffusion_pytorch_model.safetensors");
  EXPECT_FALSE(torch::equal(t_a.at("encoder_proj.weight"), t_b.at("encoder_proj.weight")));
}

TEST(TrainE2E, BadInputsFailBeforeTheFirstStep) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  make_dataset(tmp / "data", 16, 2);
  const fs::path src = gt::golden_path("models/tiny-a");
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {"--data '" + (tmp / "nothing").string() + "'", "nothing"},
      {"--data '" + (tmp / "data").string() + "' --resolution 15", "--resolution"},
      {"--data '" + (tmp / "data").string() + "' --lr-scheduler fancy", "fancy"},
      {"--data '" + (tmp / "data").string() + "' --max-steps 0", "--max-steps"},
      {"--data '" + (tmp / "data").string() + "' --pre-encode", "--center-crop"},
      {"--data '" + (tmp / "data").string() + "' --mixed-precision fp16", "CUDA"},
  };
  int n = 0;
  for (const auto& c : cases) {
    const fs::path out = tmp / ("out" + std::to_string(n++));
    auto r = gt::run_cli("train -m '" + src.string() + "' " + c.args + " --output '" + out.string() + "'");
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_EQ(r.err.find("step 1"), std::string::npos) << c.args;
    EXPECT_FALSE(fs::exists(out / "train_log.jsonl")) << c.args;
  }
}

// --config reads the flags' names from a TOML file, the command line wins, and the echoed
// train_config.toml reproduces the run.
TEST(TrainE2E, ConfigFileTakesTheFlagsNames) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  make_dataset(tmp / "data", 16, 4);
  const fs::path model = make_config_folder(tmp / "config");
  {
    std::ofstream cfg(tmp / "run.toml");
    cfg << "[train]\nmodel = \"" << model.string() << "\"\ndata = \"" << (tmp / "data").string()
        << "\"\nmax_steps = 7\nbatch-size = 2\nlearning-rate = 1e-3\nvalidation-prompt = [\"a red square\"]\n";
  }
  auto r = gt::run_cli("train --config '" + (tmp / "run.toml").string() + "' --output '" + (tmp / "a").string() +
                       "' --max-steps 3 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(losses(tmp / "a").size(), 3u);  // the flag won over the file's 7
  EXPECT_TRUE(fs::is_regular_file(tmp / "a/validation/step-3/0.png"));
  // The echo, given back, repeats the run exactly.
  auto again = gt::run_cli("train --config '" + (tmp / "a/train_config.toml").string() + "' --output '" +
                           (tmp / "b").string() + "' --quiet");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(losses(tmp / "b"), losses(tmp / "a"));
  // Unknown names are refused, naming them.
  {
    std::ofstream cfg(tmp / "bad.toml");
    cfg << "learning_rat = 1\n";
  }
  auto bad = gt::run_cli("train --config '" + (tmp / "bad.toml").string() + "'");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("learning_rat"), std::string::npos) << bad.err;
}

}  // namespace
