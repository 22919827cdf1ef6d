// LoRA adapters of amused::Pipeline: loaded with the pipeline, merged into the weights or applied
// at run time, scaled per pipeline or per call.
// Ref: diffusers loaders/lora.py (AmusedLoraLoaderMixin.load_lora_weights, fuse_lora,
//      set_adapters / scale_lora_layers).
#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "amused/error.h"
#include "core/log.h"
#include "nn/lora.h"
#include "pipelines/pipeline_amused.h"

namespace amused {
namespace fs = std::filesystem;

namespace {
std::string default_name(const std::string& path) {
  fs::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "dir/"
  return fs::is_directory(p) ? p.filename().string() : p.stem().string();
}
std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
}  // namespace

void Pipeline::Impl::load_loras(const LoadOptions& options, const io::DiffusersRepo* repo) {
  if (options.loras.empty()) return;
  torch::NoGradGuard no_grad;
  std::set<std::string> names;
  for (const auto& a : options.loras) {
    if (!std::isfinite(a.scale))
      throw InvalidArgument("LoRA '" + a.path + "': scale must be a finite number");
    LoadedLora l;
    l.file = io::read_lora_file(a.path);
    l.info.name = a.name.empty() ? default_name(a.path) : a.name;
    if (!names.insert(l.info.name).second)
      throw InvalidArgument("two LoRA adapters are named '" + l.info.name +
                            "': give them distinct names");
    l.info.path = l.file.source;
    l.info.format = l.file.format;
    l.info.scale = a.scale;
    l.info.alpha_note = l.file.alpha_note;
    const auto& first =
        !l.file.transformer.empty() ? l.file.transformer.front() : l.file.text_encoder.front();
    l.info.rank = first.A.size(0);
    l.info.alpha = first.alpha;
    l.info.transformer_layers = static_cast<int64_t>(l.file.transformer.size());
    l.info.text_encoder_layers = static_cast<int64_t>(l.file.text_encoder.size());
    l.info.merged = options.merge_loras;
    nn::check_lora_layers(*transformer, l.file.transformer, "transformer", l.file.source);
    nn::check_lora_layers(*text_encoder, l.file.text_encoder, "text encoder", l.file.source);
    l.scale = std::make_shared<double>(a.scale);
    log::info("LoRA '" + l.info.name + "' (" + l.file.format + ", " + l.file.source +
              "): " + std::to_string(l.info.transformer_layers) + " transformer layers" +
              (l.info.text_encoder_layers
                   ? ", " + std::to_string(l.info.text_encoder_layers) + " text encoder layers"
                   : std::string()) +
              ", rank " + std::to_string(l.info.rank) + ", scale " + num(a.scale) + "; " +
              l.file.alpha_note);
    loras.push_back(std::move(l));
  }
  loras_merged = options.merge_loras;
  if (!loras_merged) {
    for (auto& l : loras) {
      nn::attach_runtime_lora(*transformer, l.file.transformer, l.scale);
      nn::attach_runtime_lora(*text_encoder, l.file.text_encoder, l.scale);
    }
    return;
  }
  // Merged: the un-merged weights come from the checkpoint (memory-mapped, read again for each
  // re-merge) or, for random weights, from copies of the original tensors.
  if (repo != nullptr && !options.random_weights) {
    auto r = std::make_shared<io::DiffusersRepo>(*repo);
    lora_base = [r](const std::string& component) { return r->component_weights(component); };
  } else {
    auto originals = std::make_shared<std::map<std::string, io::StateDict>>();
    const auto t_linears = nn::named_linears(*transformer),
               te_linears = nn::named_linears(*text_encoder);
    for (auto& l : loras) {
      for (const auto& layer : l.file.transformer)
        (*originals)["transformer"][layer.module + ".weight"] =
            t_linears.at(layer.module)->weight.detach().clone();
      for (const auto& layer : l.file.text_encoder)
        (*originals)["text_encoder"][layer.module + ".weight"] =
            te_linears.at(layer.module)->weight.detach().clone();
    }
    lora_base = [originals](const std::string& component) { return (*originals)[component]; };
  }
  merge_loras();
}

void Pipeline::Impl::merge_loras() {
  std::vector<nn::ScaledLora> t, te;
  for (const auto& l : loras) {
    if (!l.file.transformer.empty()) t.push_back({&l.file.transformer, *l.scale});
    if (!l.file.text_encoder.empty()) te.push_back({&l.file.text_encoder, *l.scale});
  }
  if (!t.empty()) {
    const auto base = lora_base("transformer");
    nn::merge_lora(*transformer, t, [&](const std::string& key) { return base.at(key); });
  }
  if (!te.empty()) {
    const auto base = lora_base("text_encoder");
    nn::merge_lora(*text_encoder, te, [&](const std::string& key) { return base.at(key); });
  }
}

Pipeline::Impl::LoraScaleScope::LoraScaleScope(Impl& impl,
                                               const std::map<std::string, double>& scales) {
  for (const auto& [name, s] : scales) {
    const std::string& wanted = name;  // (C++17, the fuzz builds: no lambda captures of bindings)
    auto it = std::find_if(impl.loras.begin(), impl.loras.end(),
                           [&](const LoadedLora& l) { return l.info.name == wanted; });
    if (it == impl.loras.end()) {
      std::string known;
      for (const auto& l : impl.loras) known += (known.empty() ? "" : ", ") + l.info.name;
      throw InvalidArgument(
          "no LoRA adapter named '" + name + "' is loaded" +
          (known.empty() ? std::string(" (none is)") : " (loaded: " + known + ")"));
    }
    if (!std::isfinite(s))
      throw InvalidArgument("LoRA '" + name + "': scale must be a finite number");
    if (impl.loras_merged && s != *it->scale)
      throw InvalidArgument(
          "LoRA '" + name + "' is merged into the weights at scale " + num(*it->scale) +
          ": per-call scales need run-time adapters (LoadOptions::merge_loras = false, "
          "amused generate --lora-mode runtime; the server uses them)");
    saved_.emplace_back(it->scale, *it->scale);
    *it->scale = s;
  }
}

Pipeline::Impl::LoraScaleScope::~LoraScaleScope() {
  for (auto& [p, v] : saved_) *p = v;
}

std::vector<LoraInfo> Pipeline::loras() const {
  std::vector<LoraInfo> out;
  for (const auto& l : impl_->loras) {
    LoraInfo i = l.info;
    i.scale = *l.scale;
    out.push_back(i);
  }
  return out;
}

void Pipeline::set_lora_scale(const std::string& name, double scale) {
  if (!std::isfinite(scale))
    throw InvalidArgument("LoRA '" + name + "': scale must be a finite number");
  for (auto& l : impl_->loras) {
    if (l.info.name != name) continue;
    *l.scale = scale;
    if (impl_->loras_merged) {
      torch::NoGradGuard no_grad;
      impl_->merge_loras();
    }
    return;
  }
  throw InvalidArgument("no LoRA adapter named '" + name + "' is loaded");
}

}  // namespace amused
