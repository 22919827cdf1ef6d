#include "core/memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <string>

namespace amused {

namespace {
// The "Key:   123 kB" line of /proc/meminfo or /proc/self/status, in bytes; false when absent.
bool read_kb_field(const char* file, const std::string& key, uint64_t& bytes) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) != 0 || line.size() <= key.size() || line[key.size()] != ':') continue;
    std::istringstream is(line.substr(key.size() + 1));
    uint64_t kb = 0;
    if (!(is >> kb)) return false;
    bytes = kb * 1024;
    return true;
  }
  return false;
}
// A cgroup v2 file holding one number, or "max".
bool read_cgroup_number(const char* file, uint64_t& value) {
  std::ifstream in(file);
  std::string text;
  if (!(in >> text) || text == "max") return false;
  try {
    value = std::stoull(text);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}
}  // namespace

uint64_t allocatable_bytes() {
  uint64_t can = std::numeric_limits<uint64_t>::max();
  uint64_t available = 0, swap = 0;
  if (read_kb_field("/proc/meminfo", "MemAvailable", available)) {
    read_kb_field("/proc/meminfo", "SwapFree", swap);
    can = std::min(can, available + swap);
  }
  struct rlimit limit {};
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    uint64_t mapped = 0;
    read_kb_field("/proc/self/status", "VmSize", mapped);
    const uint64_t cap = static_cast<uint64_t>(limit.rlim_cur);
    can = std::min(can, cap > mapped ? cap - mapped : 0);
  }
  // cgroup v2: memory.current counts the page cache too, which the kernel reclaims under pressure
  // (after a build it can fill the whole limit): only the rest is in use.
  uint64_t max = 0, current = 0;
  if (read_cgroup_number("/sys/fs/cgroup/memory.max", max) &&
      read_cgroup_number("/sys/fs/cgroup/memory.current", current)) {
    std::ifstream stat("/sys/fs/cgroup/memory.stat");
    std::string key;
    uint64_t value = 0, file = 0;
    while (stat >> key >> value)
      if (key == "file") file = value;
    const uint64_t used = current > file ? current - file : 0;
    can = std::min(can, max > used ? max - used : 0);
  }
  return can;
}

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
