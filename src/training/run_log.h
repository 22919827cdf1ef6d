// Run keeping for training: a JSONL step log that survives resumes without duplicates, a
// self-contained SVG plot of loss curves (and learning rate), and the one-line progress/ETA text.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace amused::training {

// One JSON object per line, each with an integer "step", flushed line by line so a crash loses at
// most the line being written. Non-finite numbers are written as null (JSON has no NaN).
class StepLog {
 public:
  // resume_step < 0: a fresh run; an existing file is replaced by an empty one.
  // resume_step >= 0: the file is kept up to that step: lines whose "step" is greater are dropped
  // (so steps redone after the resume appear once), as is a torn last line (a crash while
  // writing); lines without a step (e.g. a run header) are kept. The rewrite is atomic.
  // Throws amused::IoError naming the path when it cannot be read or written.
  explicit StepLog(const std::filesystem::path& path, int64_t resume_step = -1);

  // Appends `record`, which must be a JSON object with an integer "step" (InvalidArgument
  // otherwise), as one line, and flushes. Throws IoError when the write fails (e.g. a full disk).
  void append(const nlohmann::json& record);
  // Appends a record without a step (a run header: options, versions); kept on every resume.
  void append_header(const nlohmann::json& record);

  const std::filesystem::path& path() const { return path_; }

 private:
  void write_line(const nlohmann::json& record);
  std::filesystem::path path_;
  std::ofstream out_;
};

// The records of a step log, in order. Lines that are not JSON objects are skipped (a torn last
// line), the first with a warning. Throws IoError when the file cannot be read.
std::vector<nlohmann::json> read_step_log(const std::filesystem::path& path);

// (step, value) of every record that has a "step" and a number (or null, read as NaN) under `key`.
std::vector<std::pair<double, double>> series_from_log(const std::vector<nlohmann::json>& records,
                                                       const std::string& key);

// The last finite value under `key` in the step log at `path` (NaN when there is none or no log):
// the final loss of a run resumed at its last step, which trains no step in that process.
double last_logged_value(const std::filesystem::path& path, const std::string& key);

// TensorBoard-style exponential smoothing with bias correction (weight in [0, 1)); NaN values
// are passed through and do not disturb the running average.
std::vector<std::pair<double, double>> ema_smooth(
    const std::vector<std::pair<double, double>>& points, double weight = 0.9);

struct PlotSeries {
  std::string name;                               // legend text
  std::vector<std::pair<double, double>> points;  // (x, y); NaN/inf break the line
  std::string color;                              // CSS colour; empty: from a palette
  int panel = 0;                                  // 0: main panel, 1: the small lower panel
  double stroke_width = 1.5;
  double opacity = 1.0;
};

struct PlotOptions {
  std::string title = "training loss";
  std::string x_label = "step";
  std::string y_label = "loss";
  bool log_y = false;  // main panel; values <= 0 are left out
  std::string lower_y_label = "learning rate";
  bool lower_log_y = false;
  int width = 960;
  int height = 540;
  // Series with more points are reduced to the min and max of each of max_points / 2 x-buckets
  // (spikes stay visible), so a million-step run still gives a small file.
  size_t max_points = 4000;
};

// A standalone SVG document: title, axes with tick labels, grid lines, a legend per panel, one
// <g class="series" data-name="..."> per series holding its <polyline>s (one per unbroken run of
// finite points) and <circle>s (isolated points). A lower panel is drawn when a series has
// panel = 1. Handles no data, one point, constant values and ranges up to +-1e300.
std::string render_plot_svg(const std::vector<PlotSeries>& series, const PlotOptions& options = {});
// The same, written atomically. Throws IoError naming the path.
void write_plot_svg(const std::filesystem::path& path, const std::vector<PlotSeries>& series,
                    const PlotOptions& options = {});

struct ProgressInfo {
  int64_t step = 0;        // optimizer steps done
  int64_t total = 0;       // steps planned
  int64_t start_step = 0;  // the step this process started at (a resume), for the rates
  double elapsed_s = 0;    // seconds since this process started training
  double loss = std::numeric_limits<double>::quiet_NaN();
  double lr = std::numeric_limits<double>::quiet_NaN();
  double samples_per_s = std::numeric_limits<double>::quiet_NaN();
};

// "step 120/1000  loss 3.412  lr 1.0e-04  2.31 it/s  4.6 samples/s  elapsed 52s  ETA 6m21s";
// unknown (NaN) fields are left out, the ETA is "?" before the first step of this process.
std::string format_progress(const ProgressInfo& info);

// 52 -> "52s", 381 -> "6m21s", 7380 -> "2h03m", 93600 -> "1d02h"; negative or NaN -> "?".
std::string format_duration(double seconds);

}  // namespace amused::training
