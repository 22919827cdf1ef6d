// What `amused train` and `amused train-vq` share: the stop-signal handler (SIGINT/SIGTERM ask for
// a checkpoint and an exit with 128 + signal; a second signal leaves at once), durations for the
// progress line, and `--config FILE` (TOML with the flags' names).
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "amused/error.h"

namespace amused::cli {

inline volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" inline void on_stop_signal(int sig) {
  if (g_stop_signal != 0) std::_Exit(128 + sig);  // a second Ctrl-C: leave at once
  g_stop_signal = sig;
}
inline void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

// In a progress callback: false (stop, which writes a checkpoint) once a stop signal came.
inline bool keep_going_after_signal(int64_t step) {
  if (g_stop_signal == 0) return true;
  std::fprintf(stderr, "\nstopping: writing a checkpoint at step %lld (resume with --resume)\n",
               static_cast<long long>(step));
  return false;
}
// After the run: the exit code of a run a signal stopped (128 + signal), with where its checkpoint
// is; 0 when no signal came.
inline int exit_code_after_signal(int64_t steps, const std::string& output) {
  if (g_stop_signal == 0) return 0;
  std::fprintf(stderr, "stopped at step %lld; the checkpoint is in %s\n", static_cast<long long>(steps),
               output.c_str());
  return 128 + g_stop_signal;
}

// 52 -> "52s", 381 -> "6m21s", 7380 -> "2h03m"; negative or NaN -> "?".
inline std::string duration(double s) {
  if (!(s >= 0)) return "?";
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t < 60) std::snprintf(buf, sizeof buf, "%lds", t);
  else if (t < 3600) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  return buf;
}

// `--config FILE`: options from a TOML file (`name = value`, the flags' long names with dashes or
// underscores, optionally under a [section] named `section`) for every option the command line did
// not give. (CLI11 2.1 reads config files for the main app only, so this applies them itself.)
inline void apply_config_file(CLI::App& sub, const std::string& path, const std::string& section) {
  std::ifstream in(path);
  if (!in) throw amused::IoError("cannot read the --config file '" + path + "'");
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_config(in);
  } catch (const CLI::ParseError& e) {
    throw amused::InvalidArgument("--config '" + path + "': " + e.what());
  }
  for (const auto& item : items) {
    if (!item.parents.empty() && !(item.parents.size() == 1 && item.parents[0] == section))
      throw amused::InvalidArgument("--config '" + path + "': section [" + item.parents[0] + "] is not an amused " +
                                    sub.get_name() + " section (use [" + section + "] or none)");
    std::string name = item.name;
    std::replace(name.begin(), name.end(), '_', '-');
    if (name == "config" || name == "++" || name == "--") continue;  // (CLI11 marks sections with ++ and --)
    CLI::Option* opt = sub.get_option_no_throw("--" + name);
    if (opt == nullptr)
      throw amused::InvalidArgument("--config '" + path + "': unknown option '" + item.name + "' (see amused " +
                                    sub.get_name() + " --help for the names)");
    if (opt->count() > 0) continue;  // given on the command line: it wins
    try {
      opt->add_result(item.inputs);
      opt->run_callback();
    } catch (const CLI::ParseError& e) {
      throw amused::InvalidArgument("--config '" + path + "': option '" + item.name + "': " + e.what());
    }
  }
}

}  // namespace amused::cli
