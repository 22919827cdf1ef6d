#include "models/vq_model.h"

#include <sstream>

#include "amused/error.h"
#include "core/config.h"
#include "io/safetensors.h"
#include "io/state_dict.h"

namespace amused::models {
using nlohmann::json;

namespace {
std::string shape_string(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}
}  // namespace

// ---------------------------------------------------------------------------------------------
VQModelConfig VQModelConfig::from_json(const json& j, const std::string& source) {
  VQModelConfig c;
  ConfigReader r(j, source, "VQModel");
  r.field("in_channels", c.in_channels);
  r.field("out_channels", c.out_channels);
  r.field("down_block_types", c.down_block_types);
  r.field("up_block_types", c.up_block_types);
  r.field("block_out_channels", c.block_out_channels);
  r.field("layers_per_block", c.layers_per_block);
  r.field("act_fn", c.act_fn);
  r.field("latent_channels", c.latent_channels);
  r.field("sample_size", c.sample_size);
  r.field("num_vq_embeddings", c.num_vq_embeddings);
  r.field("norm_num_groups", c.norm_num_groups);
  r.field("vq_embed_dim", c.vq_embed_dim);
  r.field("scaling_factor", c.scaling_factor);
  r.field("norm_type", c.norm_type);
  r.field("mid_block_add_attention", c.mid_block_add_attention);
  r.field("lookup_from_codebook", c.lookup_from_codebook);
  r.field("force_upcast", c.force_upcast);
  r.finish();
  c.validate(source);
  return c;
}

json VQModelConfig::to_json() const {
  json j;
  j["_class_name"] = "VQModel";
  j["in_channels"] = in_channels;
  j["out_channels"] = out_channels;
  j["down_block_types"] = down_block_types;
  j["up_block_types"] = up_block_types;
  j["block_out_channels"] = block_out_channels;
  j["layers_per_block"] = layers_per_block;
  j["act_fn"] = act_fn;
  j["latent_channels"] = latent_channels;
  j["sample_size"] = sample_size;
  j["num_vq_embeddings"] = num_vq_embeddings;
  j["norm_num_groups"] = norm_num_groups;
  j["vq_embed_dim"] = vq_embed_dim ? json(*vq_embed_dim) : json(nullptr);
  j["scaling_factor"] = scaling_factor;
  j["norm_type"] = norm_type;
  j["mid_block_add_attention"] = mid_block_add_attention;
  j["lookup_from_codebook"] = lookup_from_codebook;
  j["force_upcast"] = force_upcast;
  return j;
}

void VQModelConfig::validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v) { config_check_size(v, source, key); };
  positive("in_channels", in_channels);
  positive("out_channels", out_channels);
  positive("layers_per_block", layers_per_block);
  positive("latent_channels", latent_channels);
  positive("num_vq_embeddings", num_vq_embeddings);
  positive("norm_num_groups", norm_num_groups);
  if (vq_embed_dim) positive("vq_embed_dim", *vq_embed_dim);
  const auto n = block_out_channels.size();
  config_check(n >= 1 && n <= 16, source, "block_out_channels",
               "expected 1 to 16 entries, got " + std::to_string(n));
  for (const auto ch : block_out_channels) {
    positive("block_out_channels", ch);
    config_check(ch % norm_num_groups == 0, source, "block_out_channels",
                 "every entry must be divisible by norm_num_groups = " +
                     std::to_string(norm_num_groups) + ", got " + std::to_string(ch));
  }
  config_check(down_block_types.size() == n, source, "down_block_types",
               "expected " + std::to_string(n) + " entries (one per block_out_channels), got " +
                   std::to_string(down_block_types.size()));
  config_check(up_block_types.size() == n, source, "up_block_types",
               "expected " + std::to_string(n) + " entries (one per block_out_channels), got " +
                   std::to_string(up_block_types.size()));
  if (norm_type != "group")
    throw Unsupported(source + ": norm_type '" + norm_type +
                      "' is not supported; expected 'group' (the spatial/MoVQ-conditioned decoder "
                      "is not implemented; aMUSEd's VQ uses 'group')");
  // The Encoder/Decoder constructors check these too; doing it here reports them at parse time.
  VaeCoderOptions o;
  o.act_fn = act_fn;
  o.mid_block_add_attention = mid_block_add_attention;
  o.source = source;
  o.block_types = down_block_types;
  check_coder_options(o, "down_block_types", "DownEncoderBlock2D");
  o.block_types = up_block_types;
  check_coder_options(o, "up_block_types", "UpDecoderBlock2D");
  config_check_model_fits(min_parameters(), source, "VQModel");
}

ModelSizeBound VQModelConfig::min_parameters() const {
  ModelSizeBound b;
  // Each resnet's second 3x3 convolution (9 C^2) at its level: layers_per_block in the encoder,
  // layers_per_block + 1 in the decoder; the two mid blocks' 2 x 2 resnets (36 C^2 each) at the
  // last level; the codebook.
  double levels = 0;
  for (const int64_t ch : block_out_channels) {
    const double c = static_cast<double>(ch);
    levels += static_cast<double>(2 * layers_per_block + 1) * 9 * c * c;
  }
  b.add(levels, "layers_per_block x block_out_channels");
  const double last = static_cast<double>(block_out_channels.back());
  b.add(72 * last * last, "block_out_channels");
  b.add(static_cast<double>(num_vq_embeddings) * static_cast<double>(embed_dim()),
        "num_vq_embeddings x vq_embed_dim");
  return b;
}

int64_t VQModelConfig::scale_factor() const {
  return int64_t{1} << (static_cast<int64_t>(block_out_channels.size()) - 1);
}

// ---------------------------------------------------------------------------------------------
VectorQuantizerImpl::VectorQuantizerImpl(int64_t n, int64_t dim, double b)
    : n_e(n), vq_embed_dim(dim), beta(b) {
  embedding = register_module("embedding", nn::Embedding(n, dim));
}

torch::Tensor VectorQuantizerImpl::nearest_indices(const torch::Tensor& latents) {
  // [B, C, h, w] -> [B, h, w, C] -> [B*h*w, C]
  const auto z = latents.detach().permute({0, 2, 3, 1}).contiguous();
  const auto z_flattened = z.view({-1, vq_embed_dim});
  // torch.cdist + argmin exactly as the reference, so near-ties resolve the same way (cdist's
  // matrix-product path rounds differently from a hand-written squared distance).
  const auto min_encoding_indices =
      torch::argmin(torch::cdist(z_flattened, embedding->weight.detach()), /*dim=*/1);
  // [B*h*w] -> [B, h, w]
  return min_encoding_indices.view({z.size(0), z.size(1), z.size(2)});
}

VectorQuantizerImpl::Output VectorQuantizerImpl::forward(const torch::Tensor& latents) {
  const auto indices = nearest_indices(latents);
  // [B, C, h, w] -> [B, h, w, C]
  const auto z = latents.permute({0, 2, 3, 1});
  auto z_q = embedding(indices);  // [B, h, w, C]
  // Legacy weighting (diffusers' default): beta applies to the codebook term.
  auto loss =
      torch::mean((z_q.detach() - z).pow(2)) + beta * torch::mean((z_q - z.detach()).pow(2));
  // Straight-through estimator: the value of z_q, the gradient of z.
  z_q = z + (z_q - z).detach();
  // [B, h, w, C] -> [B, C, h, w]
  return {z_q.permute({0, 3, 1, 2}).contiguous(), loss, indices};
}

torch::Tensor VectorQuantizerImpl::get_codebook_entry(const torch::Tensor& indices) {
  // [B, h, w] -> [B, h, w, C] -> [B, C, h, w]
  return embedding(indices).permute({0, 3, 1, 2}).contiguous();
}

void VectorQuantizerImpl::init_weights() {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / static_cast<double>(n_e);
  embedding->weight.uniform_(-bound, bound);
}

// ---------------------------------------------------------------------------------------------
VQModelImpl::VQModelImpl(VQModelConfig config, const std::string& source)
    : config_(std::move(config)) {
  config_.validate(source);
  const auto& c = config_;

  VaeCoderOptions enc;
  enc.in_channels = c.in_channels;
  enc.out_channels = c.latent_channels;
  enc.block_types = c.down_block_types;
  enc.block_out_channels = c.block_out_channels;
  enc.layers_per_block = c.layers_per_block;
  enc.norm_num_groups = c.norm_num_groups;
  enc.act_fn = c.act_fn;
  enc.mid_block_add_attention = c.mid_block_add_attention;
  enc.source = source;
  encoder = register_module("encoder", Encoder(enc));

  quant_conv = register_module("quant_conv", nn::Conv2d(c.latent_channels, c.embed_dim(), 1));
  quantize = register_module("quantize", VectorQuantizer(c.num_vq_embeddings, c.embed_dim()));
  post_quant_conv =
      register_module("post_quant_conv", nn::Conv2d(c.embed_dim(), c.latent_channels, 1));

  VaeCoderOptions dec = enc;
  dec.in_channels = c.latent_channels;
  dec.out_channels = c.out_channels;
  dec.block_types = c.up_block_types;
  decoder = register_module("decoder", Decoder(dec));
}

torch::Tensor VQModelImpl::encode(const torch::Tensor& pixels) {
  const int64_t f = scale_factor();
  if (pixels.dim() != 4 || pixels.size(1) != config_.in_channels)
    throw InvalidArgument("VQModel.encode: expected pixels [B, " +
                          std::to_string(config_.in_channels) + ", H, W], got " +
                          shape_string(pixels));
  if (!pixels.is_floating_point())
    throw InvalidArgument(
        "VQModel.encode: expected floating-point pixels in [0, 1], got an integer tensor (divide "
        "uint8 images by 255)");
  const int64_t height = pixels.size(2), width = pixels.size(3);
  if (height <= 0 || width <= 0 || height % f != 0 || width % f != 0)
    throw InvalidArgument("VQModel.encode: image size " + std::to_string(height) + "x" +
                          std::to_string(width) + " (HxW) is not a multiple of the VQ scale " +
                          "factor " + std::to_string(f) + "; resize or crop to a multiple of " +
                          std::to_string(f));
  // The activations' dtype is the codebook's: with mixed precision the convolution weights are
  // 16-bit while the activations (and the codebook) stay float32.
  const auto& w = quantize->embedding->weight;
  auto h = encoder(pixels.to(w.device(), w.scalar_type()));
  return quant_conv(h);
}

torch::Tensor VQModelImpl::quantize_indices(const torch::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(1) != config_.embed_dim())
    throw InvalidArgument("VQModel.quantize_indices: expected latents [B, " +
                          std::to_string(config_.embed_dim()) + ", h, w], got " +
                          shape_string(latents));
  return quantize->nearest_indices(latents);
}

torch::Tensor VQModelImpl::decode(const torch::Tensor& quant) {
  if (quant.dim() != 4 || quant.size(1) != config_.embed_dim())
    throw InvalidArgument("VQModel.decode: expected quantised latents [B, " +
                          std::to_string(config_.embed_dim()) + ", h, w], got " +
                          shape_string(quant));
  auto quant2 = post_quant_conv(quant);
  return decoder(quant2);
}

torch::Tensor VQModelImpl::decode_tokens(const torch::Tensor& ids) {
  if (ids.dim() != 3 || ids.numel() == 0)
    throw InvalidArgument("VQModel.decode_tokens: expected token ids [B, h, w], got " +
                          shape_string(ids));
  if (ids.is_floating_point() || ids.is_complex() || ids.scalar_type() == torch::kBool)
    throw InvalidArgument("VQModel.decode_tokens: expected integer token ids, got dtype " +
                          std::string(c10::toString(ids.scalar_type())));
  const auto ids64 = ids.to(quantize->embedding->weight.device(), torch::kLong);
  const int64_t lo = ids64.min().item<int64_t>(), hi = ids64.max().item<int64_t>();
  if (lo < 0 || hi >= config_.num_vq_embeddings)
    throw InvalidArgument("VQModel.decode_tokens: token ids must lie in [0, " +
                          std::to_string(config_.num_vq_embeddings) + "), got values in [" +
                          std::to_string(lo) + ", " + std::to_string(hi) +
                          "] (a mask token left in the grid?)");
  // get_codebook_entry(ids, shape=(B, h, w, C)): [B, h, w] -> [B, C, h, w]
  const auto quant = quantize->get_codebook_entry(ids64);
  return decode(quant);
}

void VQModelImpl::init_weights() {
  init_encoder_weights();
  init_decoder_weights();
}
void VQModelImpl::init_encoder_weights() {
  encoder->init_weights();
  quant_conv->reset_parameters();
}
void VQModelImpl::init_decoder_weights() {
  quantize->init_weights();
  post_quant_conv->reset_parameters();
  decoder->init_weights();
}
bool VQModelImpl::is_encoder_key(const std::string& key) {
  return key.rfind("encoder.", 0) == 0 || key.rfind("quant_conv.", 0) == 0;
}

// ---------------------------------------------------------------------------------------------
torch::Tensor to_uint8_nhwc(const torch::Tensor& images_nchw) {
  if (images_nchw.dim() != 4)
    throw InvalidArgument("to_uint8_nhwc: expected images [B, C, H, W], got " +
                          shape_string(images_nchw));
  // [B, C, H, W] -> [B, H, W, C]; clip and scale in float32 like pipeline + numpy_to_pil.
  auto images = images_nchw.detach().to(torch::kFloat32).clamp(0.0, 1.0).permute({0, 2, 3, 1});
  return images.mul(255.0).round().to(torch::kUInt8).contiguous();
}

}  // namespace amused::models
