// Experiment: full-size U-ViT forward time (random weights) per dtype, batch 2 (one CFG step) or
// the batch given as the fourth argument.
// Build: see dev/README.md.
#include <chrono>
#include <cstdio>

#include "nn/execution.h"
#include "pipelines/components.h"
#include "core/config.h"
#include "core/threads.h"
#include "io/state_dict.h"
#include "models/flops.h"
#include "models/uvit_2d.h"

int main(int argc, char** argv) {
  const std::string cfg_path = argc > 1 ? argv[1] : "../shared/golden/full-configs/amused-256/transformer/config.json";
  const std::string dtype = argc > 2 ? argv[2] : "float32";
  const int iters = argc > 3 ? std::atoi(argv[3]) : 3;
  amused::configure_threads(0);
  auto cfg = amused::models::UVit2DConfig::from_json(amused::read_json_file(cfg_path), cfg_path);
  amused::models::UVit2DModel m(cfg);
  m->init_weights();
  // "bfloat16": everything 16-bit; "mixed": 16-bit matrix weights, float32 activations (the
  // pipeline's CPU bfloat16 mode).
  const auto dt = dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
  m->to(dt);
  if (dtype == "mixed") {
    const auto o = amused::precision_load_options(*m, amused::Precision::kMixedBFloat16, torch::kCPU);
    amused::io::convert_parameters(*m, o);
  }
  m->eval();
  amused::nn::ExecutionScope g(amused::nn::ExecutionMode::kInference);
  const int64_t B = argc > 4 ? std::atoi(argv[4]) : 2, s = cfg.sample_size;
  auto ids = torch::randint(0, cfg.codebook_size, {B, s, s});
  auto ehs = torch::randn({B, 77, cfg.encoder_hidden_size}).to(dt);
  auto pooled = torch::randn({B, cfg.cond_embed_dim}).to(dt);
  auto micro = torch::tensor({256.f, 256.f, 0.f, 0.f, 6.f}).unsqueeze(0).expand({B, 5}).to(dt);
  const double gflop = amused::models::uvit_2d_flops(cfg, s, s) * B / 1e9;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto out = m->forward(ids, ehs, pooled, micro);
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s forward B=%lld: %.3f s, %.1f GFLOP/s\n", dtype.c_str(), (long long)B, sec, gflop / sec);
  }
}
