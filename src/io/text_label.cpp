#include "io/text_label.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include <hb-ft.h>
#include <hb.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "amused/error.h"

namespace fs = std::filesystem;

namespace amused::io {

struct TextPainter::State {
  FT_Library library = nullptr;
  FT_Face face = nullptr;
  hb_font_t* font = nullptr;
  hb_buffer_t* buffer = nullptr;
  int size = 0;  // the pixel size set on the face
};

namespace {
struct Glyph {
  unsigned index;
  int x;  // pen position (pixels) of the glyph's origin
};
}  // namespace

std::shared_ptr<TextPainter> TextPainter::system() {
  static std::once_flag once;
  static std::shared_ptr<TextPainter> painter;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("AMUSED_FONT"); env && *env) candidates.emplace_back(env);
    for (const char* p : {"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                          "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                          "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"})
      candidates.emplace_back(p);
    for (const auto& path : candidates) {
      std::error_code ec;
      if (!fs::is_regular_file(path, ec)) continue;
      try {
        painter = std::make_shared<TextPainter>(path);
        return;
      } catch (const Error&) {
      }
    }
  });
  return painter;
}

TextPainter::TextPainter(const std::string& font_path) : s_(std::make_unique<State>()), path_(font_path) {
  if (FT_Init_FreeType(&s_->library) != 0) throw IoError("FreeType failed to initialise");
  if (FT_New_Face(s_->library, font_path.c_str(), 0, &s_->face) != 0 || !FT_IS_SCALABLE(s_->face)) {
    if (s_->face) FT_Done_Face(s_->face);
    FT_Done_FreeType(s_->library);
    s_->face = nullptr;
    s_->library = nullptr;
    throw IoError("cannot use the font '" + font_path + "' for labels (not a scalable font FreeType reads)");
  }
  s_->buffer = hb_buffer_create();
}

TextPainter::~TextPainter() {
  if (s_->buffer) hb_buffer_destroy(s_->buffer);
  if (s_->font) hb_font_destroy(s_->font);
  if (s_->face) FT_Done_Face(s_->face);
  if (s_->library) FT_Done_FreeType(s_->library);
}

namespace {
// Shapes `text` at `px` pixels: the glyphs and the total advance.
std::vector<Glyph> shape(FT_Face face, hb_font_t*& font, hb_buffer_t* buffer, int& size, const std::string& text,
                         int px, int& width) {
  if (size != px) {
    FT_Set_Pixel_Sizes(face, 0, static_cast<FT_UInt>(px));
    if (font) hb_font_destroy(font);
    font = hb_ft_font_create_referenced(face);
    size = px;
  }
  hb_buffer_reset(buffer);
  hb_buffer_add_utf8(buffer, text.data(), static_cast<int>(text.size()), 0, static_cast<int>(text.size()));
  hb_buffer_guess_segment_properties(buffer);
  hb_shape(font, buffer, nullptr, 0);
  unsigned n = 0;
  const hb_glyph_info_t* info = hb_buffer_get_glyph_infos(buffer, &n);
  const hb_glyph_position_t* pos = hb_buffer_get_glyph_positions(buffer, &n);
  std::vector<Glyph> glyphs;
  int pen = 0;  // 26.6 fixed point
  for (unsigned i = 0; i < n; ++i) {
    glyphs.push_back({info[i].codepoint, (pen + pos[i].x_offset) / 64});
    pen += pos[i].x_advance;
  }
  width = pen / 64;
  return glyphs;
}
}  // namespace

int TextPainter::measure(const std::string& text, int px) {
  std::lock_guard<std::mutex> lock(mu_);
  int width = 0;
  shape(s_->face, s_->font, s_->buffer, s_->size, text, std::max(1, px), width);
  return width;
}

void TextPainter::draw(Image& image, int x, int y, int box_width, const std::string& text, int px,
                       const std::array<uint8_t, 3>& rgb) {
  if (image.channels != 3 || text.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  int width = 0;
  const auto glyphs = shape(s_->face, s_->font, s_->buffer, s_->size, text, std::max(1, px), width);
  const int left = width < box_width ? x + (box_width - width) / 2 : x;
  const int right = std::min(image.width, x + box_width);
  const int baseline = y + static_cast<int>(s_->face->size->metrics.ascender / 64);
  for (const Glyph& g : glyphs) {
    if (FT_Load_Glyph(s_->face, g.index, FT_LOAD_RENDER) != 0) continue;
    const FT_GlyphSlot slot = s_->face->glyph;
    const FT_Bitmap& bm = slot->bitmap;
    if (bm.pixel_mode != FT_PIXEL_MODE_GRAY) continue;
    const int gx = left + g.x + slot->bitmap_left, gy = baseline - slot->bitmap_top;
    for (unsigned r = 0; r < bm.rows; ++r) {
      const int py = gy + static_cast<int>(r);
      if (py < 0 || py >= image.height) continue;
      for (unsigned c = 0; c < bm.width; ++c) {
        const int px_ = gx + static_cast<int>(c);
        if (px_ < std::max(0, x) || px_ >= right) continue;
        const unsigned a = bm.buffer[static_cast<size_t>(r) * static_cast<size_t>(bm.pitch) + c];
        if (a == 0) continue;
        uint8_t* p = image.pixels.data() + (static_cast<size_t>(py) * image.width + px_) * 3;
        for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>((rgb[k] * a + p[k] * (255 - a) + 127) / 255);
      }
    }
  }
}

}  // namespace amused::io
