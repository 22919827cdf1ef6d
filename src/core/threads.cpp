#include "core/threads.h"

#include <dlfcn.h>

#include <atomic>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include <ATen/Parallel.h>

namespace amused {
namespace {
std::atomic<bool> g_blas_single_threaded{false};
}  // namespace

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
  const int n = threads > 0 ? threads : physical_core_count();
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

bool blas_single_threaded() { return g_blas_single_threaded; }

}  // namespace amused
