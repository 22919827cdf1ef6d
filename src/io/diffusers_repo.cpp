// Diffusers pipeline folders (local or from the Hugging Face cache); see diffusers_repo.h.
// Ref: diffusers/pipelines/pipeline_utils.py, diffusers/models/modeling_utils.py (_add_variant).
#include "io/diffusers_repo.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>

#include "amused/error.h"
#include "core/files.h"
#include "core/config.h"
#include "core/log.h"
#include "io/hf_hub.h"

namespace amused::io {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* const kWeightBases[] = {"diffusion_pytorch_model", "model"};
const char* const kPipelineClasses[] = {"AmusedPipeline", "AmusedImg2ImgPipeline",
                                        "AmusedInpaintPipeline"};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

// Everything but folders directly inside `dir`: files, symlinks to files (as in the hub cache),
// and what only looks like a file (a FIFO, a broken link), which the loaders then refuse by name.
std::set<std::string> list_files(const fs::path& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::error_code dec;
    if (!e.is_directory(dec)) out.insert(e.path().filename().string());
  }
  return out;
}

// Variant of a weight file name of a known base, "" for the default, nullopt if not one.
std::optional<std::string> weight_variant(const std::string& name) {
  for (const char* base_c : kWeightBases) {
    const std::string base = base_c;
    if (!starts_with(name, base + ".")) continue;
    const std::string rest = name.substr(base.size() + 1);
    if (rest == "safetensors" || rest == "safetensors.index.json") return std::string();
    if (ends_with(rest, ".safetensors") && rest.find('.') == rest.size() - 12 &&
        rest.find('-') == std::string::npos)
      return rest.substr(0, rest.size() - 12);  // <base>.<variant>.safetensors
    for (const std::string pre : {"safetensors.index.", "safetensors."}) {
      const std::string post = pre == "safetensors." ? ".index.json" : ".json";
      if (starts_with(rest, pre) && ends_with(rest, post) &&
          rest.size() > pre.size() + post.size()) {
        std::string v = rest.substr(pre.size(), rest.size() - pre.size() - post.size());
        if (v.find('.') == std::string::npos) return v;
      }
    }
  }
  return std::nullopt;
}

bool is_pickle_weight(const std::string& name) {
  return (starts_with(name, "pytorch_model") || starts_with(name, "diffusion_pytorch_model")) &&
         (ends_with(name, ".bin") || ends_with(name, ".bin.index.json") ||
          ends_with(name, ".ckpt"));
}

void check_variant_name(const std::string& variant) {
  for (char c : variant)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-')
      throw InvalidArgument(
          "--variant '" + variant +
          "' is invalid: expected a name like 'fp16' (letters, digits, '_', '-')");
}

// Components whose folders hold no weights.
bool class_without_weights(const std::string& cls) {
  return ends_with(cls, "Scheduler") || cls.find("Tokenizer") != std::string::npos ||
         cls.find("FeatureExtractor") != std::string::npos ||
         cls.find("ImageProcessor") != std::string::npos;
}

std::vector<std::string> listed_components(const json& model_index) {
  std::vector<std::string> out;
  for (const auto& [key, value] : model_index.items()) {
    if (key.empty() || key[0] == '_') continue;
    if (value.is_array() && value.size() == 2 && value[1].is_string()) out.push_back(key);
  }
  return out;
}

void check_pipeline_class(const json& model_index, const std::string& source) {
  if (!model_index.is_object())
    throw ConfigError(source + ": expected a JSON object, got " + model_index.type_name());
  if (!model_index.contains("_class_name")) return;
  const auto& c = model_index["_class_name"];
  if (!c.is_string())
    throw ConfigError(source + ": key '_class_name': expected a string, got " + c.dump());
  const std::string cls = c.get<std::string>();
  for (const char* ok : kPipelineClasses)
    if (cls == ok) return;
  throw ConfigError(
      source + ": _class_name is '" + cls +
      "', expected AmusedPipeline, AmusedImg2ImgPipeline or AmusedInpaintPipeline (is this an "
      "aMUSEd model?)");
}

// Whether a cached snapshot holds everything a pipeline needs (so no network is needed).
bool snapshot_complete(const fs::path& snap, const std::string& variant) {
  std::error_code ec;
  if (!fs::is_regular_file(snap / "model_index.json", ec)) return false;
  try {
    DiffusersRepo repo = DiffusersRepo::open(snap.string(), RepoOptions{true, "main", variant, {}});
    for (const auto& name : repo.component_names()) {
      repo.component_config_path(name);
      const auto cls = repo.component_class(name).second;
      if (class_without_weights(cls)) continue;
      for (const auto& f : repo.weight_files(name))
        if (!fs::is_regular_file(f, ec)) return false;
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

fs::path resolve_hub(const std::string& repo_id, const RepoOptions& options) {
  const fs::path cache = hub::cache_dir();
  const bool offline = options.offline || hub::offline_from_env();
  const std::string revision = options.revision.empty() ? "main" : options.revision;
  const fs::path repo_folder = hub::repo_cache_folder(cache, repo_id);
  std::error_code ec;
  if (auto commit = hub::cached_commit(cache, repo_id, revision)) {
    const fs::path snap = repo_folder / "snapshots" / *commit;
    if (fs::is_directory(snap, ec) && (offline || snapshot_complete(snap, options.variant)))
      return snap;
  }
  if (offline) {
    throw IoError("'" + repo_id + "' (revision " + revision +
                  ") is not in the Hugging Face cache ('" + repo_folder.string() +
                  "'), and offline mode is on (--offline or HF_HUB_OFFLINE=1): run once "
                  "without --offline to download it, or pass the path of a downloaded folder");
  }
  hub::DownloadOptions dopts;
  dopts.cache = cache;
  dopts.progress = options.progress;
  hub::HubClient client(dopts);
  const hub::RepoRevision rev = client.revision_info(repo_id, revision);
  if (std::find(rev.files.begin(), rev.files.end(), "model_index.json") == rev.files.end())
    throw ConfigError("hub repo '" + repo_id + "' (revision " + revision +
                      ") has no model_index.json: it is not a diffusers pipeline (expected e.g. "
                      "amused/amused-256)");
  client.write_ref(repo_id, revision, rev.commit);
  const fs::path index_path = client.download_file(repo_id, rev.commit, "model_index.json");
  const json model_index = read_json_file(index_path);
  check_pipeline_class(model_index, index_path.string());
  return client.download_files(repo_id, rev.commit,
                               pipeline_files(model_index, rev.files, options.variant, repo_id));
}

}  // namespace

// ----------------------------------------------------------------------------- helpers

std::vector<std::string> choose_weight_files(const std::set<std::string>& names,
                                             const std::string& variant, const std::string& where) {
  const std::string v = variant.empty() ? "" : "." + variant;
  for (const char* base : kWeightBases) {
    const std::string single = std::string(base) + v + ".safetensors";
    if (names.count(single)) return {single};
  }
  for (const char* base : kWeightBases) {
    std::vector<std::string> candidates;
    if (variant.empty()) {
      candidates = {std::string(base) + ".safetensors.index.json"};
    } else {
      candidates = {std::string(base) + ".safetensors.index." + variant + ".json",
                    std::string(base) + ".safetensors." + variant + ".index.json"};
    }
    for (const auto& c : candidates)
      if (names.count(c)) return {c};
  }
  std::set<std::string> variants;
  std::vector<std::string> pickles, other_safetensors;
  for (const auto& n : names) {
    if (auto found = weight_variant(n)) {
      variants.insert(found->empty() ? "default" : *found);
    } else if (is_pickle_weight(n)) {
      pickles.push_back(n);
    } else if (ends_with(n, ".safetensors") && n.find("-of-") == std::string::npos) {
      other_safetensors.push_back(n);
    }
  }
  const std::string expected =
      std::string("diffusion_pytorch_model") + v + ".safetensors or model" + v + ".safetensors";
  if (!variants.empty()) {
    const std::vector<std::string> present(variants.begin(), variants.end());
    throw CheckpointError(
        where + ": no " + (variant.empty() ? std::string("default") : "'" + variant + "'") +
        " weights (expected " + expected + "); variants present: " + join(present, ", ") +
        (variants.count("default") ? " (drop --variant for the default)"
                                   : " (pass --variant " + present.front() + ")"));
  }
  if (!pickles.empty()) {
    throw Unsupported(
        where + ": only PyTorch pickle weights found (" + join(pickles, ", ") +
        "); amused.cpp reads safetensors only: convert them, e.g. in Python load the pipeline and "
        "call save_pretrained(folder, safe_serialization=True)");
  }
  if (!other_safetensors.empty()) {
    throw CheckpointError(where + ": expected " + expected + ", found only " +
                          join(other_safetensors, ", ") +
                          " (rename the file, or save the component with save_pretrained)");
  }
  return {};
}

std::vector<std::string> pipeline_files(const json& model_index,
                                        const std::vector<std::string>& files,
                                        const std::string& variant, const std::string& repo_id) {
  std::vector<std::string> out = {"model_index.json"};
  for (const auto& name : listed_components(model_index)) {
    std::set<std::string> names;
    for (const auto& f : files) {
      if (!starts_with(f, name + "/")) continue;
      const std::string rest = f.substr(name.size() + 1);
      if (!rest.empty() && rest.find('/') == std::string::npos) names.insert(rest);
    }
    if (names.empty())
      throw ConfigError("hub repo '" + repo_id + "': model_index.json lists component '" + name +
                        "' but the repo has no '" + name + "/' folder");
    for (const auto& n : names)
      if ((ends_with(n, ".json") && n.find(".index") == std::string::npos) || ends_with(n, ".txt"))
        out.push_back(name + "/" + n);
    for (const auto& w : choose_weight_files(names, variant, repo_id + "/" + name))
      out.push_back(name + "/" + w);
  }
  return out;
}

// ----------------------------------------------------------------------------- DiffusersRepo

DiffusersRepo DiffusersRepo::open(const std::string& model, const RepoOptions& options) {
  check_variant_name(options.variant);
  DiffusersRepo repo;
  repo.variant_ = options.variant;
  std::error_code ec;
  const fs::path p(model);
  if (model.empty())
    throw InvalidArgument(
        "no model given: expected a diffusers folder or a hub repo id like amused/amused-256");
  if (fs::exists(p, ec)) {
    if (!fs::is_directory(p, ec))
      throw ConfigError(
          "model '" + model +
          "' is a file, expected a diffusers folder (model_index.json + component folders)");
    repo.root_ = p;
  } else if (hub::is_repo_id(model) && !starts_with(model, "./")) {
    try {
      repo.root_ = resolve_hub(model, options);
    } catch (const IoError& e) {
      // A mistyped relative folder also looks like a repo id: say both readings failed.
      throw IoError("no local folder '" + model + "', and as a hub repo id: " + e.what());
    }
    repo.from_hub_ = true;
  } else {
    throw ConfigError(
        "model folder '" + model +
        "' does not exist (expected a diffusers folder, or a hub repo id like amused/amused-256)");
  }
  const fs::path index = repo.root_ / "model_index.json";
  if (const std::string problem = input_file_problem(index);
      !problem.empty() && !is_absent_problem(problem))
    throw ConfigError("'" + index.string() + "' " + problem);
  if (!fs::is_regular_file(index, ec))
    throw ConfigError(
        "'" + repo.root_.string() +
        "' has no model_index.json: expected a diffusers pipeline folder (model_index.json beside "
        "scheduler/, text_encoder/, tokenizer/, transformer/, vqvae/)");
  repo.model_index_ = read_json_file(index);
  check_pipeline_class(repo.model_index_, index.string());
  return repo;
}

std::vector<std::string> DiffusersRepo::component_names() const {
  return listed_components(model_index_);
}

bool DiffusersRepo::has_component(const std::string& name) const {
  const auto names = component_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::pair<std::string, std::string> DiffusersRepo::component_class(const std::string& name) const {
  if (!has_component(name)) return {"", ""};
  const auto& v = model_index_[name];
  return {v[0].is_string() ? v[0].get<std::string>() : "", v[1].get<std::string>()};
}

fs::path DiffusersRepo::component_dir(const std::string& name) const {
  const fs::path dir = root_ / name;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw ConfigError(
        "component folder '" + dir.string() + "' is missing" +
        (has_component(name)
             ? std::string(" (model_index.json lists '") + name + "')"
             : std::string(" (and model_index.json does not list '") + name + "')") +
        (from_hub_ ? "; the download may be incomplete: run again without --offline" : ""));
  }
  return dir;
}

fs::path DiffusersRepo::component_config_path(const std::string& name) const {
  const fs::path dir = component_dir(name);
  const std::string cls = component_class(name).second;
  std::vector<std::string> candidates = {"config.json", "scheduler_config.json",
                                         "tokenizer_config.json"};
  if (ends_with(cls, "Scheduler")) candidates = {"scheduler_config.json", "config.json"};
  if (cls.find("Tokenizer") != std::string::npos)
    candidates = {"tokenizer_config.json", "config.json"};
  for (const auto& c : candidates) {
    const std::string problem = input_file_problem(dir / c);
    if (problem.empty()) return dir / c;
    if (!is_absent_problem(problem))
      throw ConfigError("config file '" + (dir / c).string() + "' " + problem);
  }
  throw ConfigError("'" + dir.string() + "' has no " + join(candidates, " or ") +
                    (from_hub_ ? " (incomplete download? run again without --offline)" : ""));
}

json DiffusersRepo::component_config(const std::string& name) const {
  const fs::path path = component_config_path(name);
  json j = read_json_file(path);
  if (!j.is_object())
    throw ConfigError(path.string() + ": expected a JSON object, got " + j.type_name());
  return j;
}

std::vector<fs::path> folder_weight_files(const fs::path& dir, const std::string& variant, bool from_hub) {
  const auto chosen = choose_weight_files(list_files(dir), variant, dir.string());
  if (chosen.empty()) {
    throw CheckpointError("'" + dir.string() +
                          "' has no weights: expected diffusion_pytorch_model" +
                          (variant.empty() ? "" : "." + variant) + ".safetensors or model" +
                          (variant.empty() ? "" : "." + variant) + ".safetensors" +
                          (from_hub ? " (incomplete download? run again without --offline)" : ""));
  }
  if (!hub::is_shard_index(chosen.front())) return {dir / chosen.front()};
  const fs::path index_path = dir / chosen.front();
  const auto shards = hub::read_shard_index(index_path);
  std::vector<fs::path> out;
  for (const auto& s : shards) {
    if (const std::string problem = input_file_problem(dir / s); is_absent_problem(problem))
      throw CheckpointError("shard '" + (dir / s).string() + "' listed in '" + index_path.string() +
                            "' is missing (incomplete download or copy?)");
    else if (!problem.empty())
      throw CheckpointError("shard '" + (dir / s).string() + "' " + problem);
    out.push_back(dir / s);
  }
  return out;
}

StateDict folder_weights(const fs::path& dir, const std::string& variant, bool from_hub) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw ConfigError("model folder '" + dir.string() + "' is missing");
  const auto files = folder_weight_files(dir, variant, from_hub);
  StateDict out;
  std::map<std::string, fs::path> owner;
  for (const auto& f : files) {
    const auto file = SafeTensorsFile::open(f);
    for (const auto& key : file->keys()) {
      auto [it, inserted] = owner.emplace(key, f);
      if (!inserted)
        throw CheckpointError("tensor '" + key + "' appears in both '" + it->second.string() +
                              "' and '" + f.string() + "' (corrupt sharded checkpoint)");
      out.emplace(key, file->get(key));
    }
  }
  return out;
}

std::vector<fs::path> DiffusersRepo::weight_files(const std::string& name) const {
  return folder_weight_files(component_dir(name), variant_, from_hub_);
}

StateDict DiffusersRepo::component_weights(const std::string& name) const {
  return folder_weights(component_dir(name), variant_, from_hub_);
}

}  // namespace amused::io
