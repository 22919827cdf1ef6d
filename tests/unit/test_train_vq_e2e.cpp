// `amused train-vq` end to end through the CLI on a tiny VQ (16 px images, 4x4 tokens): the run
// writes a VQModel folder that load_vqvae loads and decodes, with the JSONL log, the loss plot and
// the reconstruction grid; a run killed with SIGKILL resumes to the same losses and weights as an
// uninterrupted one; the discriminator and continuing from a VQ folder work; bad inputs fail
// before step 1 naming the flag or file.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>

#include "amused/image_io.h"
#include "core/config.h"
#include "io/safetensors.h"
#include "pipelines/components.h"
#include "support/golden.h"
#include "training/run_log.h"

namespace {
namespace fs = std::filesystem;
namespace gt = amused::testing;

// Plain images without captions: coloured squares and discs on a light background.
void make_images(const fs::path& dir, int size, int count) {
  fs::create_directories(dir);
  const uint8_t rgb[4][3] = {{220, 30, 30}, {30, 200, 40}, {40, 60, 220}, {230, 220, 30}};
  for (int i = 0; i < count; ++i) {
    amused::Image im;
    im.width = im.height = size;
    im.pixels.assign(static_cast<size_t>(size * size * 3), 245);
    const bool square = (i / 4) % 2 == 0;
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x) {
        const int dx = x - size / 2 + i % 3, dy = y - size / 2;
        if (square ? (std::abs(dx) < size / 3 && std::abs(dy) < size / 3) : (dx * dx + dy * dy < size * size / 9))
          for (int k = 0; k < 3; ++k) im.pixels[static_cast<size_t>((y * size + x) * 3 + k)] = rgb[i % 4][k];
      }
    amused::save_png(dir / ("img" + std::to_string(i) + ".png"), im);
  }
}

const std::string kTiny =
    " --block-out-channels 16,16,16 --layers-per-block 1 --latent-channels 8 --num-vq-embeddings 16"
    " --norm-num-groups 8 --resolution 16 --batch-size 4 --learning-rate 1e-3 --seed 3 --threads 1"
    " --validation-fraction 0.2 --quiet";

std::string args(const fs::path& data, const fs::path& out, int steps) {
  return "train-vq --data '" + data.string() + "' --output '" + out.string() + "' --max-steps " +
         std::to_string(steps) + kTiny;
}

std::vector<double> series(const fs::path& run, const std::string& key) {
  std::vector<double> out;
  for (const auto& [step, v] :
       amused::training::series_from_log(amused::training::read_step_log(run / "train_log.jsonl"), key))
    out.push_back(v);
  return out;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(TrainVqE2E, TrainsFromFlagsAndTheResultLoadsAndDecodes) {
  gt::TempDir tmp;
  make_images(tmp / "data", 16, 10);
  const fs::path out = tmp / "vq";
  auto r = gt::run_cli(args(tmp / "data", out, 40) + " --validation-steps 20 --checkpointing-steps 20");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("trained 40 steps"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PSNR"), std::string::npos) << r.out;
  const auto rec = series(out, "rec_loss");
  ASSERT_EQ(rec.size(), 40u);
  EXPECT_LT((rec[36] + rec[37] + rec[38] + rec[39]) / 4, 0.7 * (rec[0] + rec[1] + rec[2] + rec[3]) / 4);
  // Validation metrics at steps 20 and 40, on the 2 held-out images; the codebook is in use.
  const auto psnr = series(out, "val_psnr");
  ASSERT_EQ(psnr.size(), 2u);
  EXPECT_GT(psnr[1], 8.0);
  EXPECT_EQ(series(out, "val_images"), std::vector<double>({2, 2}));
  const auto used = series(out, "val_codes_used");
  EXPECT_GE(used.back(), 2);
  EXPECT_TRUE(fs::is_regular_file(out / "validation/step-40.png"));
  const auto grid = amused::load_image(out / "validation/step-20.png");
  EXPECT_EQ(grid.width, 2 * 16);
  EXPECT_EQ(grid.height, 2 * 16);
  EXPECT_TRUE(fs::is_regular_file(out / "loss.svg"));
  EXPECT_TRUE(fs::is_regular_file(out / "train_vq_config.toml"));
  EXPECT_TRUE(fs::is_regular_file(out / "checkpoint-20/codebook_state.safetensors"));
  EXPECT_FALSE(fs::exists(out / "checkpoint-40/discriminator.safetensors"));
  // A diffusers VQModel folder: VQModel's config keys, loaded by load_vqvae, decoding tokens.
  const auto cfg = amused::read_json_file(out / "config.json");
  const auto ref = amused::read_json_file(gt::golden_path("models/tiny-a/vqvae/config.json"));
  std::set<std::string> keys, ref_keys;
  for (const auto& [k, v] : cfg.items()) keys.insert(k);
  for (const auto& [k, v] : ref.items()) ref_keys.insert(k);
  EXPECT_EQ(keys, ref_keys);
  EXPECT_EQ(cfg["block_out_channels"], nlohmann::json({16, 16, 16}));
  auto vq = amused::load_vqvae(out);
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(0, 16, {1, 4, 4}, torch::kLong);
  EXPECT_EQ(vq->decode_tokens(ids).sizes(), torch::IntArrayRef({1, 3, 16, 16}));
  const auto weights = amused::io::load_safetensors(out / "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(weights.size(), vq->named_parameters().size());
  // A second run into the same folder without --resume is refused.
  auto again = gt::run_cli(args(tmp / "data", out, 40));
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.err.find("--resume"), std::string::npos) << again.err;
}

TEST(TrainVqE2E, KilledRunResumesToTheSameLossesAndWeights) {
  gt::TempDir tmp;
  make_images(tmp / "data", 16, 10);
  const int steps = 120;
  const std::string extra = " --checkpointing-steps 10 --checkpoints-total-limit 2 --dead-code-steps 5 --validation-steps 50";
  auto full = gt::run_cli(args(tmp / "data", tmp / "full", steps) + extra);
  ASSERT_EQ(full.exit_code, 0) << full.err;
  const fs::path out = tmp / "killed";
  const bool killed_mid_run = gt::run_cli_killed_mid_run(
      args(tmp / "data", out, steps) + extra,
      [&] { return fs::exists(out / "checkpoint-10" / "trainer_state.json"); },
      [&] { return fs::exists(out / "config.json"); });
  ASSERT_TRUE(killed_mid_run) << "the run ended before it could be killed";
  auto resumed = gt::run_cli(args(tmp / "data", out, steps) + extra + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed at"), std::string::npos) << resumed.out;
  EXPECT_EQ(series(out, "loss"), series(tmp / "full", "loss"));
  EXPECT_EQ(series(out, "val_psnr"), series(tmp / "full", "val_psnr"));
  EXPECT_GT(series(tmp / "full", "codes_restarted").size(), 0u);
  EXPECT_TRUE(file_bytes(out / "diffusion_pytorch_model.safetensors") ==
              file_bytes(tmp / "full" / "diffusion_pytorch_model.safetensors"));
}

// SIGTERM (a scheduler's stop, `kill`): the run writes a checkpoint at the step it reached and exits
// with 128 + 15; --resume goes on from that checkpoint to the end.
TEST(TrainVqE2E, SigtermWritesACheckpointAndExits143) {
  gt::TempDir tmp;
  make_images(tmp / "data", 16, 10);
  const fs::path out = tmp / "run";
  const std::string cmd = args(tmp / "data", out, 2000) + " --checkpointing-steps 10 --validation-steps 1000";
  const int code = gt::run_cli_signalled(cmd, SIGTERM,
                                         [&] { return fs::exists(out / "checkpoint-10" / "trainer_state.json"); });
  ASSERT_EQ(code, 128 + SIGTERM) << "the run ended before the signal, or did not handle it";
  // The stop checkpoint: the step it had reached (past 10), complete.
  int64_t last = 0;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 && fs::exists(e.path() / "trainer_state.json"))
      last = std::max<int64_t>(last, std::stoll(name.substr(11)));
  }
  EXPECT_GT(last, 10);
  EXPECT_FALSE(fs::exists(out / "config.json"));  // not finished
  auto resumed = gt::run_cli(args(tmp / "data", out, static_cast<int>(last) + 5) + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed at"), std::string::npos) << resumed.out;
  EXPECT_TRUE(fs::exists(out / "config.json"));
}

// --lr-scheduler: the learning rate follows the schedule (logged per step); a cosine decay ends
// near zero, a constant one stays put.
TEST(TrainVqE2E, LearningRateSchedule) {
  gt::TempDir tmp;
  make_images(tmp / "data", 16, 6);
  auto r = gt::run_cli(args(tmp / "data", tmp / "cos", 12) +
                       " --lr-scheduler cosine --lr-warmup-steps 2 --validation-steps 1000 --checkpointing-steps 1000");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lr = series(tmp / "cos", "lr");
  ASSERT_EQ(lr.size(), 12u);
  EXPECT_EQ(lr[0], 0.0);                     // warm-up starts at 0, as diffusers' schedules do
  EXPECT_NEAR(lr[2], 1e-3, 1e-12);           // the peak after 2 warm-up steps
  for (size_t i = 3; i < lr.size(); ++i) EXPECT_LT(lr[i], lr[i - 1]) << i;
  EXPECT_LT(lr.back(), 1e-3 * 0.05);
  r = gt::run_cli(args(tmp / "data", tmp / "const", 4) + " --validation-steps 1000 --checkpointing-steps 1000");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (double v : series(tmp / "const", "lr")) EXPECT_EQ(v, 1e-3);
  r = gt::run_cli(args(tmp / "data", tmp / "bad", 4) + " --lr-scheduler exponential");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("exponential"), std::string::npos) << r.err;
}

TEST(TrainVqE2E, DiscriminatorAndContinuingFromAVqFolder) {
  gt::TempDir tmp;
  make_images(tmp / "data", 16, 10);
  const fs::path a = tmp / "a";
  auto r = gt::run_cli(args(tmp / "data", a, 6) +
                       " --disc-weight 0.1 --disc-start 3 --disc-channels 8 --codebook-update gradient");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto d = series(a, "d_loss");
  EXPECT_EQ(d.size(), 3u);  // steps 4, 5, 6
  EXPECT_EQ(series(a, "codebook_loss").size(), 6u);
  EXPECT_TRUE(fs::is_regular_file(a / "checkpoint-6/discriminator.safetensors"));
  EXPECT_FALSE(fs::exists(a / "discriminator.safetensors"));  // only in checkpoints
  // Continue from the trained folder (-m): its weights are the start, not a fresh init.
  auto b = gt::run_cli("train-vq -m '" + a.string() + "' --data '" + (tmp / "data").string() + "' --output '" +
                       (tmp / "b").string() + "' --max-steps 2 --resolution 16 --batch-size 4 --threads 1 "
                       "--validation-fraction 0.2 --learning-rate 1e-9");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_NE(b.err.find("continuing"), std::string::npos) << b.err;
  const auto wa = amused::io::load_safetensors(a / "diffusion_pytorch_model.safetensors");
  const auto wb = amused::io::load_safetensors(tmp / "b" / "diffusion_pytorch_model.safetensors");
  EXPECT_TRUE(torch::allclose(wa.at("encoder.conv_in.weight"), wb.at("encoder.conv_in.weight"), 1e-4, 1e-5));
}

TEST(TrainVqE2E, BadInputsFailBeforeTheFirstStep) {
  gt::TempDir tmp;
  make_images(tmp / "data", 16, 4);
  {
    std::ofstream bad(tmp / "bad.json");
    bad << R"({"_class_name": "VQModel", "block_out_channels": [30, 60], "norm_num_groups": 32,
              "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
              "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]})";
  }
  struct Case {
    std::string args, needle;
  };
  const std::string data = " --data '" + (tmp / "data").string() + "' --resolution 16";
  const std::vector<Case> cases = {
      {" --data '" + (tmp / "nothing").string() + "' --resolution 16", "nothing"},
      {" --data '" + (tmp / "data").string() + "' --resolution 18", "--resolution"},
      {data + " -m '" + (tmp / "bad.json").string() + "'", "block_out_channels"},
      {data + " -m '" + (tmp / "missing").string() + "'", "-m"},
      {data + " --codebook-update sometimes", "--codebook-update"},
      {data + " --l1-weight 0 --l2-weight 0", "--l1-weight"},
      {data + " --validation-fraction 0", "--validation-fraction"},
      {data + " --block-out-channels 16,20 --norm-num-groups 8", "block_out_channels"},
  };
  int n = 0;
  for (const auto& c : cases) {
    const fs::path out = tmp / ("out" + std::to_string(n++));
    auto r = gt::run_cli("train-vq" + c.args + " --output '" + out.string() + "' --threads 1");
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_EQ(r.err.find("step 1"), std::string::npos) << c.args;
    EXPECT_FALSE(fs::exists(out / "train_log.jsonl")) << c.args;
  }
}

}  // namespace
