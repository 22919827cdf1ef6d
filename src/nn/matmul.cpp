#include "nn/matmul.h"

#include <atomic>

#include <ATen/autocast_mode.h>

#include "core/threads.h"

namespace amused::nn {
namespace {

// Smaller products run as one call: splitting them costs more in fork/join than it gains.
constexpr double kMinSplitMultiplyAdds = 4.0 * 1024 * 1024;
// Products are split into blocks of whole output rows whose boundaries fall on multiples of this:
// OpenBLAS's kernels walk the rows in tiles (12 on the Haswell/Zen kernels) and an element's
// rounding depends on the tile shape that covers it, so aligned pieces are covered by the same
// tiles as one call over the whole product and every element is computed exactly as in that call
// (measured: a split at any multiple of 12 rows is bit-identical, any other is not). 24 covers
// tile widths 4, 6, 8, 12 and 24. Splitting output columns instead is never bit-identical, so it is
// not done.
constexpr int64_t kRowAlignment = 24;
// Fewer rows per thread than this are not split.
constexpr int64_t kMinRowsPerThread = 32;

int split_threads() {
  if (!blas_single_threaded() || !parallel_for_available()) return 1;
  return at::get_num_threads();
}

// Only float32 CPU operands, and only where autograd does not need to see the product (the
// pieces are written through out= variants, which autograd does not record).
bool eligible(std::initializer_list<const torch::Tensor*> operands) {
  const bool grad = torch::GradMode::is_enabled();
  for (const torch::Tensor* t : operands) {
    if (!t->defined()) continue;
    if (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32) return false;
    if (grad && t->requires_grad()) return false;
  }
  return true;
}

// Runs piece(i, n) for i in [0, n), n = the number of threads, spread over the OpenMP team.
void for_each_piece(int n, const std::function<void(int64_t, int64_t)>& piece) {
  parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) piece(i, n);
  });
}

// Piece i of n of [0, size): boundaries at the multiples of `align` nearest to an even split.
std::pair<int64_t, int64_t> piece_range(int64_t size, int64_t i, int64_t n, int64_t align) {
  auto edge = [&](int64_t j) {
    if (j >= n) return size;
    const int64_t even = size * j / n;
    return std::min(size, (even + align / 2) / align * align);
  };
  return {edge(i), edge(i + 1) - edge(i)};
}

}  // namespace

bool splits_products() { return split_threads() > 1; }

namespace {
std::atomic<int64_t> g_split_products{0};
}
int64_t split_product_count() { return g_split_products.load(std::memory_order_relaxed); }

namespace {
// Training: the same split products under autograd. Forward runs the split product (autograd is
// off inside a custom function's forward); backward computes dL/dx = g w and dL/dw = g^T x as
// split products too, and dL/db = the column sums of g, as LibTorch's own linear backward does.
struct SplitLinearFunction : public torch::autograd::Function<SplitLinearFunction> {
  // (LibTorch's custom functions take no undefined tensors: without a bias, the two-input form.)
  // x is kept only when w trains: a frozen weight (LoRA's base layers) needs just w for dL/dx, so
  // the input's activation can be freed as soon as nothing else holds it.
  static void save(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w) {
    ctx->save_for_backward({w.requires_grad() ? x : torch::Tensor(), w});
    ctx->saved_data["x_sizes"] = x.sizes().vec();
  }
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b) {
    save(ctx, x, w);
    ctx->saved_data["has_bias"] = true;
    return nn::linear(x, w, b);
  }
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w) {
    save(ctx, x, w);
    ctx->saved_data["has_bias"] = false;
    return nn::linear(x, w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const int64_t N = w.size(0), K = w.size(1);
    const auto g2 = grad_outputs[0].reshape({-1, N});  // [M, N]
    torch::Tensor grad_x, grad_w, grad_b;
    if (ctx->needs_input_grad(0))
      grad_x = nn::linear(g2, w.t()).view(ctx->saved_data["x_sizes"].toIntVector());  // [M, N] x [N, K]
    if (ctx->needs_input_grad(1)) grad_w = nn::linear(g2.t(), x.reshape({-1, K}).t());  // [N, M] x [M, K]
    if (!ctx->saved_data["has_bias"].toBool()) return {grad_x, grad_w};
    if (ctx->needs_input_grad(2)) grad_b = g2.sum(0);
    return {grad_x, grad_w, grad_b};
  }
};

// Operands the split could take if autograd did not need to see the product.
bool splittable_with_grad(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  // Under autocast the products are LibTorch's to cast to 16 bits (out= products never are).
  if (!torch::GradMode::is_enabled() || at::autocast::is_cpu_enabled()) return false;
  for (const torch::Tensor* t : {&x, &w, &b})
    if (t->defined() && (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32)) return false;
  return x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad());
}
}  // namespace

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  const int threads = split_threads();
  if (threads > 1 && x.dim() >= 2 && w.dim() == 2 && x.size(-1) == w.size(1) && splittable_with_grad(x, w, b)) {
    const int64_t M = x.numel() / std::max<int64_t>(1, x.size(-1)), N = w.size(0), K = w.size(1);
    if (static_cast<double>(M) * N * K >= kMinSplitMultiplyAdds && M >= kMinRowsPerThread * threads)
      return b.defined() ? SplitLinearFunction::apply(x, w, b) : SplitLinearFunction::apply(x, w);
  }
  // Wrong shapes take LibTorch's path, which names them in its error.
  if (threads > 1 && x.dim() >= 2 && w.dim() == 2 && x.size(-1) == w.size(1) && eligible({&x, &w, &b})) {
    const int64_t N = w.size(0), K = w.size(1);
    const auto x2 = x.reshape({-1, K});
    const int64_t M = x2.size(0);
    if (static_cast<double>(M) * N * K >= kMinSplitMultiplyAdds && M >= kMinRowsPerThread * threads) {
      // LibTorch 1.13's F.linear adds the bias inside the product (addmm: bias + sum) for 2-d
      // inputs and after it (matmul, then add) for all others; the sums round differently, so
      // follow it.
      const bool fused_bias = b.defined() && x.dim() == 2;
      g_split_products.fetch_add(1, std::memory_order_relaxed);
      auto out = torch::empty({M, N}, x.options());
      const auto wt = w.t();
      for_each_piece(threads, [&](int64_t i, int64_t n) {
        const auto [r0, rows] = piece_range(M, i, n, kRowAlignment);
        if (rows == 0) return;
        auto o = out.narrow(0, r0, rows);
        if (fused_bias)
          at::addmm_out(o, b, x2.narrow(0, r0, rows), wt);
        else
          at::mm_out(o, x2.narrow(0, r0, rows), wt);
      });
      if (b.defined() && !fused_bias) out.add_(b);
      auto shape = x.sizes().vec();
      shape.back() = N;
      return out.view(shape);
    }
  }
  return torch::nn::functional::linear(x, w, b);
}

torch::Tensor batched_matmul(const torch::Tensor& a, const torch::Tensor& b) {
  const int threads = split_threads();
  if (threads > 1 && a.dim() >= 3 && a.dim() == b.dim() && eligible({&a, &b}) &&
      a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2) && a.size(-1) == b.size(-2)) {
    const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
    // The same 3-d views torch::matmul makes (copies where the strides need it).
    const auto a3 = a.reshape({-1, M, K});
    const auto b3 = b.reshape({-1, K, N});
    const int64_t batch = a3.size(0);
    if (static_cast<double>(batch) * M * N * K >= kMinSplitMultiplyAdds && batch >= threads) {
      g_split_products.fetch_add(1, std::memory_order_relaxed);
      auto out = torch::empty({batch, M, N}, a.options());
      for_each_piece(threads, [&](int64_t i, int64_t n) {
        const auto [s, len] = piece_range(batch, i, n, 1);
        if (len == 0) return;
        auto o = out.narrow(0, s, len);
        at::bmm_out(o, a3.narrow(0, s, len), b3.narrow(0, s, len));
      });
      auto shape = a.sizes().vec();
      shape.back() = N;
      return out.view(shape);
    }
  }
  return torch::matmul(a, b);
}

}  // namespace amused::nn
