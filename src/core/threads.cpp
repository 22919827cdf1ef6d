#include "core/threads.h"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <exception>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include "core/log.h"

namespace amused {
namespace {
std::atomic<bool> g_blas_single_threaded{false};

// The OpenMP runtime LibTorch runs on, looked up in the loaded libraries (see parallel_for).
struct OpenMpRuntime {
  using Parallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
  using IntFn = int (*)();
  Parallel parallel = nullptr;
  IntFn thread_num = nullptr, num_threads = nullptr;
  OpenMpRuntime() {
    parallel = reinterpret_cast<Parallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    thread_num = reinterpret_cast<IntFn>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    num_threads = reinterpret_cast<IntFn>(dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
    if (!thread_num || !num_threads) parallel = nullptr;
  }
};
const OpenMpRuntime& openmp() {
  static const OpenMpRuntime rt;
  return rt;
}

struct Region {
  int64_t begin, end, grain;
  const std::function<void(int64_t, int64_t)>* f;
  at::ThreadLocalState state;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  std::exception_ptr error;
};

void run_region(void* data) {
  auto* r = static_cast<Region*>(data);
  const int64_t team = openmp().num_threads(), tid = openmp().thread_num();
  const int64_t range = r->end - r->begin;
  const int64_t chunks = std::max<int64_t>(1, std::min(team, range / std::max<int64_t>(r->grain, 1)));
  if (tid >= chunks) return;
  const int64_t lo = r->begin + range * tid / chunks, hi = r->begin + range * (tid + 1) / chunks;
  try {
    at::ThreadLocalStateGuard guard(r->state);
    (*r->f)(lo, hi);
  } catch (...) {
    if (!r->failed.test_and_set()) r->error = std::current_exception();
  }
}
}  // namespace

bool parallel_for_available() {
  return openmp().parallel != nullptr && at::get_num_threads() > 1 && !at::in_parallel_region();
}

void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  if (begin >= end) return;
  if (!parallel_for_available() || end - begin < 2 * std::max<int64_t>(grain, 1)) {
    f(begin, end);
    return;
  }
  Region r{begin, end, grain, &f, {}, {}, {}};
  // 0 = the default team size, which at::set_num_threads sets (asking for another size each time
  // would rebuild libgomp's pool; ATen avoids the num_threads clause for the same reason).
  openmp().parallel(&run_region, &r, 0, 0);
  if (r.error) std::rethrow_exception(r.error);
}

int physical_core_count() {
  // Unique (package, core) pairs from sysfs; falls back to the logical count.
  namespace fs = std::filesystem;
  std::set<std::pair<int, int>> cores;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/sys/devices/system/cpu", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("cpu", 0) != 0 || name.size() < 4 || !std::isdigit(static_cast<unsigned char>(name[3])))
      continue;
    std::ifstream core_f(entry.path() / "topology/core_id");
    std::ifstream pkg_f(entry.path() / "topology/physical_package_id");
    int core = -1, pkg = -1;
    if (core_f >> core && pkg_f >> pkg) cores.insert({pkg, core});
  }
  if (!cores.empty()) return static_cast<int>(cores.size());
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

int configure_threads(int threads) {
  int n = threads > 0 ? threads : physical_core_count();
  // Far more threads than logical CPUs only adds contention (and --threads 100000 would try to
  // start that many): bounded at twice the logical CPUs, with a warning.
  const int logical = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (n > 2 * logical) {
    log::warn("asked for " + std::to_string(n) + " threads; this machine has " + std::to_string(logical) +
              " logical CPUs, using " + std::to_string(2 * logical));
    n = 2 * logical;
  }
  at::set_num_threads(n);
  // OpenBLAS's own pthread pool would compete with LibTorch's OpenMP pool for the same cores (both
  // spin between calls), so it is kept to the calling thread; nn/matmul.h parallelises the large
  // products over the OpenMP pool instead.
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    fn(1);
    g_blas_single_threaded = true;
  }
  return n;
}

namespace {
std::atomic<int> g_user_threads{0};  // set by amused::set_threads(); 0 = never called
}  // namespace

int set_user_threads(int threads) {
  const int n = configure_threads(threads);
  g_user_threads = n;
  return n;
}

int configure_threads_for_load(int threads) {
  if (threads <= 0) {
    if (const int user = g_user_threads; user > 0) return configure_threads(user);
  }
  return configure_threads(threads);
}

bool blas_single_threaded() { return g_blas_single_threaded; }

}  // namespace amused
