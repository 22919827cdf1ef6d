// LoRA adapters on nn::Linear layers: trainable ones (peft's add_adapter, what train_amused.py
// --use_lora does) and inference ones, either applied at run time (stacked, scale per call) or
// merged into the weights (W + s * (alpha / r) * B A in float32, diffusers' fuse_lora).
// Ref: peft v0.10 tuners/lora/layer.py (Linear: forward, merge), tuners/tuners_utils.py
//      (check_target_module_exists); diffusers loaders/lora.py (fuse_lora, scale_lora_layers).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nn/layers.h"

namespace amused::nn {

// peft's LoraConfig, the fields train_amused.py sets (dropout 0, no bias).
struct LoraConfig {
  int64_t rank = 16;
  double alpha = 32;
  std::vector<std::string> target_modules{"to_q", "to_k", "to_v"};
};

// peft's rule for a list of target names: the module name equals a target or ends with
// "." + target.
bool lora_target_matches(const std::string& module_name, const std::vector<std::string>& targets);

// Every nn::Linear under `root` by module name ("transformer_layers.0.attn1.to_q").
std::map<std::string, LinearImpl*> named_linears(torch::nn::Module& root);

// Adds a trainable adapter (lora_A [r, in], lora_B [out, r], scaling alpha / r) to every Linear
// matching the config's targets, initialised as peft does (A kaiming-uniform(a = sqrt(5)) from
// torch's global generator, B = 0), on the layer's device in float32. Returns the module names, in
// module order. Throws InvalidArgument when no layer matches (naming the targets and a few layer
// names).
std::vector<std::string> add_lora_adapters(torch::nn::Module& root, const LoraConfig& config,
                                           const std::string& model_name);

// Sets requires_grad false on every parameter of `root` that is not a LoRA adapter's, true on the
// adapters'.
void freeze_all_but_lora(torch::nn::Module& root);

// The trainable adapters' weights by state-dict name ("<module>.lora_A.weight"), as peft's
// get_peft_model_state_dict names them (the diffusers file key without the "transformer." prefix).
std::map<std::string, torch::Tensor> lora_parameters(const torch::nn::Module& root);

// One adapter layer of an inference LoRA: module name, A [r, in], B [out, r], alpha.
struct LoraLayerWeights {
  std::string module;
  torch::Tensor A, B;
  double alpha = 0;
  std::string key_a, key_b;  // the file's keys (for messages)
};

// Checks every layer against `root` (a Linear of that name, A/B ranks consistent, in/out equal to
// the layer's) and throws CheckpointError naming the key, both shapes and the fix.
void check_lora_layers(torch::nn::Module& root, const std::vector<LoraLayerWeights>& layers,
                       const std::string& model_name, const std::string& source);

// Run-time application: adds the layers to their Linears with the shared `scale`.
void attach_runtime_lora(torch::nn::Module& root, const std::vector<LoraLayerWeights>& layers,
                         const std::shared_ptr<double>& scale);

// Merging: for every module touched by `adapters` (each with its scale), weight =
// base(name) in float32 + sum of s * (alpha / r) * B A, then cast to the parameter's dtype (so a
// 16-bit model gets one rounding, after the sum). `base` returns the un-merged weight of a module
// ("<module>.weight") in any dtype; it is read afresh each time, which is what makes re-merging
// with other scales (or scale 0: unmerging) exact.
struct ScaledLora {
  const std::vector<LoraLayerWeights>* layers;
  double scale;
};
void merge_lora(torch::nn::Module& root, const std::vector<ScaledLora>& adapters,
                const std::function<torch::Tensor(const std::string& key)>& base);

}  // namespace amused::nn
