#include "models/flops.h"

namespace amused::models {

double uvit_2d_flops(const UVit2DConfig& c, int64_t h, int64_t w, int64_t text_len) {
  const double L = static_cast<double>(h * w);
  const double Lb = c.downsample ? L / 4 : L;  // tokens inside the blocks and layers
  const double T = static_cast<double>(text_len);
  const double C = static_cast<double>(c.block_out_channels), D = static_cast<double>(c.hidden_size);
  const double I = static_cast<double>(c.in_channels), F = static_cast<double>(c.intermediate_size);
  double macs = T * c.encoder_hidden_size * D;                                         // encoder_proj
  macs += (c.cond_embed_dim + c.micro_cond_embed_dim) * D + D * D;                     // cond_embed
  macs += L * I * C;                                                                   // embed.conv
  // One UVitBlock: ConvNeXt blocks (depthwise 3x3, 4x MLP) + two cross-attentions to the text.
  const double res = Lb * C * 9 + 2 * Lb * C * 4 * C + D * 2 * C;
  const double attn_block = T * D * C + 2 * (2 * Lb * C * C + 2 * T * C * C + 2 * Lb * T * C);
  const double block = c.num_res_blocks * (res + attn_block);
  macs += 2 * block;                                                                   // down + up
  if (c.downsample) macs += Lb * C * C * 4;                                            // 2x2 stride 2
  if (c.upsample) macs += Lb * C * C * 4;                                              // 2x2 transposed
  macs += 2 * Lb * C * D;                                                              // to/from hidden
  const double layer = 3 * D * 2 * D                                                   // adaLN mappers
                       + 4 * Lb * D * D + 2 * Lb * Lb * D                              // self-attention
                       + 2 * Lb * D * D + 2 * T * D * D + 2 * Lb * T * D               // cross-attention
                       + Lb * D * 2 * F + Lb * F * D;                                  // GEGLU feed-forward
  macs += c.num_hidden_layers * layer;
  macs += L * C * I + L * I * c.codebook_size;                                         // mlm_layer
  return 2 * macs;
}

double vq_decode_flops(const VQModelConfig& c, int64_t h, int64_t w) {
  double hw = static_cast<double>(h * w);
  const double E = static_cast<double>(c.embed_dim());
  const auto& ch = c.block_out_channels;
  double macs = hw * E * E;                                                            // post_quant_conv
  double cur = static_cast<double>(ch.back());
  macs += hw * E * cur * 9;                                                            // conv_in
  auto resnet = [&](double in, double out) {
    double m = hw * in * out * 9 + hw * out * out * 9;
    if (in != out) m += hw * in * out;                                                 // 1x1 shortcut
    return m;
  };
  macs += 2 * resnet(cur, cur);                                                        // mid block
  const int64_t n = static_cast<int64_t>(ch.size());
  for (int64_t i = 0; i < n; ++i) {
    const double out = static_cast<double>(ch[n - 1 - i]);
    for (int64_t r = 0; r <= c.layers_per_block; ++r) {
      macs += resnet(cur, out);
      cur = out;
    }
    if (i < n - 1) {
      hw *= 4;                                                                         // nearest x2
      macs += hw * cur * cur * 9;                                                      // upsample conv
    }
  }
  macs += hw * cur * c.out_channels * 9;                                               // conv_out
  return 2 * macs;
}

double clip_text_flops(const CLIPTextConfig& c, int64_t text_len) {
  const double T = static_cast<double>(text_len), H = static_cast<double>(c.hidden_size);
  const double layer = 4 * T * H * H + 2 * T * T * H + 2 * T * H * c.intermediate_size;
  return 2 * (c.num_hidden_layers * layer + H * c.projection_dim);
}

}  // namespace amused::models
