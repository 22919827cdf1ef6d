// Thread configuration: LibTorch starts with 1 intra-op thread here; we use all physical cores.
#pragma once

namespace amused {

// Number of physical cores (not hyper-threads) of this machine, at least 1.
int physical_core_count();

// Sets the intra-op threads of LibTorch to `threads`; threads <= 0 means "all physical cores".
// Returns the number applied. When OpenBLAS is the BLAS it is made single-threaded, and the large
// float32 products are split across LibTorch's threads instead (nn/matmul.h says why).
int configure_threads(int threads);

// Whether configure_threads() found OpenBLAS and made it single-threaded.
bool blas_single_threaded();

}  // namespace amused
