// libFuzzer target: the request parsing of `amused serve` (apps/server/api.*), the code between
// the HTTP library and the pipeline. Byte 0 picks the endpoint (generations, edits, jobs) and the
// body kind; the rest is either a JSON body (as POSTed) or a multipart form given as parts
// separated by "\n--part--\n", each "name\nfilename\ncontent_type\ncontent" (cpp-httplib, a
// system library, splits the real multipart wire format; the fields it hands over are what we
// parse). Checked for every input:
//  - only amused::Error may escape (none should: parsing answers errors as values);
//  - an error has an HTTP status in 400..599 and its JSON body serialises (the server sends it:
//    nlohmann::json::dump throws on invalid UTF-8, so messages must never echo broken bytes);
//  - an accepted request respects the limits (prompt size and UTF-8, n, steps, size multiple of
//    the VQ scale within max_side, uploads within max_input_side), its mode fits the endpoint, and
//    to_params() maps it onto the library's parameters.
#include <string>
#include <string_view>
#include <vector>

#include "amused/error.h"
#include "fuzz_common.h"
#include "server/api.h"

namespace {
using namespace amused::server;

std::vector<FormField> split_form(std::string_view body) {
  static constexpr std::string_view kPart = "\n--part--\n";
  std::vector<FormField> fields;
  size_t start = 0;
  while (start <= body.size() && fields.size() < 64) {
    size_t end = body.find(kPart, start);
    if (end == std::string_view::npos) end = body.size();
    std::string_view part = body.substr(start, end - start);
    FormField f;
    std::string_view* slots[3] = {nullptr, nullptr, nullptr};
    std::string_view name, filename, type;
    slots[0] = &name;
    slots[1] = &filename;
    slots[2] = &type;
    for (auto* slot : slots) {
      const size_t nl = part.find('\n');
      if (nl == std::string_view::npos) {
        *slot = part;
        part = {};
        break;
      }
      *slot = part.substr(0, nl);
      part.remove_prefix(nl + 1);
    }
    f.name = name;
    f.filename = filename;
    f.content_type = type;
    f.content = part;
    fields.push_back(std::move(f));
    if (end == body.size()) break;
    start = end + kPart.size();
  }
  return fields;
}

void check_error(const ApiError& e) {
  if (e.status < 400 || e.status > 599 || e.message.empty()) __builtin_trap();
  // Throws nlohmann::json::type_error (not amused::Error: a finding) on invalid UTF-8.
  (void)e.to_json().dump();
}

void check_accepted(const GenerationRequest& r, Endpoint endpoint, const RequestLimits& limits) {
  if (r.prompts.size() != 1 || r.prompts[0].empty() || r.prompts[0].size() > limits.max_prompt_bytes ||
      !is_valid_utf8(r.prompts[0]))
    __builtin_trap();
  if (r.negative_prompts.size() > 1 ||
      (r.negative_prompts.size() == 1 &&
       (r.negative_prompts[0].size() > limits.max_prompt_bytes || !is_valid_utf8(r.negative_prompts[0]))))
    __builtin_trap();
  if (r.n < 1 || r.n > limits.max_n || r.steps < 1 || r.steps > limits.max_steps) __builtin_trap();
  for (const auto& side : {r.width, r.height})
    if (side && (*side < limits.vq_scale_factor || *side > limits.max_side ||
                 *side % limits.vq_scale_factor != 0))
      __builtin_trap();
  if (r.width.has_value() != r.height.has_value()) __builtin_trap();
  if (r.temperature.empty() || r.temperature.size() > 2) __builtin_trap();
  const bool t2i = r.mode == GenerationMode::TextToImage;
  if (endpoint == Endpoint::Generations && !t2i) __builtin_trap();
  if (endpoint == Endpoint::Edits && t2i) __builtin_trap();
  if (!t2i && r.mode != GenerationMode::ImageToImage && r.mode != GenerationMode::Inpaint) __builtin_trap();
  if (!t2i) {
    if (r.image.width <= 0 || r.image.width > limits.max_input_side ||
        r.image.height <= 0 || r.image.height > limits.max_input_side ||
        r.image.pixels.size() != static_cast<size_t>(r.image.width) * r.image.height * 3 ||
        !is_valid_utf8(r.image_name))
      __builtin_trap();
  }
  if (r.mode == GenerationMode::Inpaint && (r.mask.pixels.empty() || !is_valid_utf8(r.mask_name)))
    __builtin_trap();
  if (r.strength && (*r.strength < 0.0 || *r.strength > 1.0)) __builtin_trap();
  const GenerationCall call = to_params(r);
  if (t2i && call.t2i.prompts.empty()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  amused::fuzz::quiet_logs();
  if (size < 1) return 0;
  const Endpoint endpoint = static_cast<Endpoint>(data[0] % 3);
  const bool multipart = (data[0] & 4) != 0;
  const std::string_view body = amused::fuzz::as_view(data + 1, size - 1);
  // The server's defaults, with smaller upload limits so that decoding stays quick.
  RequestLimits limits;
  limits.max_input_side = 512;
  limits.max_image_bytes = 1u << 20;
  try {
    const Parsed<GenerationRequest> parsed =
        multipart ? parse_multipart_request(split_form(body), endpoint, limits)
                  : parse_json_request(std::string(body), endpoint, limits);
    if (const auto* e = std::get_if<ApiError>(&parsed))
      check_error(*e);
    else
      check_accepted(std::get<GenerationRequest>(parsed), endpoint, limits);
  } catch (const amused::Error&) {
  }
  return 0;
}
