// Image limits: headers claiming huge sizes are refused before decoding, oversized files before
// reading, inconsistent images before indexing. See docs/RELIABILITY.md.
#include <gtest/gtest.h>

#include <string>

#include "amused/error.h"
#include "amused/image_io.h"
#include "support/golden.h"
#include "unit/limits_support.h"

using amused::testing::expect_error;
using amused::testing::golden_path;
using amused::testing::sparse_file;
using amused::testing::TempDir;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

std::string png_chunk(const std::string& type_and_data) {
  uint32_t crc = 0xffffffffu;  // CRC-32 (PNG's), bit by bit
  for (unsigned char ch : type_and_data) {
    crc ^= ch;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return be32(static_cast<uint32_t>(type_and_data.size() - 4)) + type_and_data +
         be32(crc ^ 0xffffffffu);
}

// A PNG signature, an IHDR claiming w x h RGB pixels, and an empty IDAT: no pixel data at all.
std::string png_header(uint32_t w, uint32_t h) {
  return std::string("\x89PNG\r\n\x1a\n", 8) +
         png_chunk("IHDR" + be32(w) + be32(h) + std::string("\x08\x02\x00\x00\x00", 5)) +
         png_chunk("IDAT");
}

}  // namespace

TEST(ResourceLimits, ImagesClaimingHugeSizesAreRefusedBeforeDecoding) {
  expect_error<amused::IoError>(
      [&] { amused::decode_image(png_header(100000, 100000), "big.png"); }, "claims");
  expect_error<amused::IoError>([&] { amused::decode_image(png_header(16384, 16384), "big.png"); },
                                "megapixels");
  // BMP header claiming 100000 x 100000.
  std::string bmp = "BM" + std::string(12, '\0');
  bmp[10] = 54;
  std::string info(40, '\0');
  auto le = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) info[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
  };
  le(0, 40), le(4, 100000), le(8, 100000), info[12] = 1, info[14] = 24;
  expect_error<amused::IoError>([&] { amused::decode_image(bmp + info, "big.bmp"); }, "big.bmp");
  TempDir tmp;
  sparse_file(tmp / "huge.png", std::string("\x89PNG\r\n\x1a\n", 8), (256ull << 20) + 1);
  expect_error<amused::IoError>([&] { amused::load_image(tmp / "huge.png"); }, "MiB limit");
  expect_error<amused::IoError>([&] { amused::load_image(tmp.path()); }, "is a folder");
}

TEST(ResourceLimits, ResizeAndGreyCheckTheirInput) {
  amused::Image bad;
  bad.width = 100;
  bad.height = 100;
  bad.pixels.assign(10, 0);  // claims 100x100x3
  expect_error<amused::InvalidArgument>([&] { amused::to_grey(bad); }, "inconsistent image");
  expect_error<amused::InvalidArgument>([&] { amused::resize_image(bad, 8, 8); },
                                        "inconsistent image");
  amused::Image two;
  two.width = two.height = 2;
  two.channels = 2;
  two.pixels.assign(8, 0);
  expect_error<amused::InvalidArgument>([&] { amused::to_grey(two); }, "channels 1, 3 or 4");
  amused::Image ok;
  ok.width = ok.height = 2;
  ok.pixels.assign(12, 9);
  expect_error<amused::InvalidArgument>([&] { amused::resize_image(ok, 100000, 100000); },
                                        "megapixels");
  EXPECT_EQ(amused::resize_image(ok, 3, 3).pixels.size(), 27u);
}
