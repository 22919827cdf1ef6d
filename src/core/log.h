// Logging through a settable sink (stderr by default). The library never prints to stdout.
#pragma once

#include <functional>
#include <sstream>
#include <string>

namespace amused::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };

using Sink = std::function<void(Level, const std::string&)>;

// Replaces the sink; an empty function restores the default (stderr, "amused: warning: ...").
void set_sink(Sink sink);
void set_min_level(Level level);
Level min_level();
void write(Level level, const std::string& message);

inline void debug(const std::string& m) { write(Level::Debug, m); }
inline void info(const std::string& m) { write(Level::Info, m); }
inline void warn(const std::string& m) { write(Level::Warn, m); }
inline void error(const std::string& m) { write(Level::Error, m); }

}  // namespace amused::log
