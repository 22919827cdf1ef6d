#include "io/state_dict.h"

#include <cmath>

#include <sstream>

#include "amused/error.h"

namespace amused::io {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}
std::string list(const std::vector<std::string>& items, size_t max_items = 12) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < max_items; ++i) out += "\n  " + items[i];
  if (items.size() > max_items) out += "\n  ... and " + std::to_string(items.size() - max_items) + " more";
  return out;
}
torch::ScalarType target_dtype(const std::string& key, const torch::Tensor& target, const LoadOptions& options) {
  if (!torch::isFloatingType(target.scalar_type())) return target.scalar_type();
  if (options.dtype_for)
    if (auto d = options.dtype_for(key, target)) return *d;
  return options.dtype ? *options.dtype : target.scalar_type();
}
}  // namespace

StateDict module_state_dict(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.emplace(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.emplace(b.key(), b.value());
  return out;
}

void load_state_dict(torch::nn::Module& module, const StateDict& state_dict, const std::string& source,
                     const LoadOptions& options) {
  StateDict targets = module_state_dict(module);
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [key, t] : state_dict) {
    auto it = targets.find(key);
    if (it == targets.end()) {
      bool benign = false;
      for (const auto& s : options.benign_extra_suffixes) benign = benign || ends_with(key, s);
      if (!benign) unexpected.push_back(key);
      continue;
    }
    if (it->second.sizes() != t.sizes())
      mismatched.push_back(key + ": checkpoint " + shape_str(t.sizes()) + ", model " + shape_str(it->second.sizes()));
  }
  for (const auto& [key, _] : targets) {
    if (options.partial || state_dict.count(key)) continue;
    bool allowed = false;
    for (const auto& a : options.allowed_missing) allowed = allowed || a == key;
    if (!allowed) missing.push_back(key);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string msg = "checkpoint '" + source + "' does not fit the model";
    if (!mismatched.empty()) msg += "\nwrong shape (" + std::to_string(mismatched.size()) + "):" + list(mismatched);
    if (!missing.empty()) msg += "\nmissing keys (" + std::to_string(missing.size()) + "):" + list(missing);
    if (!unexpected.empty()) msg += "\nunexpected keys (" + std::to_string(unexpected.size()) + "):" + list(unexpected);
    msg += "\n(is the config.json beside it the one these weights were saved with?)";
    throw CheckpointError(msg);
  }
  torch::NoGradGuard no_grad;
  for (auto& [key, target] : targets) {
    auto it = state_dict.find(key);
    if (it == state_dict.end() || (options.defer && options.defer(key))) continue;
    const torch::Tensor& src = it->second;
    // NaN or infinite weights would draw an image of noise with exit status 0. One pass in double:
    // the sum is finite exactly when every value is (no float32 or 16-bit tensor can overflow it).
    if (src.is_floating_point() && src.numel() > 0 &&
        !std::isfinite(src.sum(torch::kDouble).item<double>()))
      throw CheckpointError("checkpoint '" + source + "': tensor '" + key +
                            "' holds NaN or infinite values (a damaged file, or saved from a diverged "
                            "training run): re-download or re-convert it");
    const auto want_dtype = target_dtype(key, target, options);
    const auto want_device = options.device ? *options.device : target.device();
    if (options.zero_copy && src.scalar_type() == want_dtype && src.device() == want_device) {
      target.set_data(src);
    } else {
      target.set_data(src.to(want_device, want_dtype).contiguous());
      release_mapped_pages(src);  // the file's copy is no longer needed in memory
    }
  }
}

void convert_parameters(torch::nn::Module& module, const LoadOptions& options) {
  torch::NoGradGuard no_grad;
  for (auto& [key, target] : module_state_dict(module)) {
    if (options.defer && options.defer(key)) continue;
    const auto want_dtype = target_dtype(key, target, options);
    const auto want_device = options.device ? *options.device : target.device();
    if (target.scalar_type() != want_dtype || target.device() != want_device)
      target.set_data(target.to(want_device, want_dtype));
  }
}

}  // namespace amused::io
