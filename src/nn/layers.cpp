#include "nn/layers.h"

#include <ATen/autocast_mode.h>

#include <cmath>

#include "nn/matmul.h"

namespace amused::nn {
namespace {
// PyTorch's default init for Linear/Conv: kaiming_uniform(a=sqrt(5)) for weights, U(-1/sqrt(fan_in), ..) for bias.
void default_init(torch::Tensor& weight, torch::Tensor& bias, int64_t fan_in) {
  torch::NoGradGuard g;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    bias.uniform_(-bound, bound);
  }
}
}  // namespace

LinearImpl::LinearImpl(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (has_bias) bias = register_parameter("bias", torch::empty({out}));
}
namespace {
// Mixed precision: a 16-bit weight with a wider input computes the product in the weight's dtype
// (the 16-bit matrix kernels) and returns the input's dtype; the bias is added in that dtype.
bool mixed(const torch::Tensor& x, const torch::Tensor& w) { return x.scalar_type() != w.scalar_type(); }
// Under autocast (training's mixed precision: float32 weights, 16-bit activations) the products
// are LibTorch's to cast; the 16-bit-weight rule above is for weights stored in 16 bits.
bool mixed_product(const torch::Tensor& x, const torch::Tensor& w) {
  return mixed(x, w) && !at::autocast::is_cpu_enabled() && !at::autocast::is_enabled();
}
// `y` is always a fresh tensor here (the cast of the 16-bit product), so the bias goes in in place:
// autograd saves neither the cast's output nor an addition's operands, and inference saves one
// activation-sized temporary per layer.
torch::Tensor add_bias(torch::Tensor y, const torch::Tensor& bias, int64_t channel_dim) {
  if (!bias.defined()) return y;
  if (channel_dim == -1) return y.add_(bias.to(y.scalar_type()));
  std::vector<int64_t> shape(static_cast<size_t>(y.dim()), 1);
  shape[static_cast<size_t>(channel_dim)] = bias.size(0);
  return y.add_(bias.to(y.scalar_type()).reshape(shape));
}
}  // namespace

namespace {
// The LoRA terms of `layer` added to its base output `y` (input `x`). The trainable adapter as
// peft's lora.Linear: y + lora_B(lora_A(x)) * scaling (dropout 0). Inference adapters in float32:
// y + scale * (alpha / r) * B (A x), skipped at scale 0 (so scale 0 is the layer without them).
torch::Tensor add_lora(const LinearImpl& layer, torch::Tensor y, const torch::Tensor& x) {
  const auto out_dtype = y.scalar_type();
  if (layer.lora_A) {
    auto delta = layer.lora_B->forward(layer.lora_A->forward(x)) * layer.lora_scaling;
    y = y + delta.to(out_dtype);
  }
  if (layer.runtime_loras.empty()) return y;
  torch::Tensor acc;
  for (const auto& l : layer.runtime_loras) {
    const double s = *l.scale * l.alpha_over_r;
    if (s == 0.0) continue;
    const auto xf = x.to(l.A.scalar_type());
    // [..., in] -> [..., r] -> [..., out]
    auto d = torch::nn::functional::linear(torch::nn::functional::linear(xf, l.A), l.B) * s;
    acc = acc.defined() ? acc + d : d;
  }
  if (!acc.defined()) return y;
  return (y.to(acc.scalar_type()) + acc).to(out_dtype);
}
}  // namespace

torch::Tensor LinearImpl::base_forward(const torch::Tensor& x) {
  if (mixed_product(x, weight))
    return add_bias(torch::nn::functional::linear(x.to(weight.scalar_type()), weight).to(x.scalar_type()), bias, -1);
  return nn::linear(x, weight, bias);
}
torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (!has_lora()) return base_forward(x);
  return add_lora(*this, base_forward(x), x);
}
torch::Tensor LinearImpl::product_in_weight_dtype(const torch::Tensor& x) {
  TORCH_CHECK(!has_lora(), "product_in_weight_dtype on a Linear with LoRA adapters");
  return torch::nn::functional::linear(x.to(weight.scalar_type()), weight);
}
torch::Tensor LinearImpl::forward_from_weight_dtype(const torch::Tensor& x_low, torch::ScalarType out_dtype) {
  torch::Tensor y = out_dtype == weight.scalar_type()
                        ? nn::linear(x_low, weight, bias)
                        : add_bias(torch::nn::functional::linear(x_low, weight).to(out_dtype), bias, -1);
  return has_lora() ? add_lora(*this, y, x_low) : y;
}
torch::Tensor LinearImpl::forward_in_weight_dtype(const torch::Tensor& x) {
  if (!bias.defined() && !has_lora()) return product_in_weight_dtype(x);
  return forward(x).to(weight.scalar_type());
}
void LinearImpl::reset_parameters() { default_init(weight, bias, in_features); }

Conv2dImpl::Conv2dImpl(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t g, bool has_bias)
    : in_channels(in), out_channels(out), kernel_size(k), stride(s), padding(p), groups(g) {
  weight = register_parameter("weight", torch::empty({out, in / g, k, k}));
  if (has_bias) bias = register_parameter("bias", torch::empty({out}));
}
torch::Tensor Conv2dImpl::forward(const torch::Tensor& x) {
  if (mixed_product(x, weight)) return forward_from_weight_dtype(x.to(weight.scalar_type()), x.scalar_type());
  return torch::conv2d(x, weight, bias, {stride, stride}, {padding, padding}, {1, 1}, groups);
}
torch::Tensor Conv2dImpl::forward_owned(torch::Tensor x) {
  if (!mixed_product(x, weight)) return forward(x);
  const auto out_dtype = x.scalar_type();
  torch::Tensor low = x.to(weight.scalar_type());
  x = torch::Tensor();
  return forward_from_weight_dtype(low, out_dtype);
}
torch::Tensor Conv2dImpl::forward_from_weight_dtype(const torch::Tensor& x, torch::ScalarType out_dtype) {
  if (out_dtype == weight.scalar_type())
    return torch::conv2d(x, weight, bias, {stride, stride}, {padding, padding}, {1, 1}, groups);
  return finish_product(product_in_weight_dtype(x), out_dtype);
}
torch::Tensor Conv2dImpl::product_in_weight_dtype(const torch::Tensor& x_low) {
  return torch::conv2d(x_low, weight, {}, {stride, stride}, {padding, padding}, {1, 1}, groups);
}
torch::Tensor Conv2dImpl::finish_product(const torch::Tensor& y_low, torch::ScalarType out_dtype) {
  return add_bias(y_low.to(out_dtype), bias, 1);
}
void Conv2dImpl::reset_parameters() { default_init(weight, bias, in_channels / groups * kernel_size * kernel_size); }

ConvTranspose2dImpl::ConvTranspose2dImpl(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, bool has_bias)
    : in_channels(in), out_channels(out), kernel_size(k), stride(s), padding(p) {
  weight = register_parameter("weight", torch::empty({in, out, k, k}));
  if (has_bias) bias = register_parameter("bias", torch::empty({out}));
}
torch::Tensor ConvTranspose2dImpl::forward(const torch::Tensor& x) {
  // LibTorch 1.13's CPU transposed convolution mis-handles 16-bit data: with a 16-bit weight and a
  // wider input, compute in the input's dtype.
  if (mixed(x, weight))
    return torch::conv_transpose2d(x, weight.to(x.scalar_type()), bias.defined() ? bias.to(x.scalar_type()) : bias,
                                   {stride, stride}, {padding, padding});
  return torch::conv_transpose2d(x, weight, bias, {stride, stride}, {padding, padding});
}
void ConvTranspose2dImpl::reset_parameters() {
  // PyTorch computes fan_in from weight.size(1) * k * k for transposed convs.
  default_init(weight, bias, out_channels * kernel_size * kernel_size);
}

LayerNormImpl::LayerNormImpl(int64_t d, double e, bool affine, bool has_bias) : dim(d), eps(e) {
  if (affine) {
    weight = register_parameter("weight", torch::empty({d}));
    if (has_bias) bias = register_parameter("bias", torch::empty({d}));
  }
}
torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  if (weight.defined() && mixed(x, weight)) return torch::layer_norm(x.to(weight.scalar_type()), {dim}, weight, bias, eps);
  return torch::layer_norm(x, {dim}, weight, bias, eps);
}
void LayerNormImpl::reset_parameters() {
  torch::NoGradGuard g;
  if (weight.defined()) weight.fill_(1.0);
  if (bias.defined()) bias.zero_();
}

GroupNormImpl::GroupNormImpl(int64_t groups, int64_t channels, double e, bool affine)
    : num_groups(groups), num_channels(channels), eps(e) {
  if (affine) {
    weight = register_parameter("weight", torch::empty({channels}));
    bias = register_parameter("bias", torch::empty({channels}));
  }
}
torch::Tensor GroupNormImpl::forward(const torch::Tensor& x) {
  if (weight.defined() && mixed(x, weight))
    return torch::group_norm(x.to(weight.scalar_type()), num_groups, weight, bias, eps);
  return torch::group_norm(x, num_groups, weight, bias, eps);
}
void GroupNormImpl::reset_parameters() {
  torch::NoGradGuard g;
  if (weight.defined()) weight.fill_(1.0);
  if (bias.defined()) bias.zero_();
}

EmbeddingImpl::EmbeddingImpl(int64_t n, int64_t d) : num_embeddings(n), embedding_dim(d) {
  weight = register_parameter("weight", torch::empty({n, d}));
}
torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }
void EmbeddingImpl::reset_parameters() {
  torch::NoGradGuard g;
  weight.normal_(0.0, 1.0);
}

RMSNormImpl::RMSNormImpl(int64_t d, double e, bool affine) : dim(d), eps(e) {
  if (affine) weight = register_parameter("weight", torch::empty({d}));
}
torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto input_dtype = x.scalar_type();
  auto variance = x.to(torch::kFloat32).pow(2).mean(-1, /*keepdim=*/true);
  auto h = x * torch::rsqrt(variance + eps);
  if (weight.defined()) {
    if (weight.scalar_type() == torch::kFloat16 || weight.scalar_type() == torch::kBFloat16)
      h = h.to(weight.scalar_type());
    h = h * weight;
  } else {
    h = h.to(input_dtype);
  }
  return h;
}
void RMSNormImpl::reset_parameters() {
  torch::NoGradGuard g;
  if (weight.defined()) weight.fill_(1.0);
}

}  // namespace amused::nn
