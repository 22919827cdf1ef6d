// The value types of images and token grids that the pipeline, the image files and the trainers
// exchange (no model code behind them).
#pragma once

#include <cstdint>
#include <vector>

namespace amused {

// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<uint8_t> pixels;
};

// A grid of VQ token ids, row-major.
struct TokenGrid {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<int64_t> ids;
};

}  // namespace amused
