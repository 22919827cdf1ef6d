// Golden-data access for tests: the manifest, its tensors, and comparisons that print useful
// diagnostics (max-abs, worst index, first values side by side).
//
// Golden folder: $AMUSED_GOLDEN_DIR, else ../shared/golden relative to the source tree.
// When it is missing: a failure under CI=true, otherwise the test is skipped with a message.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/types.h>
#include <vector>

#include "amused/pipeline.h"

namespace amused::testing {

std::filesystem::path golden_dir();
bool golden_available();
bool running_in_ci();

// The parsed manifest.json (cached).
const nlohmann::json& manifest();
// The case with this id; fails the test (throws) when absent.
const nlohmann::json& golden_case(const std::string& id);
// All cases of a kind ("tokenizer", "text_encoder", ...).
std::vector<nlohmann::json> golden_cases_of_kind(const std::string& kind);
// Loads the tensor behind a descriptor {"file","key",...} (a CPU tensor).
torch::Tensor golden_tensor(const nlohmann::json& descriptor);
// Absolute path of something inside the golden folder ("models/tiny-a").
std::filesystem::path golden_path(const std::string& relative);

// The reference key lists (../shared/docs/keys beside the golden folder).
std::filesystem::path keys_dir();

// Comparisons. `name` appears in the failure message.
::testing::AssertionResult tensors_equal(const torch::Tensor& actual, const torch::Tensor& expected,
                                         const std::string& name);
::testing::AssertionResult tensors_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                         double atol, double rtol, const std::string& name);
// Uses the descriptor's "tolerance" ({"kind": exact|allclose|max_abs_diff, ...}).
::testing::AssertionResult matches_descriptor(const torch::Tensor& actual, const nlohmann::json& descriptor,
                                              const std::string& name);

// Load options that reproduce the reference exactly (float32 on the CPU).
inline amused::LoadOptions reference_options() {
  amused::LoadOptions o;
  o.dtype = amused::DType::Float32;
  return o;
}

// Pipeline results as tensors: token grids -> int64 [B, h, w]; RGB images -> uint8 [B, H, W, 3].
torch::Tensor tokens_tensor(const std::vector<amused::TokenGrid>& grids);
torch::Tensor images_tensor(const std::vector<amused::Image>& images);

// A fresh empty temporary folder, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Runs the built `amused` CLI with `args` (shell-quoted by the caller), capturing stdout and stderr.
struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CliResult run_cli(const std::string& args);

// Starts the CLI with `args` (output discarded) and kills it with SIGKILL as soon as `kill_when()`
// holds, polling every few milliseconds (for at most a minute). Returns true when it was killed
// mid-run: `kill_when()` held and `finished()` (e.g. "the final output exists") did not yet.
bool run_cli_killed_mid_run(const std::string& args, const std::function<bool()>& kill_when,
                            const std::function<bool()>& finished);

// A copy of the golden model folder `name` ("models/tiny-a") at `to`, made of folders and symbolic
// links to the golden files (cheap); a test replaces the files it changes (remove the link first,
// never write through it). Returns `to`.
std::filesystem::path link_golden_model(const std::string& name, const std::filesystem::path& to);

// Starts argv[0] with argv (stdin from /dev/null; stdout and stderr to the files given, "" =
// /dev/null) in a child that the kernel kills (SIGKILL) if this test process dies first, so a
// crashed or killed test never leaves a server or a training run behind. Returns the child's pid,
// or -1 (errno set) when it cannot start.
pid_t spawn_tied_to_test(const std::vector<std::string>& argv, const std::string& stdout_path = "",
                         const std::string& stderr_path = "");

// Starts the CLI with `args` (output discarded), sends `sig` once `when()` holds (polled every few
// milliseconds, for at most a minute) and returns its exit status: 128 + n when it handled signal
// n and exited, 256 + n when the signal ended it, -1 when it ended before `when()` held.
int run_cli_signalled(const std::string& args, int sig, const std::function<bool()>& when);

}  // namespace amused::testing

// Skips (locally) or fails (CI=true) when the golden folder is absent.
#define AMUSED_REQUIRE_GOLDEN()                                                                   \
  do {                                                                                            \
    if (!::amused::testing::golden_available()) {                                                 \
      if (::amused::testing::running_in_ci()) {                                                   \
        FAIL() << "golden folder " << ::amused::testing::golden_dir()                             \
               << " is missing (CI=true); set AMUSED_GOLDEN_DIR";                                 \
      } else {                                                                                    \
        GTEST_SKIP() << "golden folder " << ::amused::testing::golden_dir()                       \
                     << " not found; set AMUSED_GOLDEN_DIR to run this test";                    \
      }                                                                                           \
    }                                                                                             \
  } while (0)
