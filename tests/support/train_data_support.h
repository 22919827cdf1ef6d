// Test helpers for the training-data tests: a tar archive writer (ustar, GNU long names, pax),
// deterministic images, EXIF insertion into PNG/JPEG bytes, and log capture.
#pragma once

#include <stb/stb_image_write.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "amused/pipeline.h"
#include "core/log.h"

namespace amused::testing::train_data {

// Pixel (x, y, c) = (x*29 + y*53 + c*97 + x*y*7) % 256: the image the Pillow reference values
// were made from.
inline Image formula_image(int w, int h, int salt = 0) {
  Image im;
  im.width = w;
  im.height = h;
  im.channels = 3;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        im.pixels.push_back(
            static_cast<uint8_t>((x * 29 + y * 53 + c * 97 + x * y * 7 + salt * 31) % 256));
  return im;
}

// Writes tar archives byte by byte, as GNU tar / Python's tarfile would.
class TarBuilder {
 public:
  void add(const std::string& name, const std::string& data, char type = '0') {
    out_ += header(name, data.size(), type, "", false);
    append_data(data);
  }
  // POSIX ustar name split into prefix (<= 155) and name (<= 100).
  void add_with_prefix(const std::string& prefix, const std::string& name,
                       const std::string& data) {
    out_ += header(name, data.size(), '0', prefix, false);
    append_data(data);
  }
  // GNU: a '././@LongLink' member of type 'L' holding the name, then the member (name truncated).
  void add_gnu_long_name(const std::string& name, const std::string& data) {
    const std::string n = name + '\0';
    out_ += header("././@LongLink", n.size(), 'L', "", true);
    append_data(n);
    out_ += header(name.substr(0, 100), data.size(), '0', "", true);
    append_data(data);
  }
  // pax: an 'x' header with a path record, then the member.
  void add_pax_path(const std::string& path, const std::string& data) {
    const std::string rec = pax_record("path", path);
    out_ += header("PaxHeaders/x", rec.size(), 'x', "", false);
    append_data(rec);
    out_ += header(path.substr(0, 100), data.size(), '0', "", false);
    append_data(data);
  }
  void add_pax_global(const std::string& records) {
    out_ += header("pax_global_header", records.size(), 'g', "", false);
    append_data(records);
  }
  // The archive without the end-of-archive marker.
  const std::string& bytes() const { return out_; }
  // The archive with two zero blocks.
  std::string finish() const { return out_ + std::string(1024, '\0'); }

  static std::string pax_record(const std::string& key, const std::string& value) {
    const std::string body = " " + key + "=" + value + "\n";
    size_t len = body.size() + 1;
    while (std::to_string(len).size() + body.size() != len)
      len = std::to_string(len).size() + body.size();
    return std::to_string(len) + body;
  }

 private:
  static void put_octal(std::string& h, size_t at, size_t width, uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%0*llo", static_cast<int>(width - 1),
                  static_cast<unsigned long long>(v));
    std::memcpy(&h[at], buf, width - 1);
  }
  static std::string header(const std::string& name, uint64_t size, char type,
                            const std::string& prefix, bool gnu) {
    std::string h(512, '\0');
    std::memcpy(&h[0], name.data(), std::min<size_t>(name.size(), 100));
    put_octal(h, 100, 8, type == '5' ? 0755 : 0644);
    put_octal(h, 108, 8, 1000);
    put_octal(h, 116, 8, 1000);
    put_octal(h, 124, 12, size);
    put_octal(h, 136, 12, 1700000000);
    h[156] = type;
    if (gnu)
      std::memcpy(&h[257], "ustar  \0", 8);
    else
      std::memcpy(&h[257],
                  "ustar\0"
                  "00",
                  8);
    std::memcpy(&h[345], prefix.data(), std::min<size_t>(prefix.size(), 155));
    std::memset(&h[148], ' ', 8);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    char buf[8];
    std::snprintf(buf, sizeof buf, "%06o", sum);
    std::memcpy(&h[148], buf, 7);  // six digits and a NUL, the space stays
    return h;
  }
  void append_data(const std::string& data) {
    out_ += data;
    out_.append((512 - data.size() % 512) % 512, '\0');
  }
  std::string out_;
};

inline uint32_t crc32(const std::string& data) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

// A big-endian TIFF with one IFD0 entry: Orientation (0x0112, SHORT) = orientation.
inline std::string tiff_orientation(int orientation) {
  std::string t = std::string("MM\0*", 4) + std::string("\0\0\0\x08", 4);
  t += std::string("\0\x01", 2);                    // one entry
  t += std::string("\x01\x12\0\x03\0\0\0\x01", 8);  // tag, SHORT, count 1
  t += std::string(1, '\0') + std::string(1, static_cast<char>(orientation)) + std::string(2, '\0');
  t += std::string(4, '\0');  // no next IFD
  return t;
}

// `png` with an eXIf chunk after IHDR.
inline std::string with_png_exif(const std::string& png, int orientation) {
  const std::string body = tiff_orientation(orientation);
  std::string chunk;
  const uint32_t n = static_cast<uint32_t>(body.size());
  chunk += {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
            static_cast<char>(n)};
  const std::string typed = "eXIf" + body;
  chunk += typed;
  const uint32_t crc = crc32(typed);
  chunk += {static_cast<char>(crc >> 24), static_cast<char>(crc >> 16), static_cast<char>(crc >> 8),
            static_cast<char>(crc)};
  return png.substr(0, 33) + chunk + png.substr(33);  // signature (8) + IHDR (25)
}

inline std::string jpeg_bytes(const Image& im, int quality = 95) {
  std::string out;
  stbi_write_jpg_to_func(
      [](void* ctx, void* data, int size) {
        static_cast<std::string*>(ctx)->append(static_cast<char*>(data), size);
      },
      &out, im.width, im.height, 3, im.pixels.data(), quality);
  return out;
}

// `jpeg` with an APP1 Exif segment right after SOI.
inline std::string with_jpeg_exif(const std::string& jpeg, int orientation) {
  const std::string payload = std::string("Exif\0\0", 6) + tiff_orientation(orientation);
  const size_t len = payload.size() + 2;
  std::string seg = {static_cast<char>(0xFF), static_cast<char>(0xE1), static_cast<char>(len >> 8),
                     static_cast<char>(len & 0xFF)};
  return jpeg.substr(0, 2) + seg + payload + jpeg.substr(2);
}

// Collects log messages while alive (and restores the default sink).
class LogCapture {
 public:
  LogCapture() {
    amused::log::set_sink([this](amused::log::Level level, const std::string& m) {
      if (level >= amused::log::Level::Warn) warnings.push_back(m);
    });
  }
  ~LogCapture() { amused::log::set_sink({}); }
  std::string joined() const {
    std::string s;
    for (const auto& w : warnings) s += w + "\n";
    return s;
  }
  std::vector<std::string> warnings;
};

}  // namespace amused::testing::train_data
