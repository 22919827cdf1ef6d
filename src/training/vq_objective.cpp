// VQ-GAN training pieces: straight-through quantisation, EMA codebook, restarts, PatchGAN, metrics.
// Ref: see vq_objective.h.
#include "training/vq_objective.h"

#include <algorithm>
#include <cmath>

#include "amused/error.h"

namespace amused::training {

StraightThrough quantize_straight_through(models::VectorQuantizerImpl& quantizer, const torch::Tensor& z) {
  if (z.dim() != 4 || z.size(1) != quantizer.vq_embed_dim)
    throw InvalidArgument("quantize_straight_through: expected latents [B, " +
                          std::to_string(quantizer.vq_embed_dim) + ", h, w]");
  StraightThrough out;
  out.indices = quantizer.nearest_indices(z);  // [B, h, w]
  const auto& codebook = quantizer.embedding->weight;
  // [B, D, h, w] -> [B, h, w, D]
  const auto z_perm = z.permute({0, 2, 3, 1});
  // [B*h*w] -> [B*h*w, D] -> [B, h, w, D]
  const auto z_q = codebook.index_select(0, out.indices.flatten()).view(z_perm.sizes());
  out.commit_loss = torch::mean((z_perm - z_q.detach()).pow(2));
  if (codebook.requires_grad()) out.codebook_loss = torch::mean((z_q - z_perm.detach()).pow(2));
  // Straight-through: the value of z_q, the gradient of z. [B, h, w, D] -> [B, D, h, w]
  out.quantized = (z_perm + (z_q - z_perm).detach()).permute({0, 3, 1, 2}).contiguous();
  return out;
}

torch::Tensor flatten_latents(const torch::Tensor& z) {
  // [B, D, h, w] -> [B, h, w, D] -> [B*h*w, D]
  return z.detach().permute({0, 2, 3, 1}).reshape({-1, z.size(1)}).contiguous();
}

CodebookState CodebookState::init(const torch::Tensor& codebook) {
  torch::NoGradGuard no_grad;
  CodebookState s;
  const auto f32 = codebook.options().dtype(torch::kFloat32);
  s.cluster_size = torch::ones({codebook.size(0)}, f32);
  s.embed_sum = codebook.detach().to(torch::kFloat32).clone();
  s.last_used = torch::zeros({codebook.size(0)}, codebook.options().dtype(torch::kInt64));
  return s;
}

void ema_update(CodebookState& state, torch::Tensor& codebook, const torch::Tensor& z_flat,
                const torch::Tensor& indices, double decay, double eps) {
  torch::NoGradGuard no_grad;
  const int64_t K = codebook.size(0);
  const auto idx = indices.flatten().to(torch::kLong);
  const auto z = z_flat.to(torch::kFloat32);
  const auto counts = torch::bincount(idx, {}, K).to(torch::kFloat32);  // [K]
  const auto sums = torch::zeros({K, z.size(1)}, z.options()).index_add_(0, idx, z);  // [K, D]
  state.cluster_size.mul_(decay).add_(counts, 1.0 - decay);
  state.embed_sum.mul_(decay).add_(sums, 1.0 - decay);
  const auto total = state.cluster_size.sum();
  const auto smoothed = (state.cluster_size + eps) / (total + static_cast<double>(K) * eps) * total;
  codebook.copy_(state.embed_sum / smoothed.unsqueeze(1));
}

void mark_used(CodebookState& state, const torch::Tensor& indices, int64_t step) {
  torch::NoGradGuard no_grad;
  state.last_used.index_fill_(0, indices.flatten().to(torch::kLong), step);
}

int64_t restart_dead_codes(CodebookState& state, torch::Tensor& codebook, const torch::Tensor& z_flat,
                           int64_t step, int64_t dead_steps, at::Generator& generator, bool all) {
  if (!all && dead_steps <= 0) return 0;
  torch::NoGradGuard no_grad;
  const auto dead = all ? torch::arange(codebook.size(0), state.last_used.options())
                        : torch::nonzero(state.last_used <= step - 1 - dead_steps).flatten();
  const int64_t m = dead.size(0), n = z_flat.size(0);
  if (m == 0 || n == 0) return 0;
  const auto cpu_long = torch::TensorOptions().dtype(torch::kLong);
  // Distinct rows when there are enough, else rows drawn with replacement.
  const auto rows = n >= m ? torch::randperm(n, generator, cpu_long).narrow(0, 0, m)
                           : torch::randint(0, n, {m}, generator, cpu_long);
  const auto chosen = z_flat.index_select(0, rows.to(z_flat.device())).to(torch::kFloat32);  // [m, D]
  codebook.index_copy_(0, dead, chosen.to(codebook.scalar_type()));
  state.embed_sum.index_copy_(0, dead, chosen);
  state.cluster_size.index_fill_(0, dead, 1.0);
  state.last_used.index_fill_(0, dead, step - 1);
  return m;
}

// ---------------------------------------------------------------------------------------------
NLayerDiscriminatorImpl::NLayerDiscriminatorImpl(int64_t input_nc, int64_t ndf, int64_t n_layers) {
  namespace tnn = torch::nn;
  if (n_layers < 1 || ndf < 1) throw InvalidArgument("NLayerDiscriminator: n_layers and ndf must be >= 1");
  auto conv = [](int64_t in, int64_t out, int64_t stride, bool bias) {
    return tnn::Conv2d(tnn::Conv2dOptions(in, out, 4).stride(stride).padding(1).bias(bias));
  };
  auto lrelu = [] { return tnn::LeakyReLU(tnn::LeakyReLUOptions().negative_slope(0.2)); };
  main = tnn::Sequential();
  main->push_back(conv(input_nc, ndf, 2, true));
  main->push_back(lrelu());
  int64_t mult = 1, mult_prev = 1;
  for (int64_t n = 1; n < n_layers; ++n) {
    mult_prev = mult;
    mult = std::min<int64_t>(int64_t{1} << n, 8);
    main->push_back(conv(ndf * mult_prev, ndf * mult, 2, false));
    main->push_back(tnn::BatchNorm2d(ndf * mult));
    main->push_back(lrelu());
  }
  mult_prev = mult;
  mult = std::min<int64_t>(int64_t{1} << n_layers, 8);
  main->push_back(conv(ndf * mult_prev, ndf * mult, 1, false));
  main->push_back(tnn::BatchNorm2d(ndf * mult));
  main->push_back(lrelu());
  main->push_back(conv(ndf * mult, 1, 1, true));
  register_module("main", main);
}

torch::Tensor NLayerDiscriminatorImpl::forward(const torch::Tensor& images) {
  return main->forward(images * 2.0 - 1.0);  // [B, 3, H, W] -> [B, 1, H', W'] patch logits
}

void NLayerDiscriminatorImpl::init_weights() {
  torch::NoGradGuard no_grad;
  for (auto& m : main->children()) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      c->weight.normal_(0.0, 0.02);
      if (c->bias.defined()) c->bias.zero_();
    } else if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      bn->weight.normal_(1.0, 0.02);
      bn->bias.zero_();
    }
  }
}

torch::Tensor hinge_d_loss(const torch::Tensor& logits_real, const torch::Tensor& logits_fake) {
  return 0.5 * (torch::relu(1.0 - logits_real).mean() + torch::relu(1.0 + logits_fake).mean());
}

// ---------------------------------------------------------------------------------------------
torch::Tensor psnr_per_image(const torch::Tensor& reconstructions, const torch::Tensor& images) {
  const auto diff = reconstructions.detach().to(torch::kFloat32).clamp(0.0, 1.0) - images.to(torch::kFloat32);
  // [B, C, H, W] -> [B]
  const auto mse = diff.pow(2).flatten(1).mean(1).to(torch::kFloat64).clamp_min(1e-10);
  return -10.0 * torch::log10(mse);
}

CodeUsage code_usage(const torch::Tensor& counts) {
  CodeUsage u;
  const auto c = counts.to(torch::kFloat64).cpu();
  const double total = c.sum().item<double>();
  u.codes_used = (c > 0).sum().item<int64_t>();
  u.fraction = c.numel() > 0 ? static_cast<double>(u.codes_used) / static_cast<double>(c.numel()) : 0.0;
  if (total > 0) {
    const auto p = c / total;
    const auto nz = p.masked_select(p > 0);
    u.perplexity = std::exp(-(nz * nz.log()).sum().item<double>());
  }
  return u;
}

}  // namespace amused::training
