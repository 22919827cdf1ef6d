// Analytic work of one forward pass (2 x multiply-adds of every matmul and convolution; norms and
// element-wise work are ignored), for the benchmark's GFLOP/s figures.
#pragma once

#include <cstdint>

#include "models/clip_text_model.h"
#include "models/uvit_2d.h"
#include "models/vq_model.h"

namespace amused::models {

// One image (one row of the batch) on an h x w token grid with `text_len` text tokens.
double uvit_2d_flops(const UVit2DConfig& c, int64_t h, int64_t w, int64_t text_len = 77);
// Decoding one h x w token grid to an image.
double vq_decode_flops(const VQModelConfig& c, int64_t h, int64_t w);
// One prompt of `text_len` tokens, with the projection.
double clip_text_flops(const CLIPTextConfig& c, int64_t text_len = 77);

}  // namespace amused::models
