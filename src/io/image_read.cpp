// Image input: PNG (libpng), JPEG (libjpeg, PIL's default decoder settings), BMP (stb_image), and a
// Lanczos-3 resampler for sizes that must be brought to a multiple of the VQ scale factor.
#include <cstddef>
#include <cstdio>
// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <stb/stb_image.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "amused/error.h"
#include "core/files.h"
#include "amused/image_io.h"

namespace amused {
namespace fs = std::filesystem;

namespace {

// Inputs larger than this are refused before their pixels are allocated.
constexpr int64_t kMaxSide = 16384;
constexpr int64_t kMaxPixels = 100'000'000;
constexpr uint64_t kMaxFileBytes = 256ull << 20;

void check_dimensions(int64_t w, int64_t h, const fs::path& path) {
  if (w <= 0 || h <= 0 || w > kMaxSide || h > kMaxSide || w * h > kMaxPixels)
    throw IoError("image '" + path.string() + "' claims " + std::to_string(w) + "x" + std::to_string(h) +
                  " pixels; the limit is " + std::to_string(kMaxSide) + " per side and " +
                  std::to_string(kMaxPixels / 1'000'000) + " megapixels");
}

std::string read_all(const fs::path& path) {
  std::error_code ec;
  if (const std::string problem = input_file_problem(path); !problem.empty())
    throw IoError("image '" + path.string() + "' " + problem);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot read image '" + path.string() + "': " + std::strerror(errno));
  const auto size = fs::file_size(path, ec);
  if (!ec && size > kMaxFileBytes)
    throw IoError("image '" + path.string() + "' is " + std::to_string(size) + " bytes, more than the " +
                  std::to_string(kMaxFileBytes >> 20) + " MiB limit for an image file");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return data;
}

// Images built by callers (not only decoded ones) reach to_grey/resize_image: check the layout
// before indexing.
void check_image(const Image& image, const char* what) {
  const bool ok = image.width > 0 && image.height > 0 && image.width <= kMaxSide &&
                  image.height <= kMaxSide &&
                  (image.channels == 1 || image.channels == 3 || image.channels == 4) &&
                  image.pixels.size() == static_cast<size_t>(image.width) * image.height * image.channels;
  if (!ok)
    throw InvalidArgument(std::string(what) + ": inconsistent image " + std::to_string(image.width) + "x" +
                          std::to_string(image.height) + "x" + std::to_string(image.channels) + " with " +
                          std::to_string(image.pixels.size()) +
                          " bytes (expected width*height*channels bytes, channels 1, 3 or 4, sides 1.." +
                          std::to_string(kMaxSide) + ")");
}

struct PngReadState {
  std::string_view data;
  size_t pos = 0;
  std::string error;
};
void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* st = static_cast<PngReadState*>(png_get_io_ptr(png));
  if (n > st->data.size() - st->pos) png_error(png, "unexpected end of file (truncated?)");
  std::memcpy(out, st->data.data() + st->pos, n);
  st->pos += n;
}
void png_on_error(png_structp png, png_const_charp msg) {
  auto* st = static_cast<PngReadState*>(png_get_error_ptr(png));
  st->error = msg;
  png_longjmp(png, 1);
}
void png_on_warning(png_structp, png_const_charp) {}

Image decode_png(std::string_view data, const fs::path& path) {
  PngReadState st{data, 0, {}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &st, png_on_error, png_on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) throw IoError("libpng: out of memory");
  Image img;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw IoError("cannot decode PNG '" + path.string() + "': " + st.error);
  }
  png_set_read_fn(png, &st, png_read_mem);
  png_read_info(png, info);
  try {
    check_dimensions(png_get_image_width(png, info), png_get_image_height(png, info), path);
  } catch (...) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw;
  }
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  // Alpha (and tRNS transparency, which the palette and low-depth grey expansions above turn into
  // an alpha channel: pngquant's palette+tRNS files) is dropped, as PIL's convert("RGB") does.
  if ((color & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
  png_read_update_info(png, info);
  img.width = static_cast<int>(png_get_image_width(png, info));
  img.height = static_cast<int>(png_get_image_height(png, info));
  img.channels = 3;
  if (png_get_rowbytes(png, info) != static_cast<size_t>(img.width) * 3)
    png_error(png, "unexpected pixel layout");
  img.pixels.resize(static_cast<size_t>(img.width) * img.height * 3);
  rows.resize(img.height);
  for (int y = 0; y < img.height; ++y) rows[y] = img.pixels.data() + static_cast<size_t>(y) * img.width * 3;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return img;
}

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated = false;  // libjpeg's "premature end of data" warning: it pads with grey
};
void jpeg_on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}
void jpeg_on_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(cinfo->err)->truncated = true;
}

// PIL's CMYK -> RGB (Convert.c cmyk2rgb): each channel is (255 - k) scaled by (255 - c) / 255,
// rounded as its MULDIV255.
uint8_t cmyk_channel(unsigned c, unsigned k) {
  const unsigned nk = 255 - k;
  const unsigned t = c * nk + 128;
  const int v = static_cast<int>(nk) - static_cast<int>((t + (t >> 8)) >> 8);
  return static_cast<uint8_t>(v < 0 ? 0 : v);
}

Image decode_jpeg(std::string_view data, const fs::path& path) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_on_error;
  err.mgr.emit_message = jpeg_on_message;
  Image img;
  std::vector<JSAMPLE> cmyk_row;  // (declared before setjmp: longjmp must not skip a destructor)
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw IoError("cannot decode JPEG '" + path.string() + "': " + err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(data.data()), static_cast<unsigned long>(data.size()));
  jpeg_read_header(&cinfo, TRUE);
  try {
    check_dimensions(cinfo.image_width, cinfo.image_height, path);
  } catch (...) {
    jpeg_destroy_decompress(&cinfo);
    throw;
  }
  // Grey and YCbCr come out as RGB; CMYK and YCCK (Photoshop's print JPEGs) as CMYK, converted
  // below (libjpeg has no CMYK -> RGB conversion).
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.channels = 3;
  img.pixels.resize(static_cast<size_t>(img.width) * img.height * 3);
  cmyk_row.resize(cmyk ? static_cast<size_t>(img.width) * 4 : 0);
  // Adobe's CMYK JPEGs store inverted values (PIL reads them as "CMYK;I").
  const bool inverted = cmyk && cinfo.saw_Adobe_marker;
  while (cinfo.output_scanline < cinfo.output_height) {
    uint8_t* out = img.pixels.data() + static_cast<size_t>(cinfo.output_scanline) * img.width * 3;
    JSAMPROW row = cmyk ? cmyk_row.data() : out;
    jpeg_read_scanlines(&cinfo, &row, 1);
    for (int x = 0; cmyk && x < img.width; ++x) {
      unsigned v[4];
      for (int c = 0; c < 4; ++c) v[c] = inverted ? 255u - cmyk_row[x * 4 + c] : cmyk_row[x * 4 + c];
      for (int c = 0; c < 3; ++c) out[x * 3 + c] = cmyk_channel(v[c], v[3]);
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  // libjpeg pads a cut file with grey and only warns; PIL refuses it ("image file is truncated").
  if (err.truncated)
    throw IoError("cannot decode JPEG '" + path.string() + "': the file is truncated (premature end of data)");
  return img;
}

Image decode_stb(std::string_view data, const fs::path& path) {
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(data.data()), static_cast<int>(data.size()), &w, &h,
                             &n))
    throw IoError("cannot decode image '" + path.string() + "': " + stbi_failure_reason());
  check_dimensions(w, h, path);
  std::unique_ptr<stbi_uc, void (*)(void*)> px(
      stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(data.data()), static_cast<int>(data.size()), &w, &h, &n,
                            3),
      stbi_image_free);
  if (!px) throw IoError("cannot decode image '" + path.string() + "': " + stbi_failure_reason());
  Image img;
  img.width = w;
  img.height = h;
  img.channels = 3;
  img.pixels.assign(px.get(), px.get() + static_cast<size_t>(w) * h * 3);
  return img;
}

double lanczos3(double x) {
  x = std::fabs(x);
  if (x < 1e-12) return 1.0;
  if (x >= 3.0) return 0.0;
  const double px = M_PI * x;
  return 3.0 * std::sin(px) * std::sin(px / 3.0) / (px * px);
}

// The taps of one output sample along an axis of n_in -> n_out samples: the first input index and
// the normalised weights, like PIL's (support scaled by the shrink factor).
struct Taps {
  int lo = 0;
  std::vector<double> w;
};
std::vector<Taps> lanczos_taps(int n_in, int n_out) {
  const double scale = static_cast<double>(n_in) / n_out;
  const double fscale = std::max(scale, 1.0);
  const double support = 3.0 * fscale;
  std::vector<Taps> taps(static_cast<size_t>(n_out));
  for (int o = 0; o < n_out; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(0, static_cast<int>(std::floor(center - support)));
    const int hi = std::min(n_in, static_cast<int>(std::ceil(center + support)));
    auto& t = taps[static_cast<size_t>(o)];
    t.lo = lo;
    t.w.resize(static_cast<size_t>(hi - lo));
    double total = 0;
    for (int i = lo; i < hi; ++i) total += t.w[i - lo] = lanczos3((i + 0.5 - center) / fscale);
    for (auto& v : t.w) v /= total == 0 ? 1 : total;
  }
  return taps;
}

}  // namespace

Image load_image(const fs::path& path) { return decode_image(read_all(path), path.string()); }

Image decode_image(std::string_view data, const std::string& source) {
  const fs::path path = source;
  if (data.size() > kMaxFileBytes)
    throw IoError("image '" + source + "' is " + std::to_string(data.size()) + " bytes, more than the " +
                  std::to_string(kMaxFileBytes >> 20) + " MiB limit for an image file");
  if (data.size() >= 8 && std::memcmp(data.data(), "\x89PNG\r\n\x1a\n", 8) == 0) return decode_png(data, path);
  if (data.size() >= 3 && static_cast<unsigned char>(data[0]) == 0xFF && static_cast<unsigned char>(data[1]) == 0xD8)
    return decode_jpeg(data, path);
  if (data.size() >= 2 && data[0] == 'B' && data[1] == 'M') return decode_stb(data, path);
  throw IoError("'" + source + "' is not a PNG, JPEG or BMP image");
}

Image to_grey(const Image& image) {
  check_image(image, "to_grey");
  if (image.channels == 1) return image;
  Image g;
  g.width = image.width;
  g.height = image.height;
  g.channels = 1;
  g.pixels.resize(static_cast<size_t>(image.width) * image.height);
  for (size_t i = 0; i < g.pixels.size(); ++i) {
    const uint8_t* p = image.pixels.data() + i * image.channels;
    // PIL Convert.c L24: ITU-R 601-2 luma in 16-bit fixed point.
    g.pixels[i] = static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
  }
  return g;
}

Image resize_image(const Image& image, int width, int height) {
  if (width <= 0 || height <= 0) throw InvalidArgument("cannot resize to " + std::to_string(width) + "x" +
                                                       std::to_string(height));
  check_image(image, "resize_image");
  if (width > kMaxSide || height > kMaxSide || int64_t{width} * height > kMaxPixels)
    throw InvalidArgument("cannot resize to " + std::to_string(width) + "x" + std::to_string(height) +
                          ": the limit is " + std::to_string(kMaxSide) + " per side and " +
                          std::to_string(kMaxPixels / 1'000'000) + " megapixels");
  if (width == image.width && height == image.height) return image;
  // Horizontal pass, then vertical, in double precision. Only the horizontally resampled input rows
  // that the current output row reads are kept (a window of about 6 x the shrink factor rows), so
  // a 10000x10000 input shrunk to 16x16 no longer holds it as doubles (2.4 GB; issue 20).
  const int c = image.channels;
  const size_t row_len = static_cast<size_t>(width) * c;
  const auto hx = lanczos_taps(image.width, width);
  const auto vy = lanczos_taps(image.height, height);
  std::deque<std::vector<double>> window;  // input rows first, first + 1, ...
  int first = 0;
  auto row = [&](int y) -> const std::vector<double>& {
    while (first + static_cast<int>(window.size()) <= y) {
      const int src_y = first + static_cast<int>(window.size());
      const uint8_t* in = image.pixels.data() + static_cast<size_t>(src_y) * image.width * c;
      std::vector<double> r(row_len);
      for (int o = 0; o < width; ++o) {
        const auto& t = hx[static_cast<size_t>(o)];
        for (int ch = 0; ch < c; ++ch) {
          double acc = 0;
          for (size_t k = 0; k < t.w.size(); ++k) acc += t.w[k] * in[(static_cast<size_t>(t.lo) + k) * c + ch];
          r[static_cast<size_t>(o) * c + ch] = acc;
        }
      }
      window.push_back(std::move(r));
    }
    return window[static_cast<size_t>(y - first)];
  };
  Image out;
  out.width = width;
  out.height = height;
  out.channels = c;
  out.pixels.resize(row_len * height);
  for (int o = 0; o < height; ++o) {
    const auto& t = vy[static_cast<size_t>(o)];
    while (first < t.lo) {  // rows no later output row reads (taps only move forward)
      if (!window.empty()) window.pop_front();
      ++first;
    }
    // Deque elements stay in place as rows are added, so these pointers hold for the whole row.
    std::vector<const double*> src(t.w.size());
    for (size_t k = 0; k < t.w.size(); ++k) src[k] = row(t.lo + static_cast<int>(k)).data();
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(o) * row_len;
    for (size_t x = 0; x < row_len; ++x) {
      double acc = 0;
      for (size_t k = 0; k < t.w.size(); ++k) acc += t.w[k] * src[k][x];
      dst[x] = static_cast<uint8_t>(std::clamp(std::lround(acc), 0L, 255L));
    }
  }
  return out;
}

}  // namespace amused
