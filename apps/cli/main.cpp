// `amused`: command-line front end. Sub-commands live in cmd_*.cpp and use only <amused/...>.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <exception>
#include <map>

#include "amused/amused.h"
#include "command.h"

namespace amused::cli {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
bool stdout_is_tty() { return ::isatty(STDOUT_FILENO) == 1; }
bool stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }
}  // namespace amused::cli

int main(int argc, char** argv) {
  using namespace amused::cli;
  CLI::App app{"amused.cpp: aMUSEd text-to-image in C++ (LibTorch)", "amused"};
  app.set_version_flag("--version", std::string("amused ") + amused::version());
  app.require_subcommand(1);
  auto commands = registry();
  std::sort(commands.begin(), commands.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  std::map<CLI::App*, std::function<int()>> runners;
  std::vector<std::pair<CLI::App*, const Command*>> subs;
  for (const auto& c : commands) subs.emplace_back(app.add_subcommand(c.name, c.description), &c);
  for (auto& [sub, c] : subs) runners[sub] = c->setup(*sub);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fprintf(stderr, "Run '%s --help' for usage.\n", argc > 0 ? argv[0] : "amused");
    return 2;
  }
  try {
    for (auto& [sub, run] : runners) {
      if (!sub->parsed()) continue;
      const int code = run();
      // Output that could not be written (a full disk, a closed pipe, /dev/full) is a failure,
      // not a success with the output lost.
      if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        std::fprintf(stderr, "error: cannot write to standard output: %s\n", std::strerror(errno));
        return code == 0 ? 1 : code;
      }
      return code;
    }
  } catch (const amused::Cancelled& e) {
    std::fprintf(stderr, "cancelled: %s\n", e.what());
    return 130;
  } catch (const amused::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    // A LibTorch error: the message without LibTorch's C++ backtrace.
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
