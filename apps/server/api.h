// The server's request model: parsing and validation of the images API bodies (JSON and
// multipart), the OpenAI error shape, and the mapping of a request onto the library's parameters
// and PNG metadata (the same as `amused generate`). No sockets here: every function is testable
// (and fuzzable) on plain strings.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "amused/image_io.h"
#include "amused/pipeline.h"
#include "server/request.h"  // GenerationRequest: what a body parses into

namespace amused::server {

// An error answered as {"error": {"message", "type", "param", "code"}} with HTTP `status`.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field, "" for none (null in JSON)
  std::string code;   // a stable machine-readable code, "" for none (null in JSON)

  nlohmann::json to_json() const;
};

ApiError invalid(std::string param, std::string message, std::string code = "invalid_value");

// A parse result: the value or the error to answer.
template <class T>
using Parsed = std::variant<T, ApiError>;

// What a request may ask for. The model's geometry comes from Pipeline::summary().
struct RequestLimits {
  int vq_scale_factor = 8;
  int default_width = 256;
  int default_height = 256;
  int max_side = 1024;        // output width/height
  int max_input_side = 4096;  // uploaded images
  int max_n = 8;              // images per request
  int max_steps = 100;
  size_t max_prompt_bytes = 4000;
  size_t max_image_bytes = 16u << 20;  // one decoded upload (before base64)
  // What a request that names no steps / guidance_scale gets (the model's generation_config.json).
  int default_steps = 12;
  double default_guidance_scale = 10.0;
};

enum class Endpoint {
  Generations,  // POST /v1/images/generations: text-to-image only
  Edits,        // POST /v1/images/edits: an image is required
  Jobs,         // POST /v1/jobs: either
};


// A multipart/form-data part, independent of the HTTP library.
struct FormField {
  std::string name;
  std::string content;
  std::string filename;
  std::string content_type;
};

// A JSON body: the OpenAI fields (prompt, n, size, response_format, model and user accepted and
// ignored) plus aMUSEd's (negative_prompt, steps, guidance_scale, seed, temperature,
// aesthetic_score, crop_coord, masking_schedule; for edits image, mask as base64 or data: URLs and
// strength). Unknown fields are refused.
Parsed<GenerationRequest> parse_json_request(const std::string& body, Endpoint endpoint,
                                        const RequestLimits& limits);
// POST /v1/images/generations.
inline Parsed<GenerationRequest> parse_generation_request(const std::string& body,
                                                     const RequestLimits& limits) {
  return parse_json_request(body, Endpoint::Generations, limits);
}
// A multipart body (OpenAI's edits): `image` and `mask` as files, every other field as text.
Parsed<GenerationRequest> parse_multipart_request(const std::vector<FormField>& fields,
                                             Endpoint endpoint, const RequestLimits& limits);

// "W" and "H" of "WxH" when both are decimal integers, else nullopt.
std::optional<std::pair<int, int>> parse_size(const std::string& size);

// True when `s` is well-formed UTF-8.
bool is_valid_utf8(const std::string& s);

// `s` with every byte that is not part of well-formed UTF-8 replaced by U+FFFD.
std::string utf8_sanitized(const std::string& s);

}  // namespace amused::server
