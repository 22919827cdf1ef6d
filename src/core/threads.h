// Thread configuration: LibTorch starts with 1 intra-op thread here; we use all physical cores.
#pragma once

#include <cstdint>
#include <functional>

namespace amused {

// Number of physical cores (not hyper-threads) of this machine, at least 1.
int physical_core_count();

// Sets the intra-op threads of LibTorch to `threads`; threads <= 0 means "all physical cores".
// Returns the number applied. When OpenBLAS is the BLAS it is made single-threaded, and the large
// float32 products are split across LibTorch's threads instead (nn/matmul.h says why).
int configure_threads(int threads);

// What loading a model or starting a trainer applies: `threads` when > 0; otherwise the count a
// caller chose with amused::set_threads() before (kept, as amused.h promises); otherwise all
// physical cores. Returns the number applied.
int configure_threads_for_load(int threads);

// amused::set_threads(): configure_threads, remembered for configure_threads_for_load.
int set_user_threads(int threads);

// Whether configure_threads() found OpenBLAS and made it single-threaded.
bool blas_single_threaded();

// at::parallel_for for our sources: f(chunk_begin, chunk_end) over consecutive chunks of
// [begin, end), at least `grain` long, one per thread of LibTorch's OpenMP team, with the caller's
// autograd and inference-mode state; the first exception is rethrown here. ATen's parallel_for is a
// header template whose OpenMP pragma only works in sources compiled with -fopenmp (ours are not:
// that would tie them to the compiler's libgomp while a LibTorch may bring its own copy, and then
// two pools would compete again), so this calls the runtime LibTorch itself loaded (GOMP_parallel,
// found at run time). Serial when the range is under two grains, inside a parallel region, with
// one thread, or when no such runtime is loaded.
void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& f);

// Whether parallel_for can run in parallel here (an OpenMP runtime is loaded and LibTorch has more
// than one thread).
bool parallel_for_available();

}  // namespace amused
