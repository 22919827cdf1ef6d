// Internals of amused::Pipeline shared by the text-to-image, image-to-image and inpainting paths:
// one prompt encoder, one denoising loop, one decoder.
// Ref: diffusers/pipelines/deprecated/amused/pipeline_amused.py
#pragma once

#include <functional>
#include <mutex>

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "amused/pipeline.h"
#include "amused/tokenizer.h"
#include "models/clip_text_model.h"
#include "models/uvit_2d.h"
#include "models/vq_model.h"
#include "io/diffusers_repo.h"
#include "io/lora_file.h"
#include "pipelines/components.h"
#include "schedulers/scheduling_amused.h"

namespace amused {

using models::CLIPTextConfig;
using models::CLIPTextModelWithProjection;
using models::to_uint8_nhwc;
using models::UVit2DConfig;
using models::UVit2DModel;
using models::VQModel;
using models::VQModelConfig;

// The public Temperature (pair / single / per step) as the scheduler's schedule.
inline TemperatureSchedule to_scheduler_temperature(const Temperature& t) {
  if (t.scalar) return TemperatureSchedule::scalar(t.values.at(0));
  if (t.values.size() == 2) return TemperatureSchedule::pair(t.values[0], t.values[1]);
  return TemperatureSchedule::list(t.values);
}

// Text conditioning for a batch: CLIP penultimate hidden states [B, 77, H] and projected pooled
// embeddings [B, P], in the transformer's dtype and device.
struct PromptEmbeddings {
  torch::Tensor encoder_hidden_states;
  torch::Tensor pooled_text_emb;
};

// What one run of the denoising loop needs besides the starting tokens.
struct DenoiseRequest {
  PromptEmbeddings cond;        // CFG: [negative..., positive...] batch of 2B rows; else B rows
  torch::Tensor micro_conds;    // [rows, 5]
  bool guidance = false;
  double guidance_scale = 1.0;
  int num_inference_steps = 12;
  int start_step = 0;           // img2img/inpaint run steps start_step .. N-1
  Temperature temperature;
  MaskingSchedule masking_schedule = MaskingSchedule::FromConfig;
  double starting_mask_ratio = 1.0;
  ProgressCallback progress;
  bool step_details = false;  // fill StepInfo::details
  // Fill StepDetails::attention (with step_details), with these text tokens per image.
  bool attention_maps = false;
  std::vector<std::vector<std::string>> attention_tokens;
};

struct Pipeline::Impl {
  ModelSummary summary;
  torch::Device device{torch::kCPU};
  torch::ScalarType dtype = torch::kFloat32;
  std::shared_ptr<ClipTokenizer> tokenizer;
  CLIPTextModelWithProjection text_encoder{nullptr};
  UVit2DModel transformer{nullptr};
  VQModel vqvae{nullptr};
  // The VQ encoder (encode path) is loaded on the first image edit: text-to-image never needs it
  // (112 MiB of bfloat16 weights for amused-256). load_vq_encoder does it once, thread-safely.
  std::function<void()> vq_encoder_loader;
  std::once_flag vq_encoder_once;
  void load_vq_encoder();
  // Mean colour of each codebook entry's decoding (Pipeline::token_colours), computed once.
  std::vector<std::array<uint8_t, 3>> token_colours;
  std::once_flag token_colours_once;
  AmusedSchedulerConfig scheduler_config;
  int64_t vq_scale_factor = 16;
  int64_t sample_size = 16;

  // Encodes `prompts` (each distinct prompt once) -> rows in the order given.
  PromptEmbeddings encode_prompts(const std::vector<std::string>& prompts, Timings& timings);

  // Conditioning for `prompts` x `num_images_per_prompt` (tiled, as the reference's .repeat), with
  // the negative prompts first when guidance is on.
  PromptEmbeddings encode_with_guidance(const std::vector<std::string>& prompts,
                                        const std::vector<std::string>& negative_prompts,
                                        int num_images_per_prompt, bool guidance, Timings& timings);

  torch::Tensor micro_conds(int width, int height, std::pair<int, int> crop, double aesthetic,
                            int64_t rows) const;

  // Runs the MaskGIT loop from `latents` [B, h, w] (int64 on the device); returns the final grid.
  torch::Tensor denoise(torch::Tensor latents, const DenoiseRequest& request, at::Generator& generator,
                        Timings& timings);

  // Token grids [B, h, w] -> images [B, 3, H, W] float32 clipped to [0, 1] (one image at a time,
  // to bound peak memory).
  torch::Tensor decode(const torch::Tensor& latents, Timings& timings);
  // One step's tokens, predictions [B, h, w] and confidences as the API's StepDetails.
  // `attention`: [B, M, h, w] cross-attention maps of the conditional rows, or undefined.
  StepDetails step_details(const torch::Tensor& tokens, const torch::Tensor& predicted,
                           const torch::Tensor& confidence, const torch::Tensor& attention = {},
                           const std::vector<std::vector<std::string>>& attention_tokens = {}) const;
  // Complete grids (ids in the codebook) -> [B, h, w] int64 on the device; InvalidArgument otherwise.
  torch::Tensor grids_to_tensor(const std::vector<TokenGrid>& grids) const;

  // Builds the public result from final tokens and decoded images.
  GenerationResult make_result(const torch::Tensor& latents, const torch::Tensor& images, uint64_t seed,
                               Timings timings) const;

  // Shared argument checks: prompts, negative prompts, steps, images per prompt, guidance.
  void validate(const GenerationParams& params) const;
  // Width/height must be positive multiples of the VQ scale factor (x2 for down-sampling models).
  void check_size(int width, int height) const;
  // Working memory a call of `params` at width x height needs beyond the loaded weights (the
  // largest of: the attention scores and activations of one denoising step over the whole batch,
  // the VQ decode of one image), in bytes; a rough upper estimate.
  double request_bytes(const GenerationParams& params, int width, int height) const;
  // Refuses (InvalidArgument, naming the estimate and the fix) a call whose request_bytes exceed
  // what the process can still allocate, before any work: such a size used to end in a raw
  // allocation error or the OOM killer.
  void check_memory(const GenerationParams& params, int width, int height) const;
  // Conditioning, micro-conditioning and loop settings for `params` at width x height.
  DenoiseRequest prepare(const GenerationParams& params, int width, int height, Timings& timings);

  // An input image brought to the size the VQ-GAN accepts: explicit width/height, else its own
  // size rounded down to a multiple of the scale factor (with a warning when that changes it).
  Image prepare_input_image(const Image& image, std::optional<int> width, std::optional<int> height,
                            const GenerationParams& params) const;
  // RGB8 image -> VQ token ids [1, h, w] (int64, on the device): pixels / 255, encode, nearest code.
  torch::Tensor encode_image_tokens(const Image& image);

  // Image-to-image and inpainting share this: encode, then noise (mask == nullptr) or mask the
  // tokens, then the denoising loop over the last int(N * strength) steps.
  // What image-to-image and inpainting share: the input image and how much of it is regenerated;
  // `mask` null = image-to-image.
  struct EditInput {
    const Image& image;
    double strength;
    std::optional<int> width, height;
    const Image* mask;
  };
  GenerationResult edit(const GenerationParams& params, const EditInput& in);

  void sync() const;

  // LoRA adapters (pipeline_lora.cpp).
  struct LoadedLora {
    LoraInfo info;
    io::LoraFile file;
    std::shared_ptr<double> scale;  // shared by the run-time layers
  };
  std::vector<LoadedLora> loras;
  bool loras_merged = false;
  // The un-merged weights of "transformer" or "text_encoder" (the checkpoint, memory-mapped).
  std::function<io::StateDict(const std::string& component)> lora_base;
  // Reads, checks and applies options.loras (after the components are loaded).
  void load_loras(const LoadOptions& options, const io::DiffusersRepo* repo);
  void merge_loras();
  // Per-call scales: set for the call, restored after it.
  class LoraScaleScope {
   public:
    LoraScaleScope(Impl& impl, const std::map<std::string, double>& scales);
    ~LoraScaleScope();
    LoraScaleScope(const LoraScaleScope&) = delete;
    LoraScaleScope& operator=(const LoraScaleScope&) = delete;

   private:
    std::vector<std::pair<std::shared_ptr<double>, double>> saved_;
  };

  // Takes the components' models (shared, not copied) and fills the summary's model figures.
  void adopt(Components components);
};

// Builds pipelines from components already in memory, e.g. the trainer's validation images drawn
// with the model being trained (its modules are shared: put them in eval mode first).
// Also the internals of a loaded pipeline, for tests that replay the reference step by step.
struct PipelineAccess {
  static std::unique_ptr<Pipeline> from_components(Components components, const torch::Device& device);
  static Pipeline::Impl& impl(Pipeline& pipeline) { return *pipeline.impl_; }
};

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A random seed for calls without one: 53 bits, exact in JSON numbers and in every language that
// reads our PNG metadata.
inline uint64_t random_seed() {
  std::random_device rd;
  return ((static_cast<uint64_t>(rd()) << 32) | rd()) & ((1ull << 53) - 1);
}

// Upper bounds of a request, checked before anything is encoded or allocated: beyond them a
// request describes no useful generation and would only exhaust memory or time.
inline constexpr int kMaxImageSide = 4096;     // pixels per side
inline constexpr int kMaxSteps = 1000;         // denoising steps
inline constexpr int64_t kMaxBatch = 256;      // prompts x images per prompt

// Number of rows of the conditioning batch (images) for these parameters.
inline int64_t batch_size(const GenerationParams& p) {
  return static_cast<int64_t>(p.prompts.size()) * p.num_images_per_prompt;
}

// DType::Auto (see LoadOptions::dtype) on `device` -> the dtype it means there.
torch::ScalarType resolve_dtype(DType dtype, const torch::Device& device);
// Float32 / BFloat16 / Float16 <-> LibTorch's scalar types (Auto is resolve_dtype's).
torch::ScalarType to_scalar_type(DType dtype);
DType dtype_of(torch::ScalarType t);
bool cpu_has_native_bf16();
// The API's Device as LibTorch's; CUDA requested but unavailable is an Unsupported error.
torch::Device to_torch_device(const Device& device);
Device device_of(const torch::Device& device);

}  // namespace amused
