// PNG writing (with iTXt metadata) and text-chunk reading through libpng.
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "amused/error.h"
#include "amused/image_io.h"
#include "io/atomic_file.h"

namespace amused {
namespace {

void write_to_string(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), length);
}
void flush_noop(png_structp) {}

struct ErrorState {
  std::string message;
};
void on_error(png_structp png, png_const_charp msg) {
  auto* st = static_cast<ErrorState*>(png_get_error_ptr(png));
  if (st) st->message = msg;
  png_longjmp(png, 1);
}
void on_warning(png_structp, png_const_charp) {}

// Encodes `image` as an 8-bit PNG with `text` as iTXt chunks; `what` names the target in errors.
std::string encode_png_named(const Image& image, const TextChunks& text, const std::string& what) {
  if (image.width <= 0 || image.height <= 0 ||
      (image.channels != 3 && image.channels != 1 && image.channels != 4) ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * image.channels)
    throw InvalidArgument("cannot write " + what + ": image buffer does not match " +
                          std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
                          std::to_string(image.channels));
  std::string bytes;
  ErrorState err;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
  if (!png) throw IoError("libpng: out of memory");
  png_infop info = png_create_info_struct(png);
  // Keep these alive until png_write_end: libpng reads the text pointers lazily.
  std::vector<std::string> keys, values;
  std::vector<png_text> chunks;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw IoError("cannot encode PNG " + what + ": " + err.message);
  }
  png_set_write_fn(png, &bytes, write_to_string, flush_noop);
  const int color = image.channels == 3   ? PNG_COLOR_TYPE_RGB
                    : image.channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA
                                          : PNG_COLOR_TYPE_GRAY;
  png_set_IHDR(png, info, image.width, image.height, 8, color, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  keys.reserve(text.size());
  values.reserve(text.size());
  for (const auto& [k, v] : text) {
    // PNG keywords: 1-79 Latin-1 characters.
    keys.push_back(k.substr(0, 79));
    values.push_back(v);
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    png_text t;
    std::memset(&t, 0, sizeof t);
    t.compression = PNG_ITXT_COMPRESSION_NONE;
    t.key = const_cast<char*>(keys[i].c_str());
    t.text = const_cast<char*>(values[i].c_str());
    t.itxt_length = values[i].size();
    t.lang = nullptr;
    t.lang_key = nullptr;
    chunks.push_back(t);
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(image.width) * image.channels;
  for (int y = 0; y < image.height; ++y)
    png_write_row(png, const_cast<png_bytep>(image.pixels.data() + y * stride));
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return bytes;
}

}  // namespace

std::string encode_png(const Image& image, const TextChunks& text) {
  return encode_png_named(image, text, "PNG in memory");
}

void save_png(const std::filesystem::path& path, const Image& image, const TextChunks& text) {
  io::write_file_atomic(path, encode_png_named(image, text, "'" + path.string() + "'"));
}

void save_files(const std::vector<std::pair<std::filesystem::path, std::string>>& files) {
  io::write_files_atomic(files);
}

}  // namespace amused
