// amused::inspect_model: what a pipeline folder holds, from its JSON files and safetensors headers
// alone (no model is constructed, no tensor data is read).
#include <map>

#include "amused/repo.h"
#include "core/config.h"
#include "io/diffusers_repo.h"
#include "io/safetensors.h"

namespace amused {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The key values shown per class, read through ConfigReader so a wrong type is the same clear
// ConfigError the model loaders give.
enum class Kind { Int, OptInt, Bool, Number, String, IntList, Token };
struct Key {
  const char* name;
  Kind kind;
};

const std::map<std::string, std::vector<Key>>& key_tables() {
  static const std::map<std::string, std::vector<Key>> t = {
      {"UVit2DModel",
       {{"hidden_size", Kind::Int},
        {"num_hidden_layers", Kind::Int},
        {"num_attention_heads", Kind::Int},
        {"intermediate_size", Kind::Int},
        {"block_out_channels", Kind::Int},
        {"block_num_heads", Kind::Int},
        {"num_res_blocks", Kind::Int},
        {"in_channels", Kind::Int},
        {"encoder_hidden_size", Kind::Int},
        {"cond_embed_dim", Kind::Int},
        {"codebook_size", Kind::Int},
        {"vocab_size", Kind::Int},
        {"sample_size", Kind::Int},
        {"downsample", Kind::Bool},
        {"upsample", Kind::Bool}}},
      {"VQModel",
       {{"block_out_channels", Kind::IntList},
        {"layers_per_block", Kind::Int},
        {"latent_channels", Kind::Int},
        {"num_vq_embeddings", Kind::Int},
        {"vq_embed_dim", Kind::OptInt},
        {"norm_num_groups", Kind::Int},
        {"sample_size", Kind::Int},
        {"scaling_factor", Kind::Number},
        {"lookup_from_codebook", Kind::Bool}}},
      {"CLIPTextModelWithProjection",
       {{"hidden_size", Kind::Int},
        {"num_hidden_layers", Kind::Int},
        {"num_attention_heads", Kind::Int},
        {"intermediate_size", Kind::Int},
        {"projection_dim", Kind::Int},
        {"vocab_size", Kind::Int},
        {"max_position_embeddings", Kind::Int},
        {"hidden_act", Kind::String},
        {"eos_token_id", Kind::Int}}},
      {"AmusedScheduler", {{"mask_token_id", Kind::Int}, {"masking_schedule", Kind::String}}},
      {"CLIPTokenizer", {{"model_max_length", Kind::Int}, {"pad_token", Kind::Token}}},
  };
  return t;
}

std::string read_key(ConfigReader& r, const Key& k) {
  switch (k.kind) {
    case Kind::Int: {
      int64_t v = 0;
      r.field(k.name, v);
      return std::to_string(v);
    }
    case Kind::OptInt: {
      std::optional<int64_t> v;
      r.field(k.name, v);
      return v ? std::to_string(*v) : "null";
    }
    case Kind::Bool: {
      bool v = false;
      r.field(k.name, v);
      return v ? "true" : "false";
    }
    case Kind::Number: {
      double v = 0;
      r.field(k.name, v);
      return json(v).dump();
    }
    case Kind::String: {
      std::string v;
      r.field(k.name, v);
      return json(v).dump();
    }
    case Kind::IntList: {
      std::vector<int64_t> v;
      r.field(k.name, v);
      return json(v).dump();
    }
    case Kind::Token: {  // a string, or an AddedToken dict with "content"
      const auto& j = r.raw()[k.name];
      if (j.is_object() && j.contains("content") && j["content"].is_string())
        return j["content"].dump();
      std::string v;
      r.field(k.name, v);
      return json(v).dump();
    }
  }
  return "";
}

ComponentInfo inspect_component(const io::DiffusersRepo& repo, const std::string& name) {
  ComponentInfo c;
  c.name = name;
  std::tie(c.library, c.class_name) = repo.component_class(name);
  c.path = repo.component_dir(name).string();
  const fs::path config_path = repo.component_config_path(name);
  c.config_file = config_path.filename().string();
  const json config = repo.component_config(name);
  // Transformers configs name their class in "architectures"; diffusers ones in _class_name.
  std::vector<std::string> alternatives;
  if (c.class_name == "CLIPTextModelWithProjection") alternatives = {"CLIPTextModel"};
  ConfigReader reader(config, config_path.string(), c.class_name, alternatives);
  if (auto it = key_tables().find(c.class_name); it != key_tables().end()) {
    for (const auto& k : it->second)
      if (config.contains(k.name)) c.config.emplace_back(k.name, read_key(reader, k));
  }
  std::error_code ec;
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer.json", "special_tokens_map.json"})
    if (fs::is_regular_file(fs::path(c.path) / f, ec) && c.config_file != f) c.files.push_back(f);

  const bool without_weights = c.class_name.find("Scheduler") != std::string::npos ||
                               c.class_name.find("Tokenizer") != std::string::npos;
  if (without_weights) return c;
  std::map<std::string, int64_t> dtypes;
  for (const auto& f : repo.weight_files(name)) {
    const auto file = io::SafeTensorsFile::open(f);
    WeightFileInfo w;
    w.path = f.string();
    w.size_bytes = file->file_size();
    w.tensor_count = static_cast<int64_t>(file->keys().size());
    for (const auto& key : file->keys()) {
      const auto& info = file->info(key);
      int64_t n = 1;
      for (auto d : info.shape) n *= d;
      c.parameter_count += n;
      ++dtypes[info.dtype];
    }
    c.tensor_count += w.tensor_count;
    c.weight_files.push_back(std::move(w));
  }
  c.dtypes.assign(dtypes.begin(), dtypes.end());
  return c;
}

}  // namespace

ModelInfo inspect_model(const std::string& model, const RepoOptions& options) {
  const auto repo = io::DiffusersRepo::open(model, options);
  ModelInfo info;
  info.model = model;
  info.path = fs::absolute(repo.root()).lexically_normal().string();
  info.from_hub_cache = repo.from_hub_cache();
  info.variant = options.variant;
  const auto& mi = repo.model_index();
  if (mi.contains("_class_name") && mi["_class_name"].is_string())
    info.pipeline_class = mi["_class_name"].get<std::string>();
  if (mi.contains("_diffusers_version") && mi["_diffusers_version"].is_string())
    info.diffusers_version = mi["_diffusers_version"].get<std::string>();
  for (const auto& name : repo.component_names()) {
    info.components.push_back(inspect_component(repo, name));
    info.total_parameters += info.components.back().parameter_count;
    for (const auto& w : info.components.back().weight_files)
      info.total_weight_bytes += w.size_bytes;
  }
  return info;
}

std::string model_info_json(const ModelInfo& info) {
  nlohmann::ordered_json j;
  j["model"] = info.model;
  j["path"] = info.path;
  j["from_hub_cache"] = info.from_hub_cache;
  j["pipeline_class"] = info.pipeline_class;
  j["diffusers_version"] = info.diffusers_version;
  j["variant"] = info.variant;
  j["total_parameters"] = info.total_parameters;
  j["total_weight_bytes"] = info.total_weight_bytes;
  j["components"] = nlohmann::ordered_json::array();
  for (const auto& c : info.components) {
    nlohmann::ordered_json cj;
    cj["name"] = c.name;
    cj["library"] = c.library;
    cj["class_name"] = c.class_name;
    cj["path"] = c.path;
    cj["config_file"] = c.config_file;
    cj["config"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : c.config) cj["config"][k] = nlohmann::ordered_json::parse(v);
    cj["files"] = c.files;
    cj["weight_files"] = nlohmann::ordered_json::array();
    for (const auto& w : c.weight_files)
      cj["weight_files"].push_back(
          {{"path", w.path}, {"size_bytes", w.size_bytes}, {"tensor_count", w.tensor_count}});
    cj["tensor_count"] = c.tensor_count;
    cj["parameter_count"] = c.parameter_count;
    cj["dtypes"] = nlohmann::ordered_json::object();
    for (const auto& [d, n] : c.dtypes) cj["dtypes"][d] = n;
    j["components"].push_back(std::move(cj));
  }
  return j.dump(2);
}

std::string resolve_model_path(const std::string& model, const RepoOptions& options) {
  return io::DiffusersRepo::open(model, options).root().string();
}

}  // namespace amused
