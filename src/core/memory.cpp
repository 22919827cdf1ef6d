#include "core/memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <mutex>

namespace amused {

void release_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

namespace {
// The live scopes of each phase; the allocator settings follow from them (apply_settings).
std::mutex g_mutex;
int g_scopes[3] = {0, 0, 0};  // indexed by AllocationPhase

constexpr int kWeightMmapThreshold = 128 * 1024;
constexpr int kDecodeMmapThreshold = 8 * 1024 * 1024;
constexpr int kRunMmapThreshold = 32 * 1024 * 1024;
constexpr int kRunTrimThreshold = 64 * 1024 * 1024;
constexpr int kDenoiseTrimThreshold = 1024 * 1024 * 1024;
constexpr int kDefaultMmapMax = 65536;  // glibc's DEFAULT_MMAP_MAX

int& scopes(AllocationPhase phase) { return g_scopes[static_cast<int>(phase)]; }

void apply_settings() {
#if defined(__GLIBC__)
  int mmap_threshold = kRunMmapThreshold, mmap_max = kDefaultMmapMax, trim_threshold = kRunTrimThreshold;
  if (scopes(AllocationPhase::kLoadWeights) > 0) {
    mmap_threshold = kWeightMmapThreshold;
  } else if (scopes(AllocationPhase::kDecode) > 0) {
    mmap_threshold = kDecodeMmapThreshold;
  } else if (scopes(AllocationPhase::kDenoise) > 0) {
    mmap_max = 0;
    trim_threshold = kDenoiseTrimThreshold;
  }
  mallopt(M_MMAP_THRESHOLD, mmap_threshold);
  mallopt(M_MMAP_MAX, mmap_max);
  // While weights load the trim threshold is left as it is (glibc's 128 KiB at the first load).
  if (scopes(AllocationPhase::kLoadWeights) == 0) mallopt(M_TRIM_THRESHOLD, trim_threshold);
#endif
}
}  // namespace

AllocationScope::AllocationScope(AllocationPhase phase) : phase_(phase) {
  std::lock_guard<std::mutex> lock(g_mutex);
  ++scopes(phase_);
  apply_settings();
}

AllocationScope::~AllocationScope() {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    --scopes(phase_);
    apply_settings();
  }
  if (phase_ == AllocationPhase::kDenoise) release_free_memory();
}

}  // namespace amused
