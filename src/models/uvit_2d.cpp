#include "models/uvit_2d.h"

#include "nn/checkpoint.h"

#include "nn/cond_cache.h"

#include <cmath>

#include "amused/error.h"
#include "core/config.h"
#include "io/safetensors.h"
#include "io/state_dict.h"

namespace amused::models {

// ---------------------------------------------------------------- config

UVit2DConfig UVit2DConfig::from_json(const nlohmann::json& j, const std::string& source) {
  UVit2DConfig c;
  ConfigReader r(j, source, "UVit2DModel");
  r.field("hidden_size", c.hidden_size);
  r.field("use_bias", c.use_bias);
  r.field("hidden_dropout", c.hidden_dropout);
  r.field("cond_embed_dim", c.cond_embed_dim);
  r.field("micro_cond_encode_dim", c.micro_cond_encode_dim);
  r.field("micro_cond_embed_dim", c.micro_cond_embed_dim);
  r.field("encoder_hidden_size", c.encoder_hidden_size);
  r.field("vocab_size", c.vocab_size);
  r.field("codebook_size", c.codebook_size);
  r.field("in_channels", c.in_channels);
  r.field("block_out_channels", c.block_out_channels);
  r.field("num_res_blocks", c.num_res_blocks);
  r.field("downsample", c.downsample);
  r.field("upsample", c.upsample);
  r.field("block_num_heads", c.block_num_heads);
  r.field("num_hidden_layers", c.num_hidden_layers);
  r.field("num_attention_heads", c.num_attention_heads);
  r.field("attention_dropout", c.attention_dropout);
  r.field("intermediate_size", c.intermediate_size);
  r.field("layer_norm_eps", c.layer_norm_eps);
  r.field("ln_elementwise_affine", c.ln_elementwise_affine);
  r.field("sample_size", c.sample_size);
  r.finish();
  c.validate(source);
  return c;
}

nlohmann::json UVit2DConfig::to_json() const {
  return nlohmann::json{{"_class_name", "UVit2DModel"},
                        {"hidden_size", hidden_size},
                        {"use_bias", use_bias},
                        {"hidden_dropout", hidden_dropout},
                        {"cond_embed_dim", cond_embed_dim},
                        {"micro_cond_encode_dim", micro_cond_encode_dim},
                        {"micro_cond_embed_dim", micro_cond_embed_dim},
                        {"encoder_hidden_size", encoder_hidden_size},
                        {"vocab_size", vocab_size},
                        {"codebook_size", codebook_size},
                        {"in_channels", in_channels},
                        {"block_out_channels", block_out_channels},
                        {"num_res_blocks", num_res_blocks},
                        {"downsample", downsample},
                        {"upsample", upsample},
                        {"block_num_heads", block_num_heads},
                        {"num_hidden_layers", num_hidden_layers},
                        {"num_attention_heads", num_attention_heads},
                        {"attention_dropout", attention_dropout},
                        {"intermediate_size", intermediate_size},
                        {"layer_norm_eps", layer_norm_eps},
                        {"ln_elementwise_affine", ln_elementwise_affine},
                        {"sample_size", sample_size}};
}

void UVit2DConfig::validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v) { config_check_size(v, source, key); };
  positive("hidden_size", hidden_size);
  positive("cond_embed_dim", cond_embed_dim);
  positive("micro_cond_encode_dim", micro_cond_encode_dim);
  positive("micro_cond_embed_dim", micro_cond_embed_dim);
  positive("encoder_hidden_size", encoder_hidden_size);
  positive("vocab_size", vocab_size);
  positive("codebook_size", codebook_size);
  positive("in_channels", in_channels);
  positive("block_out_channels", block_out_channels);
  positive("num_res_blocks", num_res_blocks);
  positive("block_num_heads", block_num_heads);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("intermediate_size", intermediate_size);
  config_check(hidden_size % num_attention_heads == 0, source, "num_attention_heads",
               "hidden_size " + std::to_string(hidden_size) + " must be divisible by it, got " +
                   std::to_string(num_attention_heads));
  config_check(block_out_channels % block_num_heads == 0, source, "block_num_heads",
               "block_out_channels " + std::to_string(block_out_channels) +
                   " must be divisible by it, got " + std::to_string(block_num_heads));
  config_check(micro_cond_embed_dim % micro_cond_encode_dim == 0, source, "micro_cond_embed_dim",
               "expected a multiple of micro_cond_encode_dim (" +
                   std::to_string(micro_cond_encode_dim) + " per micro-conditioning value), got " +
                   std::to_string(micro_cond_embed_dim));
  config_check(layer_norm_eps > 0, source, "layer_norm_eps", "expected > 0");
  config_check(hidden_dropout >= 0 && hidden_dropout < 1, source, "hidden_dropout",
               "expected a probability in [0, 1)");
  config_check(attention_dropout >= 0 && attention_dropout < 1, source, "attention_dropout",
               "expected a probability in [0, 1)");
  config_check_model_fits(min_parameters(), source, "UVit2DModel");
}

ModelSizeBound UVit2DConfig::min_parameters() const {
  const double D = static_cast<double>(hidden_size), C = static_cast<double>(block_out_channels);
  const double I = static_cast<double>(in_channels), F = static_cast<double>(intermediate_size);
  ModelSizeBound b;
  b.add(D * static_cast<double>(encoder_hidden_size), "hidden_size x encoder_hidden_size");
  b.add(static_cast<double>(vocab_size) * I, "vocab_size x in_channels");
  b.add(I * C, "in_channels x block_out_channels");
  b.add(D * static_cast<double>(cond_embed_dim + micro_cond_embed_dim) + D * D,
        "hidden_size x cond_embed_dim, micro_cond_embed_dim");
  // Down and up blocks: per res block the 4x channel MLP (8 C^2) and its condition mapper (2 C D);
  // per attention block two attentions (8 C^2) (and a key/value mapper when C != D, not counted).
  b.add(2 * static_cast<double>(num_res_blocks) * (16 * C * C + 2 * C * D),
        "num_res_blocks x block_out_channels, hidden_size");
  b.add(2 * C * D, "block_out_channels x hidden_size");
  // Per transformer layer: three adaLN mappers (6 D^2), two attentions (8 D^2), the GEGLU (3 F D).
  b.add(static_cast<double>(num_hidden_layers) * (14 * D * D + 3 * F * D),
        "num_hidden_layers x hidden_size, intermediate_size");
  b.add(C * I + static_cast<double>(codebook_size) * I, "codebook_size x in_channels");
  return b;
}

// ---------------------------------------------------------------- blocks

namespace uvit {

UVit2DConvEmbedImpl::UVit2DConvEmbedImpl(int64_t in_channels, int64_t block_out_channels,
                                         int64_t vocab_size, bool elementwise_affine, double eps,
                                         bool bias) {
  embeddings = register_module("embeddings", nn::Embedding(vocab_size, in_channels));
  layer_norm = register_module("layer_norm", nn::RMSNorm(in_channels, eps, elementwise_affine));
  conv = register_module("conv", nn::Conv2d(in_channels, block_out_channels, 1, 1, 0, 1, bias));
}

torch::Tensor UVit2DConvEmbedImpl::forward(const torch::Tensor& input_ids) {
  auto embeddings_ = embeddings(input_ids);  // [B, h, w, C_in]
  embeddings_ = layer_norm(embeddings_);
  embeddings_ = embeddings_.permute({0, 3, 1, 2});  // [B, h, w, C_in] -> [B, C_in, h, w]
  return conv(embeddings_);
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t kernel_size, double eps,
                                   bool elementwise_affine, bool bias) {
  norm = register_module("norm", nn::RMSNorm(channels, eps, elementwise_affine));
  conv = register_module("conv", nn::Conv2d(channels, channels, kernel_size, 2, 0, 1, bias));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& hidden_states_in) {
  // [B, C, H, W] -> [B, H, W, C] -> RMSNorm over C -> [B, C, H, W]
  auto hidden_states = norm(hidden_states_in.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
  // diffusers pads right and bottom by one pixel whenever the conv has padding 0.
  hidden_states = torch::constant_pad_nd(hidden_states, {0, 1, 0, 1}, 0);
  return conv(hidden_states);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t kernel_size, double eps,
                               bool elementwise_affine, bool bias) {
  norm = register_module("norm", nn::RMSNorm(channels, eps, elementwise_affine));
  conv = register_module("conv", nn::ConvTranspose2d(channels, channels, kernel_size, 2, 0, bias));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& hidden_states_in) {
  // [B, C, H, W] -> [B, H, W, C] -> RMSNorm over C -> [B, C, H, W]
  auto hidden_states = norm(hidden_states_in.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
  const auto dtype = hidden_states.scalar_type();
  if (hidden_states.device().is_cpu() && (dtype == torch::kBFloat16 || dtype == torch::kHalf)) {
    // LibTorch 1.13's CPU transposed convolution has no float16 kernel and its oneDNN bfloat16
    // path returns a wrongly shaped result, so 16-bit CPU runs compute this layer in float32
    // (at least as accurate: the products are accumulated in float32 either way).
    const auto& w = conv->weight;
    const auto& b = conv->bias;
    return torch::conv_transpose2d(hidden_states.to(torch::kFloat32), w.to(torch::kFloat32),
                                   b.defined() ? b.to(torch::kFloat32) : b,
                                   {conv->stride, conv->stride}, {conv->padding, conv->padding})
        .to(dtype);
  }
  return conv(hidden_states);
}

ConvNextBlockImpl::ConvNextBlockImpl(int64_t channels, double layer_norm_eps,
                                     bool ln_elementwise_affine, bool use_bias,
                                     double hidden_dropout, int64_t hidden_size,
                                     int64_t res_ffn_factor) {
  const int64_t inner = channels * res_ffn_factor;
  depthwise = register_module(
      "depthwise", nn::Conv2d(channels, channels, 3, 1, 1, /*groups=*/channels, use_bias));
  norm = register_module("norm", nn::RMSNorm(channels, layer_norm_eps, ln_elementwise_affine));
  channelwise_linear_1 =
      register_module("channelwise_linear_1", nn::Linear(channels, inner, use_bias));
  channelwise_norm = register_module("channelwise_norm", nn::GlobalResponseNorm(inner));
  channelwise_linear_2 =
      register_module("channelwise_linear_2", nn::Linear(inner, channels, use_bias));
  channelwise_dropout = register_module("channelwise_dropout", torch::nn::Dropout(hidden_dropout));
  cond_embeds_mapper =
      register_module("cond_embeds_mapper", nn::Linear(hidden_size, channels * 2, use_bias));
}

torch::Tensor ConvNextBlockImpl::forward(const torch::Tensor& x_in,
                                         const torch::Tensor& cond_embeds) {
  const auto& x_res = x_in;

  auto x = depthwise(x_in);

  x = x.permute({0, 2, 3, 1});  // [B, C, H, W] -> [B, H, W, C]
  x = norm(x);

  x = channelwise_linear_1(x);
  x = torch::gelu(x);
  x = channelwise_norm(x);
  x = channelwise_linear_2(x);
  x = channelwise_dropout(x);

  x = x.permute({0, 3, 1, 2});  // [B, H, W, C] -> [B, C, H, W]

  x = x + x_res;

  // Modulation after the residual add, as in the reference. [B, 2C] -> 2 x [B, C]
  auto modulation = nn::memo(cond_embeds_mapper.get(), {cond_embeds},
                             [&] { return cond_embeds_mapper(torch::silu(cond_embeds)); });
  auto chunks = modulation.chunk(2, /*dim=*/1);
  // [B, C] -> [B, C, 1, 1]
  const auto scale = chunks[0].unsqueeze(-1).unsqueeze(-1);
  const auto shift = chunks[1].unsqueeze(-1).unsqueeze(-1);
  x = x * (1 + scale) + shift;
  return x;
}

UVitBlockImpl::UVitBlockImpl(int64_t channels, int64_t num_res_blocks, int64_t hidden_size,
                             double hidden_dropout, bool ln_elementwise_affine,
                             double layer_norm_eps, bool use_bias, int64_t block_num_heads,
                             double attention_dropout, bool downsample_, bool upsample_) {
  if (downsample_) {
    downsample = register_module(
        "downsample", Downsample2D(channels, 2, layer_norm_eps, ln_elementwise_affine, use_bias));
  }
  res_blocks = register_module("res_blocks", torch::nn::ModuleList());
  attention_blocks = register_module("attention_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_res_blocks; ++i) {
    res_blocks->push_back(ConvNextBlock(channels, layer_norm_eps, ln_elementwise_affine, use_bias,
                                        hidden_dropout, hidden_size));
    attention_blocks->push_back(nn::SkipFFTransformerBlock(
        channels, block_num_heads, channels / block_num_heads, /*kv_input_dim=*/hidden_size,
        /*kv_input_dim_proj_use_bias=*/use_bias, attention_dropout,
        /*cross_attention_dim=*/channels, /*attention_bias=*/use_bias,
        /*attention_out_bias=*/use_bias));
  }
  if (upsample_) {
    upsample = register_module(
        "upsample", Upsample2D(channels, 2, layer_norm_eps, ln_elementwise_affine, use_bias));
  }
}

torch::Tensor UVitBlockImpl::forward(const torch::Tensor& x_in,
                                     const torch::Tensor& pooled_text_emb,
                                     const torch::Tensor& encoder_hidden_states) {
  auto x = x_in;
  if (downsample) x = downsample(x);

  for (size_t i = 0; i < res_blocks->size(); ++i) {
    x = res_blocks->at<ConvNextBlockImpl>(i).forward(x, pooled_text_emb);

    const int64_t batch_size = x.size(0), channels = x.size(1), height = x.size(2),
                  width = x.size(3);
    // [B, C, H, W] -> [B, C, H*W] -> [B, H*W, C]
    x = x.reshape({batch_size, channels, height * width}).permute({0, 2, 1});
    x = attention_blocks->at<nn::SkipFFTransformerBlockImpl>(i).forward(x, encoder_hidden_states);
    // [B, H*W, C] -> [B, C, H*W] -> [B, C, H, W]
    x = x.permute({0, 2, 1}).reshape({batch_size, channels, height, width});
  }

  if (upsample) x = upsample(x);
  return x;
}

ConvMlmLayerImpl::ConvMlmLayerImpl(int64_t block_out_channels, int64_t in_channels, bool use_bias,
                                   bool ln_elementwise_affine, double layer_norm_eps,
                                   int64_t codebook_size) {
  conv1 =
      register_module("conv1", nn::Conv2d(block_out_channels, in_channels, 1, 1, 0, 1, use_bias));
  layer_norm = register_module("layer_norm",
                               nn::RMSNorm(in_channels, layer_norm_eps, ln_elementwise_affine));
  conv2 = register_module("conv2", nn::Conv2d(in_channels, codebook_size, 1, 1, 0, 1, use_bias));
}

torch::Tensor ConvMlmLayerImpl::forward(const torch::Tensor& hidden_states_in) {
  auto hidden_states = conv1(hidden_states_in);
  // [B, C, h, w] -> [B, h, w, C] -> RMSNorm over C -> [B, C, h, w]
  hidden_states = layer_norm(hidden_states.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
  return conv2(hidden_states);
}

}  // namespace uvit

// ---------------------------------------------------------------- model

UVit2DModelImpl::UVit2DModelImpl(const UVit2DConfig& c) : config_(c) {
  config_.validate("UVit2DConfig");
  encoder_proj =
      register_module("encoder_proj", nn::Linear(c.encoder_hidden_size, c.hidden_size, c.use_bias));
  encoder_proj_layer_norm =
      register_module("encoder_proj_layer_norm",
                      nn::RMSNorm(c.hidden_size, c.layer_norm_eps, c.ln_elementwise_affine));
  embed = register_module(
      "embed", uvit::UVit2DConvEmbed(c.in_channels, c.block_out_channels, c.vocab_size,
                                     c.ln_elementwise_affine, c.layer_norm_eps, c.use_bias));
  cond_embed = register_module(
      "cond_embed",
      nn::TimestepEmbedding(c.micro_cond_embed_dim + c.cond_embed_dim, c.hidden_size, c.use_bias));
  down_block = register_module(
      "down_block",
      uvit::UVitBlock(c.block_out_channels, c.num_res_blocks, c.hidden_size, c.hidden_dropout,
                      c.ln_elementwise_affine, c.layer_norm_eps, c.use_bias, c.block_num_heads,
                      c.attention_dropout, c.downsample, /*upsample=*/false));
  project_to_hidden_norm =
      register_module("project_to_hidden_norm",
                      nn::RMSNorm(c.block_out_channels, c.layer_norm_eps, c.ln_elementwise_affine));
  project_to_hidden = register_module("project_to_hidden",
                                      nn::Linear(c.block_out_channels, c.hidden_size, c.use_bias));

  nn::BasicTransformerBlockOptions o;
  o.dim = c.hidden_size;
  o.num_attention_heads = c.num_attention_heads;
  o.attention_head_dim = c.hidden_size / c.num_attention_heads;
  o.dropout = c.hidden_dropout;
  o.cross_attention_dim = c.hidden_size;
  o.attention_bias = c.use_bias;
  o.ada_norm_continous_conditioning_embedding_dim = c.hidden_size;
  o.norm_elementwise_affine = c.ln_elementwise_affine;
  o.norm_eps = c.layer_norm_eps;
  o.ada_norm_bias = c.use_bias;
  o.ff_inner_dim = c.intermediate_size;
  o.ff_bias = c.use_bias;
  o.attention_out_bias = c.use_bias;
  transformer_layers = register_module("transformer_layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    transformer_layers->push_back(nn::BasicTransformerBlock(o));
  }

  project_from_hidden_norm =
      register_module("project_from_hidden_norm",
                      nn::RMSNorm(c.hidden_size, c.layer_norm_eps, c.ln_elementwise_affine));
  project_from_hidden = register_module(
      "project_from_hidden", nn::Linear(c.hidden_size, c.block_out_channels, c.use_bias));
  up_block = register_module(
      "up_block", uvit::UVitBlock(c.block_out_channels, c.num_res_blocks, c.hidden_size,
                                  c.hidden_dropout, c.ln_elementwise_affine, c.layer_norm_eps,
                                  c.use_bias, c.block_num_heads, c.attention_dropout,
                                  /*downsample=*/false, c.upsample));
  mlm_layer = register_module(
      "mlm_layer", uvit::ConvMlmLayer(c.block_out_channels, c.in_channels, c.use_bias,
                                      c.ln_elementwise_affine, c.layer_norm_eps, c.codebook_size));
}

// The activations' dtype: the norms' weights keep it (with mixed precision the matrix weights are
// 16-bit while the activations stay float32).
torch::Dtype UVit2DModelImpl::dtype() const { return encoder_proj_layer_norm->weight.scalar_type(); }

namespace {
std::string shape_str(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}
}  // namespace

torch::Tensor UVit2DModelImpl::forward(const torch::Tensor& input_ids,
                                       const torch::Tensor& encoder_hidden_states_in,
                                       const torch::Tensor& pooled_text_emb_in,
                                       const torch::Tensor& micro_conds,
                                       std::map<std::string, torch::Tensor>* debug) {
  const auto& c = config_;
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw InvalidArgument("UVit2DModel.forward: " + what);
  };
  require(input_ids.dim() == 3 && !input_ids.is_floating_point(),
          "input_ids: expected an integer tensor [B, h, w], got " + shape_str(input_ids));
  const int64_t batch = input_ids.size(0);
  require(encoder_hidden_states_in.dim() == 3 && encoder_hidden_states_in.size(0) == batch &&
              encoder_hidden_states_in.size(2) == c.encoder_hidden_size,
          "encoder_hidden_states: expected [" + std::to_string(batch) + ", L, " +
              std::to_string(c.encoder_hidden_size) + "], got " +
              shape_str(encoder_hidden_states_in));
  require(pooled_text_emb_in.dim() == 2 && pooled_text_emb_in.size(0) == batch &&
              pooled_text_emb_in.size(1) == c.cond_embed_dim,
          "pooled_text_emb: expected [" + std::to_string(batch) + ", " +
              std::to_string(c.cond_embed_dim) + "], got " + shape_str(pooled_text_emb_in));
  const int64_t num_micro = c.micro_cond_embed_dim / c.micro_cond_encode_dim;
  require(
      micro_conds.dim() == 2 && micro_conds.size(0) == batch && micro_conds.size(1) == num_micro,
      "micro_conds: expected [" + std::to_string(batch) + ", " + std::to_string(num_micro) +
          "], got " + shape_str(micro_conds));
  auto record = [debug](const std::string& name, const torch::Tensor& t) {
    if (debug) (*debug)[name] = t;
  };

  // Text projection and conditioning vector: the same at every denoising step (nn::memo).
  auto encoder_hidden_states = nn::memo(encoder_proj.get(), {encoder_hidden_states_in}, [&] {
    return encoder_proj_layer_norm(encoder_proj(encoder_hidden_states_in));
  });
  record("encoder_proj_layer_norm", encoder_hidden_states);

  // [B, 5] -> [B*5] -> [B*5, encode_dim] (cos first) -> [B, 5*encode_dim]
  auto micro_cond_embeds =
      nn::get_timestep_embedding(micro_conds.flatten(), c.micro_cond_encode_dim,
                                 /*flip_sin_to_cos=*/true,
                                 /*downscale_freq_shift=*/0);
  micro_cond_embeds = micro_cond_embeds.reshape({batch, -1});

  auto cond_embed_input = torch::cat({pooled_text_emb_in, micro_cond_embeds}, /*dim=*/1);
  cond_embed_input = cond_embed_input.to(dtype());
  record("cond_embed_input", cond_embed_input);
  auto cond = nn::memo(cond_embed.get(), {pooled_text_emb_in, micro_conds},
                       [&] { return cond_embed(cond_embed_input); });
  record("cond_embed", cond);
  // Keyed on the model's config (any address unique to this model works): the cast of the
  // conditioning vector to the text states' dtype, so its consumers see one tensor every step.
  auto pooled_text_emb = nn::memo(&config_, {cond},
                                  [&] { return cond.to(encoder_hidden_states.scalar_type()); });

  auto hidden_states = embed(input_ids);
  record("embed", hidden_states);

  hidden_states = down_block(hidden_states, pooled_text_emb, encoder_hidden_states);
  record("down_block", hidden_states);

  const int64_t batch_size = hidden_states.size(0), channels = hidden_states.size(1),
                height = hidden_states.size(2), width = hidden_states.size(3);
  // [B, C, H, W] -> [B, H, W, C] -> [B, H*W, C]
  hidden_states =
      hidden_states.permute({0, 2, 3, 1}).reshape({batch_size, height * width, channels});

  hidden_states = project_to_hidden_norm(hidden_states);
  hidden_states = project_to_hidden(hidden_states);
  record("project_to_hidden", hidden_states);

  for (size_t i = 0; i < transformer_layers->size(); ++i) {
    auto& layer = transformer_layers->at<nn::BasicTransformerBlockImpl>(i);
    if (gradient_checkpointing && torch::GradMode::is_enabled()) {
      // As diffusers' UVit2DModel: each transformer layer is recomputed in backward.
      hidden_states = nn::checkpoint(
          [&layer](const std::vector<torch::Tensor>& x) { return layer.forward(x[0], x[1], x[2]); },
          {hidden_states, encoder_hidden_states, pooled_text_emb});
    } else {
      hidden_states = layer.forward(hidden_states, encoder_hidden_states, pooled_text_emb);
    }
    record("transformer_layers." + std::to_string(i), hidden_states);
  }

  hidden_states = project_from_hidden_norm(hidden_states);
  hidden_states = project_from_hidden(hidden_states);
  record("project_from_hidden", hidden_states);

  // [B, H*W, C] -> [B, H, W, C] -> [B, C, H, W]
  hidden_states =
      hidden_states.reshape({batch_size, height, width, channels}).permute({0, 3, 1, 2});

  hidden_states = up_block(hidden_states, pooled_text_emb, encoder_hidden_states);
  record("up_block", hidden_states);

  auto logits = mlm_layer(hidden_states);
  return logits;
}

// ---------------------------------------------------------------- init

namespace {
// open-muse uses nn.init.trunc_normal_(std=0.02) with PyTorch's default bounds (-2, 2), i.e. +-100
// standard deviations: a plain normal draw clipped to those bounds is the same distribution.
void trunc_normal_(torch::Tensor& t, double std) {
  t.normal_(0.0, std);
  t.clamp_(-2.0, 2.0);
}
void zero_if_defined(torch::Tensor& t) {
  if (t.defined()) t.zero_();
}
}  // namespace

void UVit2DModelImpl::init_weights() {
  torch::NoGradGuard no_grad;
  constexpr double kStd = 0.02;
  for (const auto& m : modules(/*include_self=*/false)) {
    if (auto* l = m->as<nn::Linear>()) {
      trunc_normal_(l->weight, kStd);
      zero_if_defined(l->bias);
    } else if (auto* cv = m->as<nn::Conv2d>()) {
      trunc_normal_(cv->weight, kStd);
      zero_if_defined(cv->bias);
    } else if (auto* ct = m->as<nn::ConvTranspose2d>()) {
      trunc_normal_(ct->weight, kStd);
      zero_if_defined(ct->bias);
    } else if (auto* e = m->as<nn::Embedding>()) {
      e->weight.normal_(0.0, kStd);
    } else if (auto* rn = m->as<nn::RMSNorm>()) {
      rn->reset_parameters();
    } else if (auto* ln = m->as<nn::LayerNorm>()) {
      ln->reset_parameters();
    } else if (auto* grn = m->as<nn::GlobalResponseNorm>()) {
      grn->reset_parameters();
    }
  }
  // Zero adaptive-modulation mappers: every block starts as an unconditioned one.
  for (auto* block : {down_block.get(), up_block.get()}) {
    for (size_t i = 0; i < block->res_blocks->size(); ++i) {
      auto& rb = block->res_blocks->at<uvit::ConvNextBlockImpl>(i);
      rb.cond_embeds_mapper->weight.zero_();
      zero_if_defined(rb.cond_embeds_mapper->bias);
    }
  }
  for (size_t i = 0; i < transformer_layers->size(); ++i) {
    auto& layer = transformer_layers->at<nn::BasicTransformerBlockImpl>(i);
    for (auto* norm : {&layer.norm1, &layer.norm2, &layer.norm3}) {
      if (!*norm) continue;  // norm2 is absent without cross-attention
      (*norm)->linear->weight.zero_();
      zero_if_defined((*norm)->linear->bias);
    }
  }
  auto& embedding = embed->embeddings->weight;
  embedding.normal_(0.0, std::sqrt(1.0 / static_cast<double>(config_.vocab_size)));
  mlm_layer->conv1->weight.zero_();
  // Tied initialisation (not tied weights): output codes start as the input embeddings' rows.
  if (config_.vocab_size >= config_.codebook_size) {
    // [vocab, C] -> [codebook, C, 1, 1]
    mlm_layer->conv2->weight.copy_(
        embedding.slice(0, 0, config_.codebook_size).unsqueeze(-1).unsqueeze(-1));
  }
}

}  // namespace amused::models
