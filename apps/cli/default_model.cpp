// The model the CLI uses when no -m is given (see command.h). Compiled with AMUSED_SOURCE_DIR (the
// source tree) and AMUSED_INSTALL_DATADIR (the installed data folder), without the shared PCH.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
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

ModelDefaults model_defaults(const std::string& model) {
  namespace fs = std::filesystem;
  ModelDefaults d;
  const fs::path file = fs::path(model) / "generation_config.json";
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return d;
  std::ifstream in(file, std::ios::binary);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument("'" + file.string() + "' is not valid JSON (" + e.what() + "): fix or remove it");
  }
  if (!j.is_object()) throw InvalidArgument("'" + file.string() + "' must hold a JSON object");
  if (const auto g = j.find("guidance_scale"); g != j.end()) {
    if (!g->is_number() || !std::isfinite(g->get<double>()))
      throw InvalidArgument("'" + file.string() + "': \"guidance_scale\" must be a number");
    d.guidance_scale = g->get<double>();
  }
  if (const auto s = j.find("num_inference_steps"); s != j.end()) {
    if (!s->is_number_integer() || s->get<int64_t>() < 1 || s->get<int64_t>() > 1000)
      throw InvalidArgument("'" + file.string() + "': \"num_inference_steps\" must be an integer in [1, 1000]");
    d.steps = static_cast<int>(s->get<int64_t>());
  }
  return d;
}

}  // namespace amused::cli
