// The building blocks of diffusers' VQ/VAE Encoder and Decoder, restricted to what VQModel uses:
// ResnetBlock2D (no time embedding), Downsample2D (conv, optional (0,1,0,1) pad), Upsample2D
// (nearest x2 + conv), DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D (resnets only) and the
// Encoder / Decoder (norm_type "group"). Parameter names equal diffusers' attribute names.
// Ref: diffusers/models/resnet.py (ResnetBlock2D), downsampling.py (Downsample2D),
//      upsampling.py (Upsample2D), unets/unet_2d_blocks.py (DownEncoderBlock2D, UpDecoderBlock2D,
//      UNetMidBlock2D), autoencoders/vae.py (Encoder, Decoder).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "nn/layers.h"

namespace amused::models {

// The activations diffusers' get_activation() knows: "silu"/"swish", "mish", "gelu", "relu".
// Throws Unsupported for anything else (`source` names the config in the message).
void check_activation(const std::string& act_fn, const std::string& source);
// With `may_overwrite_input` and grad mode off, SiLU is applied in place (x must be a temporary
// the caller owns); otherwise the result is a new tensor.
torch::Tensor apply_activation(const std::string& act_fn, const torch::Tensor& x,
                               bool may_overwrite_input = false);

// Ref: diffusers ResnetBlock2D with temb_channels=None, time_embedding_norm "default", pre_norm,
// output_scale_factor 1, conv_shortcut (1x1, with bias) only when in != out channels.
// conv(act(norm(x))). In inference with a 16-bit convolution weight and wider activations, the
// normalised activations are made a few groups at a time straight into the 16-bit copy the
// convolution reads, so the full-size float32 normalised tensor never exists (64 MiB at the last
// stage of a 256x256 decode); GroupNorm's statistics are per group, so the result is the same.
// Otherwise (training, float32) the plain sequence.
torch::Tensor norm_act_conv(nn::GroupNorm& norm, const std::string& act_fn, nn::Conv2d& conv,
                            const torch::Tensor& x);

class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  ResnetBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t groups, double eps,
                    std::string non_linearity);
  torch::Tensor forward(const torch::Tensor& input_tensor);
  // forward() for an input the caller gives up (std::move). In inference with 16-bit weights and a
  // 1x1 shortcut, the shortcut's 16-bit product is taken first and the input released before the
  // main path, so the full-size input and the main path's tensors never coexist. Same result.
  torch::Tensor forward_owned(torch::Tensor input_tensor);
  void init_weights();

  int64_t in_channels, out_channels;
  std::string non_linearity;
  nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};  // conv_shortcut optional
};
TORCH_MODULE(ResnetBlock2D);

// Ref: diffusers Downsample2D(use_conv=True): padding 0 means the asymmetric (0,1,0,1) zero pad
// followed by a 3x3 stride-2 conv without padding (taming-transformers style).
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  void init_weights();

  int64_t channels, padding;
  nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Downsample2D);

// Ref: diffusers Upsample2D(use_conv=True): nearest-neighbour x2 interpolation, then 3x3 conv.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t out_channels);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  void init_weights();

  int64_t channels;
  nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

// Ref: diffusers DownEncoderBlock2D: `num_layers` resnets, then an optional downsampler.
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  DownEncoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                         double resnet_eps, const std::string& resnet_act_fn, int64_t resnet_groups,
                         bool add_downsample, int64_t downsample_padding);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  void init_weights();

  std::vector<ResnetBlock2D> resnets;      // registered as "resnets.{i}"
  std::vector<Downsample2D> downsamplers;  // "downsamplers.0" or empty
};
TORCH_MODULE(DownEncoderBlock2D);

// Ref: diffusers UpDecoderBlock2D (temb None): `num_layers` resnets, then an optional upsampler.
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                       double resnet_eps, const std::string& resnet_act_fn, int64_t resnet_groups,
                       bool add_upsample);
  // By value: the decoder hands its activation over (see ResnetBlock2DImpl::forward_owned).
  torch::Tensor forward(torch::Tensor hidden_states);
  void init_weights();

  std::vector<ResnetBlock2D> resnets;  // "resnets.{i}"
  std::vector<Upsample2D> upsamplers;  // "upsamplers.0" or empty
};
TORCH_MODULE(UpDecoderBlock2D);

// Ref: diffusers UNetMidBlock2D with num_layers 1 and add_attention=False: resnets.0, resnets.1.
// (add_attention=True is rejected by the Encoder/Decoder constructors: Unsupported.)
class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DImpl(int64_t in_channels, double resnet_eps, const std::string& resnet_act_fn,
                     int64_t resnet_groups, int64_t num_layers = 1);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  void init_weights();

  std::vector<ResnetBlock2D> resnets;  // "resnets.{i}", num_layers + 1 of them
};
TORCH_MODULE(UNetMidBlock2D);

// Shared constructor arguments of Encoder and Decoder (taken from VQModelConfig).
struct VaeCoderOptions {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> block_types;  // down_block_types (Encoder) / up_block_types (Decoder)
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  std::string act_fn = "silu";
  bool mid_block_add_attention = false;
  std::string source;  // config file named in error messages
};

// Throws Unsupported when the options ask for something not implemented: mid-block attention,
// a block type other than `expected_block` in `block_types` (config key `types_key`), an unknown
// act_fn.
void check_coder_options(const VaeCoderOptions& options, const char* types_key,
                         const char* expected_block);

// Ref: diffusers Encoder with double_z=False: conv_in -> down_blocks -> mid_block ->
// conv_norm_out -> SiLU -> conv_out. (conv_act is always SiLU in the reference; act_fn only
// reaches the resnets.)
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const VaeCoderOptions& options);
  torch::Tensor forward(const torch::Tensor& sample);
  void init_weights();

  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<DownEncoderBlock2D> down_blocks;  // "down_blocks.{i}"
  UNetMidBlock2D mid_block{nullptr};
  nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Encoder);

// Ref: diffusers Decoder with norm_type "group": conv_in -> mid_block -> up_blocks (each with
// layers_per_block + 1 resnets) -> conv_norm_out -> SiLU -> conv_out.
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const VaeCoderOptions& options);
  torch::Tensor forward(const torch::Tensor& sample);
  void init_weights();

  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  std::vector<UpDecoderBlock2D> up_blocks;  // "up_blocks.{i}"
  nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Decoder);

}  // namespace amused::models
