// Image files: PNG round trip with text chunks, PNG/JPEG/BMP input in every colour layout, bad files.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <cstdio>  // (before jpeglib.h, which uses FILE)
#include <fstream>

#include <jpeglib.h>
#include <png.h>
#include <stb/stb_image_write.h>

#include "amused/error.h"
#include "amused/image_io.h"
#include "support/golden.h"

using amused::Image;
using amused::testing::TempDir;

namespace {
Image gradient(int w, int h, int c) {
  Image im;
  im.width = w;
  im.height = h;
  im.channels = c;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < c; ++k) im.pixels.push_back(static_cast<uint8_t>((x * 13 + y * 7 + k * 50) % 256));
  return im;
}
}  // namespace

TEST(ImageIo, PngRoundTripWithText) {
  TempDir tmp;
  auto im = gradient(7, 5, 3);
  amused::save_png(tmp / "a.png", im, {{"prompt", "a café ☕"}, {"seed", "42"}});
  auto back = amused::load_image(tmp / "a.png");
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.pixels, im.pixels);
  auto text = amused::read_png_text((tmp / "a.png").string());
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(text["prompt"], "a café ☕");
  EXPECT_EQ(text["seed"], "42");
}

TEST(ImageIo, GreyAndRgbaBecomeRgb) {
  TempDir tmp;
  auto grey = gradient(4, 3, 1);
  amused::save_png(tmp / "g.png", grey);
  auto g = amused::load_image(tmp / "g.png");
  ASSERT_EQ(g.channels, 3);
  for (size_t i = 0; i < grey.pixels.size(); ++i) {
    EXPECT_EQ(g.pixels[3 * i], grey.pixels[i]);
    EXPECT_EQ(g.pixels[3 * i + 2], grey.pixels[i]);
  }
  auto rgba = gradient(4, 3, 4);
  amused::save_png(tmp / "r.png", rgba);
  auto r = amused::load_image(tmp / "r.png");
  for (size_t i = 0; i < 12; ++i)
    for (int k = 0; k < 3; ++k) EXPECT_EQ(r.pixels[3 * i + k], rgba.pixels[4 * i + k]);  // alpha dropped
}

TEST(ImageIo, ReadsJpegAndBmp) {
  TempDir tmp;
  auto im = gradient(16, 8, 3);
  ASSERT_TRUE(stbi_write_bmp((tmp / "a.bmp").c_str(), 16, 8, 3, im.pixels.data()));
  auto b = amused::load_image(tmp / "a.bmp");
  EXPECT_EQ(b.pixels, im.pixels);
  Image flat;
  flat.width = 16;
  flat.height = 8;
  flat.pixels.assign(16 * 8 * 3, 120);
  ASSERT_TRUE(stbi_write_jpg((tmp / "a.jpg").c_str(), 16, 8, 3, flat.pixels.data(), 95));
  auto j = amused::load_image(tmp / "a.jpg");
  ASSERT_EQ(j.width, 16);
  ASSERT_EQ(j.height, 8);
  for (auto v : j.pixels) EXPECT_NEAR(v, 120, 2);
}

TEST(ImageIo, BadFilesAreClearErrors) {
  TempDir tmp;
  EXPECT_THROW(amused::load_image(tmp / "missing.png"), amused::IoError);
  { std::ofstream(tmp / "text.png") << "hello"; }
  EXPECT_THROW(amused::load_image(tmp / "text.png"), amused::IoError);
  amused::save_png(tmp / "full.png", gradient(32, 32, 3));
  std::ifstream in(tmp / "full.png", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  { std::ofstream(tmp / "cut.png", std::ios::binary) << bytes.substr(0, bytes.size() / 2); }
  try {
    amused::load_image(tmp / "cut.png");
    FAIL();
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("cut.png"), std::string::npos) << e.what();
  }
  EXPECT_THROW(amused::save_png(tmp / "no" / "x.png", gradient(2, 2, 3)), amused::IoError);
}

TEST(ImageIo, ResizeAndGrey) {
  Image flat;
  flat.width = 30;
  flat.height = 20;
  flat.pixels.assign(30 * 20 * 3, 77);
  auto r = amused::resize_image(flat, 16, 12);
  EXPECT_EQ(r.width, 16);
  EXPECT_EQ(r.height, 12);
  for (auto v : r.pixels) EXPECT_EQ(v, 77);
  Image px;
  px.width = px.height = 1;
  px.pixels = {255, 0, 0};
  EXPECT_EQ(amused::to_grey(px).pixels[0], 76);  // PIL: L = 0.299 R + 0.587 G + 0.114 B
}

// The resampler keeps only a window of horizontally resampled rows (issue 20: a 10000x10000
// input held 2.4 GB of doubles); its pixels equal the two full passes it replaced, computed here
// the old way, for shrinking and enlarging along each axis.
TEST(ImageIo, ResizeStreamsRowsAndEqualsTwoFullPasses) {
  auto lanczos = [](double x) {
    x = std::fabs(x);
    if (x < 1e-12) return 1.0;
    if (x >= 3.0) return 0.0;
    const double px = M_PI * x;
    return 3.0 * std::sin(px) * std::sin(px / 3.0) / (px * px);
  };
  // One axis over `lines` lines (the old resample_axis).
  auto axis = [&](const std::vector<double>& in, int n_in, int n_out, int lines, int c, bool horizontal, int other) {
    std::vector<double> out(static_cast<size_t>(n_out) * lines * c);
    const double scale = static_cast<double>(n_in) / n_out, fscale = std::max(scale, 1.0), support = 3.0 * fscale;
    for (int o = 0; o < n_out; ++o) {
      const double center = (o + 0.5) * scale;
      const int lo = std::max(0, static_cast<int>(std::floor(center - support)));
      const int hi = std::min(n_in, static_cast<int>(std::ceil(center + support)));
      std::vector<double> w(static_cast<size_t>(hi - lo));
      double total = 0;
      for (int i = lo; i < hi; ++i) total += w[i - lo] = lanczos((i + 0.5 - center) / fscale);
      for (auto& v : w) v /= total == 0 ? 1 : total;
      for (int l = 0; l < lines; ++l)
        for (int ch = 0; ch < c; ++ch) {
          double acc = 0;
          for (int i = lo; i < hi; ++i)
            acc += w[i - lo] * in[horizontal ? (static_cast<size_t>(l) * n_in + i) * c + ch
                                             : (static_cast<size_t>(i) * other + l) * c + ch];
          out[horizontal ? (static_cast<size_t>(l) * n_out + o) * c + ch : (static_cast<size_t>(o) * other + l) * c + ch] = acc;
        }
    }
    return out;
  };
  std::mt19937 rng(5);
  for (auto [w0, h0, w1, h1] : std::vector<std::array<int, 4>>{{37, 23, 16, 16}, {16, 16, 40, 33}, {100, 7, 9, 50}, {5, 90, 64, 8}}) {
    Image in;
    in.width = w0;
    in.height = h0;
    in.pixels.resize(static_cast<size_t>(w0) * h0 * 3);
    for (auto& p : in.pixels) p = static_cast<uint8_t>(rng() % 256);
    const std::vector<double> src(in.pixels.begin(), in.pixels.end());
    const auto tmp = axis(src, w0, w1, h0, 3, true, 0);
    const auto dst = axis(tmp, h0, h1, w1, 3, false, w1);
    std::vector<uint8_t> expected(dst.size());
    for (size_t i = 0; i < dst.size(); ++i) expected[i] = static_cast<uint8_t>(std::clamp(std::lround(dst[i]), 0L, 255L));
    const Image out = amused::resize_image(in, w1, h1);
    EXPECT_EQ(out.pixels, expected) << w0 << "x" << h0 << " -> " << w1 << "x" << h1;
  }
}

TEST(ImageIo, EncodeAndDecodeInMemory) {
  TempDir tmp;
  auto im = gradient(9, 4, 3);
  const amused::TextChunks text = {{"prompt", "in memory"}, {"seed", "7"}};
  const std::string bytes = amused::encode_png(im, text);
  amused::save_png(tmp / "b.png", im, text);
  std::ifstream in(tmp / "b.png", std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes, file);  // the same encoder and chunks as save_png
  auto back = amused::decode_image(bytes, "upload");
  EXPECT_EQ(back.width, 9);
  EXPECT_EQ(back.height, 4);
  EXPECT_EQ(back.pixels, im.pixels);
  EXPECT_THROW(amused::decode_image("not an image", "upload"), amused::IoError);
  EXPECT_THROW(amused::decode_image(bytes.substr(0, bytes.size() / 2), "upload"), amused::IoError);
  try {
    amused::decode_image("", "field 'image'");
    FAIL();
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("field 'image'"), std::string::npos) << e.what();
  }
  Image bad = im;
  bad.pixels.pop_back();
  EXPECT_THROW(amused::encode_png(bad), amused::InvalidArgument);
}

TEST(ImageIo, SaveFilesIsAllOrNothing) {
  namespace fs = std::filesystem;
  TempDir tmp;
  fs::create_directories(tmp / "images");
  auto read = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  auto count_files = [](const fs::path& dir) {
    return std::distance(fs::directory_iterator(dir), fs::directory_iterator{});
  };
  const std::string png = amused::encode_png(gradient(4, 4, 3));
  amused::TokenGrid grid;
  grid.height = grid.width = 2;
  grid.ids = {1, 2, 3, 4};
  const std::string tokens = amused::encode_token_grids({grid});

  amused::save_files({{tmp / "images" / "a.png", png}, {tmp / "images" / "b.png", png}, {tmp / "t.safetensors", tokens}});
  EXPECT_EQ(read(tmp / "images" / "a.png"), png);
  EXPECT_EQ(read(tmp / "images" / "b.png"), png);
  EXPECT_EQ(amused::load_token_grids(tmp / "t.safetensors")[0].ids, grid.ids);

  // The last file cannot be written (its folder is missing): nothing is replaced, nothing is left.
  { std::ofstream(tmp / "images" / "a.png", std::ios::binary) << "old"; }
  try {
    amused::save_files({{tmp / "images" / "a.png", png}, {tmp / "images" / "c.png", png},
                        {tmp / "missing" / "t.safetensors", tokens}});
    FAIL() << "expected an IoError";
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read(tmp / "images" / "a.png"), "old");
  EXPECT_FALSE(fs::exists(tmp / "images" / "c.png"));
  EXPECT_EQ(count_files(tmp / "images"), 2);  // a.png, b.png: no temporary file left
}

// Issue 20: common files that were refused or accepted wrongly.
TEST(ImageIo, PalettePngWithTransparencyIsRead) {
  // What pngquant writes: a palette with a tRNS chunk (per-entry alpha).
  TempDir tmp;
  const auto path = tmp / "pal.png";
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, f);
  png_set_IHDR(png, info, 3, 2, 8, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_color palette[3] = {{255, 0, 0}, {0, 200, 0}, {10, 20, 250}};
  png_set_PLTE(png, info, palette, 3);
  png_byte alpha[3] = {0, 128, 255};
  png_set_tRNS(png, info, alpha, 3, nullptr);
  png_write_info(png, info);
  png_byte rows[2][3] = {{0, 1, 2}, {2, 1, 0}};
  for (auto& r : rows) png_write_row(png, r);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
  const Image im = amused::load_image(path);
  ASSERT_EQ(im.channels, 3);
  ASSERT_EQ(im.pixels.size(), 3u * 2 * 3);
  // Transparency dropped, the palette's colours kept (PIL's convert("RGB")).
  EXPECT_EQ(std::vector<uint8_t>(im.pixels.begin(), im.pixels.begin() + 9),
            (std::vector<uint8_t>{255, 0, 0, 0, 200, 0, 10, 20, 250}));
  EXPECT_EQ(std::vector<uint8_t>(im.pixels.begin() + 9, im.pixels.end()),
            (std::vector<uint8_t>{10, 20, 250, 0, 200, 0, 255, 0, 0}));
}

TEST(ImageIo, CmykJpegIsConvertedAsPilDoes) {
  TempDir tmp;
  const auto path = tmp / "cmyk.jpg";
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  jpeg_stdio_dest(&c, f);
  c.image_width = 16;
  c.image_height = 16;
  c.input_components = 4;
  c.in_color_space = JCS_CMYK;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 100, TRUE);
  jpeg_start_compress(&c, TRUE);
  // Stored values; libjpeg writes an Adobe marker for CMYK, so readers take them as inverted
  // (Photoshop's convention, PIL's "CMYK;I"): C 0, M 200, Y 0, K 0 -> RGB (255, 55, 255).
  std::vector<JSAMPLE> row(16 * 4);
  for (int x = 0; x < 16; ++x) row[x * 4 + 0] = 255, row[x * 4 + 1] = 55, row[x * 4 + 2] = 255, row[x * 4 + 3] = 255;
  while (c.next_scanline < c.image_height) {
    JSAMPROW r = row.data();
    jpeg_write_scanlines(&c, &r, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  std::fclose(f);
  const Image im = amused::load_image(path);
  ASSERT_EQ(im.width, 16);
  for (size_t i = 0; i < im.pixels.size(); i += 3) {
    EXPECT_NEAR(im.pixels[i + 0], 255, 2);
    EXPECT_NEAR(im.pixels[i + 1], 55, 2);
    EXPECT_NEAR(im.pixels[i + 2], 255, 2);
  }
}

TEST(ImageIo, TruncatedJpegIsRefused) {
  TempDir tmp;
  const Image im = gradient(64, 64, 3);
  ASSERT_TRUE(stbi_write_jpg((tmp / "full.jpg").c_str(), 64, 64, 3, im.pixels.data(), 90));
  std::ifstream in(tmp / "full.jpg", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NO_THROW(amused::load_image(tmp / "full.jpg"));
  { std::ofstream(tmp / "cut.jpg", std::ios::binary) << bytes.substr(0, bytes.size() * 6 / 10); }
  try {
    amused::load_image(tmp / "cut.jpg");
    FAIL() << "a truncated JPEG decoded";
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cut.jpg"), std::string::npos) << e.what();
  }
}
