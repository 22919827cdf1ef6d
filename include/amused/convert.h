// Rewriting a pipeline folder in another precision: float32 <-> float16 weights, as diffusers'
// `pipe.to(torch.float16).save_pretrained(out)` (plain file names) or
// `save_pretrained(out, variant="fp16")` (`<base>.fp16.safetensors`). The configs, scheduler and
// tokenizer are copied; the output is built beside `output` and renamed into place (never
// half-written).
//
//   amused::ConvertOptions o;
//   o.model = "runs/emoji/";  o.output = "models/amused-emoji";  o.dtype = amused::DType::Float16;
//   amused::convert_pipeline(o);
#pragma once

#include <cstdint>
#include <string>

#include "amused/error.h"
#include "amused/types.h"

namespace amused {

struct ConvertOptions {
  std::string model;           // pipeline folder or hub id
  std::string model_variant;   // weight files to read ("" or "fp16")
  bool offline = false;
  std::string output;          // the pipeline folder to write
  DType dtype = DType::Float16;  // Float16 | Float32: the tensors written
  std::string variant;         // "": plain names; "fp16": <base>.fp16.safetensors (needs float16)
};

struct ConvertSummary {
  int64_t parameters = 0;
  uint64_t weight_bytes = 0;   // of the weight files written
};

ConvertSummary convert_pipeline(const ConvertOptions& options);

}  // namespace amused
