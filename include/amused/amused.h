// amused.cpp public API.
//
// Basic usage:
//
//   #include <amused/amused.h>
//
//   amused::set_threads(0);                                   // all physical cores (default)
//   auto ids = amused::ClipTokenizer::from_folder("amused-256/tokenizer")->encode("a cat");
//
// Everything the CLI and the server do goes through the headers included here.
#pragma once

#include <string>

#include "amused/error.h"

namespace amused {

// Library version, "MAJOR.MINOR.PATCH".
const char* version();

// Sets the number of compute threads (LibTorch intra-op and BLAS); <= 0 = all physical cores.
// Returns the number applied. Called once with 0 when the library loads a model, unless set before.
int set_threads(int threads);

}  // namespace amused
