// Step pictures of `amused generate --save-steps` (see step_pictures.h).
#include "step_pictures.h"

#include <webp/encode.h>
#include <webp/mux.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <memory>

#include "amused/error.h"
#include "amused/image_io.h"

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
