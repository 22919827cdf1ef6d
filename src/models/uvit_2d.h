// UVit2DModel: aMUSEd's masked-token predictor (token grid + CLIP text -> logits over the VQ
// codebook), its config and sub-blocks.
// Ref: diffusers/models/unets/uvit_2d.py (UVit2DModel, UVit2DConvEmbed, UVitBlock, ConvNextBlock,
// ConvMlmLayer); diffusers/models/downsampling.py, upsampling.py (Downsample2D, Upsample2D).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/config.h"
#include "nn/attention.h"
#include "nn/embeddings.h"
#include "nn/layers.h"
#include "nn/normalization.h"
#include "nn/precision.h"

namespace amused::models {

// transformer/config.json. Field = JSON key, default = diffusers' UVit2DModel default.
struct UVit2DConfig {
  int64_t hidden_size = 1024;
  bool use_bias = false;
  double hidden_dropout = 0.0;
  int64_t cond_embed_dim = 768;
  int64_t micro_cond_encode_dim = 256;
  int64_t micro_cond_embed_dim = 1280;
  int64_t encoder_hidden_size = 768;
  int64_t vocab_size = 8256;
  int64_t codebook_size = 8192;
  int64_t in_channels = 768;
  int64_t block_out_channels = 768;
  int64_t num_res_blocks = 3;
  bool downsample = false;
  bool upsample = false;
  int64_t block_num_heads = 12;
  int64_t num_hidden_layers = 22;
  int64_t num_attention_heads = 16;
  double attention_dropout = 0.0;
  int64_t intermediate_size = 2816;
  double layer_norm_eps = 1e-6;
  bool ln_elementwise_affine = true;
  int64_t sample_size = 64;

  // Checks `_class_name` == "UVit2DModel" and validates; `source` names the file in errors.
  static UVit2DConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // Throws ConfigError naming `source` and the key when a value cannot build a model.
  void validate(const std::string& source) const;
  // A lower bound on the parameters this config describes (core/config.h), checked against the
  // memory left when the config is parsed and against the weight files' sizes when they load.
  ModelSizeBound min_parameters() const;
};

namespace uvit {

// Embedding -> RMSNorm -> [B, h, w, C] to NCHW -> 1x1 conv.
class UVit2DConvEmbedImpl : public torch::nn::Module {
 public:
  UVit2DConvEmbedImpl(int64_t in_channels, int64_t block_out_channels, int64_t vocab_size,
                      bool elementwise_affine, double eps, bool bias);
  torch::Tensor forward(const torch::Tensor& input_ids);  // [B, h, w] -> [B, C, h, w]
  nn::Embedding embeddings{nullptr};
  nn::RMSNorm layer_norm{nullptr};
  nn::Conv2d conv{nullptr};
};
TORCH_MODULE(UVit2DConvEmbed);

// Downsample2D as UVitBlock configures it: RMSNorm over channels, (0,1,0,1) zero pad, stride-2
// conv with padding 0.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t kernel_size, double eps, bool elementwise_affine,
                   bool bias);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  nn::RMSNorm norm{nullptr};
  nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Downsample2D);

// Upsample2D as UVitBlock configures it: RMSNorm over channels, stride-2 transposed conv, no
// interpolation.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t kernel_size, double eps, bool elementwise_affine,
                 bool bias);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  nn::RMSNorm norm{nullptr};
  nn::ConvTranspose2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

// ConvNeXt-V2 block with adaptive (scale, shift) modulation applied after the residual add.
class ConvNextBlockImpl : public torch::nn::Module {
 public:
  ConvNextBlockImpl(int64_t channels, double layer_norm_eps, bool ln_elementwise_affine,
                    bool use_bias, double hidden_dropout, int64_t hidden_size,
                    int64_t res_ffn_factor = 4);
  // x [B, C, H, W], cond_embeds [B, hidden_size] -> [B, C, H, W]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cond_embeds);
  nn::Conv2d depthwise{nullptr};
  nn::RMSNorm norm{nullptr};
  nn::Linear channelwise_linear_1{nullptr};
  nn::GlobalResponseNorm channelwise_norm{nullptr};
  nn::Linear channelwise_linear_2{nullptr};
  torch::nn::Dropout channelwise_dropout{nullptr};
  nn::Linear cond_embeds_mapper{nullptr};
};
TORCH_MODULE(ConvNextBlock);

// [optional downsample] -> num_res_blocks x (ConvNextBlock, SkipFFTransformerBlock) ->
// [optional upsample].
class UVitBlockImpl : public torch::nn::Module {
 public:
  UVitBlockImpl(int64_t channels, int64_t num_res_blocks, int64_t hidden_size,
                double hidden_dropout, bool ln_elementwise_affine, double layer_norm_eps,
                bool use_bias, int64_t block_num_heads, double attention_dropout, bool downsample,
                bool upsample);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& pooled_text_emb,
                        const torch::Tensor& encoder_hidden_states);
  Downsample2D downsample{nullptr};
  torch::nn::ModuleList res_blocks{nullptr};
  torch::nn::ModuleList attention_blocks{nullptr};
  Upsample2D upsample{nullptr};
};
TORCH_MODULE(UVitBlock);

// 1x1 conv -> RMSNorm over channels -> 1x1 conv to codebook logits.
// The logits head decides tokens: the mixed-precision policy keeps it float32 (nn/precision.h).
class ConvMlmLayerImpl : public torch::nn::Module, public nn::KeepsFloat32 {
 public:
  ConvMlmLayerImpl(int64_t block_out_channels, int64_t in_channels, bool use_bias,
                   bool ln_elementwise_affine, double layer_norm_eps, int64_t codebook_size);
  torch::Tensor forward(const torch::Tensor& hidden_states);  // [B, C, h, w] -> [B, K, h, w]
  nn::Conv2d conv1{nullptr};
  nn::RMSNorm layer_norm{nullptr};
  nn::Conv2d conv2{nullptr};
};
TORCH_MODULE(ConvMlmLayer);

}  // namespace uvit

class UVit2DModelImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised: load weights (pipelines/components.h) or
  // call init_weights().
  explicit UVit2DModelImpl(const UVit2DConfig& config);

  // input_ids [B, h, w] int64 token ids (mask id = vocab_size - 1 in the pipelines),
  // encoder_hidden_states [B, L, encoder_hidden_size] (CLIP penultimate hidden states),
  // pooled_text_emb [B, cond_embed_dim] (CLIP text_embeds), micro_conds [B, 5]
  // ([width, height, crop_top, crop_left, aesthetic_score]) -> logits [B, codebook_size, h, w].
  // With `debug`, module outputs are stored under the golden files' debug names
  // (encoder_proj_layer_norm, cond_embed_input, cond_embed, embed, down_block, project_to_hidden,
  // transformer_layers.N, project_from_hidden, up_block).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& encoder_hidden_states,
                        const torch::Tensor& pooled_text_emb, const torch::Tensor& micro_conds,
                        std::map<std::string, torch::Tensor>* debug = nullptr);

  // Random initialisation for training from scratch, as open-muse pre-training did:
  // trunc-normal(0.02) linears/convs, N(0, 1/sqrt(vocab)) input embedding, zero adaptive-norm
  // mappers and mlm_layer.conv1, mlm_layer.conv2 = first codebook_size embedding rows, unit norm
  // weights, zero biases and GRN gamma/beta.
  void init_weights();

  const UVit2DConfig& config() const { return config_; }
  // Training: recompute each transformer layer in backward instead of keeping its activations
  // (nn/checkpoint.h; diffusers' enable_gradient_checkpointing). Same gradients, less memory.
  bool gradient_checkpointing = false;
  // The dtype of the weights (diffusers' ModelMixin.dtype).
  torch::Dtype dtype() const;

  nn::Linear encoder_proj{nullptr};
  nn::RMSNorm encoder_proj_layer_norm{nullptr};
  uvit::UVit2DConvEmbed embed{nullptr};
  nn::TimestepEmbedding cond_embed{nullptr};
  uvit::UVitBlock down_block{nullptr};
  nn::RMSNorm project_to_hidden_norm{nullptr};
  nn::Linear project_to_hidden{nullptr};
  torch::nn::ModuleList transformer_layers{nullptr};
  nn::RMSNorm project_from_hidden_norm{nullptr};
  nn::Linear project_from_hidden{nullptr};
  uvit::UVitBlock up_block{nullptr};
  uvit::ConvMlmLayer mlm_layer{nullptr};

 private:
  UVit2DConfig config_;
};
TORCH_MODULE(UVit2DModel);

}  // namespace amused::models
