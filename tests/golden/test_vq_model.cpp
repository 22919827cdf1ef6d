// VQModel parity with diffusers: vq_encode (latents, nearest-code indices, quantised vectors) and
// vq_decode (raw decoder output, clipped NHWC float, uint8) golden cases of both tiny models.
#include <gtest/gtest.h>

#include "pipelines/components.h"
#include "models/vq_model.h"
#include "support/golden.h"

namespace {
using amused::models::VQModel;
namespace gt = amused::testing;

VQModel tiny_vq(const nlohmann::json& c) {
  return amused::load_vqvae(gt::golden_path(c["model_path"].get<std::string>()) / "vqvae");
}

TEST(VQModelGolden, EncodeMatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const auto cases = gt::golden_cases_of_kind("vq_encode");
  ASSERT_GE(cases.size(), 4u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    auto vq = tiny_vq(c);
    torch::NoGradGuard no_grad;
    // uint8 [B, H, W, 3] -> float [B, 3, H, W] / 255, as VaeImageProcessor.preprocess.
    const auto image_u8 = gt::golden_tensor(c["inputs"]["image_uint8"]);
    const auto pixels = image_u8.permute({0, 3, 1, 2}).to(torch::kFloat32) / 255.0;
    EXPECT_TRUE(gt::matches_descriptor(pixels, c["inputs"]["image_float"], "image_float"));

    const auto latents = vq->encode(pixels);
    EXPECT_TRUE(gt::matches_descriptor(latents, c["outputs"]["latents"], "latents"));
    // Quantise the reference's own latents too, so an index mismatch is attributable.
    const auto ref_latents = gt::golden_tensor(c["outputs"]["latents"]);
    EXPECT_TRUE(gt::matches_descriptor(vq->quantize_indices(ref_latents), c["outputs"]["indices"],
                                       "indices(reference latents)"));
    const auto indices = vq->quantize_indices(latents);
    EXPECT_EQ(indices.scalar_type(), torch::kLong);
    EXPECT_TRUE(gt::matches_descriptor(indices, c["outputs"]["indices"], "indices"));

    const auto q = vq->quantize(latents);
    EXPECT_TRUE(gt::tensors_equal(q.indices, indices, "quantize().indices"));
    EXPECT_TRUE(gt::matches_descriptor(q.quantized, c["outputs"]["quantized"], "quantized"));
    EXPECT_TRUE(gt::matches_descriptor(vq->quantize->get_codebook_entry(indices),
                                       c["outputs"]["quantized"], "get_codebook_entry"));
  }
}

TEST(VQModelGolden, DecodeMatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  const auto cases = gt::golden_cases_of_kind("vq_decode");
  ASSERT_GE(cases.size(), 4u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    auto vq = tiny_vq(c);
    torch::NoGradGuard no_grad;
    const auto ids = gt::golden_tensor(c["inputs"]["indices"]);
    const auto raw = vq->decode_tokens(ids);
    EXPECT_TRUE(gt::matches_descriptor(raw, c["outputs"]["decoded_raw"], "decoded_raw"));
    // Pipeline: .clip(0, 1), then output_type "np" -> [B, H, W, 3] float.
    const auto image_np = raw.clamp(0.0, 1.0).permute({0, 2, 3, 1});
    EXPECT_TRUE(gt::matches_descriptor(image_np, c["outputs"]["image_np"], "image_np"));
    const auto image_u8 = amused::models::to_uint8_nhwc(raw);
    EXPECT_EQ(image_u8.scalar_type(), torch::kUInt8);
    EXPECT_TRUE(gt::matches_descriptor(image_u8, c["outputs"]["image_uint8"], "image_uint8"));
  }
}

// With autograd on, the same forward is differentiable (in-place shortcuts only apply without
// grad) and gives the same values.
TEST(VQModelGolden, DecodeIsDifferentiable) {
  AMUSED_REQUIRE_GOLDEN();
  const auto c = gt::golden_cases_of_kind("vq_decode").front();
  auto vq = tiny_vq(c);
  const auto ids = gt::golden_tensor(c["inputs"]["indices"]);
  const auto raw = vq->decode_tokens(ids);
  ASSERT_TRUE(raw.requires_grad());
  EXPECT_TRUE(gt::matches_descriptor(raw, c["outputs"]["decoded_raw"], "decoded_raw (grad)"));
  raw.sum().backward();
  const auto& g = vq->quantize->embedding->weight.grad();
  ASSERT_TRUE(g.defined());
  EXPECT_GT(g.abs().sum().item<double>(), 0.0);
}

TEST(VQModelGolden, EncodeDecodeOnCuda) {
  AMUSED_REQUIRE_GOLDEN();
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto enc = gt::golden_cases_of_kind("vq_encode").front();
  const auto dec = gt::golden_cases_of_kind("vq_decode").front();
  auto vq = tiny_vq(enc);
  vq->to(torch::kCUDA);
  torch::NoGradGuard no_grad;
  const auto pixels = gt::golden_tensor(enc["inputs"]["image_float"]).to(torch::kCUDA);
  const auto latents = vq->encode(pixels);
  EXPECT_TRUE(latents.is_cuda());
  EXPECT_TRUE(gt::matches_descriptor(latents.cpu(), enc["outputs"]["latents"], "latents (cuda)"));
  EXPECT_TRUE(gt::matches_descriptor(vq->quantize_indices(latents).cpu(), enc["outputs"]["indices"],
                                     "indices (cuda)"));
  auto vq_dec = tiny_vq(dec);
  vq_dec->to(torch::kCUDA);
  const auto raw =
      vq_dec->decode_tokens(gt::golden_tensor(dec["inputs"]["indices"]).to(torch::kCUDA));
  EXPECT_TRUE(
      gt::matches_descriptor(raw.cpu(), dec["outputs"]["decoded_raw"], "decoded_raw (cuda)"));
  EXPECT_TRUE(gt::matches_descriptor(amused::models::to_uint8_nhwc(raw).cpu(),
                                     dec["outputs"]["image_uint8"], "image_uint8 (cuda)"));
}

}  // namespace
