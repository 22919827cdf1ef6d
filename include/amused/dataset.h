// Building training data: a captioned emoji image set from Debian packages, offline.
//
//   amused::EmojiDatasetOptions o;
//   o.output = "data/emoji";   // images/*.png + metadata.jsonl + README.md + licenses/
//   o.size = 64;
//   amused::EmojiDatasetSummary s = amused::build_emoji_dataset(o);
//   // `amused train --data data/emoji` and `amused train-vq --data data/emoji` read it as any image folder.
//
// Sources (installed by scripts/setup.sh):
//  * images: every fully-qualified emoji of emoji-test.txt rendered from fonts-noto-color-emoji's
//    NotoColorEmoji.ttf (its CBDT colour bitmaps through FreeType; sequences such as flags, skin tones
//    and ZWJ families shaped into their one glyph by HarfBuzz), composited onto a plain background and
//    reduced to size x size pixels by exact area averaging;
//  * captions: the emoji's name in unicode-data's emoji-test.txt ("red apple", "judge: medium skin
//    tone"), its English CLDR annotations from unicode-cldr-core (annotations/en.xml and
//    annotationsDerived/en.xml: the keywords "apple | fruit | red"), and its group/subgroup.
// The output is the same bytes on every rebuild with the same packages and options: the split is a
// hash of the code points (stable when emoji are added), the PNGs carry no time, and every file is
// written atomically.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "amused/error.h"

namespace amused {

struct EmojiDatasetOptions {
  std::string output;                        // the dataset folder (created; existing files replaced)
  int size = 64;                             // image side in pixels (8..1024)
  std::array<uint8_t, 3> background = {255, 255, 255};
  double margin = 1.0 / 16;                  // empty border on each side, as a fraction of `size`
  double validation_fraction = 0.05;         // share of the emoji in the validation split
  int64_t limit = 0;                         // > 0: only the first N emoji of emoji-test.txt (tests)
  // The package files (defaults: where Debian installs them).
  std::string font = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf";
  std::string emoji_test = "/usr/share/unicode/emoji/emoji-test.txt";
  std::string cldr_annotations = "/usr/share/unicode/cldr/common/annotations/en.xml";
  std::string cldr_annotations_derived = "/usr/share/unicode/cldr/common/annotationsDerived/en.xml";
};

struct EmojiDatasetProgress {
  int64_t done = 0, total = 0;  // emoji rendered / to render
  double elapsed_seconds = 0, eta_seconds = 0;
};
// Called every few emoji; return false to stop (nothing is written after that point, and the
// metadata of a stopped build is not written, so a partial folder never looks complete).
using EmojiDatasetCallback = std::function<bool(const EmojiDatasetProgress&)>;

struct EmojiDatasetSummary {
  int64_t images = 0, train = 0, validation = 0;
  std::vector<std::string> not_rendered;  // "1F9D1 200D ... (name)": sequences the font has no glyph for
  int64_t without_cldr = 0;               // emoji without CLDR keywords (captioned by name only)
  std::string metadata;                   // path of metadata.jsonl
  double seconds = 0;
};

// Builds the dataset. Throws amused::IoError when a package file is missing (naming the file and
// the Debian package that installs it) or the output cannot be written, amused::InvalidArgument for
// bad options, amused::Cancelled when the callback stops it.
EmojiDatasetSummary build_emoji_dataset(const EmojiDatasetOptions& options,
                                        const EmojiDatasetCallback& progress = {});

}  // namespace amused
