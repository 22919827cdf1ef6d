#include "io/lora_file.h"

#include <cmath>
#include <optional>
#include <set>

#include "amused/error.h"
#include "core/config.h"
#include "core/log.h"

namespace amused::io {
namespace fs = std::filesystem;

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string fmt(double v) {
  std::string s = std::to_string(v);
  while (s.find('.') != std::string::npos && (s.back() == '0' || s.back() == '.')) {
    const bool dot = s.back() == '.';
    s.pop_back();
    if (dot) break;
  }
  return s;
}

struct Pending {
  torch::Tensor A, B;
  std::string key_a, key_b;
  std::optional<double> alpha;
};

// Which model a module belongs to, by the key's prefix (after peft's base_model.model.).
enum class Target { kTransformer, kTextEncoder };
}  // namespace

LoraFile read_lora_file(const fs::path& path_in) {
  fs::path file = path_in;
  std::optional<nlohmann::json> peft_config;
  if (fs::is_directory(path_in)) {
    if (fs::is_regular_file(path_in / kLoraWeightsFile)) {
      file = path_in / kLoraWeightsFile;
    } else if (fs::is_regular_file(path_in / "adapter_model.safetensors")) {
      file = path_in / "adapter_model.safetensors";
    } else {
      throw CheckpointError("LoRA folder '" + path_in.string() + "' has neither " +
                            kLoraWeightsFile + " (diffusers) nor adapter_model.safetensors (peft)");
    }
  } else if (!fs::exists(path_in)) {
    throw CheckpointError("LoRA file '" + path_in.string() + "' does not exist");
  }
  if (fs::is_regular_file(file.parent_path() / "adapter_config.json") &&
      (file.filename() == "adapter_model.safetensors" || fs::is_directory(path_in)))
    peft_config = read_json_file(file.parent_path() / "adapter_config.json");
  if (file.extension() == ".bin")
    throw Unsupported("LoRA '" + file.string() +
                      "' is a pickled PyTorch file: convert it to .safetensors");

  auto st = SafeTensorsFile::open(file);
  const auto& meta = st->metadata();
  LoraFile out;
  out.source = file.string();
  std::map<std::string, Pending> transformer, text_encoder;
  bool any_peft_prefix = false;
  for (auto& [key_in, tensor] : st->tensors()) {
    std::string key = key_in;
    Target target = Target::kTransformer;
    if (starts_with(key, "base_model.model.")) {
      key = key.substr(17);
      any_peft_prefix = true;
      if (starts_with(key, "text_model.")) target = Target::kTextEncoder;
    } else if (starts_with(key, "transformer.")) {
      key = key.substr(12);
    } else if (starts_with(key, "text_encoder.")) {
      key = key.substr(13);
      target = Target::kTextEncoder;
    } else {
      throw CheckpointError(
          "LoRA '" + file.string() + "': key '" + key_in +
          "' is neither transformer.* nor text_encoder.* (diffusers) nor base_model.model.* "
          "(peft): this is not an aMUSEd LoRA (a LoRA for another pipeline, e.g. Stable "
          "Diffusion's unet.*?)");
    }
    auto& dst = target == Target::kTransformer ? transformer : text_encoder;
    // peft keeps the adapter name in some saved files ("lora_A.default.weight").
    auto strip = [&](const std::string& k, const std::string& suffix, std::string* module) {
      if (!ends_with(k, suffix)) return false;
      *module = k.substr(0, k.size() - suffix.size());
      return true;
    };
    std::string module;
    if (strip(key, ".lora_A.weight", &module) || strip(key, ".lora_A.default.weight", &module)) {
      dst[module].A = tensor;
      dst[module].key_a = key_in;
    } else if (strip(key, ".lora_B.weight", &module) ||
               strip(key, ".lora_B.default.weight", &module)) {
      dst[module].B = tensor;
      dst[module].key_b = key_in;
    } else if (strip(key, ".alpha", &module) && tensor.numel() == 1) {
      dst[module].alpha = tensor.to(torch::kFloat64).item<double>();
    } else {
      throw CheckpointError(
          "LoRA '" + file.string() + "': key '" + key_in +
          "' is not a lora_A / lora_B weight (this reader knows the diffusers and peft "
          "layouts: <module>.lora_A.weight, <module>.lora_B.weight)");
    }
  }
  out.format = any_peft_prefix || peft_config ? "peft" : "diffusers";

  // Alpha: peft's config (lora_alpha, alpha_pattern), our metadata, else r (diffusers' scale 1).
  std::optional<double> cfg_alpha;
  nlohmann::json alpha_pattern = nlohmann::json::object();
  if (peft_config) {
    if (peft_config->contains("lora_alpha"))
      cfg_alpha = peft_config->at("lora_alpha").get<double>();
    if (peft_config->contains("alpha_pattern") && peft_config->at("alpha_pattern").is_object())
      alpha_pattern = peft_config->at("alpha_pattern");
  }
  auto meta_alpha = [&](const char* key) -> std::optional<double> {
    auto it = meta.find(key);
    if (it == meta.end()) return std::nullopt;
    try {
      return std::stod(it->second);
    } catch (...) {
      throw CheckpointError("LoRA '" + file.string() + "': metadata " + key + " = '" + it->second +
                            "' is not a number");
    }
  };
  const auto our_alpha = meta_alpha("amused_lora_alpha");
  const auto our_te_alpha = meta_alpha("amused_text_encoder_lora_alpha");

  std::set<std::string> notes;
  auto finish = [&](std::map<std::string, Pending>& src, std::vector<nn::LoraLayerWeights>& dst,
                    const std::optional<double>& file_alpha, const char* file_alpha_key) {
    for (auto& [module, p] : src) {
      if (!p.A.defined() || !p.B.defined())
        throw CheckpointError("LoRA '" + file.string() + "': '" +
                              (p.A.defined() ? p.key_a : p.key_b) + "' has no matching " +
                              (p.A.defined() ? "lora_B" : "lora_A") +
                              " weight: the file is incomplete");
      nn::LoraLayerWeights l;
      l.module = module;
      l.A = p.A;
      l.B = p.B;
      l.key_a = p.key_a;
      l.key_b = p.key_b;
      const double r = p.A.dim() == 2 ? static_cast<double>(p.A.size(0)) : 1.0;
      if (p.alpha) {
        l.alpha = *p.alpha;
        notes.insert("alpha from the file's per-module .alpha keys");
      } else if (peft_config) {
        std::optional<double> pat;
        for (auto& [k, v] : alpha_pattern.items())
          if (module == k || ends_with(module, "." + k)) pat = v.get<double>();
        l.alpha = pat ? *pat : cfg_alpha ? *cfg_alpha : 8.0;  // peft's default lora_alpha is 8
        notes.insert("alpha " + fmt(cfg_alpha ? *cfg_alpha : 8.0) +
                     " from adapter_config.json (scale alpha/r " +
                     fmt((cfg_alpha ? *cfg_alpha : 8.0) / r) + ")");
      } else if (file_alpha) {
        l.alpha = *file_alpha;
        notes.insert("alpha " + fmt(*file_alpha) + " from the file's " + file_alpha_key +
                     " metadata (scale alpha/r " + fmt(*file_alpha / r) +
                     "; note: diffusers ignores it and uses scale 1)");
      } else {
        l.alpha = r;
        notes.insert("no alpha in the file: alpha = r (scale 1), as diffusers' loader does");
      }
      dst.push_back(std::move(l));
    }
  };
  finish(transformer, out.transformer, our_alpha, "amused_lora_alpha");
  finish(text_encoder, out.text_encoder, our_te_alpha ? our_te_alpha : our_alpha,
         "amused_text_encoder_lora_alpha");
  if (out.transformer.empty() && out.text_encoder.empty())
    throw CheckpointError("LoRA '" + file.string() +
                          "' has no transformer.* or text_encoder.* lora_A/lora_B weights");
  for (const auto& n : notes) out.alpha_note += (out.alpha_note.empty() ? "" : "; ") + n;
  return out;
}

void save_lora_file(const fs::path& dir,
                    const std::map<std::string, torch::Tensor>& transformer_layers,
                    const std::map<std::string, torch::Tensor>& text_encoder_layers,
                    const LoraSaveInfo& info) {
  StateDict sd;
  for (const auto& [k, t] : transformer_layers)
    sd.emplace("transformer." + k, t.detach().to(torch::kFloat32));
  for (const auto& [k, t] : text_encoder_layers)
    sd.emplace("text_encoder." + k, t.detach().to(torch::kFloat32));
  Metadata meta{{"format", "pt"},
                {"amused_lora_rank", std::to_string(info.rank)},
                {"amused_lora_alpha", fmt(info.alpha)}};
  if (!text_encoder_layers.empty()) {
    meta["amused_text_encoder_lora_rank"] = std::to_string(info.text_encoder_rank);
    meta["amused_text_encoder_lora_alpha"] = fmt(info.text_encoder_alpha);
  }
  fs::create_directories(dir);
  save_safetensors(dir / kLoraWeightsFile, sd, meta);
}

}  // namespace amused::io
