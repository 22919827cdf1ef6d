// The pieces of amused::build_emoji_dataset (include/amused/dataset.h), exposed for tests: the
// emoji-test.txt and CLDR annotation parsers, the captions, the split, and the renderer.
// Ref: Unicode TR51 (emoji-test.txt format), CLDR LDML part 2 (annotations), FreeType's CBDT
//      support (FT_LOAD_COLOR, FT_PIXEL_MODE_BGRA), HarfBuzz hb_shape.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "amused/dataset.h"
#include "amused/pipeline.h"

namespace amused::training {

// One fully-qualified line of emoji-test.txt.
struct EmojiEntry {
  std::u32string codepoints;
  std::string emoji;     // UTF-8
  std::string name;      // "red apple", "flag: Japan", "judge: medium skin tone"
  std::string version;   // "E0.6"
  std::string group, subgroup;
  std::string hex() const;  // "1F34E" / "1F468 200D 1F469" as in the file
  std::string file_stem() const;  // "1f34e" / "1f468-200d-1f469"
};

// Fully-qualified entries in file order. Throws IoError naming `source` and the line for a
// malformed one (a bad code point, a missing name).
std::vector<EmojiEntry> parse_emoji_test(std::string_view text, const std::string& source);

struct CldrAnnotation {
  std::vector<std::string> keywords;  // "apple", "fruit", "red"
  std::string tts;                    // the short name ("red apple")
};
// <annotation cp="X">a | b</annotation> and <annotation cp="X" type="tts">name</annotation>,
// keyed by the code points as written (UTF-8, XML entities decoded). Throws IoError naming
// `source` for an unterminated element.
std::map<std::string, CldrAnnotation> parse_cldr_annotations(std::string_view xml, const std::string& source);

// The CLDR entry of an emoji: exact, else without U+FE0F variation selectors (CLDR drops them).
const CldrAnnotation* find_annotation(const std::map<std::string, CldrAnnotation>& annotations,
                                      const std::string& emoji);

// Caption forms of one emoji, the first being the one `text` holds:
//   "red apple"                                     (the name)
//   "red apple, apple, fruit, red"                  (name + CLDR keywords not already in it)
//   "red apple, food & drink, food-fruit"           (name + group and subgroup)
std::vector<std::string> emoji_captions(const EmojiEntry& e, const CldrAnnotation* cldr);

// true: validation. A pure function of the code points (FNV-1a 64 of hex()), so the split of an
// emoji never changes when others are added or removed.
bool in_validation_split(const EmojiEntry& e, double validation_fraction);

// Renders emoji with a colour font: FreeType + HarfBuzz.
class EmojiRenderer {
 public:
  // Throws IoError naming the font (and fonts-noto-color-emoji) when it is missing or unreadable,
  // Unsupported when it has no colour bitmaps.
  explicit EmojiRenderer(const std::string& font_path);
  ~EmojiRenderer();
  EmojiRenderer(const EmojiRenderer&) = delete;
  EmojiRenderer& operator=(const EmojiRenderer&) = delete;

  // The emoji as RGB8 size x size on `background`, the glyph scaled to fit size*(1 - 2*margin)
  // and centred; nullopt when the font does not shape `utf8` into exactly one glyph.
  std::optional<Image> render(const std::string& utf8, int size, const std::array<uint8_t, 3>& background,
                              double margin);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Exact area-average resampling of premultiplied RGBA (float, w x h): the square [x0, x0 + side) x
// [y0, y0 + side) of the input (which may reach outside it: transparent there) onto out_size x
// out_size cells. Exposed for tests.
std::vector<float> area_resample(const std::vector<float>& rgba, int w, int h, double x0, double y0, double side,
                                 int out_size);

}  // namespace amused::training
