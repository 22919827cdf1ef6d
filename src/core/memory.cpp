#include "core/memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <atomic>

namespace amused {

void release_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

namespace {
std::atomic<int> g_weight_scopes{0};
}  // namespace

WeightAllocationScope::WeightAllocationScope() {
#if defined(__GLIBC__)
  if (g_weight_scopes++ == 0) mallopt(M_MMAP_THRESHOLD, kWeightMmapThreshold);
#endif
}

WeightAllocationScope::~WeightAllocationScope() {
#if defined(__GLIBC__)
  if (--g_weight_scopes == 0) {
    mallopt(M_MMAP_THRESHOLD, kRunMmapThreshold);
    mallopt(M_TRIM_THRESHOLD, kRunTrimThreshold);
  }
#endif
}

}  // namespace amused
