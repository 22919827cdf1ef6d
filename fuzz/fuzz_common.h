// Helpers shared by the libFuzzer targets: quiet logging, scratch files, and the rule that the
// library may only throw amused::Error (anything else escapes and libFuzzer reports it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace amused::fuzz {

// Silences library warnings (unknown config keys etc.) once per process.
void quiet_logs();

// A per-process scratch folder (created once, removed at exit).
const std::filesystem::path& scratch_dir();

// Writes `bytes` to scratch_dir()/name (replacing it) and returns the path.
std::filesystem::path write_scratch(const std::string& name, std::string_view bytes);

// The golden folder ($AMUSED_GOLDEN_DIR, else ../shared/golden beside the source tree).
std::filesystem::path golden_dir();

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace amused::fuzz
