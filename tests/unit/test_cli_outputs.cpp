// `amused generate`'s outputs under signals, stale temporaries and awkward names (issue 20, items
// 4 and 5): the previous files or the complete new set, never a mix; no temporary left behind.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/golden.h"

namespace fs = std::filesystem;
namespace gt = amused::testing;

namespace {

std::string tiny() { return gt::golden_path("models/tiny-a").string(); }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> temporaries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(".amused-tmp.", 0) == 0) out.push_back(e.path().filename());
  return out;
}

// Starts the CLI, sends `sig` after `delay`, returns the exit status (gt::run_cli_signalled).
int run_cli_interrupted(const std::string& args, std::chrono::milliseconds delay, int sig) {
  const auto start = std::chrono::steady_clock::now();
  return gt::run_cli_signalled(args, sig, [&] { return std::chrono::steady_clock::now() - start >= delay; });
}

}  // namespace

// SIGINT or SIGTERM at any moment: finished before it came, or 128 + signal with the previous
// files untouched, or (when it landed while the files were being written) the complete new set.
TEST(CliOutputs, InterruptedGenerateLeavesTheOldSetOrTheNewOne) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const int n = 16;
  int interrupted = 0;
  for (const auto& [delay, sig] : std::vector<std::pair<int, int>>{{300, SIGINT}, {900, SIGTERM}, {1800, SIGINT}}) {
    for (int i = 0; i < n; ++i) std::ofstream(tmp / ("o-" + std::to_string(i) + ".png")) << "old";
    const int code = run_cli_interrupted("generate -m '" + tiny() + "' -p 'a cat' -p 'a dog' --num-images 8 "
                                         "--steps 300 --seed 1 --threads 1 -q -o '" +
                                             (tmp / "o.png").string() + "' --save-tokens '" +
                                             (tmp / "t.safetensors").string() + "'",
                                         std::chrono::milliseconds(delay), sig);
    SCOPED_TRACE("delay " + std::to_string(delay) + " ms, signal " + std::to_string(sig) + ", exit " +
                 std::to_string(code));
    // 256 + signal: it arrived before the command had started generating (the default action
    // ended it; nothing had been written).
    // -1: it had ended by itself before the signal was due.
    ASSERT_TRUE(code == -1 || code == 128 + sig || code == 256 + sig) << "neither finished nor interrupted";
    EXPECT_TRUE(temporaries(tmp.path()).empty());
    int old_files = 0;
    for (int i = 0; i < n; ++i) old_files += slurp(tmp / ("o-" + std::to_string(i) + ".png")) == "old";
    const bool tokens = fs::exists(tmp / "t.safetensors");
    if (code == -1) {
      EXPECT_EQ(old_files, 0);
      EXPECT_TRUE(tokens);
    } else {
      ++interrupted;
      // Interrupted: all old (no token file), or the new set complete (written before it exited).
      EXPECT_TRUE((old_files == n && !tokens) || (old_files == 0 && tokens)) << old_files << " old files";
    }
    fs::remove(tmp / "t.safetensors");
  }
  // 16 images x 300 steps take seconds: at least the first signal lands before the end.
  EXPECT_GE(interrupted, 1);
}

// A writer killed with SIGKILL leaves its temporaries; the next run in that folder removes those
// of dead processes (and leaves a live writer's alone).
TEST(CliOutputs, StaleTemporariesOfKilledWritersAreRemoved) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const fs::path stale = tmp / (".amused-tmp." + std::to_string(dead) + ".0.1.o.png");
  const fs::path live = tmp / (".amused-tmp." + std::to_string(::getpid()) + ".0.1.o.png");
  std::ofstream(stale) << "half";
  std::ofstream(live) << "being written";
  const auto r = gt::run_cli("generate -m '" + tiny() + "' -p 'a cat' --steps 2 --seed 1 -q -o '" +
                             (tmp / "o.png").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(tmp / "o.png"));
}

// A valid 250-byte file name works (its temporary used to overflow NAME_MAX after the whole
// generation); one over NAME_MAX, two outputs for one file and a numbered output that is a
// folder are refused before the model loads, with the old files untouched.
TEST(CliOutputs, OutputNamesAreCheckedBeforeTheWork) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const std::string gen = "generate -m '" + tiny() + "' -p 'a cat' --steps 2 --seed 1 -q ";
  const fs::path long_name = tmp / (std::string(246, 'a') + ".png");
  auto r = gt::run_cli(gen + "-o '" + long_name.string() + "'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(long_name));

  r = gt::run_cli(gen + "-o '" + (tmp / (std::string(300, 'b') + ".png")).string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("the limit is"), std::string::npos) << r.err;

  std::ofstream(tmp / "x.png") << "old";
  r = gt::run_cli(gen + "-o '" + (tmp / "x.png").string() + "' --save-tokens '" + (tmp / "x.png").string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("written twice"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(tmp / "x.png"), "old");

  // -o y.png with two images writes y-0.png and y-1.png; y-1.png is a folder.
  std::ofstream(tmp / "y-0.png") << "old";
  fs::create_directories(tmp / "y-1.png");
  r = gt::run_cli(gen + "--num-images 2 -o '" + (tmp / "y.png").string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is a folder"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(tmp / "y-0.png"), "old");
  EXPECT_TRUE(temporaries(tmp.path()).empty());
}

// --json prints any path or prompt, even bytes that are not UTF-8 (it threw type_error.316).
TEST(CliOutputs, JsonOutputSurvivesNonUtf8Paths) {
  AMUSED_REQUIRE_GOLDEN();
  gt::TempDir tmp;
  const fs::path out = tmp / "caf\xe9.png";  // Latin-1 e-acute: not UTF-8
  const auto r = gt::run_cli("generate -m '" + tiny() + "' -p 'caf\xe9' --steps 2 --seed 1 --json -o '" +
                             out.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_NE(j["outputs"][0].get<std::string>().find("\xef\xbf\xbd"), std::string::npos);  // U+FFFD
  const auto inspect = gt::run_cli("inspect --json '" + out.string() + "'");
  EXPECT_EQ(inspect.exit_code, 0) << inspect.err;
  EXPECT_FALSE(nlohmann::json::parse(inspect.out, nullptr, false).is_discarded()) << inspect.out;
}
