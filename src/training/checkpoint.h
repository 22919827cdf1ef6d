// Training checkpoints that are never lost: each is a folder `OUT/checkpoint-N/` written in full
// beside its final name (`OUT/.checkpoint-N.partial/`), synced, and only then renamed into place,
// so a crash, a kill -9 or a full disk leaves the previous checkpoints untouched and no half
// checkpoint under a real name. The newest complete one is what --resume continues from.
// Ref: diffusers/examples/amused/train_amused.py (checkpoint-N folders, checkpoints_total_limit),
//      accelerate's save_state / load_state (what a checkpoint holds).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace amused::training {

// The file whose presence marks a complete checkpoint (written last inside it).
inline constexpr const char* kTrainerStateFile = "trainer_state.json";

class CheckpointManager {
 public:
  // `keep_last` <= 0 keeps every checkpoint.
  CheckpointManager(std::filesystem::path output_dir, int keep_last);

  // Writes `OUT/checkpoint-<step>` atomically: `write` fills the given (empty) folder, which is then
  // synced and renamed into place; an existing checkpoint of the same step is replaced only after
  // the new one is complete. Then the oldest checkpoints beyond `keep_last` are removed. Returns the
  // checkpoint's path. On failure nothing under a `checkpoint-N` name changes.
  std::filesystem::path save(int64_t step, const std::function<void(const std::filesystem::path&)>& write);

  // The complete checkpoints, oldest first.
  std::vector<std::filesystem::path> list() const;
  // The newest complete checkpoint, if any.
  std::optional<std::filesystem::path> latest() const;
  // Removes `.checkpoint-*.partial` folders a killed run left behind.
  void remove_stale_partials() const;

  // N of a `checkpoint-N` folder name.
  static std::optional<int64_t> step_of(const std::filesystem::path& dir);

 private:
  std::filesystem::path output_dir_;
  int keep_last_;
};

// AdamW's per-parameter state (step, exp_avg, exp_avg_sq) by parameter name, so a checkpoint is
// readable and does not depend on the order or the addresses of the parameters.
io::StateDict adamw_state(const torch::optim::Optimizer& optimizer,
                          const std::vector<std::pair<std::string, torch::Tensor>>& named_params);
// Restores what adamw_state saved into an optimizer built over the same named parameters. Throws
// CheckpointError naming the parameter when the state does not fit (missing, other shape).
void load_adamw_state(torch::optim::Optimizer& optimizer,
                      const std::vector<std::pair<std::string, torch::Tensor>>& named_params,
                      const io::StateDict& state, const std::string& source);

// A CPU generator's full state as a uint8 tensor, and back.
torch::Tensor generator_state(const at::Generator& generator);
void set_generator_state(at::Generator& generator, const torch::Tensor& state);

// Bytes free on the file system holding `path` (its nearest existing ancestor).
uint64_t free_bytes(const std::filesystem::path& path);

// Checks before step 1 that `output_dir` can be created and written (a probe file), and that its
// file system has room for `bytes_needed` (e.g. two checkpoints: the new one is written before an
// old one is removed). Throws IoError naming the folder and the shortfall.
void check_output_dir(const std::filesystem::path& output_dir, uint64_t bytes_needed);

}  // namespace amused::training
