// A diffusers pipeline folder: model_index.json plus one sub-folder per component, each with its
// config and (for models) safetensors weights, optionally in a variant (`<name>.fp16.safetensors`)
// or sharded (`<name>.safetensors.index.json` + weight_map). Local folders and hub repo ids
// (resolved through the Hugging Face cache, see hf_hub.h) are both accepted.
// Ref: diffusers/pipelines/pipeline_utils.py (DiffusionPipeline.from_pretrained / download),
//      diffusers/models/modeling_utils.py (weight file names, variants, sharding).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "amused/repo.h"
#include "io/safetensors.h"

namespace amused::io {

using amused::RepoOptions;

class DiffusersRepo {
 public:
  // `model` is a local folder, or a hub repo id like "amused/amused-256" resolved from the HF cache
  // (downloaded if absent and not offline).
  static DiffusersRepo open(const std::string& model, const RepoOptions& options = {});

  const std::filesystem::path& root() const { return root_; }
  const nlohmann::json& model_index() const { return model_index_; }
  const std::string& variant() const { return variant_; }
  bool from_hub_cache() const { return from_hub_; }

  // Components listed in model_index.json with a [library, class] pair (sorted by name).
  std::vector<std::string> component_names() const;
  bool has_component(const std::string& name) const;
  // {library, class} from model_index.json ({"", ""} when not listed).
  std::pair<std::string, std::string> component_class(const std::string& name) const;
  // Error naming the missing folder.
  std::filesystem::path component_dir(const std::string& name) const;
  // The config file of a component: config.json for models, scheduler_config.json for schedulers,
  // tokenizer_config.json for tokenizers (which also have vocab/merges files beside it).
  std::filesystem::path component_config_path(const std::string& name) const;
  nlohmann::json component_config(const std::string& name) const;
  // The safetensors files of a component in the requested variant (shards in index order).
  std::vector<std::filesystem::path> weight_files(const std::string& name) const;
  // All tensors of those files (memory-mapped, zero-copy); a key in two shards is an error.
  StateDict component_weights(const std::string& name) const;

 private:
  std::filesystem::path root_;
  nlohmann::json model_index_;
  std::string variant_;
  bool from_hub_ = false;
};

// One model folder on its own (e.g. `transformer/`): its safetensors files in `variant` (the single
// `<base>[.<variant>].safetensors`, or the shards its index names), and all their tensors
// (memory-mapped; a key in two shards is an error). `from_hub` adds a hint about incomplete
// downloads to the errors.
std::vector<std::filesystem::path> folder_weight_files(const std::filesystem::path& dir,
                                                       const std::string& variant = "", bool from_hub = false);
StateDict folder_weights(const std::filesystem::path& dir, const std::string& variant = "", bool from_hub = false);

// Pure helpers shared by the folder reader and the downloader (exposed for tests).

// Picks the weight files of one component from the file names in its folder: the single
// `<base>[.<variant>].safetensors` or the `<base>.safetensors.index[.<variant>].json` (returned
// alone; its weight_map names the shards). Empty when the folder holds no weights at all (e.g. a
// scheduler). Throws CheckpointError for a missing variant (listing the variants present) and
// Unsupported when only PyTorch pickles (.bin) exist. `where` names the folder in messages.
std::vector<std::string> choose_weight_files(const std::set<std::string>& names,
                                             const std::string& variant, const std::string& where);

// The hub files a pipeline needs, from the repo's file list and its model_index.json.
std::vector<std::string> pipeline_files(const nlohmann::json& model_index,
                                        const std::vector<std::string>& files,
                                        const std::string& variant, const std::string& repo_id);

}  // namespace amused::io
