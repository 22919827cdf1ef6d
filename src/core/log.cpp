#include "core/log.h"

#include "amused/log.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <mutex>

namespace amused::log {
namespace {
std::mutex g_mutex;
Sink g_sink;

// AMUSED_LOG=debug|info|warning|error sets the starting level (default info).
Level initial_level() {
  const char* env = std::getenv("AMUSED_LOG");
  if (!env) return Level::Info;
  const std::string v = env;
  if (v == "debug") return Level::Debug;
  if (v == "warning" || v == "warn") return Level::Warn;
  if (v == "error") return Level::Error;
  if (v != "info" && !v.empty())
    std::fprintf(stderr, "amused: warning: AMUSED_LOG=%s is not one of debug, info, warning, error; using info\n",
                 env);
  return Level::Info;
}
Level g_min = initial_level();

const char* level_name(Level l) {
  switch (l) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warning";
    case Level::Error: return "error";
  }
  return "?";
}
}  // namespace

void set_sink(Sink sink) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_sink = std::move(sink);
}
void set_min_level(Level level) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_min = level;
}
Level min_level() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_min;
}
void write(Level level, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (level < g_min) return;
  if (g_sink) {
    g_sink(level, message);
    return;
  }
  std::fprintf(stderr, "amused: %s: %s\n", level_name(level), message.c_str());
}

}  // namespace amused::log

// ------------------------------------------------------------------ public API (amused/log.h)

namespace amused {
void set_log_level(LogLevel level) { log::set_min_level(static_cast<log::Level>(static_cast<int>(level))); }
LogLevel log_level() { return static_cast<LogLevel>(static_cast<int>(log::min_level())); }
}  // namespace amused
