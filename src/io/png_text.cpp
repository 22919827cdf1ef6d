// read_png_text: the text chunks of a PNG, through libpng (no pixel data is decoded).
#include "amused/png_text.h"

#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

namespace amused {

namespace {
struct FileCloser {
  void operator()(FILE* f) const {
    if (f) std::fclose(f);
  }
};

void on_png_error(png_structp png, png_const_charp message) {
  auto* out = static_cast<std::string*>(png_get_error_ptr(png));
  if (out) *out = message ? message : "unknown libpng error";
  png_longjmp(png, 1);
}
void on_png_warning(png_structp, png_const_charp) {}
}  // namespace

std::map<std::string, std::string> read_png_text(const std::string& path) {
  std::unique_ptr<FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw IoError("cannot open '" + path + "': " + std::strerror(errno));
  unsigned char sig[8] = {0};
  if (std::fread(sig, 1, 8, file.get()) != 8 || png_sig_cmp(sig, 0, 8) != 0)
    throw IoError("'" + path + "' is not a PNG file (bad signature)");
  std::string error;
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, on_png_error, on_png_warning);
  if (!png) throw IoError("cannot initialise libpng");
  png_infop info = png_create_info_struct(png);
  png_infop end_info = png_create_info_struct(png);
  std::map<std::string, std::string> out;
  std::vector<png_byte> row;
  // No C++ objects with destructors are created between setjmp and a possible longjmp except `out`
  // and `error`, which outlive it.
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, &end_info);
    throw IoError("'" + path + "' is not a valid PNG: " + error);
  }
  png_init_io(png, file.get());
  png_set_sig_bytes(png, 8);
  auto collect = [&](png_infop where) {
    png_textp text = nullptr;
    int n = 0;
    png_get_text(png, where, &text, &n);
    for (int i = 0; i < n; ++i)
      out[text[i].key ? text[i].key : ""] = text[i].text ? text[i].text : "";
  };
  png_read_info(png, info);
  collect(info);
  // Text chunks may also follow the image data: decode the rows (one buffer, reused) to reach them.
  const png_uint_32 height = png_get_image_height(png, info);
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  row.resize(png_get_rowbytes(png, info));
  for (int pass = 0; pass < passes; ++pass)
    for (png_uint_32 y = 0; y < height; ++y) png_read_row(png, row.data(), nullptr);
  png_read_end(png, end_info);
  collect(end_info);
  png_destroy_read_struct(&png, &info, &end_info);
  return out;
}

}  // namespace amused
