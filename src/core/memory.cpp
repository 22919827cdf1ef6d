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
// The live scopes of each kind; the allocator settings follow from them (apply_settings).
std::mutex g_mutex;
int g_weight_scopes = 0, g_loop_scopes = 0, g_decode_scopes = 0;

constexpr int kWeightMmapThreshold = 128 * 1024;
constexpr int kRunMmapThreshold = 32 * 1024 * 1024;
constexpr int kRunTrimThreshold = 64 * 1024 * 1024;
constexpr int kLoopTrimThreshold = 1024 * 1024 * 1024;
constexpr int kDecodeMmapThreshold = 8 * 1024 * 1024;
constexpr int kDefaultMmapMax = 65536;  // glibc's DEFAULT_MMAP_MAX

void apply_settings() {
#if defined(__GLIBC__)
  if (g_weight_scopes > 0) {
    mallopt(M_MMAP_THRESHOLD, kWeightMmapThreshold);
    mallopt(M_MMAP_MAX, kDefaultMmapMax);
  } else if (g_decode_scopes > 0) {
    mallopt(M_MMAP_THRESHOLD, kDecodeMmapThreshold);
    mallopt(M_MMAP_MAX, kDefaultMmapMax);
    mallopt(M_TRIM_THRESHOLD, kRunTrimThreshold);
  } else if (g_loop_scopes > 0) {
    mallopt(M_MMAP_THRESHOLD, kRunMmapThreshold);
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, kLoopTrimThreshold);
  } else {
    mallopt(M_MMAP_THRESHOLD, kRunMmapThreshold);
    mallopt(M_MMAP_MAX, kDefaultMmapMax);
    mallopt(M_TRIM_THRESHOLD, kRunTrimThreshold);
  }
#endif
}
}  // namespace

WeightAllocationScope::WeightAllocationScope() {
  std::lock_guard<std::mutex> lock(g_mutex);
  ++g_weight_scopes;
  apply_settings();
}

WeightAllocationScope::~WeightAllocationScope() {
  std::lock_guard<std::mutex> lock(g_mutex);
  --g_weight_scopes;
  apply_settings();
}

ActivationReuseScope::ActivationReuseScope() {
  std::lock_guard<std::mutex> lock(g_mutex);
  ++g_loop_scopes;
  apply_settings();
}

ActivationReuseScope::~ActivationReuseScope() {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    --g_loop_scopes;
    apply_settings();
  }
  release_free_memory();
}

DecodeAllocationScope::DecodeAllocationScope() {
  std::lock_guard<std::mutex> lock(g_mutex);
  ++g_decode_scopes;
  apply_settings();
}

DecodeAllocationScope::~DecodeAllocationScope() {
  std::lock_guard<std::mutex> lock(g_mutex);
  --g_decode_scopes;
  apply_settings();
}

}  // namespace amused
