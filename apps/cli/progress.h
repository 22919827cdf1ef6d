// A one-line progress bar on stderr (only when stderr is a terminal).
#pragma once

#include <cstdio>
#include <string>

namespace amused::cli {

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled, std::string label = "") : enabled_(enabled), label_(std::move(label)) {}
  // done of total units; `rate` is printed with `unit` ("it/s", "MiB/s") when > 0.
  void update(double done, double total, double rate = 0, const char* unit = "it/s") {
    if (!enabled_ || total <= 0) return;
    const int width = 30;
    const double frac = done / total > 1 ? 1 : done / total;
    const int filled = static_cast<int>(frac * width);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < width) bar += '>' + std::string(static_cast<size_t>(width - filled - 1), ' ');
    std::fprintf(stderr, "\r%s[%s] %3.0f%% %g/%g", label_.c_str(), bar.c_str(), frac * 100, done, total);
    if (rate > 0) std::fprintf(stderr, " %.2f %s", rate, unit);
    std::fflush(stderr);
    dirty_ = true;
  }
  void finish() {
    if (dirty_) std::fprintf(stderr, "\n");
    dirty_ = false;
  }
  ~ProgressBar() { finish(); }

 private:
  bool enabled_;
  std::string label_;
  bool dirty_ = false;
};

}  // namespace amused::cli
