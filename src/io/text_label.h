// Text on pictures (labels of the attention sheets): a system sans-serif font, shaped with HarfBuzz
// and drawn with FreeType.
//
//   if (auto painter = io::TextPainter::system())
//     painter->draw(sheet, /*x=*/0, /*y=*/260, /*box_width=*/256, "apple", /*px=*/16, {0, 0, 0});
//
// The font: $AMUSED_FONT when set, else DejaVu Sans (Debian's fonts-dejavu-core, which setup.sh
// installs), else Liberation Sans or Noto Sans. Without any, system() returns nullptr and callers
// leave the labels out (and say so).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "amused/image.h"

namespace amused::io {

class TextPainter {
 public:
  // The shared painter (opened once, thread-safe), or nullptr when no font is found.
  static std::shared_ptr<TextPainter> system();
  // A painter on one font file; throws IoError when it cannot be read.
  explicit TextPainter(const std::string& font_path);
  ~TextPainter();
  TextPainter(const TextPainter&) = delete;
  TextPainter& operator=(const TextPainter&) = delete;

  // Width in pixels of `text` (UTF-8) at a pixel size of `px`.
  int measure(const std::string& text, int px);
  // Draws `text` in `rgb` with its top at y, centred in the box [x, x + box_width) (left-aligned
  // when it is wider, and clipped to the box and to the image). Blends by the glyphs' coverage.
  void draw(Image& image, int x, int y, int box_width, const std::string& text, int px,
            const std::array<uint8_t, 3>& rgb);
  const std::string& font_path() const { return path_; }

 private:
  struct State;
  std::unique_ptr<State> s_;
  std::string path_;
  std::mutex mu_;
};

}  // namespace amused::io
