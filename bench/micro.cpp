// Google Benchmark micro-benchmarks of the hot pieces at amused-256 full size (random weights):
// U-ViT attention, GEGLU feed-forward, ConvNeXt block, and a VQ decoder up-block. Each runs in
// float32 and in the CPU bfloat16 mode (16-bit matrix weights, float32 activations).
//   cmake -S . -B build -DAMUSED_BUILD_BENCH=ON && cmake --build build --target amused_bench
//   build/amused_bench --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include "nn/execution.h"
#include "pipelines/components.h"
#include "core/threads.h"
#include "io/state_dict.h"
#include "models/uvit_2d.h"
#include "models/vae_blocks.h"
#include "nn/attention.h"
#include "nn/attention_processor.h"

namespace {

// mode 0: float32; mode 1: bfloat16 matrix weights with float32 activations.
void set_mode(torch::nn::Module& m, int mode) {
  for (auto& p : m.parameters()) {
    amused::nn::ExecutionScope g(amused::nn::ExecutionMode::kInference);
    p.normal_(0, 0.02);
  }
  if (mode == 1) {
    const auto o = amused::precision_load_options(m, amused::Precision::kMixedBFloat16, torch::kCPU);
    amused::io::convert_parameters(m, o);
  }
}

const char* mode_name(int mode) { return mode == 0 ? "float32" : "bfloat16-mixed"; }

void BM_SelfAttention(benchmark::State& state) {
  amused::configure_threads(0);
  amused::nn::ExecutionScope g(amused::nn::ExecutionMode::kInference);
  amused::nn::Attention attn(1024, std::nullopt, 16, 64, 0.0, false, false);
  set_mode(*attn, static_cast<int>(state.range(0)));
  auto x = torch::randn({2, 256, 1024});  // CFG batch of 2 x 256 tokens
  for (auto _ : state) benchmark::DoNotOptimize(attn->forward(x, torch::Tensor()));
  state.SetLabel(mode_name(static_cast<int>(state.range(0))));
}
BENCHMARK(BM_SelfAttention)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

void BM_GegluFeedForward(benchmark::State& state) {
  amused::configure_threads(0);
  amused::nn::ExecutionScope g(amused::nn::ExecutionMode::kInference);
  amused::nn::FeedForward ff(1024, std::nullopt, 4, 0.0, 2816, false);
  set_mode(*ff, static_cast<int>(state.range(0)));
  auto x = torch::randn({2, 256, 1024});
  for (auto _ : state) benchmark::DoNotOptimize(ff(x));
  state.SetLabel(mode_name(static_cast<int>(state.range(0))));
}
BENCHMARK(BM_GegluFeedForward)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

void BM_ConvNextBlock(benchmark::State& state) {
  amused::configure_threads(0);
  amused::nn::ExecutionScope g(amused::nn::ExecutionMode::kInference);
  amused::models::uvit::ConvNextBlock block(768, 1e-6, true, false, 0.0, 1024);
  set_mode(*block, static_cast<int>(state.range(0)));
  auto x = torch::randn({2, 768, 16, 16});
  auto c = torch::randn({2, 1024});
  for (auto _ : state) benchmark::DoNotOptimize(block->forward(x, c));
  state.SetLabel(mode_name(static_cast<int>(state.range(0))));
}
BENCHMARK(BM_ConvNextBlock)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

void BM_VqDecoderUpBlock(benchmark::State& state) {
  // The last up-block of the 256x256 decode: 256 -> 128 channels at 256x256, 3 resnets.
  amused::configure_threads(0);
  amused::nn::ExecutionScope g(amused::nn::ExecutionMode::kInference);
  amused::models::UpDecoderBlock2D block(256, 128, 3, 1e-6, "silu", 32, false);
  set_mode(*block, 0);
  auto x = torch::randn({1, 256, 256, 256});
  for (auto _ : state) benchmark::DoNotOptimize(block->forward(x));
  state.SetLabel("float32");
}
BENCHMARK(BM_VqDecoderUpBlock)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
