// The one strict loader: copies a state dict into a module whose named_parameters()/named_buffers()
// equal the checkpoint's keys. Missing, unexpected and wrong-shape keys are errors that list the keys
// (wrong shapes with both shapes) and name the source file. No module loads its tensors by hand.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace amused::io {

struct LoadOptions {
  // Keys that may be present in the checkpoint without a matching parameter (matched as suffixes,
  // e.g. "position_ids" matches "text_model.embeddings.position_ids").
  std::vector<std::string> benign_extra_suffixes = {"position_ids"};
  // Parameters that may be absent from the checkpoint (kept as initialised).
  std::vector<std::string> allowed_missing;
  // Zero-copy: when a tensor already has the parameter's dtype and device, the parameter takes its
  // storage (e.g. the memory-mapped file) instead of copying it.
  bool zero_copy = true;
  // When set, floating-point tensors are converted to this dtype and every tensor is moved to this
  // device while loading, and the parameters take that dtype/device (no separate module->to()).
  std::optional<torch::ScalarType> dtype;
  std::optional<torch::Device> device;
  // Per-key dtype (takes precedence over `dtype` for floating-point tensors when it returns a
  // value), e.g. 16-bit matrix weights with float32 norms for mixed precision.
  std::function<std::optional<torch::ScalarType>(const std::string& key, const torch::Tensor& param)> dtype_for;
  // Keys for which `defer` returns true are checked like the others (present, right shape) but
  // neither loaded nor converted: their parameters keep the module's untouched storage until a
  // later call with `partial` loads them (e.g. the VQ encoder, needed only to edit images).
  std::function<bool(const std::string& key)> defer;
  // Loads just the keys the state dict has; the module's other parameters are not checked.
  bool partial = false;
};

// `source` names the checkpoint (file path) in error messages.
void load_state_dict(torch::nn::Module& module, const StateDict& state_dict, const std::string& source,
                     const LoadOptions& options = {});

// Applies `options.dtype` / `dtype_for` / `device` to a module's existing parameters and buffers
// (e.g. after random initialisation), with the same rules as load_state_dict.
void convert_parameters(torch::nn::Module& module, const LoadOptions& options);

// The module's parameters and buffers by name (the state-dict view of a module).
StateDict module_state_dict(const torch::nn::Module& module);

}  // namespace amused::io
