// Sub-command registry of the `amused` CLI. Each apps/cli/cmd_*.cpp registers itself with a static
// `Registrar`, so adding a command never touches main.cpp.
#pragma once

#include <cmath>

#include <CLI/CLI.hpp>

#include "amused/pipeline.h"

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace amused::cli {

// `setup` adds the sub-command's options to `sub` and returns the function that runs it
// (called after parsing; returns the process exit code).
using Setup = std::function<std::function<int()>(CLI::App& sub)>;

struct Command {
  std::string name;
  std::string description;
  Setup setup;
};

std::vector<Command>& registry();

// --seed: a decimal integer in [0, 2^64 - 1]. (Without this check CLI11 saturates larger values to
// 2^64 - 1 and wraps -1 around, so two different requests would silently share a seed.)
inline const CLI::Validator& seed_range() {
  static const CLI::Validator v(
      [](std::string& s) -> std::string {
        static const std::string max = "18446744073709551615";
        const bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
        std::string t = s.substr(std::min(s.find_first_not_of('0'), s.size()));
        if (!digits || t.size() > max.size() || (t.size() == max.size() && t > max))
          return "'" + s + "' is not a seed: give a whole number from 0 to 18446744073709551615 (2^64 - 1)";
        return "";
      },
      "SEED");
  return v;
}

// The model used when -m is not given: $AMUSED_MODEL when set, else the embedded emoji model
// (models/amused-emoji of the source tree the binary was built from, or the installed copy under
// <prefix>/share/amused). Throws InvalidArgument naming where it looked when there is none.
std::string default_model();

// Generation defaults a local model folder recommends in `generation_config.json`
// ({"guidance_scale": 4.0, "num_inference_steps": 12}), used for the flags a command was not given.
// Empty for hub ids and folders without the file; a malformed file is an InvalidArgument naming it.
struct ModelDefaults {
  std::optional<double> guidance_scale;
  std::optional<int> steps;
};
ModelDefaults model_defaults(const std::string& model);

struct Registrar {
  Registrar(std::string name, std::string description, Setup setup) {
    registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

// A check for a flag whose text the library parses (amused::parse_dtype, Device::parse,
// parse_masking_schedule): CLI11 then names the flag and the value, the parser the accepted values.
template <class Parse>
CLI::Validator parsed_by(Parse parse, const char* name) {
  return CLI::Validator(
      [parse](std::string& text) -> std::string {
        try {
          parse(text);
          return "";
        } catch (const amused::Error& e) {
          return e.what();
        }
      },
      name);
}
inline CLI::Validator dtype_choice() { return parsed_by(&amused::parse_dtype, "DTYPE"); }
inline CLI::Validator device_choice() { return parsed_by(&amused::Device::parse, "DEVICE"); }
inline CLI::Validator masking_schedule_choice() { return parsed_by(&amused::parse_masking_schedule, "SCHEDULE"); }

// The model options generate, serve and bench share, as library load options.
inline amused::LoadOptions load_options(const std::string& device, const std::string& dtype, int threads,
                                        const std::string& variant, bool offline) {
  amused::LoadOptions lo;
  lo.device = amused::Device::parse(device);
  lo.dtype = amused::parse_dtype(dtype);
  lo.threads = threads;
  lo.variant = variant;
  lo.offline = offline;
  return lo;
}

// `--lora FILE[:SCALE]` (FILE may itself hold ':'; the part after the last one is the scale only when
// it is a number). Throws amused::InvalidArgument for an empty file or a non-finite scale.
inline amused::LoraAdapter parse_lora_flag(const std::string& spec) {
  amused::LoraAdapter a;
  a.path = spec;
  const auto colon = spec.rfind(':');
  if (colon != std::string::npos && colon + 1 < spec.size()) {
    try {
      size_t used = 0;
      const std::string tail = spec.substr(colon + 1);
      const double s = std::stod(tail, &used);
      if (used == tail.size()) {
        a.path = spec.substr(0, colon);
        a.scale = s;
      }
    } catch (const std::exception&) {
    }
  }
  if (a.path.empty()) throw amused::InvalidArgument("--lora '" + spec + "': no file (FILE[:SCALE])");
  if (!std::isfinite(a.scale)) throw amused::InvalidArgument("--lora '" + spec + "': the scale must be finite");
  return a;
}

// True when stdout / stderr is a terminal (progress bars only then).
bool stdout_is_tty();
bool stderr_is_tty();

}  // namespace amused::cli
