// Machine and runtime information, and the measurements `amused bench` reports against.
#pragma once

#include <cstdint>
#include <string>

namespace amused {

struct SystemInfo {
  std::string cpu_model;
  int physical_cores = 0;
  int logical_cores = 0;
  int threads = 0;              // intra-op threads in use
  std::string libtorch_version;
  std::string blas;             // e.g. "OpenBLAS 0.3.21 (pthread)" or what LibTorch reports
  bool cuda_available = false;
  std::string cuda_device;      // name of device 0 when available
};

SystemInfo system_info();

// Peak resident set size of this process so far, in MiB.
double peak_rss_mib();

// Resident set size of this process now, in MiB (0 where /proc is not available).
double current_rss_mib();

// The same, split into anonymous memory (heap: converted weights, activations) and file pages
// (memory-mapped weights, the code of the libraries).
struct RssBreakdown {
  double total = 0, anonymous = 0, file = 0;
};
RssBreakdown rss_breakdown_mib();

// Peak CUDA memory allocated by LibTorch's caching allocator (MiB); 0 without CUDA.
double peak_cuda_memory_mib();


}  // namespace amused
