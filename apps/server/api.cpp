// Request parsing and validation for the images API, and its mapping onto the library.
#include "server/api.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <set>
#include <sstream>

#include "amused/amused.h"
#include "server/base64.h"

namespace amused::server {
namespace {
using json = nlohmann::json;

const std::set<std::string> kCommonFields = {"prompt",
                                             "n",
                                             "size",
                                             "response_format",
                                             "model",
                                             "user",
                                             "negative_prompt",
                                             "steps",
                                             "guidance_scale",
                                             "seed",
                                             "temperature",
                                             "aesthetic_score",
                                             "crop_coord",
                                             "masking_schedule",
                                             "loras",
                                             "stream",
                                             "partial_images",
                                             "preview"};
const std::set<std::string> kEditFields = {"image", "mask", "strength"};

std::string type_name(const json& v) {
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

ApiError wrong_type(const std::string& param, const std::string& expected, const json& got) {
  return invalid(param, "'" + param + "' must be " + expected + ", got " + type_name(got),
                 "invalid_type");
}

std::string fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// A whole number too large for 64 bits, which the JSON parser stores as a float (2^64 for a
// seed): out of range, not of the wrong type.
bool huge_whole_number(const json& v) {
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d) && std::fabs(d) >= 9.2e18;
}

// A JSON integer in [lo, hi].
std::optional<ApiError> get_int(const json& v, const std::string& param, int64_t lo, int64_t hi,
                                int& out) {
  if (huge_whole_number(v))
    return invalid(param, "'" + param + "' must be between " + std::to_string(lo) + " and " +
                              std::to_string(hi) + ", got " + v.dump());
  if (!v.is_number_integer()) return wrong_type(param, "an integer", v);
  const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                                                     static_cast<int64_t>(v.get<uint64_t>()) >= lo
                                               : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
  if (!in_range)
    return invalid(param, "'" + param + "' must be between " + std::to_string(lo) + " and " +
                              std::to_string(hi) + ", got " + v.dump());
  out = static_cast<int>(v.get<int64_t>());
  return std::nullopt;
}

// A finite JSON number in [lo, hi].
std::optional<ApiError> get_number(const json& v, const std::string& param, double lo, double hi,
                                   double& out) {
  if (!v.is_number()) return wrong_type(param, "a number", v);
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    return invalid(param, "'" + param + "' must be between " + fmt(lo) + " and " + fmt(hi) +
                              ", got " + v.dump());
  out = d;
  return std::nullopt;
}

std::optional<ApiError> get_string(const json& v, const std::string& param, size_t max_bytes,
                                   std::string& out) {
  if (!v.is_string()) return wrong_type(param, "a string", v);
  out = v.get<std::string>();
  if (out.size() > max_bytes)
    return invalid(param,
                   "'" + param + "' is " + std::to_string(out.size()) +
                       " bytes long; the limit is " + std::to_string(max_bytes),
                   "too_long");
  return std::nullopt;
}

// Strict decimal number: the whole text, no spaces, finite.
std::optional<double> parse_double(const std::string& s) {
  double d = 0;
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, d);
  if (s.empty() || ec != std::errc() || ptr != end || !std::isfinite(d)) return std::nullopt;
  return d;
}

// Comma-separated numbers ("2,0"), as the CLI's --temperature and --crop-coord take them.
std::optional<std::vector<double>> parse_list(const std::string& s) {
  std::vector<double> out;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    const auto d =
        parse_double(s.substr(start, comma == std::string::npos ? comma : comma - start));
    if (!d) return std::nullopt;
    out.push_back(*d);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// A number list given as a JSON number, an array of numbers or a string "a,b".
std::optional<ApiError> get_list(const json& v, const std::string& param,
                                 std::vector<double>& out) {
  out.clear();
  if (v.is_number()) {
    out.push_back(v.get<double>());
  } else if (v.is_array()) {
    for (const auto& e : v) {
      if (!e.is_number()) return wrong_type(param, "a number, an array of numbers or \"a,b\"", v);
      out.push_back(e.get<double>());
    }
  } else if (v.is_string()) {
    auto l = parse_list(v.get<std::string>());
    if (!l)
      return invalid(param, "'" + param + "' must be numbers like \"2,0\", got '" +
                                v.get<std::string>() + "'");
    out = *l;
  } else {
    return wrong_type(param, "a number, an array of numbers or \"a,b\"", v);
  }
  return std::nullopt;
}

std::mutex& decode_mutex() {
  static std::mutex m;
  return m;
}

// Decodes an uploaded image; one at a time, which bounds the memory a burst of uploads can take.
std::optional<ApiError> decode_upload(const std::string& bytes, const std::string& param,
                                      const RequestLimits& limits, Image& out) {
  if (bytes.empty()) return invalid(param, "'" + param + "' is empty", "invalid_image");
  if (bytes.size() > limits.max_image_bytes)
    return invalid(param,
                   "'" + param + "' is " + std::to_string(bytes.size()) + " bytes; the limit is " +
                       std::to_string(limits.max_image_bytes),
                   "image_too_large");
  try {
    std::lock_guard<std::mutex> lock(decode_mutex());
    out = decode_image(bytes, param);
  } catch (const Error& e) {
    return invalid(param, std::string("could not decode '") + param + "': " + e.what(),
                   "invalid_image");
  }
  if (out.width > limits.max_input_side || out.height > limits.max_input_side) {
    const std::string got = std::to_string(out.width) + "x" + std::to_string(out.height);
    out = Image{};
    return invalid(param,
                   "'" + param + "' is " + got + "; the limit is " +
                       std::to_string(limits.max_input_side) + " pixels per side",
                   "image_too_large");
  }
  return std::nullopt;
}

// base64 or a data: URL ("data:image/png;base64,...") -> bytes.
std::optional<ApiError> decode_base64_field(const json& v, const std::string& param,
                                            std::string& out) {
  if (!v.is_string()) return wrong_type(param, "a base64 string or a data: URL", v);
  std::string_view s = v.get_ref<const std::string&>();
  if (s.substr(0, 5) == "data:") {
    const size_t comma = s.find(',');
    if (comma == std::string_view::npos || s.substr(0, comma).find(";base64") == std::string::npos)
      return invalid(param, "'" + param + "' is a data: URL without ';base64,'", "invalid_base64");
    s = s.substr(comma + 1);
  }
  auto bytes = base64_decode(s);
  if (!bytes)
    return invalid(param,
                   "'" + param + "' is not valid base64 (standard alphabet, padded, no whitespace)",
                   "invalid_base64");
  out = std::move(*bytes);
  return std::nullopt;
}

// Everything but the images: shared by the JSON and the multipart paths (multipart text fields
// arrive here converted to JSON values).
std::optional<ApiError> validate_fields(const json& j, Endpoint endpoint,
                                        const RequestLimits& limits, GenerationRequest& r) {
  for (const auto& [key, value] : j.items()) {
    if (kCommonFields.count(key)) continue;
    if (kEditFields.count(key)) {
      if (endpoint == Endpoint::Generations)
        return invalid(key,
                       "'" + key + "' is not accepted by /v1/images/generations (use " +
                           "/v1/images/edits for image-to-image and inpainting)",
                       "unknown_parameter");
      continue;
    }
    return invalid(key, "unknown parameter '" + key + "'", "unknown_parameter");
  }
  auto has = [&](const char* k) { return j.contains(k) && !j.at(k).is_null(); };
  std::optional<ApiError> e;
  if (!has("prompt")) return invalid("prompt", "'prompt' is required", "missing_parameter");
  std::string prompt;
  if ((e = get_string(j.at("prompt"), "prompt", limits.max_prompt_bytes, prompt))) return e;
  if (prompt.empty()) return invalid("prompt", "'prompt' must not be empty");
  r.prompts = {prompt};
  if (has("negative_prompt")) {
    std::string neg;
    if ((e = get_string(j.at("negative_prompt"), "negative_prompt", limits.max_prompt_bytes, neg)))
      return e;
    r.negative_prompts = {neg};
  }
  if (has("n") && (e = get_int(j.at("n"), "n", 1, limits.max_n, r.n))) return e;
  if (has("stream")) {
    const json& v = j.at("stream");
    if (!v.is_boolean()) return wrong_type("stream", "a boolean", v);
    r.stream = v.get<bool>();
  }
  if (has("partial_images")) {
    if ((e = get_int(j.at("partial_images"), "partial_images", 0, 3, r.partial_images))) return e;
  }
  if (r.partial_images > 0 && !r.stream)
    return invalid("partial_images", "'partial_images' needs 'stream': true (they are sent as server-sent events)");
  if (r.stream && r.n != 1)
    return invalid("stream", "'stream': true produces one image: 'n' must be 1, got " + std::to_string(r.n));
  if (has("preview")) {
    const json& v = j.at("preview");
    if (!v.is_boolean()) return wrong_type("preview", "a boolean", v);
    r.preview = v.get<bool>();
    if (r.preview && endpoint != Endpoint::Jobs)
      return invalid("preview",
                     "'preview' is for the job API (POST /v1/jobs, then GET /v1/jobs/{id}/preview); a "
                     "synchronous request gets previews with 'stream': true and 'partial_images'");
  }
  // The previews come from each step's prediction.
  r.step_details = r.partial_images > 0 || r.preview;
  if (has("steps") && (e = get_int(j.at("steps"), "steps", 1, limits.max_steps, r.steps))) return e;
  if (has("size")) {
    std::string size;
    if ((e = get_string(j.at("size"), "size", 64, size))) return e;
    if (size != "auto") {
      const auto wh = parse_size(size);
      const int q = limits.vq_scale_factor;
      auto ok = [&](int v) { return v >= q && v <= limits.max_side && v % q == 0; };
      if (!wh || !ok(wh->first) || !ok(wh->second))
        return invalid("size",
                       "size '" + size + "' is not supported: expected \"WxH\" with W and H " +
                           "multiples of " + std::to_string(q) + " between " + std::to_string(q) +
                           " and " + std::to_string(limits.max_side) + " (the model's default is " +
                           std::to_string(limits.default_width) + "x" +
                           std::to_string(limits.default_height) + ")",
                       "invalid_size");
      r.width = wh->first;
      r.height = wh->second;
    }
  }
  if (has("response_format")) {
    std::string rf;
    if ((e = get_string(j.at("response_format"), "response_format", 64, rf))) return e;
    if (rf == "url")
      return invalid("response_format",
                     "response_format 'url' is not supported: this server hosts no files; use "
                     "'b64_json' (the default)",
                     "unsupported_response_format");
    if (rf != "b64_json")
      return invalid("response_format", "response_format must be 'b64_json', got '" + rf + "'");
  }
  if (has("model")) {
    std::string ignored;
    if ((e = get_string(j.at("model"), "model", 256, ignored))) return e;
  }
  if (has("user")) {
    std::string ignored;
    if ((e = get_string(j.at("user"), "user", 256, ignored))) return e;
  }
  if (has("guidance_scale") &&
      (e = get_number(j.at("guidance_scale"), "guidance_scale", 0.0, 100.0, r.guidance_scale)))
    return e;
  if (has("aesthetic_score") &&
      (e = get_number(j.at("aesthetic_score"), "aesthetic_score", 0.0, 10.0, r.aesthetic_score)))
    return e;
  if (has("seed")) {
    const json& s = j.at("seed");
    if (huge_whole_number(s))
      return invalid("seed", "'seed' must be between 0 and 18446744073709551615, got " + s.dump());
    if (!s.is_number_integer()) return wrong_type("seed", "an integer", s);
    if (!s.is_number_unsigned())
      return invalid("seed", "'seed' must be between 0 and 18446744073709551615, got " + s.dump());
    r.seed = s.get<uint64_t>();
  }
  if (has("temperature")) {
    if ((e = get_list(j.at("temperature"), "temperature", r.temperature))) return e;
    if (r.temperature.size() != 1 && r.temperature.size() != 2)
      return invalid("temperature", "'temperature' must be one value T or a pair [start, end]");
    for (double t : r.temperature)
      if (!std::isfinite(t) || t < 0 || t > 100)
        return invalid("temperature", "'temperature' values must be between 0 and 100");
  }
  if (has("crop_coord")) {
    std::vector<double> c;
    if ((e = get_list(j.at("crop_coord"), "crop_coord", c))) return e;
    if (c.size() != 2) return invalid("crop_coord", "'crop_coord' must be a pair [x, y]");
    for (double v : c)
      if (!(v >= 0 && v <= 65535) || v != std::floor(v))
        return invalid("crop_coord", "'crop_coord' must be integers between 0 and 65535");
    r.crop_coord = {static_cast<int>(c[0]), static_cast<int>(c[1])};
  }
  if (has("masking_schedule")) {
    std::string schedule;
    if ((e = get_string(j.at("masking_schedule"), "masking_schedule", 64, schedule))) return e;
    if (schedule != "cosine" && schedule != "linear")
      return invalid("masking_schedule", "'masking_schedule' must be 'cosine' or 'linear', got '" + schedule + "'");
    r.masking_schedule = parse_masking_schedule(schedule);
  }
  if (has("loras")) {
    // {"name": scale, ...}: the scales of the adapters loaded with `amused serve --lora` for this
    // request (others keep their load scale); an unknown name is a 400 from the library.
    const json& l = j.at("loras");
    if (!l.is_object()) return wrong_type("loras", "an object {\"adapter name\": scale}", l);
    if (l.size() > 64) return invalid("loras", "'loras' names more than 64 adapters");
    for (const auto& [name, v] : l.items()) {
      if (name.empty() || name.size() > 256 || !is_valid_utf8(name))
        return invalid("loras", "'loras' keys must be adapter names (1 to 256 bytes of UTF-8)");
      double s = 0;
      if ((e = get_number(v, "loras." + name, -100.0, 100.0, s))) return e;
      r.loras[name] = s;
    }
  }
  if (has("strength")) {
    double s = 0;
    if ((e = get_number(j.at("strength"), "strength", 0.0, 1.0, s))) return e;
    r.strength = s;
  }
  return std::nullopt;
}

// Decodes image and mask (already as bytes), checks them against each other, sets the mode.
std::optional<ApiError> attach_images(const std::optional<std::string>& image_bytes,
                                      const std::optional<std::string>& mask_bytes,
                                      Endpoint endpoint, const RequestLimits& limits,
                                      GenerationRequest& r) {
  if (!image_bytes) {
    if (endpoint == Endpoint::Edits)
      return invalid("image", "'image' is required (the image to edit)", "missing_parameter");
    if (mask_bytes) return invalid("mask", "'mask' needs 'image' (the image to inpaint)");
    if (r.strength) return invalid("strength", "'strength' applies to image edits (give 'image')");
    r.mode = GenerationMode::TextToImage;
    return std::nullopt;
  }
  std::optional<ApiError> e;
  if ((e = decode_upload(*image_bytes, "image", limits, r.image))) return e;
  const int q = limits.vq_scale_factor;
  if (!r.width && (r.image.width < q || r.image.height < q))
    return invalid("image",
                   "'image' is " + std::to_string(r.image.width) + "x" +
                       std::to_string(r.image.height) + ", smaller than " + std::to_string(q) +
                       "x" + std::to_string(q) + " (give 'size')",
                   "invalid_image");
  r.mode = GenerationMode::ImageToImage;
  if (mask_bytes) {
    if ((e = decode_upload(*mask_bytes, "mask", limits, r.mask))) return e;
    // The library's rule: the same aspect ratio, up to one pixel of rounding.
    const int64_t cross = std::llabs(static_cast<int64_t>(r.mask.width) * r.image.height -
                                     static_cast<int64_t>(r.mask.height) * r.image.width);
    if (cross > std::max(r.image.width, r.image.height))
      return invalid("mask",
                     "'mask' is " + std::to_string(r.mask.width) + "x" +
                         std::to_string(r.mask.height) + " but 'image' is " +
                         std::to_string(r.image.width) + "x" + std::to_string(r.image.height) +
                         ": the mask must have the image's size (or aspect ratio)",
                     "mask_mismatch");
    // White (grey >= 0.5) = regenerate; a mask with no such pixel has nothing to inpaint.
    const Image grey = to_grey(r.mask);
    bool any = false;
    for (uint8_t p : grey.pixels) any = any || p >= 128;
    if (!any)
      return invalid("mask", "'mask' is all black: nothing to inpaint (white = regenerate)",
                     "empty_mask");
    r.mode = GenerationMode::Inpaint;
  }
  return std::nullopt;
}

}  // namespace

nlohmann::json ApiError::to_json() const {
  // Messages and params may quote what the client sent (a form field's name, a cut-off value):
  // make them valid UTF-8, which a JSON body must be (nlohmann::json::dump throws otherwise).
  json e = {{"message", utf8_sanitized(message)},
            {"type", type},
            {"param", nullptr},
            {"code", nullptr}};
  if (!param.empty()) e["param"] = utf8_sanitized(param);
  if (!code.empty()) e["code"] = code;
  return {{"error", e}};
}

ApiError invalid(std::string param, std::string message, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::optional<std::pair<int, int>> parse_size(const std::string& size) {
  const size_t x = size.find('x');
  if (x == std::string::npos || x == 0 || x + 1 == size.size() || x > 5 || size.size() - x > 6)
    return std::nullopt;
  int w = 0, h = 0;
  const char* end = size.data() + size.size();
  auto r1 = std::from_chars(size.data(), size.data() + x, w);
  auto r2 = std::from_chars(size.data() + x + 1, end, h);
  if (r1.ec != std::errc() || r1.ptr != size.data() + x || r2.ec != std::errc() || r2.ptr != end)
    return std::nullopt;
  return std::make_pair(w, h);
}

namespace {
// Length of the well-formed UTF-8 sequence at s[i], 0 when there is none.
size_t utf8_sequence_length(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t len = 0;
  uint32_t cp = 0;
  if (c < 0x80) {
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    len = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (d & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
  if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
      (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
    return 0;
  return len;
}
}  // namespace

bool is_valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_sequence_length(s, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string utf8_sanitized(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_sequence_length(s, i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
      ++i;
    } else {
      out.append(s, i, len);
      i += len;
    }
  }
  return out;
}

namespace {
// What is wrong with a JSON body, in our words and with the byte where it went wrong (the
// library's message names its own internals: "[json.exception.parse_error.101] ...").
std::string json_error_reason(const json::parse_error& e) {
  std::string what = e.what();
  std::string reason = "syntax error";
  if (const size_t dash = what.find(" - "); dash != std::string::npos) reason = what.substr(dash + 3);
  if (const size_t last = reason.find("; last read:"); last != std::string::npos)
    reason.resize(last);
  if (reason.find("surrogate") != std::string::npos)
    reason = "a \\u escape is an unpaired UTF-16 surrogate (\\uD800 to \\uDBFF must be followed by "
             "\\uDC00 to \\uDFFF)";
  return utf8_sanitized(reason.substr(0, 200)) + " (at byte " + std::to_string(e.byte) + ")";
}
}  // namespace

Parsed<GenerationRequest> parse_json_request(const std::string& body, Endpoint endpoint,
                                        const RequestLimits& limits) {
  json j;
  // Duplicate keys are refused, as duplicate multipart fields are (the JSON library would keep
  // the last one silently).
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  // Text values other than the images are short (a prompt is at most max_prompt_bytes): a longer
  // one is dropped as soon as it is parsed, so that a 30 MB prompt in an edit's body (within the
  // route's cap) is never kept or copied; the request is refused below.
  const size_t max_text = std::max<size_t>(limits.max_prompt_bytes * 4, 64u << 10);
  std::string key, oversized;
  size_t oversized_bytes = 0;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && parsed.is_string()) {
      if (depth == 1) key = parsed.get<std::string>();
      if (duplicate.empty() && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
        duplicate = parsed.get<std::string>();
    } else if (event == json::parse_event_t::value && parsed.is_string() && key != "image" && key != "mask" &&
               parsed.get_ref<const std::string&>().size() > max_text) {
      if (oversized.empty()) {
        oversized = key;
        oversized_bytes = parsed.get_ref<const std::string&>().size();
      }
      return false;  // not kept
    }
    return true;
  };
  try {
    j = json::parse(body, on_event);
  } catch (const json::parse_error& e) {
    return invalid("", "the request body is not valid JSON: " + json_error_reason(e),
                   "invalid_json");
  } catch (const json::exception& e) {
    return invalid("", "the request body is not valid JSON", "invalid_json");
  }
  if (!duplicate.empty()) {
    const std::string name = utf8_sanitized(duplicate.substr(0, 64));
    return invalid(name, "'" + name + "' is given more than once", "duplicate_parameter");
  }
  if (!oversized.empty()) {
    const std::string name = utf8_sanitized(oversized.substr(0, 64));
    return invalid(name, "'" + name + "' is " + std::to_string(oversized_bytes) + " bytes of text, more than the " +
                             std::to_string(max_text) + " any text parameter may have" +
                             (name == "prompt" || name == "negative_prompt"
                                  ? " (a prompt: at most " + std::to_string(limits.max_prompt_bytes) + " bytes)"
                                  : ""));
  }
  if (!j.is_object())
    return invalid("", "the request body must be a JSON object, got " + type_name(j),
                   "invalid_json");
  GenerationRequest r;
  r.steps = limits.default_steps;
  r.guidance_scale = limits.default_guidance_scale;
  if (auto e = validate_fields(j, endpoint, limits, r)) return *e;
  std::optional<std::string> image, mask;
  for (const char* k : {"image", "mask"}) {
    if (!j.contains(k) || j.at(k).is_null()) continue;
    std::string bytes;
    if (auto e = decode_base64_field(j.at(k), k, bytes)) return *e;
    (std::string(k) == "image" ? image : mask) = std::move(bytes);
  }
  if (auto e = attach_images(image, mask, endpoint, limits, r)) return *e;
  r.image_name = "image";
  r.mask_name = r.mode == GenerationMode::Inpaint ? "mask" : "";
  std::string param;  // the checks every request passes, whoever built it (the CLI too)
  if (const std::string problem = validate_request(r, &param); !problem.empty()) return invalid(param, problem);
  return r;
}

Parsed<GenerationRequest> parse_multipart_request(const std::vector<FormField>& fields,
                                             Endpoint endpoint, const RequestLimits& limits) {
  json j = json::object();
  std::optional<std::string> image, mask;
  std::string image_name, mask_name;
  std::set<std::string> seen;
  static const std::set<std::string> kIntegers = {"n", "steps", "seed", "partial_images"};
  static const std::set<std::string> kNumbers = {"guidance_scale", "aesthetic_score", "strength"};
  for (const auto& f : fields) {
    // Names are echoed in errors: refuse long or non-UTF-8 ones before anything else.
    if (f.name.size() > 64 || !is_valid_utf8(f.name))
      return invalid("",
                     "unknown form field '" + utf8_sanitized(f.name.substr(0, 64)) +
                         (f.name.size() > 64 ? "...'" : "'") +
                         " (field names are the JSON body's parameter names)",
                     "unknown_parameter");
    // The OpenAI SDK sends an array of images as "image[]"; this server edits one image.
    const bool image_array = f.name == "image[]";
    if (!seen.insert(image_array ? std::string("image") : f.name).second)
      return invalid(f.name,
                     f.name == "image" || image_array
                         ? "one 'image' per request: several were sent (this server edits one image)"
                         : "'" + f.name + "' is given more than once",
                     "duplicate_parameter");
    if (f.name == "image" || f.name == "mask" || image_array) {
      if (endpoint == Endpoint::Generations)
        return invalid(f.name, "'" + f.name + "' is not accepted by /v1/images/generations",
                       "unknown_parameter");
      const bool is_image = f.name != "mask";
      (is_image ? image : mask) = f.content;
      std::string name = f.filename.empty() ? f.name : f.filename;
      if (!is_valid_utf8(name) || name.size() > 255) name = f.name;
      (is_image ? image_name : mask_name) = name;
      continue;
    }
    if (!is_valid_utf8(f.content))
      return invalid(f.name, "'" + f.name + "' is not valid UTF-8", "invalid_encoding");
    if (kIntegers.count(f.name)) {
      // Decimal digits with an optional '-' (for a clear range error), as JSON integers.
      const std::string& s = f.content;
      const char* end = s.data() + s.size();
      const bool negative = !s.empty() && s[0] == '-';
      int64_t i64 = 0;
      uint64_t u64 = 0;
      const auto res =
          negative ? std::from_chars(s.data(), end, i64) : std::from_chars(s.data(), end, u64);
      if (s.empty() || s[negative ? 1 : 0] < '0' || s[negative ? 1 : 0] > '9' ||
          res.ec == std::errc::invalid_argument || res.ptr != end)
        return invalid(f.name, "'" + f.name + "' must be an integer, got '" + s.substr(0, 64) + "'",
                       "invalid_type");
      if (res.ec == std::errc::result_out_of_range)
        return invalid(f.name, "'" + f.name + "' is out of range, got '" + s.substr(0, 64) + "'");
      j[f.name] = negative ? json(i64) : json(u64);
    } else if (f.name == "loras") {
      // A JSON object in a text field.
      auto parsed = json::parse(f.content, nullptr, /*allow_exceptions=*/false);
      if (parsed.is_discarded())
        return invalid(f.name, "'loras' must be a JSON object {\"adapter name\": scale}", "invalid_type");
      j[f.name] = parsed;
    } else if (f.name == "stream" || f.name == "preview") {
      if (f.content != "true" && f.content != "false")
        return invalid(f.name, "'" + f.name + "' must be true or false, got '" + f.content.substr(0, 64) + "'",
                       "invalid_type");
      j[f.name] = f.content == "true";
    } else if (kNumbers.count(f.name)) {
      const auto d = parse_double(f.content);
      if (!d)
        return invalid(f.name,
                       "'" + f.name + "' must be a number, got '" + f.content.substr(0, 64) + "'",
                       "invalid_type");
      j[f.name] = *d;
    } else {
      j[f.name] = f.content;
    }
  }
  GenerationRequest r;
  r.steps = limits.default_steps;
  r.guidance_scale = limits.default_guidance_scale;
  if (auto e = validate_fields(j, endpoint, limits, r)) return *e;
  if (auto e = attach_images(image, mask, endpoint, limits, r)) return *e;
  r.image_name = image_name;
  r.mask_name = r.mode == GenerationMode::Inpaint ? mask_name : "";
  std::string param;  // the checks every request passes, whoever built it (the CLI too)
  if (const std::string problem = validate_request(r, &param); !problem.empty()) return invalid(param, problem);
  return r;
}

}  // namespace amused::server
