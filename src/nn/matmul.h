// Matrix products that keep every core busy without a second thread pool.
//
// LibTorch's float32 CPU products go to OpenBLAS, which runs its own pthread pool beside LibTorch's
// OpenMP one. On a machine with as many threads as cores the two pools fight: after each region
// the OpenMP workers spin waiting for the next one while OpenBLAS's workers need those cores, and
// OpenBLAS's workers spin (sched_yield) for a while after each product while the OpenMP ones need
// them. Measured on the 2-core benchmark machine, half of a float32 U-ViT step went to spinning
// (docs/PERFORMANCE.md). So configure_threads() makes OpenBLAS single-threaded, and these helpers
// split each large float32 product into one piece per OpenMP thread, each a single-threaded BLAS
// call: one pool, every core computing.
//
// Each piece is a block of output rows (or of batch entries) that the BLAS computes exactly as it
// would inside one single-threaded call over the whole product (row blocks are aligned to the
// kernel's tiles, see matmul.cpp), so the result is bit-identical to single-threaded BLAS whatever
// the thread count (tests/unit/test_matmul.cpp). linear() under autograd (training) splits too,
// through a custom autograd function whose backward products (dL/dx = g w, dL/dw = g^T x) are
// split the same way. Anything else (other dtypes and devices, small products, autocast, batched
// products under autograd, OpenBLAS not single-threaded) takes LibTorch's own path unchanged.
#pragma once

#include <torch/torch.h>

namespace amused::nn {

// torch::nn::functional::linear(x, w, b): x [..., K], w [N, K], b [N] or undefined.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {});

// torch::matmul(a, b) for a [..., M, K] and b [..., K, N] with equal batch dimensions (at least 3
// dimensions each; no broadcasting), as attention uses it.
torch::Tensor batched_matmul(const torch::Tensor& a, const torch::Tensor& b);

// Whether these helpers split products across threads right now (see configure_threads).
bool splits_products();

// How many products these helpers have split so far (all threads): tests prove with it that the
// split path ran.
int64_t split_product_count();

}  // namespace amused::nn
