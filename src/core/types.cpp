#include "amused/types.h"

#include <cctype>
#include <charconv>

#include "amused/error.h"

namespace amused {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

DType parse_dtype(std::string_view text) {
  const std::string n = lower(text);
  if (n == "auto") return DType::Auto;
  if (n == "float32" || n == "fp32" || n == "float") return DType::Float32;
  if (n == "bfloat16" || n == "bf16") return DType::BFloat16;
  if (n == "float16" || n == "fp16" || n == "half") return DType::Float16;
  throw InvalidArgument("unknown dtype '" + std::string(text) + "' (expected auto, float32, bfloat16 or float16)");
}

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::Auto: return "auto";
    case DType::Float32: return "float32";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
  }
  return "float32";
}

Device Device::parse(std::string_view text) {
  const std::string n = lower(text);
  if (n == "cpu") return cpu();
  if (n == "cuda") return cuda();
  if (n.rfind("cuda:", 0) == 0 && n.size() > 5 && n.size() <= 8) {
    int index = -1;
    const char* first = n.data() + 5;
    const char* last = n.data() + n.size();
    const auto [end, ec] = std::from_chars(first, last, index);
    if (ec == std::errc() && end == last && index >= 0) return cuda(index);
  }
  throw InvalidArgument("unknown device '" + std::string(text) + "' (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const {
  if (is_cpu()) return "cpu";
  return index < 0 ? "cuda" : "cuda:" + std::to_string(index);
}

MaskingSchedule parse_masking_schedule(std::string_view text) {
  const std::string n = lower(text);
  if (n.empty()) return MaskingSchedule::FromConfig;
  if (n == "cosine") return MaskingSchedule::Cosine;
  if (n == "linear") return MaskingSchedule::Linear;
  throw InvalidArgument("unknown masking schedule '" + std::string(text) + "' (expected cosine or linear)");
}

const char* to_string(MaskingSchedule schedule) {
  switch (schedule) {
    case MaskingSchedule::FromConfig: return "";
    case MaskingSchedule::Cosine: return "cosine";
    case MaskingSchedule::Linear: return "linear";
  }
  return "";
}

}  // namespace amused
