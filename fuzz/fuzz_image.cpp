// libFuzzer target: the image and mask decoders (PNG via libpng, JPEG via libjpeg, BMP via
// stb_image), to_grey, and the Lanczos resampler to a small size. Only amused::Error may be
// thrown; the decoded image must have consistent dimensions.
#include "amused/error.h"
#include "amused/image_io.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  amused::fuzz::quiet_logs();
  try {
    const amused::Image img = amused::decode_image(amused::fuzz::as_view(data, size), "fuzz-image");
    if (img.width <= 0 || img.height <= 0 || img.channels != 3 ||
        img.pixels.size() != static_cast<size_t>(img.width) * img.height * 3)
      __builtin_trap();
    const amused::Image grey = amused::to_grey(img);
    if (grey.pixels.size() != static_cast<size_t>(img.width) * img.height) __builtin_trap();
    // The resampler works in doubles: keep huge (but legal) images out of it to stay within
    // libFuzzer's memory limit; the decoders above already ran on them.
    if (static_cast<int64_t>(img.width) * img.height <= (1 << 20)) {
      const int w = 1 + (size > 0 ? data[size - 1] % 24 : 0);
      const int h = 1 + (size > 1 ? data[size - 2] % 24 : 0);
      const amused::Image small = amused::resize_image(img, w, h);
      const amused::Image mask = amused::resize_image(grey, h, w);
      if (small.pixels.size() != static_cast<size_t>(w) * h * 3 ||
          mask.pixels.size() != static_cast<size_t>(w) * h)
        __builtin_trap();
    }
  } catch (const amused::Error&) {
  }
  return 0;
}
