// How much the library logs to stderr (its only output besides return values and exceptions).
// The starting level comes from AMUSED_LOG=debug|info|warning|error (default info).
#pragma once

namespace amused {

enum class LogLevel { Debug = 0, Info = 1, Warning = 2, Error = 3 };

// Messages below `level` are dropped (e.g. a CLI's --quiet sets Error).
void set_log_level(LogLevel level);
LogLevel log_level();

}  // namespace amused
