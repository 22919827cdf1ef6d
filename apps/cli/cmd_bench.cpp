// `amused bench`: end-to-end and per-component timings, peak memory, and how close each component
// gets to the machine's measured matrix-multiply ceiling.
#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <unistd.h>

#include "amused/amused.h"
#include "amused/pipeline.h"
#include "amused/system.h"
#include "amused/train.h"
#include "amused/image_io.h"
#include "command.h"
#include "nn/matmul.h"                 // the library's internals: bench tooling only
#include "pipelines/pipeline_amused.h"  // to_torch_device, to_scalar_type

namespace {

struct BenchArgs {
  std::string model, dtype = "auto", device = "cpu", variant, tokenizer;
  int threads = 0, steps = 12, batch = 1, warmup_steps = 2;
  double guidance = 10.0;
  bool json = false, random_weights = false, offline = false, skip_ceilings = false, train = false;
  int train_steps = 3;
  bool gradient_checkpointing = false;
  bool lora = false;  // --train --lora: adapters only (rank 16, alpha 32, to_q/to_k/to_v)
  std::string prompt = "a photo of an astronaut riding a horse on mars";
  uint64_t seed = 0;
};

// Measured dense matrix-multiply throughput (GFLOP/s) in `dtype` (Float32, BFloat16, Float16) on
// `device`: the best of n^3, (2n)^3 and the U-ViT's largest layer shape, over about `seconds`.
double measure_matmul_gflops(amused::DType dtype, const amused::Device& device, int n = 1024,
                             double seconds = 3.0) {
  namespace nn = amused::nn;
  torch::NoGradGuard g;
  const auto dev = amused::to_torch_device(device);
  const auto dt = amused::to_scalar_type(dtype);
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

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// `--train`: seconds per optimizer step of amused::Trainer (VQ encode, text encode, masking,
// forward, cross-entropy, backward, AdamW: the reference's train_amused.py step) on generated
// images, after one warm-up step; writes nothing but a temporary image folder.
int run_train(const BenchArgs& a) {
  if (a.train_steps < 1) throw amused::InvalidArgument("--train-steps must be at least 1");
  namespace fs = std::filesystem;
  const fs::path data = fs::temp_directory_path() / ("amused-bench-train-" + std::to_string(::getpid()));
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } cleanup{data};
  fs::create_directories(data);
  // Random images at the model's resolution: their content does not change the work.
  amused::TrainOptions o;
  o.model = a.model;
  o.tokenizer_dir = a.tokenizer;
  o.offline = a.offline;
  o.variant = a.variant;
  o.data = data.string();
  o.write_outputs = false;
  o.batch_size = a.batch;
  o.max_steps = 1 + a.train_steps;
  const amused::DType dtype = amused::parse_dtype(a.dtype);
  o.mixed_precision = dtype == amused::DType::Float16 ? "fp16" : dtype == amused::DType::BFloat16 ? "bf16" : "no";
  o.device = a.device;
  o.threads = a.threads;
  o.seed = a.seed;
  o.center_crop = true;
  o.gradient_checkpointing = a.gradient_checkpointing;
  o.lora = a.lora;  // train_amused.py --use_lora defaults: r 16, alpha 32, to_q/to_k/to_v
  {
    std::mt19937 rng(0);
    std::ofstream meta(data / "metadata.jsonl");
    for (int i = 0; i < std::max(a.batch, 2); ++i) {
      amused::Image im;
      im.width = im.height = 512;
      im.pixels.resize(static_cast<size_t>(im.width) * im.height * 3);
      for (auto& px : im.pixels) px = static_cast<uint8_t>(rng() & 0xff);
      amused::save_png(data / ("img" + std::to_string(i) + ".png"), im);
      meta << "{\"file_name\": \"img" << i << ".png\", \"text\": \"" << a.prompt << "\"}\n";
    }
  }
  const auto t_load = std::chrono::steady_clock::now();
  auto trainer = amused::Trainer::create(o);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  std::vector<double> steps, data_s, encode, forward, backward, update;
  const double rss_before = amused::current_rss_mib();
  trainer->run([&](const amused::TrainProgress& p) {
    if (p.step > 1) {
      steps.push_back(p.step_seconds);
      data_s.push_back(p.data_seconds);
      encode.push_back(p.encode_seconds);
      forward.push_back(p.forward_seconds);
      backward.push_back(p.backward_seconds);
      update.push_back(p.update_seconds);
    }
    return true;
  });
  const auto sys = amused::system_info();
  const double med = median(steps);
  const double rss = amused::peak_rss_mib();
  if (a.json) {
    nlohmann::json j = {{"mode", "train"},           {"model", a.model},
                        {"mixed_precision", o.mixed_precision}, {"device", a.device},
                        {"gradient_checkpointing", o.gradient_checkpointing},
                        {"lora", o.lora},
                        {"threads", sys.threads},    {"cpu", sys.cpu_model},
                        {"blas", sys.blas},          {"batch", a.batch},
                        {"load_s", load_s},          {"step_s", med},
                        {"step_min_s", steps.empty() ? 0 : *std::min_element(steps.begin(), steps.end())},
                        {"step_max_s", steps.empty() ? 0 : *std::max_element(steps.begin(), steps.end())},
                        {"samples_per_s", med > 0 ? a.batch / med : 0},
                        {"data_s", median(data_s)},    {"encode_s", median(encode)},
                        {"forward_s", median(forward)}, {"backward_s", median(backward)},
                        {"update_s", median(update)},
                        {"rss_after_load_mib", rss_before}, {"peak_rss_mib", rss}};
    if (amused::Device::parse(a.device).is_cuda()) j["peak_gpu_mib"] = amused::peak_cuda_memory_mib();
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    return 0;
  }
  std::printf("machine      %s, %d physical cores, %d threads, %s\n", sys.cpu_model.c_str(), sys.physical_cores,
              sys.threads, sys.blas.c_str());
  std::printf("training     %s, batch %d, mixed precision %s%s, %zu timed steps after 1 warm-up\n", a.model.c_str(),
              a.batch, o.mixed_precision.c_str(), o.lora ? ", LoRA r 16 alpha 32 on to_q/to_k/to_v" : "",
              steps.size());
  std::printf("load         %8.3f s\n", load_s);
  std::printf("step         %8.3f s median (min %.3f, max %.3f), %.3f samples/s\n", med,
              steps.empty() ? 0 : *std::min_element(steps.begin(), steps.end()),
              steps.empty() ? 0 : *std::max_element(steps.begin(), steps.end()), med > 0 ? a.batch / med : 0);
  std::printf("  of which    data %.3f s, VQ + text encode %.3f s, forward %.3f s, backward %.3f s, update %.3f s\n",
              median(data_s), median(encode), median(forward), median(backward), median(update));
  std::printf("peak RSS     %8.0f MiB (after load %.0f MiB)\n", rss, rss_before);
  return 0;
}

int run(const BenchArgs& given) {
  BenchArgs a = given;
  if (a.model.empty()) a.model = amused::cli::default_model();  // the embedded emoji model
  if (a.train) return run_train(a);
  if (a.steps < 1) throw amused::InvalidArgument("--steps must be at least 1");
  if (a.batch < 1) throw amused::InvalidArgument("--batch must be at least 1");
  amused::set_threads(a.threads);
  const auto sys = amused::system_info();
  const bool cuda = amused::Device::parse(a.device).is_cuda();

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
    ceil_f32 = measure_matmul_gflops(amused::DType::Float32, sum.device);
    ceil_bf16 = measure_matmul_gflops(amused::DType::BFloat16, sum.device);
    if (cuda) ceil_f16 = measure_matmul_gflops(amused::DType::Float16, sum.device);
  }
  // The ceiling of the format the model runs in (auto resolved at load).
  const double ceiling = sum.dtype == amused::DType::Float32   ? ceil_f32
                         : sum.dtype == amused::DType::Float16 ? ceil_f16
                                                               : ceil_bf16;
  auto pct = [&](double g, double c) { return c > 0 ? 100.0 * g / c : 0.0; };

  if (a.json) {
    nlohmann::json j;
    j["model"] = a.model;
    j["dtype"] = amused::to_string(sum.dtype);  // resolved: auto is what it chose
    j["device"] = sum.device.str();
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
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    return 0;
  }
  std::printf("machine      %s, %d physical cores, %d threads\n", sys.cpu_model.c_str(), sys.physical_cores, sys.threads);
  std::printf("runtime      LibTorch %s, %s, device %s\n", sys.libtorch_version.c_str(), sys.blas.c_str(), sum.device.str().c_str());
  if (!a.skip_ceilings)
    std::printf("ceilings     matmul f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s%s\n", ceil_f32, ceil_bf16,
                cuda ? (", f16 " + std::to_string(ceil_f16) + " GFLOP/s").c_str() : "");
  std::printf("model        %s (%s, %s%s), %d steps, batch %d, guidance %g\n", a.model.c_str(), amused::to_string(sum.dtype),
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
  sub.add_option("-m,--model", a->model, "Model folder, hub repo id, or (with --random-weights) a config folder; default: the embedded emoji model");
  sub.add_option("--dtype", a->dtype, "auto | float32 | bfloat16 | float16 (auto: bfloat16 on CPUs with native bf16, float16 on CUDA, else float32; float32 reproduces the reference exactly)")->check(amused::cli::dtype_choice())->capture_default_str();
  sub.add_option("--device", a->device, "cpu | cuda | cuda:N")->check(amused::cli::device_choice())->capture_default_str();
  sub.add_option("--threads", a->threads, "Compute threads (default: all physical cores)");
  sub.add_option("--steps", a->steps, "Denoising steps")->capture_default_str();
  sub.add_option("--batch", a->batch, "Images per call")->capture_default_str();
  sub.add_option("--guidance", a->guidance, "Guidance scale (CFG doubles the transformer batch)")->capture_default_str();
  sub.add_option("--warmup-steps", a->warmup_steps, "Steps of the warm-up call (0: none)")->capture_default_str();
  sub.add_option("--prompt", a->prompt, "Prompt")->capture_default_str();
  sub.add_option("--seed", a->seed, "Seed")->capture_default_str()
      ->check(amused::cli::seed_range());
  sub.add_option("--variant", a->variant, "Weight variant (e.g. fp16)");
  sub.add_option("--tokenizer", a->tokenizer, "Tokenizer folder (for config-only model folders)");
  sub.add_flag("--random-weights", a->random_weights, "Random weights from the config files (no checkpoint needed)");
  sub.add_flag("--offline", a->offline, "Never use the network");
  sub.add_flag("--no-ceilings", a->skip_ceilings, "Skip the matmul ceiling measurement");
  sub.add_flag("--json", a->json, "One JSON object on stdout");
  sub.add_flag("--train", a->train,
               "Time training steps instead (amused::Trainer; --dtype float32 or bfloat16 autocast, --batch)");
  sub.add_option("--train-steps", a->train_steps, "Timed training steps after one warm-up step")
      ->capture_default_str();
  sub.add_flag("--gradient-checkpointing", a->gradient_checkpointing, "With --train: recompute layers in backward");
  sub.add_flag("--lora", a->lora, "With --train: train LoRA adapters only (rank 16, alpha 32, to_q/to_k/to_v)");
  return std::function<int()>([a] { return run(*a); });
});

}  // namespace
