#include "fuzz_common.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "core/log.h"

namespace amused::fuzz {
namespace fs = std::filesystem;

void quiet_logs() {
  static const bool done = [] {
    log::set_min_level(log::Level::Error);
    return true;
  }();
  (void)done;
}

namespace {
struct Scratch {
  fs::path path;
  Scratch() {
    path = fs::temp_directory_path() / ("amused-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
}  // namespace

const fs::path& scratch_dir() {
  static Scratch s;
  return s.path;
}

fs::path write_scratch(const std::string& name, std::string_view bytes) {
  const fs::path p = scratch_dir() / name;
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return p;
}

fs::path golden_dir() {
  if (const char* env = std::getenv("AMUSED_GOLDEN_DIR")) return env;
  return fs::path(AMUSED_SOURCE_DIR) / ".." / "shared" / "golden";
}

}  // namespace amused::fuzz
