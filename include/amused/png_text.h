// PNG text metadata (tEXt / zTXt / iTXt chunks), e.g. the generation parameters the CLI writes.
#pragma once

#include <map>
#include <string>

#include "amused/error.h"

namespace amused {

// All text chunks of the PNG at `path`, keyword -> text (a later chunk wins on a repeated keyword).
// Throws amused::IoError when the file is missing or not a valid PNG.
std::map<std::string, std::string> read_png_text(const std::string& path);

}  // namespace amused
