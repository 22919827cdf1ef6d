// diffusers' VQModel as aMUSEd uses it (the VQ-GAN that turns images into token grids and back):
// encoder + quant_conv (encode), nearest-codebook quantisation (VectorQuantizer), codebook lookup +
// post_quant_conv + decoder (decode of token ids). Pixels are in [0, 1]; no scaling factor.
//
//   auto vq = amused::load_vqvae(repo / "vqvae");             // pipelines/components.h
//   torch::NoGradGuard no_grad;
//   auto ids = vq->quantize_indices(vq->encode(pixels));      // [B, 3, H, W] -> [B, H/f, W/f]
//   auto images = to_uint8_nhwc(vq->decode_tokens(ids));      // [B, H, W, 3] uint8
//
// Ref: diffusers/models/autoencoders/vq_model.py (VQModel), autoencoders/vae.py (VectorQuantizer).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "models/vae_blocks.h"
#include "nn/layers.h"
#include "nn/precision.h"

namespace amused::models {

// vqvae/config.json. Field = JSON key, default = diffusers' VQModel default.
struct VQModelConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 3;
  int64_t sample_size = 32;
  int64_t num_vq_embeddings = 256;
  int64_t norm_num_groups = 32;
  std::optional<int64_t> vq_embed_dim;  // null -> latent_channels
  double scaling_factor = 0.18215;      // stored only; aMUSEd never scales the latents
  std::string norm_type = "group";      // "group" only ("spatial" is Unsupported)
  bool mid_block_add_attention = true;  // true is Unsupported (aMUSEd: false)
  bool lookup_from_codebook = false;    // decode_tokens always looks ids up in the codebook
  bool force_upcast = false;            // the VQ always runs in float32 here

  // Parses and validates (ConfigError for malformed values, Unsupported for valid-but-unimplemented
  // options). `source` names the file in messages.
  static VQModelConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // Throws as from_json does; called by from_json and by the VQModel constructor.
  void validate(const std::string& source) const;
  // A lower bound on the parameters this config describes (core/config.h), checked against the
  // memory left when the config is parsed and against the weight files' sizes when they load.
  ModelSizeBound min_parameters() const;

  int64_t embed_dim() const { return vq_embed_dim.value_or(latent_channels); }
  // Spatial down-sampling factor of the encoder: 2^(len(block_out_channels) - 1).
  int64_t scale_factor() const;
};

// Ref: diffusers VectorQuantizer(n_e, vq_embed_dim, beta=0.25, remap=None, legacy=True).
// The codebook decides tokens: the mixed-precision policy keeps it float32 (nn/precision.h).
class VectorQuantizerImpl : public torch::nn::Module, public nn::KeepsFloat32 {
 public:
  VectorQuantizerImpl(int64_t n_e, int64_t vq_embed_dim, double beta = 0.25);

  struct Output {
    torch::Tensor quantized;    // [B, C, h, w]: z + (z_q - z).detach() (straight-through)
    torch::Tensor commit_loss;  // scalar (legacy weighting, as the reference)
    torch::Tensor indices;      // int64 [B, h, w]
  };
  Output forward(const torch::Tensor& z);
  // Nearest code per position by Euclidean distance (torch.cdist + argmin, as the reference):
  // [B, C, h, w] -> int64 [B, h, w]. Not differentiable.
  torch::Tensor nearest_indices(const torch::Tensor& z);
  // Codebook vectors of `indices` [B, h, w] -> [B, C, h, w].
  torch::Tensor get_codebook_entry(const torch::Tensor& indices);
  void init_weights();

  int64_t n_e, vq_embed_dim;
  double beta;
  nn::Embedding embedding{nullptr};
};
TORCH_MODULE(VectorQuantizer);

class VQModelImpl : public torch::nn::Module {
 public:
  // Builds the module tree with uninitialised parameters (load weights or call init_weights()).
  explicit VQModelImpl(VQModelConfig config, const std::string& source = "VQModelConfig");

  // pixels [B, in_channels, H, W] in [0, 1] (H, W multiples of scale_factor()) -> latents after
  // quant_conv [B, embed_dim, H/f, W/f]. InvalidArgument for other shapes.
  torch::Tensor encode(const torch::Tensor& pixels);
  // latents [B, embed_dim, h, w] -> int64 [B, h, w] nearest codebook ids.
  torch::Tensor quantize_indices(const torch::Tensor& latents);
  // Quantised latents [B, embed_dim, h, w] -> raw decoder output [B, out_channels, h*f, w*f]
  // (post_quant_conv -> decoder; the reference's decode with force_not_quantize=True).
  torch::Tensor decode(const torch::Tensor& quant);
  // ids int64 [B, h, w] in [0, num_vq_embeddings) -> raw decoder output [B, 3, h*f, w*f]
  // (codebook lookup -> post_quant_conv -> decoder). The caller clips to [0, 1].
  torch::Tensor decode_tokens(const torch::Tensor& ids);

  // PyTorch's default initialisation (+ the codebook's U(-1/n, 1/n)), for random-weight runs.
  void init_weights();
  // The same for the encode path (encoder, quant_conv) or the rest (codebook, decode path).
  void init_encoder_weights();
  void init_decoder_weights();
  // True for the state-dict keys of the encode path ("encoder.*", "quant_conv.*"): only image
  // editing needs them, so the pipeline loads them on first use.
  static bool is_encoder_key(const std::string& key);

  const VQModelConfig& config() const { return config_; }
  int64_t scale_factor() const { return config_.scale_factor(); }

  Encoder encoder{nullptr};
  nn::Conv2d quant_conv{nullptr};
  VectorQuantizer quantize{nullptr};
  nn::Conv2d post_quant_conv{nullptr};
  Decoder decoder{nullptr};

 private:
  VQModelConfig config_;
};
TORCH_MODULE(VQModel);

// The reference's image post-processing (pipeline `.clip(0, 1)` + VaeImageProcessor to "pil"):
// [B, 3, H, W] float -> clip(0, 1) -> [B, H, W, 3] -> round(x * 255) (half to even, in float32)
// -> uint8, on the input's device.
torch::Tensor to_uint8_nhwc(const torch::Tensor& images_nchw);

}  // namespace amused::models
