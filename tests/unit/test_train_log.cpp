// Run keeping: the JSONL step log (flush, resume without duplicates), the loss-curve SVG
// (well-formed, every point drawn, edge cases), the progress line.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <cctype>
#include <regex>

#include "amused/error.h"
#include "support/golden.h"
#include "support/train_data_support.h"
#include "training/run_log.h"

using amused::testing::TempDir;
using namespace amused::training;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> file_lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

std::vector<int64_t> steps_of(const fs::path& p) {
  std::vector<int64_t> out;
  for (const auto& r : read_step_log(p))
    if (r.contains("step")) out.push_back(r["step"].get<int64_t>());
  return out;
}

// A small XML checker: every tag closes in order, attributes are quoted, no stray '<' or '&'.
// Returns the element names in document order (opening tags only).
::testing::AssertionResult well_formed(const std::string& xml,
                                       std::vector<std::string>* names = nullptr) {
  std::vector<std::string> stack;
  size_t i = 0;
  if (xml.rfind("<?xml", 0) == 0) i = xml.find("?>") + 2;
  bool root_seen = false;
  while (i < xml.size()) {
    const size_t lt = xml.find('<', i);
    const std::string text = xml.substr(i, lt == std::string::npos ? std::string::npos : lt - i);
    for (size_t a = text.find('&'); a != std::string::npos; a = text.find('&', a + 1))
      if (!std::regex_search(text.substr(a), std::regex("^&(amp|lt|gt|quot|apos);")))
        return ::testing::AssertionFailure() << "bare & in text near " << text.substr(a, 20);
    if (lt == std::string::npos) break;
    const size_t gt = xml.find('>', lt);
    if (gt == std::string::npos) return ::testing::AssertionFailure() << "unclosed tag at " << lt;
    std::string tag = xml.substr(lt + 1, gt - lt - 1);
    if (tag.find('<') != std::string::npos)
      return ::testing::AssertionFailure() << "'<' inside tag " << tag;
    if (!tag.empty() && tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name)
        return ::testing::AssertionFailure()
               << "</" << name << "> closes " << (stack.empty() ? "nothing" : stack.back());
      stack.pop_back();
    } else {
      const bool self = !tag.empty() && tag.back() == '/';
      if (self) tag.pop_back();
      // name (space+ attr="value")* space*, scanned by hand: libstdc++'s std::regex recurses once
      // per character, and a long points="..." overflowed the stack under AddressSanitizer.
      auto is_name = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':' || c == '-'; };
      size_t k = 0;
      if (tag.empty() || !std::isalpha(static_cast<unsigned char>(tag[0])))
        return ::testing::AssertionFailure() << "malformed tag <" << tag << ">";
      while (k < tag.size() && is_name(tag[k])) ++k;
      const std::string name = tag.substr(0, k);
      while (k < tag.size()) {
        const size_t ws = k;
        while (k < tag.size() && std::isspace(static_cast<unsigned char>(tag[k]))) ++k;
        if (k == tag.size()) break;
        const size_t attr = k;
        while (k < tag.size() && is_name(tag[k])) ++k;
        if (k == ws || k == attr || tag.compare(k, 2, "=\"") != 0)
          return ::testing::AssertionFailure() << "malformed tag <" << tag.substr(0, 80) << ">";
        const size_t close = tag.find('"', k + 2);
        if (close == std::string::npos || tag.find('<', k + 2) < close)
          return ::testing::AssertionFailure() << "malformed tag <" << tag.substr(0, 80) << ">";
        k = close + 1;
      }
      if (stack.empty() && root_seen)
        return ::testing::AssertionFailure() << "second root element " << name;
      root_seen = true;
      if (names) names->push_back(name);
      if (!self) stack.push_back(name);
    }
    i = gt + 1;
  }
  if (!stack.empty())
    return ::testing::AssertionFailure() << "<" << stack.back() << "> never closed";
  if (!root_seen) return ::testing::AssertionFailure() << "no root element";
  return ::testing::AssertionSuccess();
}

// The body of the <g class="series" data-name="NAME"> group.
std::string series_group(const std::string& svg, const std::string& name) {
  const size_t start = svg.find("<g class=\"series\" data-name=\"" + name + "\"");
  if (start == std::string::npos) return "";
  return svg.substr(start, svg.find("</g>", start) - start);
}

// Points drawn for a series: coordinate pairs in its polylines plus its circles.
size_t drawn_points(const std::string& group, size_t* polylines = nullptr,
                    size_t* circles = nullptr) {
  size_t n = 0, lines = 0, dots = 0;
  // (A find loop, not std::regex: libstdc++'s regex recurses once per character, and a long
  // polyline overflowed the stack under AddressSanitizer.)
  for (size_t at = group.find("points=\""); at != std::string::npos; at = group.find("points=\"", at + 1)) {
    const size_t begin = at + 8, end = group.find('"', begin);
    if (end == std::string::npos) break;
    ++lines;
    n += static_cast<size_t>(std::count(group.begin() + static_cast<std::ptrdiff_t>(begin),
                                        group.begin() + static_cast<std::ptrdiff_t>(end), ','));
  }
  for (size_t at = group.find("<circle"); at != std::string::npos;
       at = group.find("<circle", at + 1))
    ++dots;
  if (polylines) *polylines = lines;
  if (circles) *circles = dots;
  return n + dots;
}

}  // namespace

// ------------------------------------------------------------------ step log

TEST(TrainLogStepLog, AppendsOneFlushedLinePerRecord) {
  TempDir tmp;
  StepLog log(tmp / "log.jsonl");
  log.append_header({{"run", "test"}, {"seed", 1}});
  for (int s = 1; s <= 3; ++s) log.append({{"step", s}, {"loss", 1.0 / s}, {"lr", 1e-4}});
  log.append({{"step", 4}, {"loss", std::nan("")}});
  const auto lines = file_lines(tmp / "log.jsonl");  // read while the log is open: flushed
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(json::parse(lines[2])["step"], 2);
  EXPECT_TRUE(json::parse(lines[4])["loss"].is_null());
  EXPECT_THROW(log.append({{"loss", 1.0}}), amused::InvalidArgument);
  EXPECT_THROW(log.append({{"step", 1.5}}), amused::InvalidArgument);
  EXPECT_THROW(log.append_header({{"step", 1}}), amused::InvalidArgument);
  EXPECT_THROW(StepLog(tmp / "missing" / "log.jsonl"), amused::IoError);
}

TEST(TrainLogStepLog, ResumeDropsLaterStepsAndTornLine) {
  TempDir tmp;
  const fs::path p = tmp / "log.jsonl";
  {
    StepLog log(p);
    log.append_header({{"run", "first"}});
    for (int s = 1; s <= 10; ++s) log.append({{"step", s}, {"loss", s}});
  }
  { std::ofstream(p, std::ios::app) << "{\"step\": 11, \"lo"; }  // a crash mid-write
  {
    amused::testing::train_data::LogCapture logs;
    StepLog log(p, 6);
    EXPECT_EQ(steps_of(p), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
    EXPECT_NE(logs.joined().find("torn"), std::string::npos);
    for (int s = 7; s <= 8; ++s) log.append({{"step", s}, {"loss", s}});
  }
  EXPECT_EQ(steps_of(p), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(read_step_log(p)[0]["run"], "first");  // the header survives
  // A fresh run starts an empty log.
  { StepLog fresh(p); }
  EXPECT_TRUE(file_lines(p).empty());
  // Resuming with no log yet creates one.
  { StepLog resumed(tmp / "new.jsonl", 100); }
  EXPECT_TRUE(fs::exists(tmp / "new.jsonl"));
}

TEST(TrainLogSeries, FromLogAndSmoothing) {
  const std::vector<json> records = {{{"run", "x"}},
                                     {{"step", 1}, {"loss", 1.0}},
                                     {{"step", 2}, {"loss", nullptr}},
                                     {{"step", 3}, {"loss", 3.0}},
                                     {{"step", 4}, {"lr", 1.0}}};
  const auto s = series_from_log(records, "loss");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_TRUE(std::isnan(s[1].second));
  const auto e = ema_smooth(s, 0.5);
  // 1 -> 0.5 / (1 - 0.5) = 1; NaN kept; 3 -> (0.25 + 1.5) / (1 - 0.25) = 2.3333.
  EXPECT_DOUBLE_EQ(e[0].second, 1.0);
  EXPECT_TRUE(std::isnan(e[1].second));
  EXPECT_DOUBLE_EQ(e[2].second, 1.75 / 0.75);
  EXPECT_EQ(e[2].first, 3.0);
  EXPECT_THROW(ema_smooth(s, 1.0), amused::InvalidArgument);
}

// ------------------------------------------------------------------ plot

TEST(TrainLogPlot, WellFormedWithEveryPoint) {
  std::vector<std::pair<double, double>> loss, lr;
  for (int s = 1; s <= 50; ++s) {
    loss.emplace_back(s, 5.0 / std::sqrt(s) + 0.1 * (s % 3));
    lr.emplace_back(s, std::min(1.0, s / 10.0) * 1e-4);
  }
  loss[20].second = std::nan("");  // breaks the line in two
  loss[22].second = INFINITY;      // and isolates point 21
  PlotOptions o;
  o.title = "run <a & b>";
  const std::string svg = render_plot_svg(
      {{"loss", loss}, {"loss (smoothed)", ema_smooth(loss, 0.8)}, {"lr", lr, "", 1}}, o);
  std::vector<std::string> names;
  ASSERT_TRUE(well_formed(svg, &names));
  EXPECT_EQ(names[0], "svg");
  EXPECT_NE(svg.find("run &lt;a &amp; b&gt;"), std::string::npos);
  size_t lines = 0, dots = 0;
  EXPECT_EQ(drawn_points(series_group(svg, "loss"), &lines, &dots), 48u);
  EXPECT_EQ(lines, 2u);  // 1..20 and 24..50
  EXPECT_EQ(dots, 1u);   // 22
  EXPECT_EQ(drawn_points(series_group(svg, "loss (smoothed)")), 48u);
  EXPECT_EQ(drawn_points(series_group(svg, "lr")), 50u);
  EXPECT_NE(svg.find("data-panel=\"1\""), std::string::npos);  // the lower panel
  EXPECT_NE(svg.find("learning rate"), std::string::npos);
  EXPECT_GE(std::count(names.begin(), names.end(), "text"), 10);  // ticks, labels, legend
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
}

TEST(TrainLogPlot, EdgeCases) {
  // One point: a circle.
  std::string svg = render_plot_svg({{"loss", {{7, 2.5}}}});
  ASSERT_TRUE(well_formed(svg));
  size_t lines = 0, dots = 0;
  EXPECT_EQ(drawn_points(series_group(svg, "loss"), &lines, &dots), 1u);
  EXPECT_EQ(dots, 1u);
  // Nothing to draw.
  svg = render_plot_svg({{"loss", {{1, std::nan("")}}}});
  ASSERT_TRUE(well_formed(svg));
  EXPECT_NE(svg.find("no data"), std::string::npos);
  ASSERT_TRUE(well_formed(render_plot_svg({})));
  // Constant values, huge ranges, log scale with zeros and negatives left out.
  ASSERT_TRUE(well_formed(render_plot_svg({{"c", {{1, 3}, {2, 3}, {3, 3}}}})));
  PlotOptions log_y;
  log_y.log_y = true;
  svg =
      render_plot_svg({{"wide", {{0, 1e-300}, {1, 1e300}, {2, 0.0}, {3, -5.0}, {4, 1.0}}}}, log_y);
  ASSERT_TRUE(well_formed(svg));
  EXPECT_EQ(drawn_points(series_group(svg, "wide")), 3u);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  svg = render_plot_svg({{"huge", {{-1e308, -1e308}, {1e308, 1e308}}}});
  ASSERT_TRUE(well_formed(svg));
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  // Less than two decades on a log axis still gets tick labels.
  svg = render_plot_svg({{"narrow", {{0, 2.0}, {1, 3.0}}}}, log_y);
  EXPECT_NE(svg.find("class=\"ytick\""), std::string::npos);
}

TEST(TrainLogPlot, LongRunsAreReducedKeepingSpikes) {
  std::vector<std::pair<double, double>> pts;
  for (int s = 0; s < 100000; ++s) pts.emplace_back(s, s == 51234 ? 100.0 : 1.0);
  PlotOptions o;
  o.max_points = 1000;
  const std::string svg = render_plot_svg({{"loss", pts}}, o);
  ASSERT_TRUE(well_formed(svg));
  const size_t n = drawn_points(series_group(svg, "loss"));
  EXPECT_LE(n, 1000u);
  EXPECT_GE(n, 500u);
  EXPECT_NE(svg.find("100</text>"), std::string::npos);  // the spike sets the range
}

TEST(TrainLogPlot, WrittenAtomically) {
  TempDir tmp;
  write_plot_svg(tmp / "loss.svg", {{"loss", {{1, 2}, {2, 1}}}});
  std::ifstream in(tmp / "loss.svg");
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(well_formed(s));
  EXPECT_THROW(write_plot_svg(tmp / "no" / "loss.svg", {}), amused::IoError);
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(tmp.path())) ++files;
  EXPECT_EQ(files, 1u);  // no temporary left behind
}

// ------------------------------------------------------------------ progress

TEST(TrainLogProgress, FormatsTheLine) {
  ProgressInfo p;
  p.step = 120;
  p.total = 1000;
  p.elapsed_s = 52;
  p.loss = 3.4123;
  p.lr = 1e-4;
  p.samples_per_s = 4.6;
  EXPECT_EQ(
      format_progress(p),
      "step 120/1000  loss 3.412  lr 1.0e-04  2.31 it/s  4.6 samples/s  elapsed 52s  ETA 6m21s");
  // After a resume from step 100, the rate counts this process's steps only.
  p.start_step = 100;
  p.elapsed_s = 10;
  EXPECT_EQ(
      format_progress(p),
      "step 120/1000  loss 3.412  lr 1.0e-04  2.00 it/s  4.6 samples/s  elapsed 10s  ETA 7m20s");
  ProgressInfo start;
  start.total = 50;
  EXPECT_EQ(format_progress(start), "step 0/50  elapsed 0s  ETA ?");
  start.step = 50;
  start.start_step = 50;
  EXPECT_EQ(format_progress(start), "step 50/50  elapsed 0s  ETA 0s");
}

TEST(TrainLogProgress, Durations) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(52.4), "52s");
  EXPECT_EQ(format_duration(381), "6m21s");
  EXPECT_EQ(format_duration(65), "1m05s");
  EXPECT_EQ(format_duration(7380), "2h03m");
  EXPECT_EQ(format_duration(93600), "1d02h");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
  EXPECT_EQ(format_duration(INFINITY), "?");
}
