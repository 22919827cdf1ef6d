// The small vocabulary types of the API: number format, device and masking schedule. The library
// takes and reports these, never strings; programs parse their flags and JSON at the edge with the
// parse_* functions below (which throw amused::InvalidArgument naming the accepted values).
//
//   amused::LoadOptions load;
//   load.dtype = amused::parse_dtype("bf16");          // DType::BFloat16
//   load.device = amused::Device::parse("cuda:1");     // Device{Kind::CUDA, 1}
//   std::string shown = amused::to_string(load.dtype);  // "bfloat16"
#pragma once

#include <string>
#include <string_view>

namespace amused {

// The number format a pipeline runs in. Auto resolves when the pipeline loads (LoadOptions::dtype).
enum class DType { Auto, Float32, BFloat16, Float16 };

// "auto", "float32" ("fp32", "float"), "bfloat16" ("bf16"), "float16" ("fp16", "half"), any case.
DType parse_dtype(std::string_view text);
// "auto", "float32", "bfloat16", "float16".
const char* to_string(DType dtype);

// Where a pipeline runs.
struct Device {
  enum class Kind { CPU, CUDA };
  Kind kind = Kind::CPU;
  int index = -1;  // CUDA device index; -1: the current CUDA device ("cuda")

  static Device cpu() { return {}; }
  static Device cuda(int index = -1) { return {Kind::CUDA, index}; }
  // "cpu", "cuda", "cuda:N" (any case).
  static Device parse(std::string_view text);
  bool is_cpu() const { return kind == Kind::CPU; }
  bool is_cuda() const { return kind == Kind::CUDA; }
  // "cpu", "cuda", "cuda:1": what parse() reads back.
  std::string str() const;
  friend bool operator==(const Device& a, const Device& b) { return a.kind == b.kind && a.index == b.index; }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

// How many tokens stay masked after each step. FromConfig: the model's scheduler_config.json.
enum class MaskingSchedule { FromConfig, Cosine, Linear };

// "" (FromConfig), "cosine", "linear" (any case).
MaskingSchedule parse_masking_schedule(std::string_view text);
// "" for FromConfig, else "cosine" / "linear".
const char* to_string(MaskingSchedule schedule);

}  // namespace amused
