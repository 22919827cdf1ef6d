// Step pictures of `amused generate --save-steps` (see step_pictures.h).
#include "step_pictures.h"

#include <webp/encode.h>
#include <webp/mux.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "amused/error.h"
#include "amused/image_io.h"
#include "io/text_label.h"

namespace amused::cli {
namespace {

constexpr int kGap = 4;  // white pixels between panels

Image blank(int width, int height, uint8_t value = 255) {
  Image im;
  im.width = width;
  im.height = height;
  im.channels = 3;
  im.pixels.assign(static_cast<size_t>(width) * height * 3, value);
  return im;
}

// Copies `src` into `dst` at (x, y).
void paste(Image& dst, const Image& src, int x, int y) {
  for (int r = 0; r < src.height && y + r < dst.height; ++r) {
    const int n = std::min(src.width, dst.width - x);
    if (n <= 0) return;
    std::copy_n(src.pixels.data() + static_cast<size_t>(r) * src.width * 3, static_cast<size_t>(n) * 3,
                dst.pixels.data() + (static_cast<size_t>(y + r) * dst.width + x) * 3);
  }
}

// Nearest-neighbour scaling to width x height (panels are integer multiples of the token grid).
Image scaled(const Image& src, int width, int height) {
  if (src.width == width && src.height == height) return src;
  Image out = blank(width, height);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      const int sx = x * src.width / width, sy = y * src.height / height;
      std::copy_n(src.pixels.data() + (static_cast<size_t>(sy) * src.width + sx) * 3, 3,
                  out.pixels.data() + (static_cast<size_t>(y) * width + x) * 3);
    }
  return out;
}

// A perceptually ordered colour ramp (dark purple -> blue -> teal -> green -> yellow, like viridis).
std::array<uint8_t, 3> ramp(float v) {
  static constexpr std::array<std::array<float, 3>, 5> stops = {{{68, 1, 84},
                                                                 {59, 82, 139},
                                                                 {33, 145, 140},
                                                                 {94, 201, 98},
                                                                 {253, 231, 37}}};
  v = std::clamp(std::isfinite(v) ? v : 0.0f, 0.0f, 1.0f) * 4.0f;
  const int i = std::min(3, static_cast<int>(v));
  const float t = v - static_cast<float>(i);
  std::array<uint8_t, 3> c{};
  for (int k = 0; k < 3; ++k) c[k] = static_cast<uint8_t>(std::lround(stops[i][k] + t * (stops[i + 1][k] - stops[i][k])));
  return c;
}

Image heatmap(const std::vector<float>& values, int width, int height, int cell) {
  Image im = blank(width * cell, height * cell);
  for (int y = 0; y < im.height; ++y)
    for (int x = 0; x < im.width; ++x) {
      const auto c = ramp(values[static_cast<size_t>(y / cell) * width + x / cell]);
      std::copy(c.begin(), c.end(), im.pixels.begin() + (static_cast<ptrdiff_t>(y) * im.width + x) * 3);
    }
  return im;
}

}  // namespace

StepRecorder::StepRecorder(Pipeline& pipeline, bool exact) : pipeline_(pipeline), exact_(exact) {
  // Panels as large as the generated image (one cell per token = the VQ scale factor), at least
  // 8 px per token so that small models' pictures stay readable.
  cell_ = std::max(8, pipeline.summary().vq_scale_factor);
}

void StepRecorder::record(const StepInfo& info) {
  if (!info.details) return;
  const StepDetails& d = *info.details;
  if (steps_.size() < d.tokens.size()) steps_.resize(d.tokens.size());
  std::vector<Image> decoded;
  if (exact_) decoded = pipeline_.decode(d.predicted);
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const TokenGrid& g = d.tokens[i];
    const int w = g.width * cell_, h = g.height * cell_;
    Step s;
    s.prediction = exact_ ? scaled(decoded[i], w, h) : pipeline_.preview(d.predicted[i], cell_);
    s.fixed = pipeline_.preview(g, cell_);
    s.confidence = heatmap(d.confidence[i], g.width, g.height, cell_);
    steps_[i].push_back(std::move(s));
  }
}

std::vector<std::pair<std::filesystem::path, std::string>> StepRecorder::files(
    const std::filesystem::path& dir, const std::vector<Image>& finals) const {
  std::vector<std::pair<std::filesystem::path, std::string>> out;
  for (size_t i = 0; i < steps_.size(); ++i) {
    const auto& steps = steps_[i];
    if (steps.empty()) continue;
    const int w = steps[0].prediction.width, h = steps[0].prediction.height;
    const std::string stem = "img" + std::to_string(i);
    Image sheet = blank(static_cast<int>(steps.size()) * (w + kGap) - kGap, 3 * (h + kGap) - kGap);
    std::vector<Image> frames;
    for (size_t k = 0; k < steps.size(); ++k) {
      const Step& s = steps[k];
      Image strip = blank(3 * (w + kGap) - kGap, h);
      paste(strip, s.prediction, 0, 0);
      paste(strip, s.fixed, w + kGap, 0);
      paste(strip, s.confidence, 2 * (w + kGap), 0);
      char name[64];
      std::snprintf(name, sizeof name, "%s-step%02zu.png", stem.c_str(), k + 1);
      out.emplace_back(dir / name, encode_png(strip, {{"step", std::to_string(k + 1)},
                                                     {"panels", "prediction, fixed tokens, confidence"}}));
      const int x = static_cast<int>(k) * (w + kGap);
      paste(sheet, s.prediction, x, 0);
      paste(sheet, s.fixed, x, h + kGap);
      paste(sheet, s.confidence, x, 2 * (h + kGap));
      frames.push_back(s.prediction);
    }
    out.emplace_back(dir / (stem + "-sheet.png"),
                     encode_png(sheet, {{"rows", "prediction, fixed tokens, confidence"},
                                        {"columns", std::to_string(steps.size()) + " steps"}}));
    if (i < finals.size()) frames.push_back(scaled(finals[i], w, h));
    out.emplace_back(dir / (stem + "-steps.webp"), encode_webp_animation(frames, 400, 1500));
  }
  return out;
}

AttentionRecorder::AttentionRecorder(int cell) : cell_(std::max(1, cell)) {}

void AttentionRecorder::record(const StepInfo& info) {
  if (!info.details || info.details->attention.maps.empty()) return;
  const AttentionMaps& a = info.details->attention;
  height_ = a.height;
  width_ = a.width;
  if (tokens_.empty()) tokens_ = a.tokens;
  if (maps_.size() < a.maps.size()) maps_.resize(a.maps.size());
  for (size_t i = 0; i < a.maps.size(); ++i) maps_[i].push_back(a.maps[i]);
}

bool AttentionRecorder::labels_missing() const { return io::TextPainter::system() == nullptr; }

std::vector<AttentionRecorder::Word> AttentionRecorder::words_of(const std::vector<std::string>& tokens) {
  std::vector<Word> words;
  Word current;
  static const std::string kEnd = "</w>";
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& tok = tokens[t];
    // The start and end tokens (first and last) are not words.
    if ((t == 0 || t + 1 == tokens.size()) && tok.size() > 2 && tok.front() == '<' && tok.back() == '>') continue;
    const bool ends = tok.size() >= kEnd.size() && tok.compare(tok.size() - kEnd.size(), kEnd.size(), kEnd) == 0;
    current.text += ends ? tok.substr(0, tok.size() - kEnd.size()) : tok;
    current.positions.push_back(static_cast<int>(t));
    if (ends) {
      words.push_back(std::move(current));
      current = Word{};
    }
  }
  if (!current.positions.empty()) words.push_back(std::move(current));
  return words;
}

namespace {
constexpr int kLabelPx = 13, kLabelBand = 20, kRowLabel = 64;

// The final image (grey) under a heat colour of `map`, its range [lo, hi] stretched over the whole
// ramp (token cells of `cell` pixels).
Image overlay(const Image& base, const std::vector<float>& map, int width, int height, int cell,
              std::pair<float, float> range) {
  Image im = blank(width * cell, height * cell);
  const auto [lo, hi] = range;
  const float inv = hi > lo ? 1.0f / (hi - lo) : 0.0f;
  for (int y = 0; y < im.height; ++y)
    for (int x = 0; x < im.width; ++x) {
      const auto c = ramp((map[static_cast<size_t>(y / cell) * width + x / cell] - lo) * inv);
      const uint8_t* b = base.pixels.data() + (static_cast<size_t>(y) * base.width + x) * 3;
      const float grey = 0.299f * b[0] + 0.587f * b[1] + 0.114f * b[2];
      uint8_t* o = im.pixels.data() + (static_cast<size_t>(y) * im.width + x) * 3;
      for (int k = 0; k < 3; ++k) o[k] = static_cast<uint8_t>(std::lround(0.35f * grey + 0.65f * c[k]));
    }
  return im;
}

std::string percent(double share) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f%%", 100.0 * share);
  return text;
}
}  // namespace

std::vector<std::pair<std::filesystem::path, std::string>> AttentionRecorder::files(
    const std::filesystem::path& dir, const std::vector<Image>& finals) const {
  std::vector<std::pair<std::filesystem::path, std::string>> out;
  const size_t hw = static_cast<size_t>(height_) * width_;
  if (hw == 0) return out;
  // At least 128 px per panel, so that labels fit under small models' pictures.
  const int cell = std::max(cell_, (128 + width_ - 1) / width_);
  const int pw = width_ * cell, ph = height_ * cell;
  auto painter = io::TextPainter::system();
  auto label = [&](Image& im, int x, int y, int box, const std::string& text) {
    if (painter) painter->draw(im, x, y + 3, box, text, kLabelPx, {0, 0, 0});
  };
  for (size_t i = 0; i < maps_.size() && i < tokens_.size(); ++i) {
    const auto& steps = maps_[i];
    const auto& toks = tokens_[i];
    if (steps.empty()) continue;
    const size_t n_steps = steps.size();
    const auto words = words_of(toks);
    // Per word: its map at every step (the sum over its tokens' shares) and over the run.
    std::vector<std::vector<std::vector<float>>> word_steps(words.size());
    std::vector<std::vector<float>> word_mean(words.size(), std::vector<float>(hw, 0.0f));
    for (size_t w = 0; w < words.size(); ++w)
      for (size_t k = 0; k < n_steps; ++k) {
        std::vector<float> m(hw, 0.0f);
        for (int t : words[w].positions)
          for (size_t p = 0; p < hw; ++p) m[p] += steps[k][static_cast<size_t>(t) * hw + p];
        for (size_t p = 0; p < hw; ++p) word_mean[w][p] += m[p] / static_cast<float>(n_steps);
        word_steps[w].push_back(std::move(m));
      }
    auto mean_of = [&](const std::vector<float>& m) {
      double sum = 0;
      for (float v : m) sum += v;
      return sum / static_cast<double>(hw);
    };
    auto range_of = [](const std::vector<float>& m) {
      if (m.empty()) return std::pair<float, float>{0.0f, 0.0f};
      const auto [lo, hi] = std::minmax_element(m.begin(), m.end());
      return std::pair<float, float>{*lo, *hi};
    };
    const Image base = i < finals.size() ? scaled(finals[i], pw, ph) : blank(pw, ph, 128);
    const std::string stem = "img" + std::to_string(i);

    // Over the run: the image, then one panel per word.
    const int columns = 1 + static_cast<int>(words.size());
    Image sheet = blank(columns * (pw + kGap) - kGap, ph + kLabelBand);
    paste(sheet, base, 0, 0);
    label(sheet, 0, ph, pw, "image");
    for (size_t w = 0; w < words.size(); ++w) {
      const int x = static_cast<int>(w + 1) * (pw + kGap);
      paste(sheet, overlay(base, word_mean[w], width_, height_, cell, range_of(word_mean[w])), x, 0);
      label(sheet, x, ph, pw, words[w].text + " " + percent(mean_of(word_mean[w])));
    }
    out.emplace_back(dir / (stem + "-attention.png"),
                     encode_png(sheet, {{"columns", "image, then one word each"},
                                        {"values", "share of cross-attention, averaged over heads, layers and steps"}}));

    // Per step: one row each, the words in columns (each word's colours span its range over the steps).
    Image grid = blank(kRowLabel + std::max<int>(1, static_cast<int>(words.size())) * (pw + kGap),
                       kLabelBand + static_cast<int>(n_steps) * (ph + kGap));
    std::vector<std::pair<float, float>> word_range(words.size());
    for (size_t w = 0; w < words.size(); ++w)
      for (size_t k = 0; k < n_steps; ++k) {
        const auto r = range_of(word_steps[w][k]);
        word_range[w] = k == 0 ? r : std::pair<float, float>{std::min(word_range[w].first, r.first),
                                                              std::max(word_range[w].second, r.second)};
      }
    for (size_t w = 0; w < words.size(); ++w)
      label(grid, kRowLabel + static_cast<int>(w) * (pw + kGap), 0, pw, words[w].text);
    for (size_t k = 0; k < n_steps; ++k) {
      const int y = kLabelBand + static_cast<int>(k) * (ph + kGap);
      label(grid, 0, y + ph / 2 - kLabelBand / 2, kRowLabel, "step " + std::to_string(k + 1));
      for (size_t w = 0; w < words.size(); ++w)
        paste(grid, overlay(base, word_steps[w][k], width_, height_, cell, word_range[w]),
              kRowLabel + static_cast<int>(w) * (pw + kGap), y);
    }
    out.emplace_back(dir / (stem + "-attention-steps.png"),
                     encode_png(grid, {{"rows", std::to_string(n_steps) + " steps"}, {"columns", "one word each"}}));

    // The numbers.
    nlohmann::json j;
    j["tokens"] = toks;
    j["grid"] = {{"height", height_}, {"width", width_}};
    j["steps"] = n_steps;
    j["words"] = nlohmann::json::array();
    for (size_t w = 0; w < words.size(); ++w) {
      nlohmann::json shares = nlohmann::json::array();
      for (const auto& m : word_steps[w]) shares.push_back(mean_of(m));
      j["words"].push_back({{"text", words[w].text},
                            {"positions", words[w].positions},
                            {"share_per_step", shares},
                            {"share", mean_of(word_mean[w])},
                            {"map", word_mean[w]}});
    }
    auto token_shares = [&](size_t t) {
      nlohmann::json shares = nlohmann::json::array();
      for (const auto& m : steps)
        shares.push_back(mean_of(std::vector<float>(m.begin() + static_cast<std::ptrdiff_t>(t * hw),
                                                    m.begin() + static_cast<std::ptrdiff_t>((t + 1) * hw))));
      return shares;
    };
    if (!toks.empty()) {
      j["start_token_share_per_step"] = token_shares(0);
      j["end_token_share_per_step"] = token_shares(toks.size() - 1);
    }
    out.emplace_back(dir / (stem + "-attention.json"),
                     j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }
  return out;
}

std::string encode_webp_animation(const std::vector<Image>& frames, int frame_ms, int last_ms) {
  if (frames.empty()) throw InvalidArgument("an animation needs at least one frame");
  const int w = frames[0].width, h = frames[0].height;
  WebPAnimEncoderOptions options;
  if (!WebPAnimEncoderOptionsInit(&options)) throw IoError("libwebp: version mismatch (WebPAnimEncoderOptionsInit)");
  options.anim_params.loop_count = 0;  // loop for ever
  std::unique_ptr<WebPAnimEncoder, void (*)(WebPAnimEncoder*)> enc(WebPAnimEncoderNew(w, h, &options),
                                                                  WebPAnimEncoderDelete);
  if (!enc) throw IoError("libwebp: cannot start an animation of " + std::to_string(w) + "x" + std::to_string(h));
  WebPConfig config;
  if (!WebPConfigInit(&config)) throw IoError("libwebp: version mismatch (WebPConfigInit)");
  config.lossless = 1;
  int timestamp = 0;
  for (size_t i = 0; i < frames.size(); ++i) {
    const Image& f = frames[i];
    if (f.width != w || f.height != h || f.channels != 3)
      throw InvalidArgument("animation frames must all be " + std::to_string(w) + "x" + std::to_string(h) + " RGB");
    WebPPicture pic;
    if (!WebPPictureInit(&pic)) throw IoError("libwebp: version mismatch (WebPPictureInit)");
    pic.use_argb = 1;
    pic.width = w;
    pic.height = h;
    const bool ok = WebPPictureImportRGB(&pic, f.pixels.data(), w * 3) &&
                    WebPAnimEncoderAdd(enc.get(), &pic, timestamp, &config);
    WebPPictureFree(&pic);
    if (!ok) throw IoError(std::string("libwebp: cannot add frame ") + std::to_string(i) + ": " +
                           WebPAnimEncoderGetError(enc.get()));
    timestamp += i + 1 == frames.size() ? last_ms : frame_ms;
  }
  WebPAnimEncoderAdd(enc.get(), nullptr, timestamp, nullptr);  // the last frame's end
  WebPData data;
  WebPDataInit(&data);
  if (!WebPAnimEncoderAssemble(enc.get(), &data))
    throw IoError(std::string("libwebp: cannot assemble the animation: ") + WebPAnimEncoderGetError(enc.get()));
  std::string bytes(reinterpret_cast<const char*>(data.bytes), data.size);
  WebPDataClear(&data);
  return bytes;
}

}  // namespace amused::cli
