// `amused dataset emoji OUT`: builds the captioned emoji image set (amused::build_emoji_dataset)
// that `amused train` and `amused train-vq` read.
#include <cstdio>
#include <string>

#include "amused/dataset.h"
#include "command.h"
#include "progress.h"

namespace {

std::array<uint8_t, 3> parse_colour(const std::string& s) {
  const std::string hex = !s.empty() && s[0] == '#' ? s.substr(1) : s;
  if (s == "white") return {255, 255, 255};
  if (s == "black") return {0, 0, 0};
  unsigned r = 0, g = 0, b = 0;
  char tail = 0;
  if (hex.size() != 6 || std::sscanf(hex.c_str(), "%2x%2x%2x%c", &r, &g, &b, &tail) != 3)
    throw amused::InvalidArgument("--background '" + s + "': expected #RRGGBB, white or black");
  return {static_cast<uint8_t>(r), static_cast<uint8_t>(g), static_cast<uint8_t>(b)};
}

const amused::cli::Registrar reg{
    "dataset", "Build training data offline (emoji: images + captions from Debian packages)",
    [](CLI::App& sub) -> std::function<int()> {
      sub.require_subcommand(1);
      auto* emoji = sub.add_subcommand(
          "emoji",
          "Every fully-qualified emoji of fonts-noto-color-emoji, captioned from unicode-data and "
          "unicode-cldr-core: OUT/images/*.png + OUT/metadata.jsonl (file_name, text, captions, split, ...)");
      auto o = std::make_shared<amused::EmojiDatasetOptions>();
      auto background = std::make_shared<std::string>("#ffffff");
      auto quiet = std::make_shared<bool>(false);
      emoji->add_option("output", o->output, "Dataset folder to write")->required();
      emoji->add_option("--size", o->size, "Image side in pixels")->capture_default_str();
      emoji->add_option("--background", *background, "Background colour (#RRGGBB, white, black)")
          ->capture_default_str();
      emoji->add_option("--margin", o->margin, "Empty border on each side, as a fraction of the side")
          ->capture_default_str();
      emoji->add_option("--validation-fraction", o->validation_fraction,
                        "Share of the emoji in the validation split (fixed by a hash of the code points)")
          ->capture_default_str();
      emoji->add_option("--limit", o->limit, "Only the first N emoji of emoji-test.txt (0 = all)");
      emoji->add_option("--font", o->font, "Colour emoji font (CBDT)")->capture_default_str();
      emoji->add_option("--emoji-test", o->emoji_test, "unicode-data's emoji-test.txt")->capture_default_str();
      emoji->add_option("--cldr-annotations", o->cldr_annotations, "CLDR English annotations")
          ->capture_default_str();
      emoji->add_option("--cldr-annotations-derived", o->cldr_annotations_derived,
                        "CLDR English derived annotations (skin tones, families)")
          ->capture_default_str();
      emoji->add_flag("-q,--quiet", *quiet, "No progress output");
      return [=]() -> int {
        o->background = parse_colour(*background);
        amused::cli::ProgressBar bar(!*quiet && amused::cli::stderr_is_tty(), "emoji ");
        const auto s = amused::build_emoji_dataset(*o, [&](const amused::EmojiDatasetProgress& p) {
          bar.update(static_cast<double>(p.done), static_cast<double>(p.total),
                     p.elapsed_seconds > 0 ? p.done / p.elapsed_seconds : 0, "img/s");
          return true;
        });
        bar.finish();
        if (!*quiet) {
          std::printf("wrote %lld images (%lld train, %lld validation) and %s in %.1f s\n",
                      static_cast<long long>(s.images), static_cast<long long>(s.train),
                      static_cast<long long>(s.validation), s.metadata.c_str(), s.seconds);
          if (s.without_cldr > 0)
            std::printf("%lld emoji have no CLDR keywords (captioned by their name only)\n",
                        static_cast<long long>(s.without_cldr));
          if (!s.not_rendered.empty()) {
            std::printf("%zu emoji not rendered (the font has no single glyph for them), e.g. %s\n",
                        s.not_rendered.size(), s.not_rendered.front().c_str());
          }
        }
        return 0;
      };
    }};

}  // namespace
