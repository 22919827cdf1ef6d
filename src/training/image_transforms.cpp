// Training-time image preprocessing (process_image of train_amused.py), see image_transforms.h.
#include "training/image_transforms.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "amused/error.h"
#include "amused/image_io.h"

namespace amused::training {
namespace {

uint16_t read_u16(const unsigned char* p, bool little) {
  return little ? static_cast<uint16_t>(p[0] | (p[1] << 8))
                : static_cast<uint16_t>((p[0] << 8) | p[1]);
}
uint32_t read_u32(const unsigned char* p, bool little) {
  return little ? (uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
                   (uint32_t{p[3]} << 24))
                : ((uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) |
                   uint32_t{p[3]});
}

// Tag 0x0112 (Orientation) of IFD0 in a TIFF structure ("II*\0" or "MM\0*"); 1 when absent.
int tiff_orientation(std::string_view tiff) {
  const auto* p = reinterpret_cast<const unsigned char*>(tiff.data());
  const size_t n = tiff.size();
  if (n < 8) return 1;
  bool little;
  if (p[0] == 'I' && p[1] == 'I')
    little = true;
  else if (p[0] == 'M' && p[1] == 'M')
    little = false;
  else
    return 1;
  if (read_u16(p + 2, little) != 42) return 1;
  const uint32_t ifd = read_u32(p + 4, little);
  if (ifd > n || n - ifd < 2) return 1;
  const uint16_t count = read_u16(p + ifd, little);
  for (uint32_t i = 0; i < count; ++i) {
    const size_t e = ifd + 2 + size_t{12} * i;
    if (e + 12 > n) return 1;
    if (read_u16(p + e, little) != 0x0112) continue;
    const uint16_t type = read_u16(p + e + 2, little);
    const int value = type == 3   ? read_u16(p + e + 8, little)
                      : type == 4 ? static_cast<int>(read_u32(p + e + 8, little))
                                  : 1;
    return value >= 1 && value <= 8 ? value : 1;
  }
  return 1;
}

int jpeg_orientation(std::string_view d) {
  const auto* p = reinterpret_cast<const unsigned char*>(d.data());
  size_t i = 2;
  while (i + 4 <= d.size()) {
    if (p[i] != 0xFF) return 1;
    const unsigned char marker = p[i + 1];
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0xD9 || marker == 0xDA) return 1;              // end of image, start of scan
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // markers without a length
      i += 2;
      continue;
    }
    const size_t len = read_u16(p + i + 2, false);
    if (len < 2 || i + 2 + len > d.size()) return 1;
    if (marker == 0xE1 && len >= 8 && std::memcmp(p + i + 4, "Exif\0\0", 6) == 0)
      return tiff_orientation(d.substr(i + 10, len - 8));
    i += 2 + len;
  }
  return 1;
}

int png_orientation(std::string_view d) {
  const auto* p = reinterpret_cast<const unsigned char*>(d.data());
  size_t i = 8;
  while (i + 12 <= d.size()) {
    const size_t len = read_u32(p + i, false);
    if (len > d.size() - i - 12) return 1;
    const std::string_view type = d.substr(i + 4, 4);
    if (type == "eXIf") {
      std::string_view body = d.substr(i + 8, len);
      // Some writers keep the JPEG APP1 prefix; Pillow accepts both.
      if (body.size() >= 6 && body.substr(0, 6) == std::string_view("Exif\0\0", 6))
        body.remove_prefix(6);
      return tiff_orientation(body);
    }
    if (type == "IEND") return 1;
    i += 12 + len;
  }
  return 1;
}

void check_layout(const Image& image, const char* what) {
  if (image.width <= 0 || image.height <= 0 || image.channels < 1 || image.channels > 4 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * image.channels)
    throw InvalidArgument(std::string(what) + ": image buffer does not match " +
                          std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
                          std::to_string(image.channels));
}

// Pillow's bilinear_filter.
double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

constexpr int kPrecisionBits = 32 - 8 - 2;

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: for each output position the
// first input index, the number of taps, and the fixed-point weights.
struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // [out * 2]: xmin, count
  std::vector<int32_t> k;   // [out * ksize]
};

Coeffs precompute(int in_size, int out_size) {
  Coeffs c;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(static_cast<size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // (int) truncation as in C, then clamped: Pillow's "round the value".
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) ww += w[x] = triangle((x + xmin - center + 0.5) * ss);
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[static_cast<size_t>(xx) * c.ksize + x] =
          v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

uint8_t clip8(int32_t v) {
  const int32_t s = v >> kPrecisionBits;  // arithmetic shift, as Pillow's clip8 lookup index
  return static_cast<uint8_t>(s < 0 ? 0 : s > 255 ? 255 : s);
}

}  // namespace

int exif_orientation(std::string_view d) {
  if (d.size() >= 4 && static_cast<unsigned char>(d[0]) == 0xFF &&
      static_cast<unsigned char>(d[1]) == 0xD8)
    return jpeg_orientation(d);
  if (d.size() >= 8 && std::memcmp(d.data(), "\x89PNG\r\n\x1a\n", 8) == 0)
    return png_orientation(d);
  return 1;
}

Image apply_exif_orientation(const Image& image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  check_layout(image, "apply_exif_orientation");
  const int W = image.width, H = image.height, C = image.channels;
  const bool swap = orientation >= 5;  // transpose, rotations by 90 and transverse swap the sides
  Image out;
  out.width = swap ? H : W;
  out.height = swap ? W : H;
  out.channels = C;
  out.pixels.resize(image.pixels.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2:  // FLIP_LEFT_RIGHT
          sx = W - 1 - x;
          break;
        case 3:  // ROTATE_180
          sx = W - 1 - x;
          sy = H - 1 - y;
          break;
        case 4:  // FLIP_TOP_BOTTOM
          sy = H - 1 - y;
          break;
        case 5:  // TRANSPOSE
          sx = y;
          sy = x;
          break;
        case 6:  // ROTATE_270 (90 clockwise)
          sx = y;
          sy = H - 1 - x;
          break;
        case 7:  // TRANSVERSE
          sx = W - 1 - y;
          sy = H - 1 - x;
          break;
        case 8:  // ROTATE_90 (counter-clockwise)
          sx = W - 1 - y;
          sy = x;
          break;
      }
      std::memcpy(&out.pixels[(static_cast<size_t>(y) * out.width + x) * C],
                  &image.pixels[(static_cast<size_t>(sy) * W + sx) * C], C);
    }
  }
  return out;
}

Image decode_oriented_rgb(std::string_view file_bytes, const std::string& source) {
  Image image = decode_image(file_bytes, source);
  if (image.channels != 3)
    throw IoError("'" + source + "' decoded to " + std::to_string(image.channels) +
                  " channels, expected RGB");
  return apply_exif_orientation(image, exif_orientation(file_bytes));
}

Image resize_bilinear_pil(const Image& image, int width, int height) {
  check_layout(image, "resize_bilinear_pil");
  if (width <= 0 || height <= 0 || width > 65536 || height > 65536)
    throw InvalidArgument("cannot resize to " + std::to_string(width) + "x" +
                          std::to_string(height));
  const int C = image.channels;
  Image cur = image;
  if (width != cur.width) {  // horizontal pass
    const Coeffs c = precompute(cur.width, width);
    Image tmp;
    tmp.width = width;
    tmp.height = cur.height;
    tmp.channels = C;
    tmp.pixels.resize(static_cast<size_t>(width) * cur.height * C);
    for (int y = 0; y < cur.height; ++y) {
      const uint8_t* row = &cur.pixels[static_cast<size_t>(y) * cur.width * C];
      uint8_t* orow = &tmp.pixels[static_cast<size_t>(y) * width * C];
      for (int xx = 0; xx < width; ++xx) {
        const int xmin = c.bounds[xx * 2], n = c.bounds[xx * 2 + 1];
        const int32_t* k = &c.k[static_cast<size_t>(xx) * c.ksize];
        for (int ch = 0; ch < C; ++ch) {
          int32_t ss = 1 << (kPrecisionBits - 1);
          for (int x = 0; x < n; ++x) ss += row[(x + xmin) * C + ch] * k[x];
          orow[xx * C + ch] = clip8(ss);
        }
      }
    }
    cur = std::move(tmp);
  }
  if (height != cur.height) {  // vertical pass
    const Coeffs c = precompute(cur.height, height);
    Image tmp;
    tmp.width = cur.width;
    tmp.height = height;
    tmp.channels = C;
    tmp.pixels.resize(static_cast<size_t>(cur.width) * height * C);
    const size_t stride = static_cast<size_t>(cur.width) * C;
    for (int yy = 0; yy < height; ++yy) {
      const int ymin = c.bounds[yy * 2], n = c.bounds[yy * 2 + 1];
      const int32_t* k = &c.k[static_cast<size_t>(yy) * c.ksize];
      uint8_t* orow = &tmp.pixels[yy * stride];
      for (size_t i = 0; i < stride; ++i) {
        int32_t ss = 1 << (kPrecisionBits - 1);
        for (int y = 0; y < n; ++y) ss += cur.pixels[(y + ymin) * stride + i] * k[y];
        orow[i] = clip8(ss);
      }
    }
    cur = std::move(tmp);
  }
  return cur;
}

std::pair<int, int> shorter_side_size(int width, int height, int size) {
  if (size <= 0) throw InvalidArgument("resolution must be positive, got " + std::to_string(size));
  const int64_t shorter = std::min(width, height), longer = std::max(width, height);
  // Python: int(requested_new_short * long / short), a true division truncated.
  const int new_long =
      static_cast<int>(static_cast<double>(int64_t{size} * longer) / static_cast<double>(shorter));
  return width <= height ? std::pair{size, new_long} : std::pair{new_long, size};
}

Image crop(const Image& image, int top, int left, int size) {
  check_layout(image, "crop");
  if (top < 0 || left < 0 || size <= 0 || top + size > image.height || left + size > image.width)
    throw InvalidArgument("crop " + std::to_string(size) + "x" + std::to_string(size) +
                          " at (top " + std::to_string(top) + ", left " + std::to_string(left) +
                          ") does not fit a " + std::to_string(image.width) + "x" +
                          std::to_string(image.height) + " image");
  const int C = image.channels;
  Image out;
  out.width = out.height = size;
  out.channels = C;
  out.pixels.resize(static_cast<size_t>(size) * size * C);
  for (int y = 0; y < size; ++y)
    std::memcpy(&out.pixels[static_cast<size_t>(y) * size * C],
                &image.pixels[(static_cast<size_t>(top + y) * image.width + left) * C],
                static_cast<size_t>(size) * C);
  return out;
}

Image flip_horizontal(const Image& image) { return apply_exif_orientation(image, 2); }

}  // namespace amused::training
