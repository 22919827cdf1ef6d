// Model folders and the Hugging Face hub: where a pipeline's files come from, and what is in them.
//
//   amused::RepoOptions opts;                       // revision "main", no variant, online
//   opts.variant = "fp16";
//   amused::ModelInfo info = amused::inspect_model("amused/amused-256", opts);
//   for (const auto& c : info.components) std::printf("%s: %s\n", c.name.c_str(),
//   c.class_name.c_str());
//
// A model is a local diffusers folder (model_index.json + one sub-folder per component) or a hub
// repo id ("amused/amused-256") resolved from the Hugging Face cache ($HF_HUB_CACHE, else
// $HF_HOME/hub, else ~/.cache/huggingface/hub), downloaded there when absent and not offline. The
// cache layout is the one huggingface_hub writes, so Python and C++ share downloads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "amused/error.h"

namespace amused {

struct RepoOptions {
  // Never touch the network (also when the environment has HF_HUB_OFFLINE=1).
  bool offline = false;
  // Hub branch, tag or commit (ignored for local folders).
  std::string revision = "main";
  // "" (the default weights) or e.g. "fp16" (the `<name>.fp16.safetensors` files).
  std::string variant;
  // Download progress: bytes of `file` done so far out of `total` (0 when unknown).
  std::function<void(const std::string& file, uint64_t done, uint64_t total)> progress;
};

struct WeightFileInfo {
  std::string path;         // absolute path (inside the snapshot for hub models)
  uint64_t size_bytes = 0;  // file size
  int64_t tensor_count = 0;
};

struct ComponentInfo {
  std::string name;        // folder name / model_index.json key ("transformer")
  std::string library;     // "diffusers", "transformers"
  std::string class_name;  // "UVit2DModel"
  std::string path;        // folder
  std::string
      config_file;  // config.json / scheduler_config.json / tokenizer_config.json ("" if none)
  // Key config values (hidden sizes, layers, codebook, sample_size, schedule...) as JSON text, in a
  // fixed order.
  std::vector<std::pair<std::string, std::string>> config;
  std::vector<std::string> files;            // other files of note (tokenizer vocab/merges)
  std::vector<WeightFileInfo> weight_files;  // empty for components without weights
  int64_t tensor_count = 0;
  int64_t parameter_count = 0;                          // elements over all tensors
  std::vector<std::pair<std::string, int64_t>> dtypes;  // safetensors dtype -> tensor count
};

struct ModelInfo {
  std::string model;              // what was asked for
  std::string path;               // resolved folder
  bool from_hub_cache = false;    // resolved through the Hugging Face cache
  std::string pipeline_class;     // model_index.json _class_name
  std::string diffusers_version;  // model_index.json _diffusers_version ("" if absent)
  std::string variant;
  std::vector<ComponentInfo> components;  // in model_index.json order (sorted by name)
  int64_t total_parameters = 0;
  uint64_t total_weight_bytes = 0;
};

// Resolves `model` (downloading if needed and allowed), reads model_index.json, every component's
// config and the headers of its weight files. Constructs no model. Throws amused::ConfigError /
// CheckpointError / IoError / Unsupported with one line naming the path.
ModelInfo inspect_model(const std::string& model, const RepoOptions& options = {});

// `info` as pretty-printed JSON (for `amused inspect --json`).
std::string model_info_json(const ModelInfo& info);

// Resolves `model` to a local folder the way every loader does (local path, or hub cache/download).
std::string resolve_model_path(const std::string& model, const RepoOptions& options = {});

}  // namespace amused
