#include "models/vae_blocks.h"

#include "amused/error.h"
#include "core/memory.h"
#include "nn/execution.h"

namespace amused::models {
namespace {

// Inference (nn/execution.h): the freshly computed temporaries below are updated in place, which
// keeps one activation less alive at the full-resolution stages of a 512x512 decode. Training
// keeps every op out-of-place so the model remains differentiable.
bool may_work_in_place() { return nn::inference_fast_paths(); }

// Registers `items` as a ModuleList named `name` ("resnets.0", "resnets.1", ...).
template <typename Holder>
void register_list(torch::nn::Module& parent, const std::string& name,
                   const std::vector<Holder>& items) {
  torch::nn::ModuleList list;
  for (const auto& item : items) list->push_back(item);
  parent.register_module(name, list);
}

}  // namespace

void check_activation(const std::string& act_fn, const std::string& source) {
  if (act_fn == "silu" || act_fn == "swish" || act_fn == "mish" || act_fn == "gelu" ||
      act_fn == "relu")
    return;
  throw Unsupported(source + ": act_fn '" + act_fn +
                    "' is not supported; expected one of silu, swish, mish, gelu, relu");
}

// Ref: diffusers/models/activations.py get_activation.
torch::Tensor apply_activation(const std::string& act_fn, const torch::Tensor& x,
                               bool may_overwrite_input) {
  const bool in_place = may_overwrite_input && may_work_in_place();
  if (act_fn == "silu" || act_fn == "swish") {
    if (in_place) {
      auto y = x;
      return torch::silu_(y);
    }
    return torch::silu(x);
  }
  if (act_fn == "mish") return torch::mish(x);
  if (act_fn == "gelu") return torch::gelu(x);
  if (act_fn == "relu") return torch::relu(x);
  throw Unsupported("act_fn '" + act_fn + "' is not supported");
}

torch::Tensor norm_act_conv(nn::GroupNorm& norm, const std::string& act_fn, nn::Conv2d& conv,
                            const torch::Tensor& x) {
  const auto w_dtype = conv->weight.scalar_type();
  const bool low_weight = w_dtype == torch::kBFloat16 || w_dtype == torch::kFloat16;
  const int64_t groups = norm->num_groups;
  const int64_t chunk_groups = groups / 4;
  if (!low_weight || x.scalar_type() == w_dtype || !may_work_in_place() || x.dim() != 4 ||
      !norm->weight.defined() || norm->weight.scalar_type() != x.scalar_type() || chunk_groups < 1) {
    auto h = apply_activation(act_fn, norm(x), /*may_overwrite_input=*/true);
    return conv->forward_owned(std::move(h));
  }
  const int64_t per_group = x.size(1) / groups;
  auto low = torch::empty(x.sizes(), x.options().dtype(w_dtype));
  for (int64_t g0 = 0; g0 < groups; g0 += chunk_groups) {
    const int64_t g = std::min(chunk_groups, groups - g0);
    const int64_t c0 = g0 * per_group, c = g * per_group;
    auto h = torch::group_norm(x.narrow(1, c0, c), g, norm->weight.narrow(0, c0, c),
                               norm->bias.narrow(0, c0, c), norm->eps);
    h = apply_activation(act_fn, h, /*may_overwrite_input=*/true);
    low.narrow(1, c0, c).copy_(h);
  }
  return conv->forward_from_weight_dtype(low, x.scalar_type());
}

// ---------------------------------------------------------------------------------------------
ResnetBlock2DImpl::ResnetBlock2DImpl(int64_t in, int64_t out, int64_t groups, double eps,
                                     std::string act)
    : in_channels(in), out_channels(out), non_linearity(std::move(act)) {
  norm1 = register_module("norm1", nn::GroupNorm(groups, in, eps));
  conv1 = register_module("conv1", nn::Conv2d(in, out, 3, 1, 1));
  norm2 = register_module("norm2", nn::GroupNorm(groups, out, eps));
  conv2 = register_module("conv2", nn::Conv2d(out, out, 3, 1, 1));
  if (in != out) conv_shortcut = register_module("conv_shortcut", nn::Conv2d(in, out, 1, 1, 0));
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& input_tensor) {
  auto hidden_states = norm_act_conv(norm1, non_linearity, conv1, input_tensor);
  // dropout(p=0) is the identity.
  hidden_states = norm_act_conv(norm2, non_linearity, conv2, hidden_states);

  const auto shortcut = conv_shortcut ? conv_shortcut(input_tensor) : input_tensor;
  // (input_tensor + hidden_states) / output_scale_factor, with output_scale_factor = 1.
  if (may_work_in_place()) return hidden_states.add_(shortcut);
  return shortcut + hidden_states;
}

torch::Tensor ResnetBlock2DImpl::forward_owned(torch::Tensor input_tensor) {
  const auto in_dtype = input_tensor.scalar_type();
  const bool low_shortcut = conv_shortcut && may_work_in_place() &&
                            conv_shortcut->weight.scalar_type() != in_dtype &&
                            (conv_shortcut->weight.scalar_type() == torch::kBFloat16 ||
                             conv_shortcut->weight.scalar_type() == torch::kFloat16);
  if (!low_shortcut) return forward(input_tensor);
  auto shortcut_low = conv_shortcut->product_in_weight_dtype(input_tensor.to(conv_shortcut->weight.scalar_type()));
  auto hidden_states = norm_act_conv(norm1, non_linearity, conv1, input_tensor);
  input_tensor = torch::Tensor();  // the caller gave it up: freed here
  hidden_states = norm_act_conv(norm2, non_linearity, conv2, hidden_states);
  return hidden_states.add_(conv_shortcut->finish_product(shortcut_low, in_dtype));
}

void ResnetBlock2DImpl::init_weights() {
  norm1->reset_parameters();
  conv1->reset_parameters();
  norm2->reset_parameters();
  conv2->reset_parameters();
  if (conv_shortcut) conv_shortcut->reset_parameters();
}

// ---------------------------------------------------------------------------------------------
Downsample2DImpl::Downsample2DImpl(int64_t ch, int64_t out, int64_t pad)
    : channels(ch), padding(pad) {
  conv = register_module("conv", nn::Conv2d(ch, out, 3, /*stride=*/2, pad));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& hidden_states) {
  if (padding == 0) {
    // Asymmetric zero pad (left 0, right 1, top 0, bottom 1): [B, C, H, W] -> [B, C, H+1, W+1].
    return conv(torch::constant_pad_nd(hidden_states, {0, 1, 0, 1}, 0.0));
  }
  return conv(hidden_states);
}

void Downsample2DImpl::init_weights() { conv->reset_parameters(); }

// ---------------------------------------------------------------------------------------------
Upsample2DImpl::Upsample2DImpl(int64_t ch, int64_t out) : channels(ch) {
  conv = register_module("conv", nn::Conv2d(ch, out, 3, 1, 1));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& hidden_states) {
  namespace F = torch::nn::functional;
  // F.interpolate(scale_factor=2.0, mode="nearest"): [B, C, H, W] -> [B, C, 2H, 2W].
  auto upsample = [](const torch::Tensor& x) {
    return F::interpolate(x, F::InterpolateFuncOptions()
                                 .scale_factor(std::vector<double>{2.0, 2.0})
                                 .mode(torch::kNearest));
  };
  // Mixed precision: cast before up-sampling (nearest copies values, so this is exact) and the
  // 4x larger tensor exists once, in 16 bits, instead of in float32 and again in 16 bits.
  const auto w_dtype = conv->weight.scalar_type();
  if (hidden_states.scalar_type() != w_dtype && (w_dtype == torch::kBFloat16 || w_dtype == torch::kFloat16))
    return conv->forward_from_weight_dtype(upsample(hidden_states.to(w_dtype)), hidden_states.scalar_type());
  return conv(upsample(hidden_states));
}

void Upsample2DImpl::init_weights() { conv->reset_parameters(); }

// ---------------------------------------------------------------------------------------------
DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(int64_t in_channels, int64_t out_channels,
                                               int64_t num_layers, double resnet_eps,
                                               const std::string& resnet_act_fn,
                                               int64_t resnet_groups, bool add_downsample,
                                               int64_t downsample_padding) {
  for (int64_t i = 0; i < num_layers; ++i) {
    resnets.push_back(ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels,
                                    resnet_groups, resnet_eps, resnet_act_fn));
  }
  register_list(*this, "resnets", resnets);
  if (add_downsample) {
    downsamplers.push_back(Downsample2D(out_channels, out_channels, downsample_padding));
    register_list(*this, "downsamplers", downsamplers);
  }
}

torch::Tensor DownEncoderBlock2DImpl::forward(const torch::Tensor& input) {
  auto hidden_states = input;
  for (auto& resnet : resnets) hidden_states = resnet(hidden_states);
  for (auto& downsampler : downsamplers) hidden_states = downsampler(hidden_states);
  return hidden_states;
}

void DownEncoderBlock2DImpl::init_weights() {
  for (auto& r : resnets) r->init_weights();
  for (auto& d : downsamplers) d->init_weights();
}

// ---------------------------------------------------------------------------------------------
UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels,
                                           int64_t num_layers, double resnet_eps,
                                           const std::string& resnet_act_fn, int64_t resnet_groups,
                                           bool add_upsample) {
  for (int64_t i = 0; i < num_layers; ++i) {
    resnets.push_back(ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels,
                                    resnet_groups, resnet_eps, resnet_act_fn));
  }
  register_list(*this, "resnets", resnets);
  if (add_upsample) {
    upsamplers.push_back(Upsample2D(out_channels, out_channels));
    register_list(*this, "upsamplers", upsamplers);
  }
}

torch::Tensor UpDecoderBlock2DImpl::forward(torch::Tensor hidden_states) {
  for (auto& resnet : resnets) hidden_states = resnet->forward_owned(std::move(hidden_states));
  for (auto& upsampler : upsamplers) hidden_states = upsampler(hidden_states);
  return hidden_states;
}

void UpDecoderBlock2DImpl::init_weights() {
  for (auto& r : resnets) r->init_weights();
  for (auto& u : upsamplers) u->init_weights();
}

// ---------------------------------------------------------------------------------------------
UNetMidBlock2DImpl::UNetMidBlock2DImpl(int64_t in_channels, double resnet_eps,
                                       const std::string& resnet_act_fn, int64_t resnet_groups,
                                       int64_t num_layers) {
  // There is always one resnet, plus one per layer (each after an attention, absent here).
  for (int64_t i = 0; i < num_layers + 1; ++i) {
    resnets.push_back(
        ResnetBlock2D(in_channels, in_channels, resnet_groups, resnet_eps, resnet_act_fn));
  }
  register_list(*this, "resnets", resnets);
}

torch::Tensor UNetMidBlock2DImpl::forward(const torch::Tensor& input) {
  auto hidden_states = input;
  for (auto& resnet : resnets) hidden_states = resnet(hidden_states);
  return hidden_states;
}

void UNetMidBlock2DImpl::init_weights() {
  for (auto& r : resnets) r->init_weights();
}

// ---------------------------------------------------------------------------------------------
namespace {
// diffusers' get_down_block / get_up_block strip a leading "UNetRes".
std::string block_type_name(const std::string& t) {
  return t.rfind("UNetRes", 0) == 0 ? t.substr(7) : t;
}
}  // namespace

void check_coder_options(const VaeCoderOptions& o, const char* types_key, const char* expected) {
  if (o.mid_block_add_attention)
    throw Unsupported(o.source +
                      ": mid_block_add_attention = true is not supported (the mid-block attention "
                      "of diffusers' VAE is not implemented); aMUSEd's VQ uses false");
  for (const auto& t : o.block_types) {
    if (block_type_name(t) != expected)
      throw Unsupported(o.source + ": " + types_key + " contains '" + t + "', expected only '" +
                        expected + "' (the block type aMUSEd's VQModel uses)");
  }
  check_activation(o.act_fn, o.source);
}

EncoderImpl::EncoderImpl(const VaeCoderOptions& o) {
  check_coder_options(o, "down_block_types", "DownEncoderBlock2D");
  const auto& ch = o.block_out_channels;
  conv_in = register_module("conv_in", nn::Conv2d(o.in_channels, ch[0], 3, 1, 1));

  int64_t output_channel = ch[0];
  for (size_t i = 0; i < o.block_types.size(); ++i) {
    const int64_t input_channel = output_channel;
    output_channel = ch[i];
    const bool is_final_block = i == ch.size() - 1;
    down_blocks.push_back(DownEncoderBlock2D(input_channel, output_channel, o.layers_per_block,
                                             /*resnet_eps=*/1e-6, o.act_fn, o.norm_num_groups,
                                             /*add_downsample=*/!is_final_block,
                                             /*downsample_padding=*/0));
  }
  register_list(*this, "down_blocks", down_blocks);

  mid_block = register_module(
      "mid_block", UNetMidBlock2D(ch.back(), /*resnet_eps=*/1e-6, o.act_fn, o.norm_num_groups));
  conv_norm_out =
      register_module("conv_norm_out", nn::GroupNorm(o.norm_num_groups, ch.back(), 1e-6));
  // double_z = False: conv_out has out_channels (= latent_channels) outputs.
  conv_out = register_module("conv_out", nn::Conv2d(ch.back(), o.out_channels, 3, 1, 1));
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& input) {
  auto sample = conv_in(input);
  for (auto& down_block : down_blocks) sample = down_block(sample);
  sample = mid_block(sample);
  // norm_type "group": conv_norm_out is a plain GroupNorm; conv_act = nn.SiLU().
  return norm_act_conv(conv_norm_out, "silu", conv_out, sample);
}

void EncoderImpl::init_weights() {
  conv_in->reset_parameters();
  for (auto& b : down_blocks) b->init_weights();
  mid_block->init_weights();
  conv_norm_out->reset_parameters();
  conv_out->reset_parameters();
}

// ---------------------------------------------------------------------------------------------
DecoderImpl::DecoderImpl(const VaeCoderOptions& o) {
  check_coder_options(o, "up_block_types", "UpDecoderBlock2D");
  const auto& ch = o.block_out_channels;
  conv_in = register_module("conv_in", nn::Conv2d(o.in_channels, ch.back(), 3, 1, 1));
  mid_block = register_module(
      "mid_block", UNetMidBlock2D(ch.back(), /*resnet_eps=*/1e-6, o.act_fn, o.norm_num_groups));

  const std::vector<int64_t> reversed_block_out_channels(ch.rbegin(), ch.rend());
  int64_t output_channel = reversed_block_out_channels[0];
  for (size_t i = 0; i < o.block_types.size(); ++i) {
    const int64_t prev_output_channel = output_channel;
    output_channel = reversed_block_out_channels[i];
    const bool is_final_block = i == ch.size() - 1;
    up_blocks.push_back(UpDecoderBlock2D(prev_output_channel, output_channel,
                                         o.layers_per_block + 1, /*resnet_eps=*/1e-6, o.act_fn,
                                         o.norm_num_groups, /*add_upsample=*/!is_final_block));
  }
  register_list(*this, "up_blocks", up_blocks);

  conv_norm_out = register_module("conv_norm_out", nn::GroupNorm(o.norm_num_groups, ch[0], 1e-6));
  conv_out = register_module("conv_out", nn::Conv2d(ch[0], o.out_channels, 3, 1, 1));
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& input) {
  auto sample = conv_in(input);
  sample = mid_block(sample);
  for (auto& up_block : up_blocks) {
    sample = up_block(std::move(sample));
    // Inference: each up block's activations are 4x larger than the last's and rarely fit the
    // holes freed before; handing the freed pages back keeps them from piling up (-80 MiB peak
    // at 256x256, a few ms). Training keeps its activations for backward anyway.
    if (nn::inference_fast_paths()) release_free_memory();
  }
  // norm_type "group": latent_embeds is None, so conv_norm_out is a plain GroupNorm; conv_act = nn.SiLU().
  return norm_act_conv(conv_norm_out, "silu", conv_out, sample);
}

void DecoderImpl::init_weights() {
  conv_in->reset_parameters();
  mid_block->init_weights();
  for (auto& b : up_blocks) b->init_weights();
  conv_norm_out->reset_parameters();
  conv_out->reset_parameters();
}

}  // namespace amused::models
