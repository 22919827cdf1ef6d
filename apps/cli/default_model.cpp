// The model the CLI uses when no -m is given (see command.h). Compiled with AMUSED_SOURCE_DIR (the
// source tree) and AMUSED_INSTALL_DATADIR (the installed data folder), without the shared PCH.
#include <cstdlib>
#include <filesystem>
#include <string>

#include "amused/error.h"
#include "command.h"

namespace amused::cli {

std::string default_model() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("AMUSED_MODEL"); env != nullptr && *env != '\0') return env;
  const fs::path candidates[] = {fs::path(AMUSED_SOURCE_DIR) / "models" / "amused-emoji",
                                 fs::path(AMUSED_INSTALL_DATADIR) / "models" / "amused-emoji"};
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c / "model_index.json", ec)) return c.string();
  }
  throw InvalidArgument("no model given and the embedded one is missing (looked in '" + candidates[0].string() +
                        "' and '" + candidates[1].string() +
                        "'): give -m MODEL (a folder or a hub repo id such as amused/amused-256) or set AMUSED_MODEL");
}

}  // namespace amused::cli
