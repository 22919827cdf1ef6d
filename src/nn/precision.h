// The mixed-precision policy, decided by module type (not by weight names).
//
// On the CPU, aMUSEd's default mode keeps the weight matrices of products and lookups (Linear,
// Conv2d, ConvTranspose2d, Embedding) in bfloat16, for the 16-bit matrix kernels and half the
// memory, and everything else in float32: norms, biases, the residual stream and every other
// activation. Modules whose outputs decide tokens directly (the U-ViT's logits head, the VQ
// codebook) declare it by deriving from KeepsFloat32, and their whole subtree stays float32.
// docs/numerics.md measures what this costs against the float32 reference.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <optional>
#include <string>

namespace amused::nn {

// A marker base for modules the mixed-precision policy keeps in float32 with all their children.
struct KeepsFloat32 {
  virtual ~KeepsFloat32() = default;
};

// The state-dict keys of `root` whose parameters the policy stores in `low` (bfloat16 on the
// CPU), with that dtype. Parameters not listed keep the model's dtype (float32).
std::map<std::string, torch::ScalarType> mixed_precision_plan(const torch::nn::Module& root,
                                                              torch::ScalarType low = torch::kBFloat16);

// The plan as an io::LoadOptions::dtype_for callback (it holds the plan by value).
std::function<std::optional<torch::ScalarType>(const std::string&, const torch::Tensor&)> mixed_precision_dtype_for(
    const torch::nn::Module& root, torch::ScalarType low = torch::kBFloat16);

}  // namespace amused::nn
