// `amused bench`: end-to-end and per-component timings, peak memory, and how close each component
// gets to the machine's measured matrix-multiply ceiling.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <numeric>

#include "amused/amused.h"
#include "amused/pipeline.h"
#include "amused/system.h"
#include "command.h"

namespace {

struct BenchArgs {
  std::string model, dtype = "auto", device = "cpu", variant, tokenizer;
  int threads = 0, steps = 12, batch = 1, warmup_steps = 2;
  double guidance = 10.0;
  bool json = false, random_weights = false, offline = false, skip_ceilings = false;
  std::string prompt = "a photo of an astronaut riding a horse on mars";
  uint64_t seed = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

int run(const BenchArgs& a) {
  if (a.steps < 1) throw amused::InvalidArgument("--steps must be at least 1");
  if (a.batch < 1) throw amused::InvalidArgument("--batch must be at least 1");
  amused::set_threads(a.threads);
  const auto sys = amused::system_info();
  const bool cuda = a.device.rfind("cuda", 0) == 0;

  amused::LoadOptions lo = amused::cli::load_options(a.device, a.dtype, a.threads, a.variant, a.offline);
  lo.random_weights = a.random_weights;
  lo.tokenizer_dir = a.tokenizer;
  const auto t_load = std::chrono::steady_clock::now();
  auto pipe = amused::Pipeline::load(a.model, lo);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const auto& sum = pipe->summary();

  amused::TextToImageParams p;
  p.prompts = {a.prompt};
  p.num_images_per_prompt = a.batch;
  p.guidance_scale = a.guidance;
  p.seed = a.seed;
  if (a.warmup_steps > 0) {
    p.num_inference_steps = a.warmup_steps;
    pipe->text_to_image(p);
  }
  p.num_inference_steps = a.steps;
  const auto r = pipe->text_to_image(p);
  const auto& t = r.timings;

  const bool cfg = a.guidance > 1.0;
  const double rows = a.batch * (cfg ? 2.0 : 1.0);
  const double step_med = median(t.transformer_step_s);
  const double tr_gflops = step_med > 0 ? sum.transformer_gflop * rows / step_med : 0;
  const double vq_gflops = t.vq_decode_s > 0 ? sum.vq_decode_gflop * a.batch / t.vq_decode_s : 0;
  const double te_gflops = t.text_encoder_s > 0 ? sum.text_encoder_gflop * (cfg ? 2 : 1) / t.text_encoder_s : 0;
  const double e2e = t.total_s;
  const double rss = amused::peak_rss_mib();
  const double gpu = amused::peak_cuda_memory_mib();
  // The ceilings are measured after the run, so their buffers take no part in its peak memory.
  double ceil_f32 = 0, ceil_bf16 = 0, ceil_f16 = 0;
  if (!a.skip_ceilings) {
    ceil_f32 = amused::measure_matmul_gflops("float32", a.device);
    ceil_bf16 = amused::measure_matmul_gflops("bfloat16", a.device);
    if (cuda) ceil_f16 = amused::measure_matmul_gflops("float16", a.device);
  }
  const double ceiling = a.dtype == "float32" || a.dtype == "fp32" ? ceil_f32 : cuda && (a.dtype == "float16" || a.dtype == "fp16") ? ceil_f16 : ceil_bf16;
  auto pct = [&](double g, double c) { return c > 0 ? 100.0 * g / c : 0.0; };

  if (a.json) {
    nlohmann::json j;
    j["model"] = a.model;
    j["dtype"] = a.dtype;
    j["device"] = a.device;
    j["threads"] = sys.threads;
    j["cpu"] = sys.cpu_model;
    j["physical_cores"] = sys.physical_cores;
    j["libtorch"] = sys.libtorch_version;
    j["blas"] = sys.blas;
    j["steps"] = a.steps;
    j["batch"] = a.batch;
    j["guidance"] = a.guidance;
    j["random_weights"] = a.random_weights;
    j["matmul_gflops_f32"] = ceil_f32;
    j["matmul_gflops_bf16"] = ceil_bf16;
    if (cuda) j["matmul_gflops_f16"] = ceil_f16;
    j["load_s"] = load_s;
    j["text_encoder_s"] = t.text_encoder_s;
    j["transformer_step_s"] = step_med;
    j["transformer_step_min_s"] = t.transformer_step_s.empty() ? 0 : *std::min_element(t.transformer_step_s.begin(), t.transformer_step_s.end());
    j["transformer_step_max_s"] = t.transformer_step_s.empty() ? 0 : *std::max_element(t.transformer_step_s.begin(), t.transformer_step_s.end());
    j["scheduler_s"] = t.scheduler_s;
    j["vq_decode_s"] = t.vq_decode_s;
    j["end_to_end_s"] = e2e;
    j["images_per_s"] = e2e > 0 ? a.batch / e2e : 0;
    j["peak_rss_mib"] = rss;
    if (cuda) j["peak_gpu_mib"] = gpu;
    j["transformer_gflops"] = tr_gflops;
    j["transformer_pct_of_ceiling"] = pct(tr_gflops, ceiling);
    j["vq_decode_gflops"] = vq_gflops;
    j["vq_decode_pct_of_f32_ceiling"] = pct(vq_gflops, ceil_f32);
    j["text_encoder_gflops"] = te_gflops;
    std::cout << j.dump(2) << std::endl;
    return 0;
  }
  std::printf("machine      %s, %d physical cores, %d threads\n", sys.cpu_model.c_str(), sys.physical_cores, sys.threads);
  std::printf("runtime      LibTorch %s, %s, device %s\n", sys.libtorch_version.c_str(), sys.blas.c_str(), a.device.c_str());
  if (!a.skip_ceilings)
    std::printf("ceilings     matmul f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s%s\n", ceil_f32, ceil_bf16,
                cuda ? (", f16 " + std::to_string(ceil_f16) + " GFLOP/s").c_str() : "");
  std::printf("model        %s (%s, %s%s), %d steps, batch %d, guidance %g\n", a.model.c_str(), a.dtype.c_str(),
              sum.path.c_str(), a.random_weights ? ", random weights" : "", a.steps, a.batch, a.guidance);
  std::printf("load         %8.3f s\n", load_s);
  std::printf("text encoder %8.3f s  (%.1f GFLOP/s)\n", t.text_encoder_s, te_gflops);
  std::printf("transformer  %8.3f s per step: median, min %.3f, max %.3f  (%.1f GFLOP/s, %.0f%% of ceiling)\n", step_med,
              t.transformer_step_s.empty() ? 0 : *std::min_element(t.transformer_step_s.begin(), t.transformer_step_s.end()),
              t.transformer_step_s.empty() ? 0 : *std::max_element(t.transformer_step_s.begin(), t.transformer_step_s.end()),
              tr_gflops, pct(tr_gflops, ceiling));
  std::printf("scheduler    %8.3f s total\n", t.scheduler_s);
  std::printf("vq decode    %8.3f s  (%.1f GFLOP/s, %.0f%% of the f32 ceiling)\n", t.vq_decode_s, vq_gflops,
              pct(vq_gflops, ceil_f32));
  std::printf("end to end   %8.3f s  (%.3f images/s)\n", e2e, e2e > 0 ? a.batch / e2e : 0);
  std::printf("peak RSS     %8.0f MiB\n", rss);
  if (cuda) std::printf("peak GPU     %8.0f MiB\n", gpu);
  return 0;
}

amused::cli::Registrar reg("bench", "Benchmark a model: per-component timings, peak memory, GFLOP/s", [](CLI::App& sub) {
  auto a = std::make_shared<BenchArgs>();
  sub.add_option("-m,--model", a->model, "Model folder, hub repo id, or (with --random-weights) a config folder")
      ->required();
  sub.add_option("--dtype", a->dtype, "auto | float32 | bfloat16 | float16 (auto: bfloat16 on CPUs with native bf16, float16 on CUDA, else float32; float32 reproduces the reference exactly)")->capture_default_str();
  sub.add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  sub.add_option("--threads", a->threads, "Compute threads (default: all physical cores)");
  sub.add_option("--steps", a->steps, "Denoising steps")->capture_default_str();
  sub.add_option("--batch", a->batch, "Images per call")->capture_default_str();
  sub.add_option("--guidance", a->guidance, "Guidance scale (CFG doubles the transformer batch)")->capture_default_str();
  sub.add_option("--warmup-steps", a->warmup_steps, "Steps of the warm-up call (0: none)")->capture_default_str();
  sub.add_option("--prompt", a->prompt, "Prompt")->capture_default_str();
  sub.add_option("--seed", a->seed, "Seed")->capture_default_str();
  sub.add_option("--variant", a->variant, "Weight variant (e.g. fp16)");
  sub.add_option("--tokenizer", a->tokenizer, "Tokenizer folder (for config-only model folders)");
  sub.add_flag("--random-weights", a->random_weights, "Random weights from the config files (no checkpoint needed)");
  sub.add_flag("--offline", a->offline, "Never use the network");
  sub.add_flag("--no-ceilings", a->skip_ceilings, "Skip the matmul ceiling measurement");
  sub.add_flag("--json", a->json, "One JSON object on stdout");
  return std::function<int()>([a] { return run(*a); });
});

}  // namespace
