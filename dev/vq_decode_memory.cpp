// Experiment: the VQ decoder's transient memory and time on its own (random weights, the
// pipeline's CPU mixed precision or float32). Peak RSS over the resident set before the decode,
// from /proc (VmHWM reset through /proc/self/clear_refs). Build: see dev/README.md.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "nn/execution.h"
#include "pipelines/components.h"
#include "core/config.h"
#include "core/memory.h"
#include "core/threads.h"
#include "io/state_dict.h"
#include "models/vq_model.h"

namespace {
double status_mib(const char* key) {
  std::ifstream st("/proc/self/status");
  std::string line;
  while (std::getline(st, line))
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(std::string(key).size())) / 1024.0;
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  const std::string cfg_path = argc > 1 ? argv[1] : "../shared/golden/full-configs/amused-256/vqvae/config.json";
  const std::string mode = argc > 2 ? argv[2] : "mixed";
  const int grid = argc > 3 ? std::atoi(argv[3]) : 16;
  const int iters = argc > 4 ? std::atoi(argv[4]) : 3;
  amused::configure_threads(0);
  auto cfg = amused::models::VQModelConfig::from_json(amused::read_json_file(cfg_path), cfg_path);
  amused::models::VQModel vq(cfg);
  if (mode == "mixed") {
    const auto o = amused::precision_load_options(*vq, amused::Precision::kMixedBFloat16, torch::kCPU);
    amused::io::convert_parameters(*vq, o);
  }
  vq->init_weights();
  vq->eval();
  amused::nn::ExecutionScope g(amused::nn::ExecutionMode::kInference);
  auto ids = torch::randint(0, cfg.num_vq_embeddings, {1, grid, grid});
  for (int i = 0; i < iters; ++i) {
    amused::release_free_memory();
    std::ofstream("/proc/self/clear_refs") << "5";
    const double before = status_mib("VmRSS:");
    const auto t0 = std::chrono::steady_clock::now();
    auto img = vq->decode_tokens(ids);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s decode %dx%d -> %lldx%lld: %.3f s, RSS before %.0f MiB, peak +%.0f MiB\n", mode.c_str(), grid,
                grid, (long long)img.size(2), (long long)img.size(3), sec, before,
                status_mib("VmHWM:") - before);
  }
}
