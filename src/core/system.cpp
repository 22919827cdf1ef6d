// Machine information and peak memory for benchmarks.
#include "amused/system.h"

#include <dlfcn.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <vector>
#include <fstream>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "core/threads.h"
#ifdef AMUSED_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace amused {

SystemInfo system_info() {
  SystemInfo s;
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line)) {
    if (line.rfind("model name", 0) == 0) {
      s.cpu_model = line.substr(line.find(':') + 2);
      break;
    }
  }
  s.physical_cores = physical_core_count();
  s.logical_cores = static_cast<int>(std::thread::hardware_concurrency());
  s.threads = at::get_num_threads();
  s.libtorch_version = TORCH_VERSION;
  using CfgFn = char* (*)();
  if (auto fn = reinterpret_cast<CfgFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    s.blas = std::string("OpenBLAS ") + fn();
  } else {
    s.blas = "not OpenBLAS (see `ldd $(which amused) | grep blas`)";
  }
  s.cuda_available = torch::cuda::is_available();
  return s;
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // KiB on Linux
}

double current_rss_mib() { return rss_breakdown_mib().total; }

RssBreakdown rss_breakdown_mib() {
  RssBreakdown r;
  std::ifstream status("/proc/self/status");
  std::string line;
  auto field = [&](const char* key, double& out) {
    const size_t n = std::strlen(key);
    if (line.compare(0, n, key) == 0) out = std::strtod(line.c_str() + n, nullptr) / 1024.0;  // kB
  };
  while (std::getline(status, line)) {
    field("VmRSS:", r.total);
    field("RssAnon:", r.anonymous);
    field("RssFile:", r.file);
  }
  return r;
}

double peak_cuda_memory_mib() {
#ifdef AMUSED_WITH_CUDA
  if (!torch::cuda::is_available()) return 0.0;
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0);  // [0] = aggregate
#else
  return 0.0;  // this LibTorch has no CUDA
#endif
}

}  // namespace amused
