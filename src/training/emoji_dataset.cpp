// amused::build_emoji_dataset: a captioned image set from fonts-noto-color-emoji, unicode-data and
// unicode-cldr-core. See include/amused/dataset.h and emoji_dataset.h.
#include "training/emoji_dataset.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_TRUETYPE_TABLES_H
#include <hb-ft.h>
#include <hb.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "amused/image_io.h"
#include "io/atomic_file.h"
#include "tokenizers/clip_pretokenizer.h"

namespace amused::training {
namespace fs = std::filesystem;

namespace {

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

std::string lower_ascii(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

// A package data file, or an IoError that says which Debian package installs it.
std::string read_package_file(const std::string& path, const std::string& package, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw IoError("cannot read '" + path + "': install the Debian package " + package +
                  " (bash scripts/setup.sh installs it), or point " + flag + " at the file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// XML character entities of CLDR files (&amp; &lt; &gt; &quot; &apos; &#NN; &#xNN;).
std::string decode_entities(std::string_view s, const std::string& source) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    const auto end = s.find(';', i);
    if (end == std::string_view::npos) throw IoError(source + ": unterminated XML entity in '" + std::string(s) + "'");
    const std::string_view ent = s.substr(i + 1, end - i - 1);
    if (ent == "amp") out += '&';
    else if (ent == "lt") out += '<';
    else if (ent == "gt") out += '>';
    else if (ent == "quot") out += '"';
    else if (ent == "apos") out += '\'';
    else if (ent.size() > 1 && ent[0] == '#') {
      const bool hex = ent[1] == 'x' || ent[1] == 'X';
      const std::string digits(ent.substr(hex ? 2 : 1));
      char* stop = nullptr;
      const unsigned long cp = std::strtoul(digits.c_str(), &stop, hex ? 16 : 10);
      if (digits.empty() || *stop != '\0' || cp > 0x10FFFF)
        throw IoError(source + ": bad character reference '&" + std::string(ent) + ";'");
      tokenizers::append_utf8(out, static_cast<char32_t>(cp));
    } else {
      throw IoError(source + ": unknown XML entity '&" + std::string(ent) + ";'");
    }
    i = end;
  }
  return out;
}

// The value of attribute `name` in a start tag's text, or nullopt.
std::optional<std::string_view> attribute(std::string_view tag, std::string_view name) {
  size_t pos = 0;
  while ((pos = tag.find(name, pos)) != std::string_view::npos) {
    const bool starts = pos == 0 || tag[pos - 1] == ' ' || tag[pos - 1] == '\t' || tag[pos - 1] == '\n';
    size_t p = pos + name.size();
    if (starts && p + 1 < tag.size() && tag[p] == '=' && (tag[p + 1] == '"' || tag[p + 1] == '\'')) {
      const char quote = tag[p + 1];
      const auto close = tag.find(quote, p + 2);
      if (close == std::string_view::npos) return std::nullopt;
      return tag.substr(p + 2, close - p - 2);
    }
    pos = p;
  }
  return std::nullopt;
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Per-axis weights of exact area resampling: output cell i covers [start + i*step, start + (i+1)*step)
// of the input axis [0, n); each overlapped input pixel weighs overlap/step.
struct AxisWeights {
  std::vector<int> first;                  // first input index per output cell
  std::vector<std::vector<double>> weights;
};
AxisWeights axis_weights(int n, double start, double side, int out) {
  AxisWeights a;
  const double step = side / out;
  for (int i = 0; i < out; ++i) {
    const double lo = start + i * step, hi = lo + step;
    const int first = std::max(0, static_cast<int>(std::floor(lo)));
    const int last = std::min(n - 1, static_cast<int>(std::ceil(hi)) - 1);
    std::vector<double> w;
    for (int k = first; k <= last; ++k) {
      const double overlap = std::min(hi, static_cast<double>(k + 1)) - std::max(lo, static_cast<double>(k));
      w.push_back(overlap > 0 ? overlap / step : 0.0);
    }
    a.first.push_back(first);
    a.weights.push_back(std::move(w));
  }
  return a;
}

}  // namespace

// ------------------------------------------------------------------------------- parsers

std::string EmojiEntry::hex() const {
  std::string out;
  char buf[16];
  for (char32_t cp : codepoints) {
    std::snprintf(buf, sizeof buf, "%s%04X", out.empty() ? "" : " ", static_cast<unsigned>(cp));
    out += buf;
  }
  return out;
}

std::string EmojiEntry::file_stem() const {
  std::string out;
  char buf[16];
  for (char32_t cp : codepoints) {
    std::snprintf(buf, sizeof buf, "%s%04x", out.empty() ? "" : "-", static_cast<unsigned>(cp));
    out += buf;
  }
  return out;
}

std::vector<EmojiEntry> parse_emoji_test(std::string_view text, const std::string& source) {
  std::vector<EmojiEntry> entries;
  std::string group, subgroup;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    const auto nl = text.find('\n', pos);
    const std::string_view raw = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    const std::string_view line = trim(raw);
    if (line.empty()) continue;
    const auto where = [&] { return source + " line " + std::to_string(line_no); };
    if (line[0] == '#') {
      const std::string_view body = trim(line.substr(1));
      if (body.rfind("group:", 0) == 0) group = std::string(trim(body.substr(6))), subgroup.clear();
      else if (body.rfind("subgroup:", 0) == 0) subgroup = std::string(trim(body.substr(9)));
      continue;
    }
    const auto semi = line.find(';'), hash = line.find('#');
    if (semi == std::string_view::npos || hash == std::string_view::npos || hash < semi)
      throw IoError(where() + ": expected 'CODE POINTS ; status # emoji Eversion name', got '" + std::string(line) + "'");
    if (trim(line.substr(semi + 1, hash - semi - 1)) != "fully-qualified") continue;
    EmojiEntry e;
    std::istringstream cps{std::string(line.substr(0, semi))};
    std::string cp;
    while (cps >> cp) {
      char* stop = nullptr;
      const unsigned long v = std::strtoul(cp.c_str(), &stop, 16);
      if (*stop != '\0' || v > 0x10FFFF) throw IoError(where() + ": bad code point '" + cp + "'");
      e.codepoints += static_cast<char32_t>(v);
    }
    if (e.codepoints.empty()) throw IoError(where() + ": no code points");
    e.emoji = tokenizers::encode_utf8(e.codepoints);
    // "# 😀 E1.0 grinning face": the emoji as text, its version, its name.
    std::string_view rest = trim(line.substr(hash + 1));
    const auto sp1 = rest.find(' ');
    rest = sp1 == std::string_view::npos ? std::string_view{} : trim(rest.substr(sp1 + 1));
    const auto sp2 = rest.find(' ');
    if (rest.empty() || rest[0] != 'E' || sp2 == std::string_view::npos)
      throw IoError(where() + ": expected '# emoji Eversion name' after the status");
    e.version = std::string(rest.substr(0, sp2));
    e.name = std::string(trim(rest.substr(sp2 + 1)));
    if (e.name.empty()) throw IoError(where() + ": the emoji has no name");
    e.group = group;
    e.subgroup = subgroup;
    entries.push_back(std::move(e));
  }
  return entries;
}

std::map<std::string, CldrAnnotation> parse_cldr_annotations(std::string_view xml, const std::string& source) {
  std::map<std::string, CldrAnnotation> out;
  static constexpr std::string_view kOpen = "<annotation ", kClose = "</annotation>";
  size_t pos = 0;
  while ((pos = xml.find(kOpen, pos)) != std::string_view::npos) {
    const auto tag_end = xml.find('>', pos);
    if (tag_end == std::string_view::npos) throw IoError(source + ": unterminated <annotation> tag");
    const std::string_view tag = xml.substr(pos + kOpen.size(), tag_end - pos - kOpen.size());
    const auto close = xml.find(kClose, tag_end);
    if (close == std::string_view::npos) throw IoError(source + ": <annotation> without </annotation>");
    const auto cp = attribute(tag, "cp");
    if (!cp) throw IoError(source + ": <annotation> without a cp attribute");
    const std::string key = decode_entities(*cp, source);
    const std::string body = decode_entities(trim(xml.substr(tag_end + 1, close - tag_end - 1)), source);
    CldrAnnotation& a = out[key];
    const auto type = attribute(tag, "type");
    if (type && *type == "tts") {
      a.tts = body;
    } else {
      a.keywords.clear();
      std::string_view rest = body;
      while (!rest.empty()) {
        const auto bar = rest.find('|');
        const std::string_view kw = trim(rest.substr(0, bar));
        if (!kw.empty()) a.keywords.emplace_back(kw);
        rest = bar == std::string_view::npos ? std::string_view{} : rest.substr(bar + 1);
      }
    }
    pos = close + kClose.size();
  }
  return out;
}

const CldrAnnotation* find_annotation(const std::map<std::string, CldrAnnotation>& annotations,
                                      const std::string& emoji) {
  if (auto it = annotations.find(emoji); it != annotations.end()) return &it->second;
  std::u32string stripped = tokenizers::decode_utf8(emoji);
  stripped.erase(std::remove(stripped.begin(), stripped.end(), U'\uFE0F'), stripped.end());
  if (auto it = annotations.find(tokenizers::encode_utf8(stripped)); it != annotations.end()) return &it->second;
  return nullptr;
}

std::vector<std::string> emoji_captions(const EmojiEntry& e, const CldrAnnotation* cldr) {
  std::vector<std::string> captions{e.name};
  if (cldr != nullptr) {
    std::string with_keywords = e.name;
    const std::string name_lower = lower_ascii(e.name);
    for (const auto& kw : cldr->keywords)
      if (name_lower.find(lower_ascii(kw)) == std::string::npos) with_keywords += ", " + kw;
    if (with_keywords != e.name) captions.push_back(with_keywords);
  }
  if (!e.group.empty()) {
    std::string grouped = e.name + ", " + lower_ascii(e.group);
    if (!e.subgroup.empty()) grouped += ", " + e.subgroup;
    captions.push_back(grouped);
  }
  return captions;
}

bool in_validation_split(const EmojiEntry& e, double validation_fraction) {
  return static_cast<double>(fnv1a64(e.hex()) % 1000000) < validation_fraction * 1000000.0;
}

// ------------------------------------------------------------------------------- rendering

std::vector<float> area_resample(const std::vector<float>& rgba, int w, int h, double x0, double y0, double side,
                                 int out_size) {
  const AxisWeights ax = axis_weights(w, x0, side, out_size), ay = axis_weights(h, y0, side, out_size);
  // Horizontal pass over every input row, then vertical.
  std::vector<double> rows(static_cast<size_t>(h) * out_size * 4, 0.0);
  for (int y = 0; y < h; ++y)
    for (int i = 0; i < out_size; ++i) {
      double acc[4] = {0, 0, 0, 0};
      for (size_t k = 0; k < ax.weights[i].size(); ++k) {
        const float* p = &rgba[(static_cast<size_t>(y) * w + ax.first[i] + k) * 4];
        for (int c = 0; c < 4; ++c) acc[c] += ax.weights[i][k] * p[c];
      }
      for (int c = 0; c < 4; ++c) rows[(static_cast<size_t>(y) * out_size + i) * 4 + c] = acc[c];
    }
  std::vector<float> out(static_cast<size_t>(out_size) * out_size * 4, 0.0f);
  for (int j = 0; j < out_size; ++j)
    for (int i = 0; i < out_size; ++i) {
      double acc[4] = {0, 0, 0, 0};
      for (size_t k = 0; k < ay.weights[j].size(); ++k) {
        const double* p = &rows[((static_cast<size_t>(ay.first[j]) + k) * out_size + i) * 4];
        for (int c = 0; c < 4; ++c) acc[c] += ay.weights[j][k] * p[c];
      }
      for (int c = 0; c < 4; ++c) out[(static_cast<size_t>(j) * out_size + i) * 4 + c] = static_cast<float>(acc[c]);
    }
  return out;
}

struct EmojiRenderer::State {
  FT_Library library = nullptr;
  FT_Face face = nullptr;
  hb_font_t* font = nullptr;
  hb_buffer_t* buffer = nullptr;
};

EmojiRenderer::EmojiRenderer(const std::string& font_path) : s_(std::make_unique<State>()) {
  if (!fs::is_regular_file(font_path))
    throw IoError("emoji font '" + font_path + "' not found: install the Debian package fonts-noto-color-emoji " +
                  "(bash scripts/setup.sh installs it), or pass --font");
  if (FT_Init_FreeType(&s_->library) != 0) throw IoError("FreeType failed to initialise");
  if (FT_New_Face(s_->library, font_path.c_str(), 0, &s_->face) != 0) {
    FT_Done_FreeType(s_->library);
    throw IoError("cannot open the font '" + font_path + "' (not a font FreeType reads)");
  }
  if (!FT_HAS_COLOR(s_->face) || s_->face->num_fixed_sizes < 1) {
    FT_Done_Face(s_->face);
    FT_Done_FreeType(s_->library);
    throw Unsupported("font '" + font_path + "' has no colour bitmaps (CBDT); use NotoColorEmoji.ttf " +
                      "from fonts-noto-color-emoji");
  }
  int best = 0;  // the largest bitmap strike
  for (int i = 1; i < s_->face->num_fixed_sizes; ++i)
    if (s_->face->available_sizes[i].height > s_->face->available_sizes[best].height) best = i;
  FT_Select_Size(s_->face, best);
  s_->font = hb_ft_font_create_referenced(s_->face);
  s_->buffer = hb_buffer_create();
}

EmojiRenderer::~EmojiRenderer() {
  if (s_->buffer) hb_buffer_destroy(s_->buffer);
  if (s_->font) hb_font_destroy(s_->font);  // releases its reference to the face
  if (s_->face) FT_Done_Face(s_->face);
  if (s_->library) FT_Done_FreeType(s_->library);
}

std::optional<Image> EmojiRenderer::render(const std::string& utf8, int size, const std::array<uint8_t, 3>& background,
                                           double margin) {
  hb_buffer_reset(s_->buffer);
  hb_buffer_add_utf8(s_->buffer, utf8.data(), static_cast<int>(utf8.size()), 0, static_cast<int>(utf8.size()));
  hb_buffer_guess_segment_properties(s_->buffer);
  hb_shape(s_->font, s_->buffer, nullptr, 0);
  unsigned count = 0;
  const hb_glyph_info_t* info = hb_buffer_get_glyph_infos(s_->buffer, &count);
  // Exactly one visible glyph: a sequence the font lacks falls apart into several (or .notdef).
  int visible = 0;
  std::vector<float> rgba;
  int w = 0, h = 0;
  for (unsigned g = 0; g < count; ++g) {
    if (info[g].codepoint == 0) return std::nullopt;
    if (FT_Load_Glyph(s_->face, info[g].codepoint, FT_LOAD_COLOR) != 0) return std::nullopt;
    const FT_Bitmap& bm = s_->face->glyph->bitmap;
    if (bm.width == 0 || bm.rows == 0) continue;  // zero-width joiners, variation selectors
    if (++visible > 1 || bm.pixel_mode != FT_PIXEL_MODE_BGRA) return std::nullopt;
    w = static_cast<int>(bm.width);
    h = static_cast<int>(bm.rows);
    rgba.resize(static_cast<size_t>(w) * h * 4);
    for (int y = 0; y < h; ++y) {
      const unsigned char* row = bm.buffer + static_cast<std::ptrdiff_t>(y) * bm.pitch;
      for (int x = 0; x < w; ++x) {  // premultiplied BGRA -> premultiplied RGBA in [0, 1]
        float* p = &rgba[(static_cast<size_t>(y) * w + x) * 4];
        p[0] = row[x * 4 + 2] / 255.0f;
        p[1] = row[x * 4 + 1] / 255.0f;
        p[2] = row[x * 4 + 0] / 255.0f;
        p[3] = row[x * 4 + 3] / 255.0f;
      }
    }
  }
  if (visible != 1) return std::nullopt;
  // The output square covers `side` source pixels around the bitmap's centre.
  const double side = std::max(w, h) / (1.0 - 2.0 * margin);
  const std::vector<float> small = area_resample(rgba, w, h, (w - side) / 2.0, (h - side) / 2.0, side, size);
  Image image;
  image.width = image.height = size;
  image.channels = 3;
  image.pixels.resize(static_cast<size_t>(size) * size * 3);
  for (size_t i = 0; i < static_cast<size_t>(size) * size; ++i) {
    const float a = small[i * 4 + 3];
    for (int c = 0; c < 3; ++c) {
      const double v = small[i * 4 + c] * 255.0 + background[c] * (1.0 - a);
      image.pixels[i * 3 + c] = static_cast<uint8_t>(std::clamp(std::floor(v + 0.5), 0.0, 255.0));
    }
  }
  return image;
}

}  // namespace amused::training

// ------------------------------------------------------------------------------- the builder

namespace amused {

namespace {

void write_if_changed(const std::filesystem::path& path, const std::string& bytes) {
  std::error_code ec;
  if (std::filesystem::file_size(path, ec) == bytes.size() && !ec) {
    std::ifstream in(path, std::ios::binary);
    std::string old(bytes.size(), '\0');
    if (in.read(old.data(), static_cast<std::streamsize>(old.size())) && old == bytes) return;
  }
  io::write_file_atomic(path, bytes);
}

std::string first_line_starting(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) return std::string(training::trim(line.substr(prefix.size())));
  return "?";
}

}  // namespace

EmojiDatasetSummary build_emoji_dataset(const EmojiDatasetOptions& o, const EmojiDatasetCallback& progress) {
  using namespace training;
  namespace fs = std::filesystem;
  const auto t0 = std::chrono::steady_clock::now();
  if (o.output.empty()) throw InvalidArgument("the dataset needs an output folder");
  if (o.size < 8 || o.size > 1024) throw InvalidArgument("--size " + std::to_string(o.size) + ": expected 8..1024 pixels");
  if (!(o.margin >= 0 && o.margin < 0.5)) throw InvalidArgument("--margin must be in [0, 0.5)");
  if (!(o.validation_fraction >= 0 && o.validation_fraction < 1))
    throw InvalidArgument("--validation-fraction must be in [0, 1)");

  // Every input first, so a missing package fails before anything is written.
  const std::string test_text = read_package_file(o.emoji_test, "unicode-data", "--emoji-test");
  const std::string cldr_text = read_package_file(o.cldr_annotations, "unicode-cldr-core", "--cldr-annotations");
  const std::string derived_text =
      read_package_file(o.cldr_annotations_derived, "unicode-cldr-core", "--cldr-annotations-derived");
  EmojiRenderer renderer(o.font);
  std::vector<EmojiEntry> entries = parse_emoji_test(test_text, o.emoji_test);
  if (entries.empty()) throw IoError(o.emoji_test + " lists no fully-qualified emoji");
  if (o.limit > 0 && static_cast<size_t>(o.limit) < entries.size()) entries.resize(static_cast<size_t>(o.limit));
  std::map<std::string, CldrAnnotation> cldr = parse_cldr_annotations(cldr_text, o.cldr_annotations);
  for (auto& [k, v] : parse_cldr_annotations(derived_text, o.cldr_annotations_derived)) cldr.emplace(k, v);

  const fs::path out(o.output);
  std::error_code ec;
  fs::create_directories(out / "images", ec);
  if (ec) throw IoError("cannot create '" + (out / "images").string() + "': " + ec.message());

  EmojiDatasetSummary summary;
  std::string metadata;
  const auto total = static_cast<int64_t>(entries.size());
  // preview.png: a contact sheet of emoji spread evenly over the list.
  const int sheet_cols = 16, sheet_rows = static_cast<int>(std::min<int64_t>(8, (total + 15) / 16));
  const int64_t sheet_cells = std::min<int64_t>(total, static_cast<int64_t>(sheet_cols) * sheet_rows);
  Image sheet;
  sheet.width = sheet_cols * o.size;
  sheet.height = sheet_rows * o.size;
  sheet.pixels.assign(static_cast<size_t>(sheet.width) * sheet.height * 3, 255);
  int64_t next_cell = 0;
  for (int64_t i = 0; i < total; ++i) {
    const EmojiEntry& e = entries[static_cast<size_t>(i)];
    if (progress && (i % 64 == 0)) {
      EmojiDatasetProgress p;
      p.done = i;
      p.total = total;
      p.elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      p.eta_seconds = i > 0 ? p.elapsed_seconds / i * (total - i) : 0;
      if (!progress(p)) throw Cancelled("the emoji dataset build was stopped; metadata.jsonl was not written");
    }
    std::optional<Image> image = renderer.render(e.emoji, o.size, o.background, o.margin);
    if (!image) {
      summary.not_rendered.push_back(e.hex() + " (" + e.name + ")");
      continue;
    }
    const std::string file_name = "images/" + e.file_stem() + ".png";
    write_if_changed(out / file_name, encode_png(*image));
    if (next_cell < sheet_cells && i >= next_cell * total / sheet_cells) {
      const int cx = static_cast<int>(next_cell % sheet_cols) * o.size, cy = static_cast<int>(next_cell / sheet_cols) * o.size;
      for (int y = 0; y < o.size; ++y)
        std::copy_n(&image->pixels[static_cast<size_t>(y) * o.size * 3], static_cast<size_t>(o.size) * 3,
                    &sheet.pixels[(static_cast<size_t>(cy + y) * sheet.width + cx) * 3]);
      ++next_cell;
    }
    const CldrAnnotation* a = find_annotation(cldr, e.emoji);
    if (a == nullptr || a->keywords.empty()) ++summary.without_cldr;
    const bool validation = in_validation_split(e, o.validation_fraction);
    ++(validation ? summary.validation : summary.train);
    const std::vector<std::string> captions = emoji_captions(e, a);
    nlohmann::ordered_json row;
    row["file_name"] = file_name;
    row["text"] = captions.front();
    row["captions"] = captions;
    row["split"] = validation ? "validation" : "train";
    row["emoji"] = e.emoji;
    row["codepoints"] = e.hex();
    row["name"] = e.name;
    row["keywords"] = a != nullptr ? a->keywords : std::vector<std::string>{};
    row["group"] = e.group;
    row["subgroup"] = e.subgroup;
    row["emoji_version"] = e.version;
    metadata += row.dump() + "\n";
    ++summary.images;
  }
  if (summary.images == 0) throw IoError("no emoji could be rendered with the font '" + o.font + "'");

  // README and licences, then the metadata last: a folder with metadata.jsonl is complete.
  char bg[8];
  std::snprintf(bg, sizeof bg, "#%02x%02x%02x", o.background[0], o.background[1], o.background[2]);
  std::ostringstream readme;
  readme << "# Emoji image-caption set\n\n"
         << "Built by `amused dataset emoji` (amused.cpp) from Debian packages, offline and deterministically.\n\n"
         << "- " << summary.images << " images, " << o.size << "x" << o.size << " px RGB PNG on " << bg
         << ", emoji scaled to fit with a margin of " << o.margin << " of the side\n"
         << "- split by emoji (FNV-1a hash of the code points): " << summary.train << " train, "
         << summary.validation << " validation (fraction " << o.validation_fraction << ")\n"
         << "- emoji list: `" << o.emoji_test << "` (unicode-data; emoji-test.txt version "
         << first_line_starting(test_text, "# Version:") << "), fully-qualified entries\n"
         << "- captions: the emoji-test.txt name (`text`), plus `captions` with the English CLDR keywords of `"
         << o.cldr_annotations << "` and `" << o.cldr_annotations_derived
         << "` (unicode-cldr-core) and the group/subgroup\n"
         << "- glyphs: `" << o.font << "` (fonts-noto-color-emoji), colour bitmaps through FreeType + HarfBuzz\n";
  if (!summary.not_rendered.empty()) {
    readme << "- not rendered (the font has no single glyph for them): " << summary.not_rendered.size() << "\n";
    for (const auto& n : summary.not_rendered) readme << "  - " << n << "\n";
  }
  readme << "\n![a sample of the images](preview.png)\n\n`metadata.jsonl` fields: `file_name`, `text`, `captions`, `split` (train | validation), `emoji`, "
         << "`codepoints`, `name`, `keywords`, `group`, `subgroup`, `emoji_version`.\n\n"
         << "## Licences\n\n"
         << "- Noto Color Emoji images: SIL Open Font License 1.1 (the font) / Apache-2.0 (the emoji sources); "
         << "see `licenses/fonts-noto-color-emoji.txt`.\n"
         << "- emoji-test.txt and the CLDR annotations: Unicode License (Unicode-DFS-2016); see "
         << "`licenses/unicode-data.txt` and `licenses/unicode-cldr-core.txt`.\n";
  std::vector<std::pair<fs::path, std::string>> files;
  fs::create_directories(out / "licenses", ec);
  for (const char* pkg : {"fonts-noto-color-emoji", "unicode-data", "unicode-cldr-core"}) {
    std::ifstream in(std::string("/usr/share/doc/") + pkg + "/copyright", std::ios::binary);
    std::ostringstream ss;
    if (in) ss << in.rdbuf();
    else ss << "(the Debian copyright file /usr/share/doc/" << pkg << "/copyright was not found on the build machine)\n";
    files.emplace_back(out / "licenses" / (std::string(pkg) + ".txt"), ss.str());
  }
  files.emplace_back(out / "preview.png", encode_png(sheet));
  files.emplace_back(out / "README.md", readme.str());
  files.emplace_back(out / "metadata.jsonl", metadata);
  io::write_files_atomic(files);
  summary.metadata = (out / "metadata.jsonl").string();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return summary;
}

}  // namespace amused
