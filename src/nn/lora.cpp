#include "nn/lora.h"

#include <cmath>
#include <sstream>

#include "amused/error.h"

namespace amused::nn {
namespace {
std::string shape_str(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}
bool is_adapter_module(const std::string& name) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends("lora_A") || ends("lora_B");
}
}  // namespace

bool lora_target_matches(const std::string& module_name, const std::vector<std::string>& targets) {
  for (const auto& t : targets) {
    if (module_name == t) return true;
    if (module_name.size() > t.size() &&
        module_name.compare(module_name.size() - t.size(), t.size(), t) == 0 &&
        module_name[module_name.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

std::map<std::string, LinearImpl*> named_linears(torch::nn::Module& root) {
  std::map<std::string, LinearImpl*> out;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (is_adapter_module(item.key())) continue;
    if (auto* l = item.value()->as<LinearImpl>()) out.emplace(item.key(), l);
  }
  return out;
}

std::vector<std::string> add_lora_adapters(torch::nn::Module& root, const LoraConfig& config,
                                           const std::string& model_name) {
  if (config.rank < 1)
    throw InvalidArgument("--lora-rank must be at least 1, got " + std::to_string(config.rank));
  if (!(config.alpha > 0) || !std::isfinite(config.alpha))
    throw InvalidArgument("--lora-alpha must be a positive number");
  std::vector<std::string> names;
  std::vector<std::string> some;
  for (const auto& item : root.named_modules("", false)) {
    auto* l = item.value()->as<LinearImpl>();
    if (!l || is_adapter_module(item.key())) continue;
    if (some.size() < 4) some.push_back(item.key());
    if (!lora_target_matches(item.key(), config.target_modules)) continue;
    if (l->lora_A)
      throw InvalidArgument("'" + item.key() + "' of the " + model_name +
                            " already has a LoRA adapter");
    // float32 on the layer's device, whatever the base weight's dtype.
    auto a = std::make_shared<LinearImpl>(l->in_features, config.rank, false);
    auto b = std::make_shared<LinearImpl>(config.rank, l->out_features, false);
    a->to(l->weight.device(), torch::kFloat32);
    b->to(l->weight.device(), torch::kFloat32);
    {
      torch::NoGradGuard g;
      torch::nn::init::kaiming_uniform_(a->weight, std::sqrt(5.0));
      b->weight.zero_();
    }
    l->lora_A = l->register_module("lora_A", a);
    l->lora_B = l->register_module("lora_B", b);
    l->lora_scaling = config.alpha / static_cast<double>(config.rank);
    names.push_back(item.key());
  }
  if (names.empty()) {
    std::string t, s;
    for (const auto& x : config.target_modules) t += (t.empty() ? "" : ",") + x;
    for (const auto& x : some) s += (s.empty() ? "" : ", ") + x;
    throw InvalidArgument("--lora-targets " + t + " matches no linear layer of the " + model_name +
                          " (its layers are named like " + s + ")");
  }
  return names;
}

void freeze_all_but_lora(torch::nn::Module& root) {
  for (auto& p : root.named_parameters()) {
    const bool adapter = p.key().find(".lora_A.") != std::string::npos ||
                         p.key().find(".lora_B.") != std::string::npos;
    p.value().set_requires_grad(adapter);
  }
}

std::map<std::string, torch::Tensor> lora_parameters(const torch::nn::Module& root) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : root.named_parameters())
    if (p.key().find(".lora_A.") != std::string::npos ||
        p.key().find(".lora_B.") != std::string::npos)
      out.emplace(p.key(), p.value());
  return out;
}

void check_lora_layers(torch::nn::Module& root, const std::vector<LoraLayerWeights>& layers,
                       const std::string& model_name, const std::string& source) {
  const auto linears = named_linears(root);
  for (const auto& l : layers) {
    auto it = linears.find(l.module);
    if (it == linears.end())
      throw CheckpointError(
          "LoRA '" + source + "': key '" + l.key_a + "' matches no linear layer of the " +
          model_name + " (no module '" + l.module +
          "'): the file is for another model, or its keys use another naming; use a LoRA "
          "trained for this aMUSEd model");
    const LinearImpl& lin = *it->second;
    if (l.A.dim() != 2 || l.B.dim() != 2 || l.A.size(0) != l.B.size(1))
      throw CheckpointError("LoRA '" + source + "': rank mismatch at '" + l.module + "': '" +
                            l.key_a + "' is " + shape_str(l.A) + " and '" + l.key_b + "' is " +
                            shape_str(l.B) +
                            ", expected [r, in] and [out, r] with the same r; the file is damaged");
    if (l.A.size(1) != lin.in_features || l.B.size(0) != lin.out_features)
      throw CheckpointError(
          "LoRA '" + source + "': '" + l.key_a + "' " + shape_str(l.A) + " / '" + l.key_b + "' " +
          shape_str(l.B) + " do not fit layer '" + l.module + "' of the " + model_name + " (in " +
          std::to_string(lin.in_features) + ", out " + std::to_string(lin.out_features) +
          ", so expected [r, " + std::to_string(lin.in_features) + "] and [" +
          std::to_string(lin.out_features) +
          ", r]): the LoRA was trained for another model size; use one made for this model");
  }
}

void attach_runtime_lora(torch::nn::Module& root, const std::vector<LoraLayerWeights>& layers,
                         const std::shared_ptr<double>& scale) {
  const auto linears = named_linears(root);
  for (const auto& l : layers) {
    LinearImpl* lin = linears.at(l.module);
    RuntimeLora r;
    r.A = l.A.to(lin->weight.device(), torch::kFloat32).contiguous();
    r.B = l.B.to(lin->weight.device(), torch::kFloat32).contiguous();
    r.alpha_over_r = l.alpha / static_cast<double>(l.A.size(0));
    r.scale = scale;
    lin->runtime_loras.push_back(std::move(r));
  }
}

void merge_lora(torch::nn::Module& root, const std::vector<ScaledLora>& adapters,
                const std::function<torch::Tensor(const std::string& key)>& base) {
  torch::NoGradGuard no_grad;
  const auto linears = named_linears(root);
  std::map<std::string, torch::Tensor> merged;  // module -> float32 weight
  for (const auto& a : adapters) {
    for (const auto& l : *a.layers) {
      LinearImpl* lin = linears.at(l.module);
      auto& w = merged[l.module];
      if (!w.defined())
        w = base(l.module + ".weight").to(lin->weight.device(), torch::kFloat32).clone();
      if (a.scale == 0.0) continue;
      const double s = a.scale * l.alpha / static_cast<double>(l.A.size(0));
      // [out, r] x [r, in] -> [out, in]
      w.add_(torch::mm(l.B.to(w.device(), torch::kFloat32), l.A.to(w.device(), torch::kFloat32)),
             s);
    }
  }
  for (auto& [module, w] : merged) {
    LinearImpl* lin = linears.at(module);
    lin->weight.set_data(w.to(lin->weight.scalar_type()));
  }
}

}  // namespace amused::nn
