// Checkpoints: atomic folders, keep-last-K, stale partial folders, and optimizer / generator state
// that round-trips exactly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "amused/error.h"
#include "schedulers/scheduling_amused.h"
#include "support/golden.h"
#include "training/checkpoint.h"

namespace {
namespace fs = std::filesystem;
using amused::training::CheckpointManager;

void write_marker(const fs::path& d, const std::string& text = "{}") {
  std::ofstream(d / amused::training::kTrainerStateFile) << text;
}

TEST(TrainCheckpoint, AtomicSaveKeepsTheLastK) {
  amused::testing::TempDir tmp;
  CheckpointManager m(tmp.path(), 2);
  for (int step : {10, 20, 30}) m.save(step, [](const fs::path& d) { write_marker(d); });
  const auto all = m.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].filename(), "checkpoint-20");
  EXPECT_EQ(all[1].filename(), "checkpoint-30");
  EXPECT_EQ(m.latest()->filename(), "checkpoint-30");
  EXPECT_EQ(CheckpointManager::step_of(all[1]), 30);
  EXPECT_FALSE(CheckpointManager::step_of("checkpoint-x").has_value());
}

TEST(TrainCheckpoint, AFailedWriteLeavesTheGoodOnesAndNoPartial) {
  amused::testing::TempDir tmp;
  CheckpointManager m(tmp.path(), 0);
  m.save(5, [](const fs::path& d) { write_marker(d, "good"); });
  EXPECT_THROW(m.save(5, [](const fs::path& d) {
    std::ofstream(d / "weights.bin") << "half";
    throw amused::IoError("disk full");
  }),
               amused::IoError);
  EXPECT_THROW(m.save(6, [](const fs::path&) { throw amused::IoError("disk full"); }), amused::IoError);
  ASSERT_EQ(m.list().size(), 1u);
  std::ifstream in(tmp / "checkpoint-5" / amused::training::kTrainerStateFile);
  std::string text;
  in >> text;
  EXPECT_EQ(text, "good");
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename().string().find("partial"), std::string::npos) << e.path();
  // Saving the same step again replaces it whole.
  m.save(5, [](const fs::path& d) { write_marker(d, "newer"); });
  std::ifstream in2(tmp / "checkpoint-5" / amused::training::kTrainerStateFile);
  in2 >> text;
  EXPECT_EQ(text, "newer");
}

TEST(TrainCheckpoint, IncompleteAndStaleFoldersAreIgnoredAndRemoved) {
  amused::testing::TempDir tmp;
  fs::create_directories(tmp / "checkpoint-99");  // no trainer_state.json: not complete
  fs::create_directories(tmp / ".checkpoint-100.partial");
  CheckpointManager m(tmp.path(), 0);
  EXPECT_FALSE(m.latest().has_value());
  m.remove_stale_partials();
  EXPECT_FALSE(fs::exists(tmp / ".checkpoint-100.partial"));
}

TEST(TrainCheckpoint, AdamWStateRoundTripsByName) {
  torch::manual_seed(0);
  auto make = [] {
    auto w = torch::randn({3, 4}).requires_grad_(true);
    auto b = torch::randn({4}).requires_grad_(true);
    return std::vector<std::pair<std::string, torch::Tensor>>{{"w", w}, {"b", b}};
  };
  auto step = [](torch::optim::AdamW& opt, const std::vector<std::pair<std::string, torch::Tensor>>& ps) {
    opt.zero_grad();
    auto loss = (ps[0].second.sum(1) * ps[1].second.slice(0, 0, 3)).pow(2).sum();
    loss.backward();
    opt.step();
  };
  auto a = make();
  torch::optim::AdamW opt_a({a[0].second, a[1].second}, torch::optim::AdamWOptions(0.01));
  step(opt_a, a);
  step(opt_a, a);
  const auto state = amused::training::adamw_state(opt_a, a);
  EXPECT_EQ(state.at("w.step").item<int64_t>(), 2);
  // A fresh optimizer over copies of the weights, given the state, continues identically.
  auto b = make();
  {
    torch::NoGradGuard g;
    b[0].second.copy_(a[0].second);
    b[1].second.copy_(a[1].second);
  }
  torch::optim::AdamW opt_b({b[0].second, b[1].second}, torch::optim::AdamWOptions(0.01));
  amused::training::load_adamw_state(opt_b, b, state, "test");
  step(opt_a, a);
  step(opt_b, b);
  EXPECT_TRUE(torch::equal(a[0].second, b[0].second));
  EXPECT_TRUE(torch::equal(a[1].second, b[1].second));
  // State for a parameter the model does not have is refused, naming the problem.
  auto extra = state;
  extra.emplace("ghost.exp_avg", torch::zeros({1}));
  EXPECT_THROW(amused::training::load_adamw_state(opt_b, b, extra, "test"), amused::CheckpointError);
  auto wrong = state;
  wrong["w.exp_avg"] = torch::zeros({2, 2});
  EXPECT_THROW(amused::training::load_adamw_state(opt_b, b, wrong, "test"), amused::CheckpointError);
}

TEST(TrainCheckpoint, GeneratorStateRoundTrips) {
  at::Generator g = amused::make_cpu_generator(7);
  torch::rand({5}, g);
  const auto saved = amused::training::generator_state(g);
  const auto expected = torch::rand({8}, g);
  at::Generator h = amused::make_cpu_generator(123);
  amused::training::set_generator_state(h, saved);
  EXPECT_TRUE(torch::equal(torch::rand({8}, h), expected));
}

TEST(TrainCheckpoint, OutputChecksFailBeforeTraining) {
  amused::testing::TempDir tmp;
  std::ofstream(tmp / "file") << "x";
  EXPECT_THROW(amused::training::check_output_dir(tmp / "file", 0), amused::IoError);
  EXPECT_NO_THROW(amused::training::check_output_dir(tmp / "run", 0));
  EXPECT_TRUE(fs::is_directory(tmp / "run"));
  try {
    amused::training::check_output_dir(tmp / "run", UINT64_MAX / 2);
    FAIL() << "expected a free-space error";
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("free"), std::string::npos) << e.what();
  }
}

}  // namespace
