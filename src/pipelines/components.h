// The components of an aMUSEd pipeline (tokenizer, CLIP text encoder, U-ViT, VQ-GAN, scheduler)
// loaded from, and saved to, a diffusers folder. The one loader that the pipeline, the trainer,
// the benchmarks and the tests use, and the one place where the weights' precision is decided.
//
//   auto repo = io::DiffusersRepo::open("amused/amused-256");
//   Components c = load_components(repo, {.precision = Precision::kMixedBFloat16});
//   ...
//   save_pretrained(c, "out/");   // a folder diffusers' AmusedPipeline.from_pretrained loads
//
// Ref: diffusers/pipelines/pipeline_utils.py (from_pretrained, save_pretrained),
//      diffusers/configuration_utils.py (config files), transformers' PreTrainedModel.save_pretrained.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "amused/tokenizer.h"
#include "io/diffusers_repo.h"
#include "io/state_dict.h"
#include "models/clip_text_model.h"
#include "models/uvit_2d.h"
#include "models/vq_model.h"
#include "schedulers/scheduling_amused.h"

namespace amused {

// How the weights are stored.
enum class Precision {
  kFloat32,        // everything float32: reproduces the reference exactly; training's master weights
  kMixedBFloat16,  // CPU mixed precision: matrix weights bfloat16, the rest float32 (nn/precision.h)
  kFloat16,        // every floating-point weight float16 (CUDA)
};

struct ComponentOptions {
  torch::Device device{torch::kCPU};
  Precision precision = Precision::kFloat32;
  // Build the models from their configs with random weights instead of reading weight files
  // (benchmarks without checkpoints; pre-training from scratch).
  bool random_weights = false;
  // Components ("text_encoder", "transformer", "vqvae") that start from random weights even when
  // `random_weights` is false: pre-training a transformer (and text encoder) on a trained VQ-GAN.
  std::set<std::string> random_components;
  // Check the VQ encoder's weights but load them only when `load_vq_encoder` is first called (text
  // to image never needs them: 112 MiB of bfloat16 for amused-256).
  bool defer_vq_encoder = false;
  // Tokenizer folder to use instead of the model's `tokenizer/`.
  std::filesystem::path tokenizer_dir;
};

struct Components {
  std::shared_ptr<ClipTokenizer> tokenizer;
  models::CLIPTextModelWithProjection text_encoder{nullptr};
  models::UVit2DModel transformer{nullptr};
  models::VQModel vqvae{nullptr};
  AmusedSchedulerConfig scheduler_config;
  // The tokenizer's folder (its files are copied by save_pretrained).
  std::filesystem::path tokenizer_dir;
  // Set when the VQ encoder was deferred: loads it (once; the caller serialises calls).
  std::function<void()> load_vq_encoder;
};

// The load options (dtype, per-key dtype, device) that give `module` the precision `precision` on
// `device`. The VQ-GAN's activations stay float32 in every mode (the reference's force_upcast);
// with kFloat16 its weights stay float32 as well.
io::LoadOptions precision_load_options(const torch::nn::Module& module, Precision precision,
                                       const torch::Device& device, bool is_vqvae = false);

// All components of a diffusers pipeline folder. Throws ConfigError / CheckpointError naming the
// file.
Components load_components(const io::DiffusersRepo& repo, const ComponentOptions& options = {});

// One component from its own folder (config + weights, `variant` "" or e.g. "fp16"), with the
// same rules as load_components. Returned in eval mode.
models::UVit2DModel load_transformer(const std::filesystem::path& dir, const ComponentOptions& options = {},
                                     const std::string& variant = "");
models::VQModel load_vqvae(const std::filesystem::path& dir, const ComponentOptions& options = {},
                           const std::string& variant = "");
models::CLIPTextModelWithProjection load_text_encoder(const std::filesystem::path& dir,
                                                      const ComponentOptions& options = {},
                                                      const std::string& variant = "");

struct SaveOptions {
  // "" writes float32 files (`diffusion_pytorch_model.safetensors`, `model.safetensors`);
  // "fp16" writes float16 ones named `<base>.fp16.safetensors`, as diffusers'
  // save_pretrained(variant="fp16") after .to(torch.float16).
  std::string variant;
  // float16 tensors under the plain names (a 16-bit model diffusers loads without a variant);
  // implied by variant "fp16".
  bool float16 = false;
  bool half() const { return float16 || variant == "fp16"; }
};

// The config.json diffusers / transformers write for each model (sorted keys, their metadata keys).
nlohmann::json transformer_config_file(const models::UVit2DConfig& config);
nlohmann::json vqvae_config_file(const models::VQModelConfig& config);
nlohmann::json text_encoder_config_file(const models::CLIPTextConfig& config, torch::ScalarType dtype);
nlohmann::json scheduler_config_file(const AmusedSchedulerConfig& config);
nlohmann::json model_index_file();

// Writes one model's weights (float32, or float16 for the fp16 variant) as `<dir>/<base>[.<variant>].safetensors`
// with diffusers' metadata {"format": "pt"}.
void save_weights(const torch::nn::Module& module, const std::filesystem::path& dir, const std::string& base,
                  const SaveOptions& options = {});

// Writes a VQ-GAN as its own diffusers folder (what VQModel.save_pretrained writes, and what
// load_vqvae reads): `<dir>/config.json` and `<dir>/diffusion_pytorch_model[.<variant>].safetensors`,
// both or neither (io::write_files_atomic). `dir` must exist.
void save_vqvae(const models::VQModel& vqvae, const std::filesystem::path& dir, const SaveOptions& options = {});

// Writes the whole pipeline as diffusers' AmusedPipeline.save_pretrained lays it out:
// model_index.json, scheduler/scheduler_config.json, tokenizer/ (vocab.json, merges.txt,
// tokenizer_config.json, special_tokens_map.json), text_encoder/{config.json, model.safetensors},
// transformer/ and vqvae/{config.json, diffusion_pytorch_model.safetensors}. The folder is built
// beside `folder` and renamed into place, so a failure never leaves a half-written pipeline and
// never damages an existing one (which is replaced only once the new one is complete).
void save_pretrained(const Components& components, const std::filesystem::path& folder,
                     const SaveOptions& options = {});

}  // namespace amused
