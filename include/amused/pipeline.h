// The aMUSEd pipeline: load a model once, then generate.
//
//   amused::LoadOptions load;                  // cpu, float32, all physical cores
//   auto pipe = amused::Pipeline::load("amused/amused-256", load);   // folder or hub repo id
//   amused::TextToImageParams p;
//   p.prompts = {"a photo of a cat"};
//   p.seed = 0;
//   amused::GenerationResult r = pipe->text_to_image(p);
//   // r.images[0]: 256x256 RGB8; r.tokens[0]: the final 16x16 token grid
//
// Same semantics, defaults and batch order as diffusers' AmusedPipeline; with float32 on the CPU
// and the same seed the result equals the reference's.
// Ref: diffusers/pipelines/deprecated/amused/pipeline_amused.py
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "amused/error.h"
#include "amused/image.h"  // Image, TokenGrid
#include "amused/types.h"  // DType, Device, MaskingSchedule

namespace amused {

// A LoRA adapter loaded with the pipeline: diffusers' `pytorch_lora_weights.safetensors` (keys
// transformer.<module>.lora_A.weight / lora_B.weight, text_encoder.* when present; a folder holding
// it), or a peft adapter folder (adapter_model.safetensors + adapter_config.json). Files without an
// alpha (diffusers' saver drops it) use alpha = r, as diffusers' loader does; docs/training.md.
struct LoraAdapter {
  std::string path;
  double scale = 1.0;  // multiplies alpha / r, as diffusers' scale_lora_layers
  std::string name;    // for per-call scales; default: the file's stem (the folder's name for folders)
};

struct LoadOptions {
  Device device;                   // Device::cpu(), Device::cuda(1); Device::parse("cuda:1")
  // Auto: bfloat16 on CPUs with native bfloat16 instructions (AVX512-BF16 / AMX), else float32;
  // float16 on CUDA. On the CPU, bfloat16 means mixed precision: 16-bit matrix weights and
  // products, float32 activations and norms (float16 needs CUDA). The VQ-GAN always runs in
  // float32. Float32 on the CPU reproduces the reference exactly.
  DType dtype = DType::Auto;
  int threads = 0;                 // <= 0: all physical cores
  std::string variant;             // "" or "fp16": which weight files to read
  bool offline = false;            // never use the network (also HF_HUB_OFFLINE=1)
  std::string revision = "main";   // hub revision for repo ids
  // Build the models from their config.json files with random weights instead of reading weight
  // files (benchmarks on machines without the checkpoints; the images are noise).
  bool random_weights = false;
  // Tokenizer folder to use instead of the model's `tokenizer/` (e.g. for config-only folders).
  std::string tokenizer_dir;
  // LoRA adapters, stacked in this order.
  std::vector<LoraAdapter> loras;
  // true: merged into the weights at load (W + s (alpha / r) B A in float32, before any 16-bit
  // cast): no cost per step; set_lora_scale re-merges from the checkpoint's weights (seconds).
  // false: applied at run time in every Linear they adapt (W x + s (alpha / r) B (A x), A and B in
  // float32): a few percent per step, and scales can change per call (GenerationParams::lora_scales).
  bool merge_loras = true;
  // Download progress for hub repo ids: file name, bytes done, bytes total (0 if unknown).
  std::function<void(const std::string&, uint64_t, uint64_t)> download_progress;
};

// Temperature of the re-masking noise: a pair (start, end) -> linspace over the steps, a single
// value t -> linspace(t, 0.01), or one value per step.
struct Temperature {
  std::vector<double> values{2.0, 0.0};
  bool scalar = false;
  static Temperature pair(double start, double end) { return {{start, end}, false}; }
  static Temperature single(double t) { return {{t}, true}; }
  static Temperature per_step(std::vector<double> v) { return {std::move(v), false}; }
};

// Where the image attended in its prompt during one denoising step: the transformer's
// cross-attention probabilities (the image positions are the queries, the prompt's text positions
// the keys), averaged over the heads and over every cross-attention layer, each layer's grid
// resampled to the token grid. Conditional half of the batch only (not the negative prompt's).
struct AttentionMaps {
  int height = 0, width = 0;  // the token grid
  // Per image: its prompt's text positions as the tokenizer spells them, the start and end tokens
  // included ("<|startoftext|>", "a</w>", "red</w>", "apple</w>", "<|endoftext|>"); padding left out.
  std::vector<std::vector<std::string>> tokens;
  // Per image: for each of those tokens t, the share of attention each grid position gave it,
  // [t * height * width + y * width + x]. A position's shares over every text position (padding
  // included) sum to 1.
  std::vector<std::vector<float>> maps;
};

// What one denoising step decided, for every image of the call (batch order: images per prompt
// tiled [p0, p1, p0, p1]); each grid is row-major h x w. Filled only when
// GenerationParams::step_details is set (it costs a softmax and a copy to the host per step).
struct StepDetails {
  // The tokens after the step: the ones fixed so far, mask_token_id where still masked.
  std::vector<TokenGrid> tokens;
  // The model's guess for every position at this step (the scheduler's pred_original_sample):
  // the fixed tokens, and a sample for each masked one.
  std::vector<TokenGrid> predicted;
  // The probability the model gave each predicted token (1 for tokens known before the step):
  // the confidence by which the scheduler chose which tokens stay masked.
  std::vector<std::vector<float>> confidence;
  int64_t mask_token_id = 0;
  // Where each image attended in its prompt at this step: only with GenerationParams::attention_maps.
  AttentionMaps attention;
};

struct StepInfo {
  int step = 0;        // 1-based index of the step that just finished
  int num_steps = 0;   // steps this call runs
  double step_seconds = 0;
  double elapsed_seconds = 0;
  const StepDetails* details = nullptr;  // when GenerationParams::step_details; valid during the call
};
// Called after every step; return false to cancel (the call then throws amused::Cancelled).
using ProgressCallback = std::function<bool(const StepInfo&)>;

// Parameters every generation mode shares (defaults = the reference pipelines').
struct GenerationParams {
  std::vector<std::string> prompts;
  // Empty: "" for every prompt. One entry: used for every prompt. Otherwise one per prompt.
  std::vector<std::string> negative_prompts;
  int num_inference_steps = 12;
  double guidance_scale = 10.0;     // classifier-free guidance when > 1
  int num_images_per_prompt = 1;
  double aesthetic_score = 6.0;     // micro-conditioning
  std::pair<int, int> crop_coord{0, 0};
  Temperature temperature;
  MaskingSchedule masking_schedule = MaskingSchedule::FromConfig;  // FromConfig: the scheduler's config
  std::optional<uint64_t> seed;     // random when absent; the seed used is in the result
  ProgressCallback progress;
  // Fill StepInfo::details for the progress callback (off by default: no cost).
  bool step_details = false;
  // Also fill StepDetails::attention (implies step_details; off by default: no cost).
  bool attention_maps = false;
  // LoRA scales for this call by adapter name (adapters not named keep theirs). Run-time adapters
  // (LoadOptions::merge_loras = false) only; for merged ones a different scale is an error.
  std::map<std::string, double> lora_scales;
};

struct TextToImageParams : GenerationParams {
  std::optional<int> height;        // default: sample_size * VQ scale factor (256 / 512)
  std::optional<int> width;
  // Optional starting token grids (one per output image); masked positions hold the mask id.
  std::vector<TokenGrid> latents;
};

// Image-to-image: re-masks a share of the input image's tokens and regenerates them. Runs the last
// int(steps * strength) steps. Reference quirk kept for parity: strength 1.0 starts from a fully
// known grid (timesteps[-1] = 0 masks nothing) and so barely changes the image.
struct ImageToImageParams : GenerationParams {
  Image image;                      // one image, used for every prompt
  double strength = 0.5;            // in [0, 1]
  std::optional<int> width;         // resize the input first (else: its size, rounded down to a
  std::optional<int> height;        // multiple of the VQ scale factor, with a warning)
};

// Inpainting: regenerates the tokens under the white part of the mask (linear masking schedule,
// scaled by the masked fraction, as the reference's inpaint pipeline).
// Inpainting: regenerates the part of the image its mask marks. Its own type, not an
// ImageToImageParams, so that it cannot be passed to image_to_image (which would drop the mask).
struct InpaintParams : GenerationParams {
  Image image;                      // one image, used for every prompt
  Image mask;                       // grey or RGB, the image's aspect ratio; >= 0.5 after /255 = regenerate
  double strength = 1.0;            // in [0, 1]; int(steps * strength) must be at least 1
  std::optional<int> width;         // as ImageToImageParams
  std::optional<int> height;
};

struct Timings {
  double text_encoder_s = 0;
  double transformer_s = 0;   // all steps
  double scheduler_s = 0;     // all steps
  double vq_decode_s = 0;
  double total_s = 0;
  std::vector<double> step_s;  // wall time of each step (transformer + scheduler)
  std::vector<double> transformer_step_s;  // transformer forward (+ guidance) of each step
};

struct GenerationResult {
  std::vector<Image> images;      // batch order of the reference: images per prompt tiled
  std::vector<TokenGrid> tokens;  // the final token grids, same order
  uint64_t seed = 0;
  Timings timings;
};

struct ModelSummary {
  std::string path;            // resolved folder
  Device device;
  DType dtype = DType::Float32;  // resolved (never Auto): Float32 | BFloat16 | Float16
  int threads = 0;
  int default_width = 0, default_height = 0;
  int vq_scale_factor = 0;
  int64_t codebook_size = 0, mask_token_id = 0;
  MaskingSchedule masking_schedule = MaskingSchedule::Cosine;  // the scheduler config's (never FromConfig)
  double load_seconds = 0;
  // Analytic work per image at the default size (multiply-adds x 2), for benchmarks.
  double transformer_gflop = 0;    // one forward
  double vq_decode_gflop = 0;      // one decode
  double text_encoder_gflop = 0;   // one prompt
  int64_t transformer_parameters = 0, vq_parameters = 0, text_encoder_parameters = 0;
};

// A loaded LoRA adapter.
struct LoraInfo {
  std::string name, path;
  std::string format;      // "diffusers" | "peft"
  double scale = 1.0;      // the current scale
  int64_t rank = 0;
  double alpha = 0;        // as used (see alpha_note)
  std::string alpha_note;  // where alpha came from
  int64_t transformer_layers = 0, text_encoder_layers = 0;
  bool merged = false;
};

// Thread safety: a Pipeline runs one call at a time. text_to_image, image_to_image, inpaint and
// set_lora_scale must not overlap on the same object (the server queues requests for its one
// pipeline); summary() and loras() only read what load() and set_lora_scale wrote and may be called
// alongside a generation. Different Pipelines may run at the same time: they share LibTorch's
// thread pool (amused::set_threads) and the process-wide peak-memory figures of Timings.
// Pipeline::load may be called from any thread.
class Pipeline {
 public:
  // `model`: a diffusers folder or a hub repo id ("amused/amused-256").
  static std::unique_ptr<Pipeline> load(const std::string& model, const LoadOptions& options = {});
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  GenerationResult text_to_image(const TextToImageParams& params);
  GenerationResult image_to_image(const ImageToImageParams& params);
  GenerationResult inpaint(const InpaintParams& params);

  const ModelSummary& summary() const;

  // A quick picture of a token grid without the VQ decode: each token drawn as a `cell` x `cell`
  // square of its codebook entry's mean colour (decoded once per entry, on first use: a fraction
  // of a second for small codebooks, seconds for 8192 entries), mask_token_id in grey.
  Image preview(const TokenGrid& grid, int cell = 8);
  // The mean colour (RGB) of each codebook entry's decoding, as preview() uses them.
  const std::vector<std::array<uint8_t, 3>>& token_colours();
  // The exact VQ decode of complete token grids (no mask_token_id), as the pipelines decode.
  std::vector<Image> decode(const std::vector<TokenGrid>& grids);

  // LoRA adapters (LoadOptions::loras), in load order.
  std::vector<LoraInfo> loras() const;
  // A new default scale for adapter `name` (0 disables it: the output equals the model without it).
  // Run-time adapters: immediate; merged ones: the affected weights are re-merged from the
  // checkpoint. Not during a call.
  void set_lora_scale(const std::string& name, double scale);

 private:
  struct Impl;
  friend struct PipelineAccess;  // the library's own constructors and tests (src/pipelines/pipeline_amused.h)
  explicit Pipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace amused
