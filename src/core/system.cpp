// Machine information, peak memory and matmul ceilings for benchmarks.
#include "amused/system.h"

#include <dlfcn.h>
#include <sys/resource.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <vector>
#include <fstream>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "core/threads.h"
#include "nn/matmul.h"
#ifdef AMUSED_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif
#include "pipelines/pipeline_amused.h"

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

double measure_matmul_gflops(const std::string& dtype, const std::string& device, int n, double seconds) {
  torch::NoGradGuard g;
  const auto dev = parse_device(device);
  const auto dt = parse_dtype(dtype);
  // Square n x n products plus the U-ViT's largest layer shape (512 tokens x 1024 -> 5632, the GEGLU
  // projection of a CFG batch): the best of them is the ceiling.
  const std::vector<std::array<int64_t, 3>> shapes = {{n, n, n}, {2 * n, 2 * n, 2 * n}, {512, 1024, 5632}};
  double best = 0;
  const double per_shape = seconds / static_cast<double>(shapes.size());
  for (const auto& [m, k, n_out] : shapes) {
    // Through nn::linear (a times b's transpose), as the models multiply: on CPUs with OpenBLAS
    // that is the product split across the OpenMP threads (nn/matmul.h).
    auto a = torch::randn({m, k}).to(dev, dt);
    auto b = torch::randn({n_out, k}).to(dev, dt);
    auto c = nn::linear(a, b);  // warm-up
    if (dev.is_cuda()) torch::cuda::synchronize();
    const auto start = std::chrono::steady_clock::now();
    do {
      const auto t0 = std::chrono::steady_clock::now();
      c = nn::linear(a, b);
      if (dev.is_cuda()) torch::cuda::synchronize();
      const double dt_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, 2.0 * m * k * static_cast<double>(n_out) / dt_s / 1e9);
    } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < per_shape);
  }
  return best;
}

}  // namespace amused
