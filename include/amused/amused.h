// amused.cpp public API.
//
// Basic usage:
//
//   #include <amused/amused.h>
//
//   amused::LoadOptions load;                                 // cpu, float32, all physical cores
//   auto pipe = amused::Pipeline::load("amused/amused-256", load);   // folder or hub repo id
//   amused::TextToImageParams params;
//   params.prompts = {"a photo of a cat"};
//   params.seed = 0;
//   amused::GenerationResult result = pipe->text_to_image(params);
//   amused::save_png("cat.png", result.images[0]);
//
//   // Tokens only:
//   auto ids = amused::ClipTokenizer::from_folder("amused-256/tokenizer")->encode_padded("a cat");
//
// Everything the CLI and the server do goes through the headers included here.
#pragma once

#include <string>

#include "amused/error.h"
#include "amused/image_io.h"
#include "amused/pipeline.h"
#include "amused/png_text.h"
#include "amused/repo.h"
#include "amused/system.h"
#include "amused/tokenizer.h"
#include "amused/train.h"
#include "amused/types.h"

namespace amused {

// Library version, "MAJOR.MINOR.PATCH".
const char* version();

// Sets the number of compute threads (LibTorch's intra-op OpenMP threads); <= 0 = all physical
// cores. Returns the number applied. OpenBLAS, when it is the BLAS, is made single-threaded and its
// large float32 products are spread over those threads instead (one thread pool, not two competing
// ones). Process-wide. A count set here is kept by later loads and trainers whose own `threads`
// option is <= 0; without a call, loading a model applies all physical cores.
int set_threads(int threads);

}  // namespace amused
