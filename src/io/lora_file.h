// Reading and writing LoRA files in the layouts diffusers and peft use:
//   * diffusers' save_lora_weights: one `pytorch_lora_weights.safetensors` (or any .safetensors
//     file) with keys `transformer.<module>.lora_A.weight` / `.lora_B.weight` and, when the text
//     encoder was adapted, `text_encoder.<module>.lora_A.weight`; metadata {"format": "pt"};
//   * a peft adapter folder: `adapter_model.safetensors` (keys
//     `base_model.model.<module>.lora_A.weight`) + `adapter_config.json` (r, lora_alpha,
//     target_modules, alpha_pattern).
// Alpha: peft folders give it in adapter_config.json. diffusers' files have none (its saver drops
// it) and its loader then uses lora_alpha = r, i.e. scale 1: so do we. Files written by amused.cpp
// also carry `amused_lora_alpha` / `amused_lora_rank` in their metadata, which we read (diffusers
// ignores them). Per-module `<module>.alpha` scalars (kohya-style network alphas) win over both.
// Ref: diffusers loaders/lora.py (save_lora_weights, lora_state_dict), utils/peft_utils.py
//      (get_peft_kwargs); peft utils/save_and_load.py, config.py.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "nn/lora.h"

namespace amused::io {

inline constexpr const char* kLoraWeightsFile = "pytorch_lora_weights.safetensors";

struct LoraFile {
  std::string source;  // the file read
  std::string format;  // "diffusers" | "peft"
  std::vector<nn::LoraLayerWeights> transformer, text_encoder;
  // How alpha was decided, for the log ("alpha 32 from the file's amused_lora_alpha", ...).
  std::string alpha_note;
};

// `path`: a .safetensors file, or a folder holding pytorch_lora_weights.safetensors or
// adapter_model.safetensors + adapter_config.json. Throws CheckpointError naming the file and key
// for keys it does not understand, unpaired A/B, and files with neither transformer nor text
// encoder layers.
LoraFile read_lora_file(const std::filesystem::path& path);

struct LoraSaveInfo {
  int64_t rank = 0;
  double alpha = 0;
  int64_t text_encoder_rank = 0;  // 0: no text encoder layers
  double text_encoder_alpha = 0;
};

// Writes `dir`/pytorch_lora_weights.safetensors atomically: the keys of diffusers'
// save_lora_weights ("transformer." / "text_encoder." + the adapters' state-dict names, float32),
// metadata {"format": "pt"} plus amused_lora_rank / amused_lora_alpha (and the text encoder's).
void save_lora_file(const std::filesystem::path& dir,
                    const std::map<std::string, torch::Tensor>& transformer_layers,
                    const std::map<std::string, torch::Tensor>& text_encoder_layers,
                    const LoraSaveInfo& info);

}  // namespace amused::io
