// amused::Pipeline: loading and text-to-image, plus the shared prompt encoder, denoising loop and
// decoder used by every generation mode.
// Ref: diffusers/pipelines/deprecated/amused/pipeline_amused.py
#include "pipelines/pipeline_amused.h"

#if defined(__GLIBC__)
#include <malloc.h>  // mallinfo2, for the debug log
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <random>

#include "core/log.h"
#include "core/memory.h"
#include "core/threads.h"
#include "io/diffusers_repo.h"
#include "pipelines/components.h"
#include "io/state_dict.h"
#include "models/flops.h"
#include "nn/attention_maps.h"
#include "nn/cond_cache.h"
#include "nn/execution.h"
#include "amused/image_io.h"
#include "amused/system.h"

namespace amused {
namespace {
// AMUSED_LOG=debug: what each phase took and the resident memory after it (dev/rss_timeline.py
// shows the whole curve).
void log_phase(const std::string& what, double seconds) {
  if (log::min_level() > log::Level::Debug) return;
  const RssBreakdown rss = rss_breakdown_mib();
  char buf[240];
  int n = std::snprintf(buf, sizeof buf, "%s: %.3f s, RSS %.0f MiB (anonymous %.0f, files %.0f; peak %.0f)",
                        what.c_str(), seconds, rss.total, rss.anonymous, rss.file, peak_rss_mib());
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
  // The allocator's view: live heap blocks and free ones (resident or not).
  const struct mallinfo2 mi = mallinfo2();
  if (n > 0 && static_cast<size_t>(n) < sizeof buf)
    std::snprintf(buf + n, sizeof buf - n, ", malloc: in use %.0f MiB, free %.0f MiB",
                  (mi.uordblks + mi.hblkhd) / 1048576.0, mi.fordblks / 1048576.0);
#endif
  log::debug(buf);
}

}  // namespace

torch::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::BFloat16: return torch::kBFloat16;
    case DType::Float16: return torch::kFloat16;
    case DType::Float32: return torch::kFloat32;
    case DType::Auto: break;
  }
  throw InvalidArgument("dtype auto has no scalar type before it is resolved for a device");
}

DType dtype_of(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return DType::BFloat16;
    case torch::kFloat16: return DType::Float16;
    default: return DType::Float32;
  }
}

bool cpu_has_native_bf16() {
  static const bool has = [] {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("flags", 0) == 0)
        return line.find(" avx512_bf16") != std::string::npos || line.find(" amx_bf16") != std::string::npos;
    }
    return false;
  }();
  return has;
}

torch::ScalarType resolve_dtype(DType dtype, const torch::Device& device) {
  if (dtype == DType::Auto) {
    if (device.is_cuda()) return torch::kFloat16;
    return cpu_has_native_bf16() ? torch::kBFloat16 : torch::kFloat32;
  }
  return to_scalar_type(dtype);
}

torch::Device to_torch_device(const Device& device) {
  if (device.is_cpu()) return torch::Device(torch::kCPU);
  if (!torch::cuda::is_available())
    throw Unsupported("device '" + device.str() +
                      "' requested but this LibTorch build has no usable CUDA device (build against a "
                      "CUDA LibTorch, see README)");
  if (device.index >= static_cast<int>(torch::cuda::device_count()))
    throw InvalidArgument("device '" + device.str() + "': there are " + std::to_string(torch::cuda::device_count()) +
                          " CUDA devices (cuda:0 to cuda:" + std::to_string(torch::cuda::device_count() - 1) + ")");
  return device.index < 0 ? torch::Device(torch::kCUDA)
                          : torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device.index));
}

Device device_of(const torch::Device& device) {
  if (device.is_cuda()) return Device::cuda(device.has_index() ? device.index() : -1);
  return Device::cpu();
}

void Pipeline::Impl::sync() const {
  if (device.is_cuda()) torch::cuda::synchronize();
}

PromptEmbeddings Pipeline::Impl::encode_prompts(const std::vector<std::string>& prompts, Timings& timings) {
  const auto t0 = Clock::now();
  // Each distinct prompt is encoded once; rows are gathered back in the requested order.
  std::vector<std::string> distinct;
  std::map<std::string, int64_t> index;
  std::vector<int64_t> rows;
  for (const auto& p : prompts) {
    auto [it, inserted] = index.emplace(p, static_cast<int64_t>(distinct.size()));
    if (inserted) distinct.push_back(p);
    rows.push_back(it->second);
  }
  // Padded to the tokenizer's model_max_length, as AmusedPipeline does (77 for CLIP-L; a small
  // text encoder may have fewer positions).
  const int64_t length = tokenizer->model_max_length();
  std::vector<int64_t> ids;
  for (const auto& p : distinct) {
    auto one = tokenizer->encode_padded(p, length);
    ids.insert(ids.end(), one.begin(), one.end());
  }
  // [n, L] token ids
  auto input_ids = torch::tensor(ids, torch::kInt64).reshape({static_cast<int64_t>(distinct.size()), length}).to(device);
  auto out = text_encoder->forward(input_ids, /*output_hidden_states=*/true);
  auto sel = torch::tensor(rows, torch::kInt64).to(device);
  PromptEmbeddings e;
  e.encoder_hidden_states = out.penultimate_hidden_state.index_select(0, sel);  // [B, L, H]
  e.pooled_text_emb = out.text_embeds.index_select(0, sel);                      // [B, P]
  sync();
  timings.text_encoder_s += seconds_since(t0);
  log_phase("text encoder (" + std::to_string(distinct.size()) + " distinct prompts)", seconds_since(t0));
  return e;
}

PromptEmbeddings Pipeline::Impl::encode_with_guidance(const std::vector<std::string>& prompts,
                                                      const std::vector<std::string>& negative_prompts,
                                                      int num_images_per_prompt, bool guidance,
                                                      Timings& timings) {
  // Rows: prompts tiled num_images_per_prompt times ([p0, p1, p0, p1], the reference's .repeat),
  // preceded by the negative prompts tiled the same way when guidance is on.
  std::vector<std::string> all;
  if (guidance) {
    std::vector<std::string> neg = negative_prompts;
    if (neg.empty()) neg.assign(prompts.size(), "");
    if (neg.size() == 1 && prompts.size() > 1) neg.assign(prompts.size(), negative_prompts[0]);
    for (int r = 0; r < num_images_per_prompt; ++r) all.insert(all.end(), neg.begin(), neg.end());
  }
  for (int r = 0; r < num_images_per_prompt; ++r) all.insert(all.end(), prompts.begin(), prompts.end());
  return encode_prompts(all, timings);
}

torch::Tensor Pipeline::Impl::micro_conds(int width, int height, std::pair<int, int> crop, double aesthetic,
                                          int64_t rows) const {
  // [width, height, crop_coord[0], crop_coord[1], aesthetic_score] in the text states' dtype.
  auto m = torch::tensor({static_cast<double>(width), static_cast<double>(height),
                          static_cast<double>(crop.first), static_cast<double>(crop.second), aesthetic},
                         torch::TensorOptions().dtype(torch::kFloat64));
  return m.to(device, dtype).unsqueeze(0).expand({rows, 5});  // [rows, 5]
}

torch::Tensor Pipeline::Impl::denoise(torch::Tensor latents, const DenoiseRequest& req, at::Generator& generator,
                                      Timings& timings) {
  AmusedSchedulerConfig cfg = scheduler_config;
  if (req.masking_schedule != MaskingSchedule::FromConfig) cfg.masking_schedule = to_string(req.masking_schedule);
  AmusedScheduler scheduler(cfg);
  scheduler.set_timesteps(req.num_inference_steps, to_scheduler_temperature(req.temperature));
  const auto timesteps = scheduler.timesteps.to(torch::kCPU);
  const int n = req.num_inference_steps;
  const int to_run = n - req.start_step;
  const auto loop_start = Clock::now();
  // The conditioning is the same at every step: text projections, cross-attention keys/values and
  // adaptive-norm modulations are computed once (bit-identical to recomputing them).
  AllocationScope reuse_activations(AllocationPhase::kDenoise);  // steps reuse each other's memory
  nn::ConditioningCache cond_cache;
  // Cross-attention maps, recorded only when asked (a thread-local check per attention otherwise).
  std::optional<nn::AttentionMapRecorder> attention_recorder;
  if (req.attention_maps && req.step_details) attention_recorder.emplace();
  for (int i = req.start_step; i < n; ++i) {
    const auto t_step = Clock::now();
    const int64_t t = timesteps[i].item<int64_t>();
    // CFG: the same tokens for the negative and the positive half of the batch.
    auto model_input = req.guidance ? torch::cat({latents, latents}) : latents;  // [2B|B, h, w]
    auto logits = transformer->forward(model_input, req.cond.encoder_hidden_states, req.cond.pooled_text_emb,
                                       req.micro_conds);  // [2B|B, K, h, w]
    if (req.guidance) {
      auto chunks = logits.chunk(2);
      logits = chunks[0] + req.guidance_scale * (chunks[1] - chunks[0]);
    }
    torch::Tensor attention;  // [B, M, h, w] of the conditional rows
    if (attention_recorder) {
      attention = attention_recorder->take(latents.size(1), latents.size(2));
      if (attention.defined() && req.guidance) attention = attention.chunk(2)[1];
    }
    sync();
    const auto t_sched = Clock::now();
    const double transformer_s = std::chrono::duration<double>(t_sched - t_step).count();
    timings.transformer_s += transformer_s;
    timings.transformer_step_s.push_back(transformer_s);
    auto stepped = scheduler.step(logits, t, latents, generator, req.starting_mask_ratio);
    StepDetails details;
    if (req.step_details) {
      // The probability of each predicted token ([B, K, h, w] -> [B, h, w]), 1 where it was known.
      auto probs = logits.to(torch::kFloat32).softmax(1);
      auto conf = probs.gather(1, stepped.pred_original_sample.unsqueeze(1)).squeeze(1);
      conf = torch::where(latents == scheduler_config.mask_token_id, conf, torch::ones_like(conf));
      details = step_details(stepped.prev_sample, stepped.pred_original_sample, conf, attention,
                             req.attention_tokens);
    }
    latents = stepped.prev_sample;
    sync();
    timings.scheduler_s += seconds_since(t_sched);
    const double step_s = seconds_since(t_step);
    timings.step_s.push_back(step_s);
    log_phase("step " + std::to_string(i + 1) + "/" + std::to_string(n), step_s);
    if (req.progress) {
      StepInfo info{i - req.start_step + 1, to_run, step_s, seconds_since(loop_start),
                    req.step_details ? &details : nullptr};
      if (!req.progress(info))
        throw Cancelled("generation cancelled after step " + std::to_string(info.step) + " of " +
                        std::to_string(to_run));
    }
  }
  return latents;
}

StepDetails Pipeline::Impl::step_details(const torch::Tensor& tokens, const torch::Tensor& predicted,
                                         const torch::Tensor& confidence, const torch::Tensor& attention,
                                         const std::vector<std::vector<std::string>>& attention_tokens) const {
  StepDetails d;
  d.mask_token_id = scheduler_config.mask_token_id;
  const auto t = tokens.to(torch::kCPU).contiguous();
  const auto p = predicted.to(torch::kCPU).contiguous();
  const auto c = confidence.to(torch::kCPU, torch::kFloat32).contiguous();
  const int64_t h = t.size(1), w = t.size(2), n = h * w;
  for (int64_t b = 0; b < t.size(0); ++b) {
    TokenGrid tg, pg;
    tg.height = pg.height = static_cast<int>(h);
    tg.width = pg.width = static_cast<int>(w);
    tg.ids.assign(t[b].data_ptr<int64_t>(), t[b].data_ptr<int64_t>() + n);
    pg.ids.assign(p[b].data_ptr<int64_t>(), p[b].data_ptr<int64_t>() + n);
    d.tokens.push_back(std::move(tg));
    d.predicted.push_back(std::move(pg));
    d.confidence.emplace_back(c[b].data_ptr<float>(), c[b].data_ptr<float>() + n);
  }
  if (attention.defined()) {
    // [B, M, h, w] float32 on the CPU (AttentionMapRecorder::take); each image keeps its prompt's
    // text positions.
    d.attention.height = static_cast<int>(h);
    d.attention.width = static_cast<int>(w);
    for (int64_t b = 0; b < attention.size(0); ++b) {
      const auto& toks = attention_tokens.at(static_cast<size_t>(b));
      const int64_t m = std::min<int64_t>(static_cast<int64_t>(toks.size()), attention.size(1));
      const float* a = attention[b].data_ptr<float>();
      d.attention.tokens.emplace_back(toks.begin(), toks.begin() + m);
      d.attention.maps.emplace_back(a, a + m * n);
    }
  }
  return d;
}

torch::Tensor Pipeline::Impl::grids_to_tensor(const std::vector<TokenGrid>& grids) const {
  if (grids.empty()) throw InvalidArgument("no token grid given");
  const int h = grids[0].height, w = grids[0].width;
  const int64_t codebook = transformer->config().codebook_size;
  std::vector<torch::Tensor> rows;
  for (const auto& g : grids) {
    if (g.height != h || g.width != w || g.height <= 0 || g.width <= 0 ||
        static_cast<int64_t>(g.ids.size()) != int64_t{g.height} * g.width)
      throw InvalidArgument("token grids must all be " + std::to_string(w) + "x" + std::to_string(h) +
                            " with width*height ids");
    for (int64_t id : g.ids)
      if (id < 0 || id >= codebook)
        throw InvalidArgument("token id " + std::to_string(id) + " is not a codebook entry (0.." +
                              std::to_string(codebook - 1) + ")");
    rows.push_back(torch::tensor(g.ids, torch::kInt64).reshape({h, w}));
  }
  return torch::stack(rows).to(device);  // [B, h, w]
}

torch::Tensor Pipeline::Impl::decode(const torch::Tensor& latents, Timings& timings) {
  const auto t0 = Clock::now();
  release_free_memory();  // what the denoising loop freed, before the decoder's larger tensors (core/memory.h)
  AllocationScope fresh_pages(AllocationPhase::kDecode);  // large activations in their own mappings
  std::vector<torch::Tensor> images;
  for (int64_t b = 0; b < latents.size(0); ++b) {
    // The VQ-GAN runs in float32 whatever the pipeline dtype (the reference's force_upcast).
    auto img = vqvae->decode_tokens(latents.slice(0, b, b + 1)).clamp(0.0, 1.0);  // [1, 3, H, W]
    images.push_back(img.to(torch::kCPU));
  }
  sync();
  release_free_memory();
  timings.vq_decode_s += seconds_since(t0);
  log_phase("VQ decode", seconds_since(t0));
  return torch::cat(images);
}

GenerationResult Pipeline::Impl::make_result(const torch::Tensor& latents, const torch::Tensor& images,
                                             uint64_t seed, Timings timings) const {
  GenerationResult r;
  r.seed = seed;
  auto u8 = to_uint8_nhwc(images).contiguous();  // [B, H, W, 3]
  auto toks = latents.to(torch::kCPU).contiguous();
  for (int64_t b = 0; b < u8.size(0); ++b) {
    Image im;
    im.height = static_cast<int>(u8.size(1));
    im.width = static_cast<int>(u8.size(2));
    im.channels = 3;
    const uint8_t* p = u8[b].data_ptr<uint8_t>();
    im.pixels.assign(p, p + im.height * im.width * 3);
    r.images.push_back(std::move(im));
    TokenGrid g;
    g.height = toks.size(1);
    g.width = toks.size(2);
    const int64_t* q = toks[b].data_ptr<int64_t>();
    g.ids.assign(q, q + g.height * g.width);
    r.tokens.push_back(std::move(g));
  }
  r.timings = std::move(timings);
  return r;
}

// ------------------------------------------------------------------------------------------ load

void Pipeline::Impl::adopt(Components c) {
  tokenizer = std::move(c.tokenizer);
  text_encoder = c.text_encoder;
  transformer = c.transformer;
  vqvae = c.vqvae;
  vq_encoder_loader = std::move(c.load_vq_encoder);
  scheduler_config = c.scheduler_config;
  // Ids that cross components must fit the next one's table: found here, not as "index out of
  // range" in the middle of a generation.
  const auto& tc = transformer->config();
  if (scheduler_config.mask_token_id < 0 || scheduler_config.mask_token_id >= tc.vocab_size)
    throw ConfigError("scheduler/scheduler_config.json: mask_token_id " + std::to_string(scheduler_config.mask_token_id) +
                      " is outside the transformer's token table (vocab_size " + std::to_string(tc.vocab_size) +
                      " in transformer/config.json; aMUSEd uses vocab_size - 1)");
  if (tc.codebook_size > vqvae->config().num_vq_embeddings)
    throw ConfigError("transformer/config.json: codebook_size " + std::to_string(tc.codebook_size) +
                      " is larger than the VQ-GAN's codebook (num_vq_embeddings " +
                      std::to_string(vqvae->config().num_vq_embeddings) + " in vqvae/config.json)");
  if (tokenizer->vocab_size() > text_encoder->config().vocab_size)
    throw ConfigError("the tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                      " entries but the text encoder's embedding only " +
                      std::to_string(text_encoder->config().vocab_size) +
                      " (vocab_size in text_encoder/config.json): they do not belong together");
  sample_size = transformer->config().sample_size;
  vq_scale_factor = vqvae->config().scale_factor();
  auto& s = summary;
  s.device = device_of(device);
  s.dtype = dtype_of(dtype);
  s.vq_scale_factor = static_cast<int>(vq_scale_factor);
  s.default_width = s.default_height = static_cast<int>(sample_size * vq_scale_factor);
  s.codebook_size = transformer->config().codebook_size;
  s.mask_token_id = scheduler_config.mask_token_id;
  s.masking_schedule = parse_masking_schedule(scheduler_config.masking_schedule);
  const int64_t grid = sample_size;
  const int64_t text_len = tokenizer->model_max_length();  // the padded prompt length
  s.transformer_gflop = models::uvit_2d_flops(transformer->config(), grid, grid, text_len) / 1e9;
  s.vq_decode_gflop = models::vq_decode_flops(vqvae->config(), grid, grid) / 1e9;
  s.text_encoder_gflop = models::clip_text_flops(text_encoder->config(), text_len) / 1e9;
  auto count = [](const torch::nn::Module& m) {
    int64_t n = 0;
    for (const auto& p : m.parameters()) n += p.numel();
    return n;
  };
  s.transformer_parameters = count(*transformer);
  s.vq_parameters = count(*vqvae);
  s.text_encoder_parameters = count(*text_encoder);
}

std::unique_ptr<Pipeline> PipelineAccess::from_components(Components components, const torch::Device& device) {
  auto impl = std::make_unique<Pipeline::Impl>();
  impl->device = device;
  impl->dtype = torch::kFloat32;
  impl->adopt(std::move(components));
  impl->summary.threads = at::get_num_threads();
  return std::unique_ptr<Pipeline>(new Pipeline(std::move(impl)));
}


Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Pipeline::~Pipeline() = default;
const ModelSummary& Pipeline::summary() const { return impl_->summary; }

const std::vector<std::array<uint8_t, 3>>& Pipeline::token_colours() {
  auto& m = *impl_;
  std::call_once(m.token_colours_once, [&m] {
    // Each entry decoded as a uniform 2x2 grid; its colour is the mean of the decoded picture.
    torch::NoGradGuard no_grad;
    nn::ExecutionScope inference(nn::ExecutionMode::kInference);
    const int64_t k = m.transformer->config().codebook_size;
    std::vector<std::array<uint8_t, 3>> colours(static_cast<size_t>(k));
    constexpr int64_t kBatch = 64;
    for (int64_t first = 0; first < k; first += kBatch) {
      const int64_t n = std::min(kBatch, k - first);
      auto ids = torch::arange(first, first + n, torch::kInt64).view({n, 1, 1}).expand({n, 2, 2}).contiguous();
      auto img = m.vqvae->decode_tokens(ids.to(m.device)).clamp(0.0, 1.0);  // [n, 3, H, W]
      auto mean = img.mean({2, 3}).mul(255.0).round().to(torch::kCPU, torch::kUInt8).contiguous();  // [n, 3]
      for (int64_t i = 0; i < n; ++i)
        for (int c = 0; c < 3; ++c) colours[static_cast<size_t>(first + i)][c] = mean[i][c].item<uint8_t>();
    }
    m.token_colours = std::move(colours);
  });
  return m.token_colours;
}

Image Pipeline::preview(const TokenGrid& grid, int cell) {
  if (cell < 1 || cell > 64) throw InvalidArgument("preview cell size must be 1..64 pixels, got " + std::to_string(cell));
  if (grid.width <= 0 || grid.height <= 0 || static_cast<int64_t>(grid.ids.size()) != int64_t{grid.width} * grid.height)
    throw InvalidArgument("token grid " + std::to_string(grid.width) + "x" + std::to_string(grid.height) + " has " +
                          std::to_string(grid.ids.size()) + " ids");
  const auto& colours = token_colours();
  const int64_t mask_id = impl_->scheduler_config.mask_token_id;
  Image im;
  im.width = grid.width * cell;
  im.height = grid.height * cell;
  im.channels = 3;
  im.pixels.resize(static_cast<size_t>(im.width) * im.height * 3);
  for (int y = 0; y < im.height; ++y)
    for (int x = 0; x < im.width; ++x) {
      const int64_t id = grid.ids[static_cast<size_t>(y / cell) * grid.width + x / cell];
      std::array<uint8_t, 3> rgb{128, 128, 128};  // masked (or out of the codebook): grey
      if (id != mask_id && id >= 0 && id < static_cast<int64_t>(colours.size())) rgb = colours[static_cast<size_t>(id)];
      uint8_t* p = im.pixels.data() + (static_cast<size_t>(y) * im.width + x) * 3;
      p[0] = rgb[0];
      p[1] = rgb[1];
      p[2] = rgb[2];
    }
  return im;
}

std::vector<Image> Pipeline::decode(const std::vector<TokenGrid>& grids) {
  auto& m = *impl_;
  torch::NoGradGuard no_grad;
  nn::ExecutionScope inference(nn::ExecutionMode::kInference);
  const auto latents = m.grids_to_tensor(grids);
  Timings timings;
  const auto images = m.decode(latents, timings);
  return m.make_result(latents, images, 0, timings).images;
}

std::unique_ptr<Pipeline> Pipeline::load(const std::string& model, const LoadOptions& options) {
  const auto t0 = Clock::now();
  auto impl = std::make_unique<Impl>();
  impl->device = to_torch_device(options.device);
  impl->dtype = resolve_dtype(options.dtype, impl->device);
  if (impl->device.is_cpu() && impl->dtype == torch::kFloat16)
    throw Unsupported("--dtype float16 needs a CUDA device: LibTorch's CPU kernels lack float16 matrix products; "
                      "use bfloat16 (or float32) on the CPU");
  const int threads = configure_threads_for_load(options.threads);
  AllocationScope weight_allocation(AllocationPhase::kLoadWeights);  // weights in their own mappings

  RepoOptions ro;
  ro.offline = options.offline;
  ro.revision = options.revision;
  ro.variant = options.variant;
  ro.progress = options.download_progress;
  io::DiffusersRepo repo = io::DiffusersRepo::open(model, ro);
  log_phase("model folder resolved", seconds_since(t0));

  torch::NoGradGuard no_grad;
  ComponentOptions co;
  co.device = impl->device;
  // Mixed precision on the CPU: matrix weights (linear, convolution, embedding) in bfloat16 for the
  // fast 16-bit kernels and half the memory; norms, the residual stream and every other activation
  // in float32, which keeps the sampled tokens faithful to the float32 reference (docs/numerics.md).
  // The logits head and the VQ codebook stay float32 (they decide tokens directly).
  const bool mixed = impl->device.is_cpu() && impl->dtype == torch::kBFloat16;
  co.precision = mixed ? Precision::kMixedBFloat16
                       : impl->dtype == torch::kFloat16 ? Precision::kFloat16 : Precision::kFloat32;
  if (mixed) impl->dtype = torch::kFloat32;  // the activations' dtype
  co.random_weights = options.random_weights;
  co.defer_vq_encoder = true;
  co.tokenizer_dir = options.tokenizer_dir;
  impl->adopt(load_components(repo, co));
  log_phase("components loaded", seconds_since(t0));
  impl->load_loras(options, &repo);

  auto& s = impl->summary;
  s.path = repo.root().string();
  s.dtype = mixed ? DType::BFloat16 : dtype_of(impl->dtype);
  s.threads = threads;
  release_free_memory();  // conversion buffers
  s.load_seconds = seconds_since(t0);
  log_phase(std::string("load (") + to_string(s.dtype) + ")", s.load_seconds);
  return std::unique_ptr<Pipeline>(new Pipeline(std::move(impl)));
}

// ------------------------------------------------------------------------------ shared preparation

void Pipeline::Impl::validate(const GenerationParams& params) const {
  if (params.prompts.empty()) throw InvalidArgument("no prompt given (at least one prompt is required)");
  const size_t np = params.prompts.size();
  if (params.negative_prompts.size() > 1 && params.negative_prompts.size() != np)
    throw InvalidArgument("got " + std::to_string(params.negative_prompts.size()) + " negative prompts for " +
                          std::to_string(np) + " prompts (give one negative prompt for all, or one per prompt)");
  if (params.num_inference_steps < 1)
    throw InvalidArgument("steps must be at least 1, got " + std::to_string(params.num_inference_steps));
  if (params.num_inference_steps > kMaxSteps)
    throw InvalidArgument("steps must be at most " + std::to_string(kMaxSteps) + ", got " +
                          std::to_string(params.num_inference_steps));
  if (params.num_images_per_prompt < 1)
    throw InvalidArgument("images per prompt must be at least 1, got " +
                          std::to_string(params.num_images_per_prompt));
  if (batch_size(params) > kMaxBatch)
    throw InvalidArgument(std::to_string(np) + " prompts x " + std::to_string(params.num_images_per_prompt) +
                          " images per prompt = " + std::to_string(batch_size(params)) +
                          " images, more than the " + std::to_string(kMaxBatch) + " one call may make");
  if (!std::isfinite(params.guidance_scale)) throw InvalidArgument("guidance scale must be a finite number");
  if (!std::isfinite(params.aesthetic_score)) throw InvalidArgument("aesthetic score must be a finite number");
  if (params.masking_schedule != MaskingSchedule::FromConfig && params.masking_schedule != MaskingSchedule::Cosine &&
      params.masking_schedule != MaskingSchedule::Linear)
    throw InvalidArgument("masking schedule " + std::to_string(static_cast<int>(params.masking_schedule)) +
                          " is unknown (FromConfig, Cosine or Linear)");
  const auto& t = params.temperature.values;
  if (t.empty() || (params.temperature.scalar && t.size() != 1) ||
      (!params.temperature.scalar && t.size() != 2 && static_cast<int>(t.size()) != params.num_inference_steps))
    throw InvalidArgument("temperature must be one value, a pair, or one value per step (" +
                          std::to_string(params.num_inference_steps) + "), got " + std::to_string(t.size()) +
                          " values");
  for (double v : t)
    if (!std::isfinite(v)) throw InvalidArgument("temperature must be finite numbers, got " + std::to_string(v));
}

void Pipeline::Impl::check_size(int width, int height) const {
  const int64_t scale = vq_scale_factor;
  if (height <= 0 || width <= 0 || height % scale != 0 || width % scale != 0)
    throw InvalidArgument("image size " + std::to_string(width) + "x" + std::to_string(height) +
                          " is not a positive multiple of the VQ scale factor " + std::to_string(scale) +
                          " (try " + std::to_string(std::max<int64_t>(scale, width / scale * scale)) + "x" +
                          std::to_string(std::max<int64_t>(scale, height / scale * scale)) + ")");
  if (width > kMaxImageSide || height > kMaxImageSide)
    throw InvalidArgument("image size " + std::to_string(width) + "x" + std::to_string(height) + " is over the " +
                          std::to_string(kMaxImageSide) + " pixels per side limit");
  if (transformer->config().downsample && ((height / scale) % 2 != 0 || (width / scale) % 2 != 0))
    throw InvalidArgument("this model down-samples its token grid by 2: width and height must be multiples of " +
                          std::to_string(2 * scale) + ", got " + std::to_string(width) + "x" +
                          std::to_string(height));
}

double Pipeline::Impl::request_bytes(const GenerationParams& params, int width, int height) const {
  const auto& c = transformer->config();
  const double rows = static_cast<double>(batch_size(params)) * (params.guidance_scale > 1.0 ? 2 : 1);
  const double L = static_cast<double>(width / vq_scale_factor) * static_cast<double>(height / vq_scale_factor);
  const double Lb = c.downsample ? L / 4 : L;  // tokens inside the blocks and layers
  const double f32 = 4;
  // The attention scores [rows, heads, Lb, Lb] are materialised in float32, with their scaled copy
  // and the softmax alive at once (nn/attention_processor.cpp).
  const double heads = static_cast<double>(std::max(c.num_attention_heads, c.block_num_heads));
  const double attention = 3 * f32 * rows * heads * Lb * Lb;
  // The widest activations (the 4x channel MLP of the blocks, the GEGLU, the residual stream),
  // a few alive at a time, and the logits with their softmax and sampling copies.
  const double widest = static_cast<double>(
      std::max({4 * c.block_out_channels, 2 * c.intermediate_size, 4 * c.hidden_size}));
  const double activations = 4 * f32 * rows * Lb * widest;
  const double logits = 3 * f32 * rows * L * static_cast<double>(c.codebook_size);
  const double step = attention + activations + logits;
  // The VQ decode runs one image at a time at full resolution in float32: a few activations of the
  // decoder's widest full-resolution width, plus the decoded batch.
  const auto& vq = vqvae->config();
  const double pixels = static_cast<double>(width) * static_cast<double>(height);
  const double decode = 3 * f32 * pixels * static_cast<double>(vq.block_out_channels.front()) +
                        f32 * 3 * pixels * static_cast<double>(batch_size(params));
  return std::max(step, decode);
}

void Pipeline::Impl::check_memory(const GenerationParams& params, int width, int height) const {
  const double need = request_bytes(params, width, height);
  const uint64_t can = allocatable_bytes();
  if (need <= static_cast<double>(can)) return;
  char text[256];
  std::snprintf(text, sizeof text,
                "%dx%d with %lld image(s)%s needs about %.1f GiB of working memory, more than the %.1f GiB this "
                "process can allocate",
                width, height, static_cast<long long>(batch_size(params)),
                params.guidance_scale > 1.0 ? " and guidance" : "", need / (1 << 30),
                static_cast<double>(can) / (1 << 30));
  throw InvalidArgument(std::string(text) + ": ask for a smaller size or fewer images (the attention of each step "
                        "grows with the square of the token count)");
}

DenoiseRequest Pipeline::Impl::prepare(const GenerationParams& params, int width, int height, Timings& timings) {
  const int64_t batch = batch_size(params);
  const bool guidance = params.guidance_scale > 1.0;
  DenoiseRequest req;
  req.cond = encode_with_guidance(params.prompts, params.negative_prompts, params.num_images_per_prompt, guidance,
                                  timings);
  req.micro_conds =
      micro_conds(width, height, params.crop_coord, params.aesthetic_score, guidance ? 2 * batch : batch);
  req.guidance = guidance;
  req.guidance_scale = params.guidance_scale;
  req.num_inference_steps = params.num_inference_steps;
  req.temperature = params.temperature;
  req.masking_schedule = params.masking_schedule;
  req.progress = params.progress;
  req.step_details = (params.step_details || params.attention_maps) && params.progress;
  if (params.attention_maps && req.step_details) {
    // The text positions of each image's prompt (batch order: prompts tiled), as the text encoder
    // read them: start token, at most model_max_length - 2 tokens, end token.
    const int64_t length = tokenizer->model_max_length();
    const std::string bos = tokenizer->decode({tokenizer->bos_token_id()}, false);
    const std::string eos = tokenizer->decode({tokenizer->eos_token_id()}, false);
    std::vector<std::vector<std::string>> per_prompt;
    for (const auto& p : params.prompts) {
      // A long prompt's labels come from its first few KiB (cut at a space), as encode_padded reads it.
      std::string text = p;
      if (text.size() > ClipTokenizer::kPrefixBytes) {
        const size_t cut = text.rfind(' ', ClipTokenizer::kPrefixBytes);
        text.resize(cut == std::string::npos || cut == 0 ? ClipTokenizer::kPrefixBytes : cut);
      }
      std::vector<std::string> t = tokenizer->tokenize(text);
      if (static_cast<int64_t>(t.size()) > length - 2) t.resize(static_cast<size_t>(std::max<int64_t>(0, length - 2)));
      t.insert(t.begin(), bos);
      t.push_back(eos);
      per_prompt.push_back(std::move(t));
    }
    req.attention_maps = true;
    for (int64_t b = 0; b < batch; ++b)
      req.attention_tokens.push_back(per_prompt[static_cast<size_t>(b) % per_prompt.size()]);
  }
  return req;
}

Image Pipeline::Impl::prepare_input_image(const Image& image, std::optional<int> width, std::optional<int> height,
                                          const GenerationParams& params) const {
  if (image.width <= 0 || image.height <= 0 || image.channels != 3 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3)
    throw InvalidArgument("input image must be 8-bit RGB with width*height*3 pixels");
  const int scale = static_cast<int>(vq_scale_factor);
  int w = width.value_or(image.width / scale * scale);
  int h = height.value_or(image.height / scale * scale);
  if (!width && !height && (w != image.width || h != image.height)) {
    if (w == 0 || h == 0)
      throw InvalidArgument("input image " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                            " is smaller than the VQ scale factor " + std::to_string(scale));
    log::warn("input image " + std::to_string(image.width) + "x" + std::to_string(image.height) +
              " is not a multiple of " + std::to_string(scale) + "; resized to " + std::to_string(w) + "x" +
              std::to_string(h) + " (Lanczos)");
  }
  // The size it will have, checked (and its request's memory) before it is resized.
  check_size(w, h);
  check_memory(params, w, h);
  return resize_image(image, w, h);
}

void Pipeline::Impl::load_vq_encoder() {
  std::call_once(vq_encoder_once, [this] {
    const auto t0 = Clock::now();
    torch::NoGradGuard no_grad;
    AllocationScope weight_allocation(AllocationPhase::kLoadWeights);
    if (vq_encoder_loader) vq_encoder_loader();
    vq_encoder_loader = nullptr;  // releases the mapped checkpoint
    log_phase("VQ encoder loaded", seconds_since(t0));
  });
}

torch::Tensor Pipeline::Impl::encode_image_tokens(const Image& image) {
  load_vq_encoder();
  // HWC uint8 -> [1, 3, H, W] float32 in [0, 1] (/255, no [-1, 1] normalisation, as the reference).
  auto pixels = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width, 3},
                                 torch::kUInt8)
                    .permute({2, 0, 1})
                    .unsqueeze(0)
                    .to(device, torch::kFloat32)
                    .div(255.0);
  auto latents = vqvae->encode(pixels);     // [1, C, h, w]
  return vqvae->quantize_indices(latents);  // [1, h, w] int64
}

// ----------------------------------------------------------------------------------- text_to_image

GenerationResult Pipeline::text_to_image(const TextToImageParams& params) {
  auto& m = *impl_;
  const auto t0 = Clock::now();
  m.validate(params);
  Impl::LoraScaleScope lora_scales(m, params.lora_scales);
  const int64_t scale = m.vq_scale_factor;
  const int height = params.height.value_or(static_cast<int>(m.sample_size * scale));
  const int width = params.width.value_or(static_cast<int>(m.sample_size * scale));
  m.check_size(width, height);
  m.check_memory(params, width, height);
  const int64_t batch = batch_size(params);
  const int64_t h = height / scale, w = width / scale;
  const uint64_t seed = params.seed.value_or(random_seed());

  torch::Tensor latents;
  if (params.latents.empty()) {
    latents = torch::full({batch, h, w}, m.scheduler_config.mask_token_id,
                          torch::TensorOptions().dtype(torch::kInt64).device(m.device));  // [B, h, w]
  } else {
    if (static_cast<int64_t>(params.latents.size()) != batch)
      throw InvalidArgument("got " + std::to_string(params.latents.size()) + " starting token grids for " +
                            std::to_string(batch) + " images");
    std::vector<torch::Tensor> grids;
    for (const auto& g : params.latents) {
      if (g.height != h || g.width != w || static_cast<int64_t>(g.ids.size()) != h * w)
        throw InvalidArgument("starting token grid is " + std::to_string(g.width) + "x" +
                              std::to_string(g.height) + ", expected " + std::to_string(w) + "x" +
                              std::to_string(h));
      grids.push_back(torch::tensor(g.ids, torch::kInt64).reshape({h, w}));
    }
    latents = torch::stack(grids).to(m.device);
  }

  nn::ExecutionScope inference(nn::ExecutionMode::kInference);  // fast paths, no autograd
  Timings timings;
  DenoiseRequest req = m.prepare(params, width, height, timings);
  at::Generator generator = make_cpu_generator(seed);
  latents = m.denoise(latents, req, generator, timings);
  auto images = m.decode(latents, timings);
  timings.total_s = seconds_since(t0);
  return m.make_result(latents, images, seed, std::move(timings));
}

}  // namespace amused
