// Basic layers shared by all models. Unlike torch::nn's, their parameters are allocated
// uninitialised (torch::empty) so building a 600M-parameter model costs nothing before its weights
// are loaded; `reset_parameters()` gives PyTorch's default initialisation for training from scratch.
// Parameter names equal PyTorch's (`weight`, `bias`), so state-dict keys match the checkpoints.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

namespace amused::nn {

class LinearImpl;

// One inference-time LoRA adapter of a Linear (nn/lora.h): y += scale * (alpha / r) * B (A x), with
// A [r, in] and B [out, r] in float32; `scale` is shared by all layers of one adapter file, so a
// new scale for a request costs one store.
struct RuntimeLora {
  torch::Tensor A, B;
  double alpha_over_r = 1.0;
  std::shared_ptr<double> scale;
};

// y = x W^T (+ b). Ref: torch.nn.Linear.
// With LoRA (nn/lora.h; Ref: peft/tuners/lora/layer.py Linear): a trainable adapter registers
// `lora_A` (Linear in -> r) and `lora_B` (Linear r -> out) as children, so named_parameters() holds
// `<path>.lora_A.weight`, the key diffusers' files use, and forward adds lora_B(lora_A(x)) *
// lora_scaling (autograd sees it); inference adapters (`runtime_loras`, not parameters) add theirs.
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  // Mixed precision in two halves, for callers that keep a 16-bit activation between products
  // (attention): x W^T without bias, in the weight's dtype (x cast to it first); and the rest of
  // forward() for an input already in the weight's dtype: the product cast to `out_dtype`, plus the
  // bias. forward(x) == forward_from_weight_dtype(x.to(weight dtype), x dtype), bit for bit.
  torch::Tensor product_in_weight_dtype(const torch::Tensor& x);
  torch::Tensor forward_from_weight_dtype(const torch::Tensor& x_low, torch::ScalarType out_dtype);
  // forward(x) cast to the weight's dtype, for callers that keep the result in 16 bits (attention's
  // q, k, v). Without a bias that is the 16-bit product itself (the float32 round trip is exact);
  // with one, the bias is added in forward()'s dtype first, so nothing is ever skipped.
  torch::Tensor forward_in_weight_dtype(const torch::Tensor& x);
  void reset_parameters();
  int64_t in_features, out_features;
  torch::Tensor weight, bias;  // bias undefined when bias=false
  // LoRA (see above); empty unless an adapter was added.
  std::shared_ptr<LinearImpl> lora_A, lora_B;
  double lora_scaling = 1.0;
  std::vector<RuntimeLora> runtime_loras;
  bool has_lora() const { return lora_A != nullptr || !runtime_loras.empty(); }

 private:
  torch::Tensor base_forward(const torch::Tensor& x);
};
TORCH_MODULE(Linear);

// Ref: torch.nn.Conv2d (zero padding only).
class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
             int64_t padding = 0, int64_t groups = 1, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  // Mixed precision with the input already in the weight's dtype (e.g. up-sampled after the cast,
  // which is exact for nearest up-sampling and halves that copy): the result in `out_dtype`, as
  // forward(x_in_out_dtype) returns it.
  torch::Tensor forward_from_weight_dtype(const torch::Tensor& x, torch::ScalarType out_dtype);
  // forward() for an input the caller gives up (std::move): with mixed precision its wide copy is
  // released as soon as the 16-bit one exists, before the convolution allocates its output.
  torch::Tensor forward_owned(torch::Tensor x);
  // The two halves of forward_from_weight_dtype, for callers that hold the (smaller) 16-bit
  // product a while: the product in the weight's dtype without bias, then the cast and bias.
  torch::Tensor product_in_weight_dtype(const torch::Tensor& x_low);
  torch::Tensor finish_product(const torch::Tensor& y_low, torch::ScalarType out_dtype);
  void reset_parameters();
  int64_t in_channels, out_channels, kernel_size, stride, padding, groups;
  torch::Tensor weight, bias;
};
TORCH_MODULE(Conv2d);

// Ref: torch.nn.ConvTranspose2d; weight layout [in, out / groups, kH, kW].
class ConvTranspose2dImpl : public torch::nn::Module {
 public:
  ConvTranspose2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
                      int64_t padding = 0, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();
  int64_t in_channels, out_channels, kernel_size, stride, padding;
  torch::Tensor weight, bias;
};
TORCH_MODULE(ConvTranspose2d);

// LayerNorm over the last dimension. `elementwise_affine` creates `weight`; `bias` is optional
// (diffusers' bias-free LayerNorm). Ref: torch.nn.LayerNorm.
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps = 1e-5, bool elementwise_affine = true, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();
  int64_t dim;
  double eps;
  torch::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

// Ref: torch.nn.GroupNorm (affine).
class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t num_groups, int64_t num_channels, double eps = 1e-5, bool affine = true);
  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();
  int64_t num_groups, num_channels;
  double eps;
  torch::Tensor weight, bias;
};
TORCH_MODULE(GroupNorm);

// Ref: torch.nn.Embedding.
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim);
  torch::Tensor forward(const torch::Tensor& ids);
  void reset_parameters();
  int64_t num_embeddings, embedding_dim;
  torch::Tensor weight;
};
TORCH_MODULE(Embedding);

// RMSNorm over the last dimension with diffusers' dtype rule: the variance is computed in float32;
// with a 16-bit weight the normalised x is cast to the weight's dtype before the multiply; with a
// float32 weight the product stays float32; with no weight the result is cast back to the input dtype,
// as in diffusers.models.normalization.RMSNorm. Ref: diffusers/models/normalization.py (RMSNorm).
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, bool elementwise_affine = true);
  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();
  int64_t dim;
  double eps;
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

}  // namespace amused::nn
