// Thread configuration: LibTorch starts with 1 intra-op thread here; we use all physical cores.
#pragma once

namespace amused {

// Number of physical cores (not hyper-threads) of this machine, at least 1.
int physical_core_count();

// Sets the intra-op threads of LibTorch (and of OpenBLAS when it is the BLAS) to `threads`;
// threads <= 0 means "all physical cores". Returns the number applied.
int configure_threads(int threads);

}  // namespace amused
