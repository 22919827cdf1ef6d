#include "nn/precision.h"

#include <vector>

#include "nn/layers.h"

namespace amused::nn {
namespace {
// The modules whose weight matrix is a product or a lookup.
bool matrix_module(const torch::nn::Module& m) {
  return dynamic_cast<const LinearImpl*>(&m) != nullptr || dynamic_cast<const Conv2dImpl*>(&m) != nullptr ||
         dynamic_cast<const ConvTranspose2dImpl*>(&m) != nullptr || dynamic_cast<const EmbeddingImpl*>(&m) != nullptr;
}
bool under(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (p.empty() || name == p || name.rfind(p + ".", 0) == 0) return true;
  return false;
}
}  // namespace

std::map<std::string, torch::ScalarType> mixed_precision_plan(const torch::nn::Module& root, torch::ScalarType low) {
  std::map<std::string, torch::ScalarType> plan;
  std::vector<std::string> kept;  // subtrees that stay float32 (named_modules lists parents first)
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    const std::string& name = item.key();
    const torch::nn::Module& m = *item.value();
    if (dynamic_cast<const KeepsFloat32*>(&m) != nullptr) kept.push_back(name);
    if (!matrix_module(m) || under(name, kept)) continue;
    for (const auto& p : m.named_parameters(/*recurse=*/false))
      if (p.key() == "weight") plan[name.empty() ? p.key() : name + "." + p.key()] = low;
  }
  return plan;
}

std::function<std::optional<torch::ScalarType>(const std::string&, const torch::Tensor&)> mixed_precision_dtype_for(
    const torch::nn::Module& root, torch::ScalarType low) {
  return [plan = mixed_precision_plan(root, low)](const std::string& key,
                                                  const torch::Tensor&) -> std::optional<torch::ScalarType> {
    auto it = plan.find(key);
    if (it == plan.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace amused::nn
