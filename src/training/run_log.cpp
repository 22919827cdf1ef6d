// Step log, loss-curve SVG and progress line for training runs, see run_log.h.
#include "training/run_log.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "amused/error.h"
#include "core/log.h"
#include "io/atomic_file.h"

namespace amused::training {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string dump_line(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot read step log '" + path.string() + "'");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  if (in.bad()) throw IoError("cannot read step log '" + path.string() + "'");
  return lines;
}

std::optional<json> parse_object(const std::string& line) {
  try {
    json j = json::parse(line);
    if (j.is_object()) return j;
  } catch (const json::parse_error&) {
  }
  return std::nullopt;
}

}  // namespace

// ------------------------------------------------------------------ StepLog

StepLog::StepLog(const fs::path& path, int64_t resume_step) : path_(path) {
  std::string kept;
  std::error_code ec;
  if (resume_step >= 0 && fs::exists(path, ec)) {
    const auto lines = read_lines(path);
    int64_t dropped = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].empty()) continue;
      const auto j = parse_object(lines[i]);
      if (!j) {
        if (i + 1 == lines.size()) {
          log::warn("step log '" + path.string() + "': dropping a torn last line");
          continue;
        }
        kept += lines[i] + "\n";  // not ours to destroy
        continue;
      }
      const auto step = j->find("step");
      if (step != j->end() && step->is_number() &&
          step->get<double>() > static_cast<double>(resume_step)) {
        ++dropped;
        continue;
      }
      kept += lines[i] + "\n";
    }
    if (dropped > 0)
      log::info("step log '" + path.string() + "': " + std::to_string(dropped) +
                " records after step " + std::to_string(resume_step) + " dropped for the resume");
  }
  io::write_file_atomic(path, kept);
  out_.open(path, std::ios::binary | std::ios::app);
  if (!out_) throw IoError("cannot open step log '" + path.string() + "' for appending");
}

void StepLog::write_line(const json& record) {
  out_ << dump_line(record) << '\n';
  out_.flush();
  if (!out_) throw IoError("cannot write to step log '" + path_.string() + "' (disk full?)");
}

void StepLog::append(const json& record) {
  if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer())
    throw InvalidArgument("a step log record must be a JSON object with an integer \"step\", got " +
                          dump_line(record).substr(0, 200));
  write_line(record);
}

void StepLog::append_header(const json& record) {
  if (!record.is_object() || record.contains("step"))
    throw InvalidArgument("a step log header must be a JSON object without \"step\"");
  write_line(record);
}

std::vector<json> read_step_log(const fs::path& path) {
  std::vector<json> records;
  bool warned = false;
  for (const auto& line : read_lines(path)) {
    if (line.empty()) continue;
    if (auto j = parse_object(line)) {
      records.push_back(std::move(*j));
    } else if (!warned) {
      log::warn("step log '" + path.string() + "': skipping a line that is not a JSON object");
      warned = true;
    }
  }
  return records;
}

std::vector<std::pair<double, double>> series_from_log(const std::vector<json>& records,
                                                       const std::string& key) {
  std::vector<std::pair<double, double>> out;
  for (const auto& r : records) {
    const auto s = r.find("step");
    const auto v = r.find(key);
    if (s == r.end() || !s->is_number() || v == r.end()) continue;
    if (v->is_number())
      out.emplace_back(s->get<double>(), v->get<double>());
    else if (v->is_null())
      out.emplace_back(s->get<double>(), std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

double last_logged_value(const std::filesystem::path& path, const std::string& key) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nan("");
  const auto series = series_from_log(read_step_log(path), key);
  for (auto it = series.rbegin(); it != series.rend(); ++it)
    if (std::isfinite(it->second)) return it->second;
  return std::nan("");
}

std::vector<std::pair<double, double>> ema_smooth(
    const std::vector<std::pair<double, double>>& points, double weight) {
  if (!(weight >= 0.0 && weight < 1.0))
    throw InvalidArgument("smoothing weight must be in [0, 1), got " + std::to_string(weight));
  std::vector<std::pair<double, double>> out;
  out.reserve(points.size());
  double last = 0.0;
  int64_t n = 0;
  for (const auto& [x, y] : points) {
    if (!std::isfinite(y)) {
      out.emplace_back(x, y);
      continue;
    }
    last = last * weight + (1.0 - weight) * y;
    ++n;
    const double debias = 1.0 - std::pow(weight, static_cast<double>(n));
    out.emplace_back(x, debias > 0 ? last / debias : y);
  }
  return out;
}

// ------------------------------------------------------------------ SVG plot

namespace {

constexpr double kClamp = 1e300;  // keeps max - min finite

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&apos;";
        break;
      default:
        // Control characters are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') o += c;
    }
  }
  return o;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// Labels for one axis: one format for all ticks, with as many digits as the tick step needs
// ("1.0e-04" "8.0e-05" rather than "0.0001" "8e-05").
std::vector<std::string> tick_labels(const std::vector<double>& ticks, bool log) {
  std::vector<std::string> out;
  char buf[48];
  if (log || ticks.size() < 2) {
    for (double v : ticks) {
      std::snprintf(buf, sizeof buf, "%.6g", v);
      out.push_back(buf);
    }
    return out;
  }
  const double step = std::fabs(ticks[1] - ticks[0]);
  double maxabs = 0;
  for (double v : ticks) maxabs = std::max(maxabs, std::fabs(v));
  const int step_exp = static_cast<int>(std::floor(std::log10(step) + 1e-9));
  const bool scientific = maxabs >= 1e6 || maxabs < 1e-3;
  for (double v : ticks) {
    if (v == 0.0) {
      out.push_back("0");
      continue;
    }
    if (scientific) {
      const int digits =
          std::clamp(static_cast<int>(std::floor(std::log10(maxabs) + 1e-9)) - step_exp, 0, 6);
      std::snprintf(buf, sizeof buf, "%.*e", digits, v);
    } else {
      std::snprintf(buf, sizeof buf, "%.*f", std::clamp(-step_exp, 0, 9), v);
    }
    out.push_back(buf);
  }
  return out;
}

struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  // Value -> [0, 1].
  double frac(double v) const {
    if (log) return (std::log10(v) - lo) / (hi - lo);
    return (v - lo) / (hi - lo);
  }
};

bool usable(double v, bool log) { return std::isfinite(v) && (!log || v > 0); }

// Range over values; lo/hi in log10 units for a log axis.
Axis make_axis(const std::vector<double>& values, bool log, bool pad) {
  Axis a;
  a.log = log;
  if (values.empty()) {
    a.lo = 0;
    a.hi = 1;
    return a;
  }
  double lo = values[0], hi = values[0];
  for (double v : values) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (log) {
    lo = std::log10(lo);
    hi = std::log10(hi);
    if (hi - lo < 1e-9) {
      lo -= 0.5;
      hi += 0.5;
    }
  } else if (hi - lo <= std::max(std::fabs(hi), std::fabs(lo)) * 1e-12) {
    const double d = std::max(std::fabs(hi) * 0.1, 1e-9);
    lo -= d;
    hi += d;
  }
  if (pad) {
    const double d = (hi - lo) * 0.04;
    lo -= d;
    hi += d;
  }
  a.lo = lo;
  a.hi = hi;
  return a;
}

// Tick values (in data units) for an axis.
std::vector<double> ticks(const Axis& a) {
  std::vector<double> t;
  if (a.log) {
    // Decades that are normal doubles only (10^-307 .. 10^307).
    const int d0 = std::max(-307, static_cast<int>(std::ceil(a.lo - 1e-9)));
    const int d1 = std::min(307, static_cast<int>(std::floor(a.hi + 1e-9)));
    if (d1 - d0 >= 2) {
      int every = 1;
      for (int nice : {1, 2, 5, 10, 20, 50, 100, 200})
        if ((d1 - d0) / nice <= 8) {
          every = nice;
          break;
        }
      for (int d = d0; d <= d1; ++d)
        if (d % every == 0) t.push_back(std::pow(10.0, d));
      return t;
    }
    // Less than two decades: 1, 2, 5 multiples.
    for (int d = std::max(-307, static_cast<int>(std::floor(a.lo)));
         d <= std::min(307, static_cast<int>(std::ceil(a.hi))); ++d)
      for (double m : {1.0, 2.0, 5.0}) {
        const double v = m * std::pow(10.0, d);
        const double l = std::log10(v);
        if (l >= a.lo - 1e-9 && l <= a.hi + 1e-9) t.push_back(v);
      }
    return t;
  }
  const double range = a.hi - a.lo;
  const double raw = range / 6;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  const double first = std::ceil(a.lo / step) * step;
  for (int i = 0; i < 20; ++i) {
    const double v = first + i * step;
    if (v > a.hi + step * 1e-9) break;
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  }
  return t;
}

// At most max_points points: min and max of each x-bucket, in x order.
std::vector<std::pair<double, double>> decimate(const std::vector<std::pair<double, double>>& pts,
                                                size_t max_points) {
  if (pts.size() <= max_points || max_points < 4) return pts;
  const size_t buckets = max_points / 2;
  double x0 = pts.front().first, x1 = pts.front().first;
  for (const auto& p : pts) {
    x0 = std::min(x0, p.first);
    x1 = std::max(x1, p.first);
  }
  std::vector<std::pair<double, double>> out;
  size_t i = 0;
  for (size_t b = 0; b < buckets && i < pts.size(); ++b) {
    const double edge = x0 + (x1 - x0) * static_cast<double>(b + 1) / static_cast<double>(buckets);
    size_t lo = i, hi = i;
    size_t j = i;
    for (; j < pts.size() && (pts[j].first <= edge || b + 1 == buckets); ++j) {
      if (pts[j].second < pts[lo].second) lo = j;
      if (pts[j].second > pts[hi].second) hi = j;
    }
    if (j == i) continue;
    out.push_back(pts[std::min(lo, hi)]);
    if (lo != hi) out.push_back(pts[std::max(lo, hi)]);
    i = j;
  }
  return out;
}

const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                          "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

struct Rect {
  double x, y, w, h;
};

}  // namespace

std::string render_plot_svg(const std::vector<PlotSeries>& all_series, const PlotOptions& o) {
  const double W = std::max(o.width, 200), H = std::max(o.height, 150);
  const bool lower = std::any_of(all_series.begin(), all_series.end(),
                                 [](const PlotSeries& s) { return s.panel == 1; });

  // Finite, clamped, decimated copies; NaN kept as breaks.
  struct Prepared {
    const PlotSeries* s;
    std::string color;
    std::vector<std::pair<double, double>> pts;
  };
  std::vector<Prepared> prepared;
  std::vector<double> xs, ys[2];
  for (size_t i = 0; i < all_series.size(); ++i) {
    const PlotSeries& s = all_series[i];
    const int panel = s.panel == 1 ? 1 : 0;
    const bool log = panel == 0 ? o.log_y : o.lower_log_y;
    Prepared p{&s, s.color.empty() ? kPalette[i % 8] : s.color, {}};
    std::vector<std::pair<double, double>> finite_runs;
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x)) continue;
      x = std::clamp(x, -kClamp, kClamp);
      if (usable(y, log)) {
        y = std::clamp(y, log ? 1e-300 : -kClamp, kClamp);
        xs.push_back(x);
        ys[panel].push_back(y);
      } else {
        y = std::numeric_limits<double>::quiet_NaN();
      }
      finite_runs.emplace_back(x, y);
    }
    p.pts = finite_runs.size() > o.max_points ? decimate(finite_runs, o.max_points) : finite_runs;
    prepared.push_back(std::move(p));
  }

  const Axis xa = make_axis(xs, false, false);
  const Axis ya[2] = {make_axis(ys[0], o.log_y, true), make_axis(ys[1], o.lower_log_y, true)};

  const double left = 84, right = 24, top = 44, bottom = 52, gap = lower ? 44 : 0;
  const double plot_h = H - top - bottom - gap;
  const double main_h = lower ? plot_h * 0.72 : plot_h;
  const Rect panels[2] = {{left, top, W - left - right, main_h},
                          {left, top + main_h + gap, W - left - right, plot_h - main_h}};

  std::ostringstream svg;
  svg << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" viewBox=\"0 0 " << W << " " << H
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg << "<rect x=\"0\" y=\"0\" width=\"" << W << "\" height=\"" << H << "\" fill=\"white\"/>\n";
  svg << "<text class=\"title\" x=\"" << num(W / 2)
      << "\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">" << esc(o.title) << "</text>\n";

  const std::vector<double> xt = ticks(xa);
  for (int panel = 0; panel < (lower ? 2 : 1); ++panel) {
    const Rect& r = panels[panel];
    const Axis& y = ya[panel];
    const auto px = [&](double v) { return r.x + xa.frac(v) * r.w; };
    const auto py = [&](double v) { return r.y + r.h - y.frac(v) * r.h; };
    svg << "<g class=\"panel\" data-panel=\"" << panel << "\">\n";
    svg << "<rect x=\"" << num(r.x) << "\" y=\"" << num(r.y) << "\" width=\"" << num(r.w)
        << "\" height=\"" << num(r.h) << "\" fill=\"none\" stroke=\"#444\"/>\n";
    // Grid and tick labels.
    svg << "<g class=\"grid\" stroke=\"#e3e3e3\" stroke-width=\"1\">\n";
    for (double t : xt)
      svg << "<line x1=\"" << num(px(t)) << "\" y1=\"" << num(r.y) << "\" x2=\"" << num(px(t))
          << "\" y2=\"" << num(r.y + r.h) << "\"/>\n";
    const std::vector<double> yt = ticks(y);
    for (double t : yt)
      svg << "<line x1=\"" << num(r.x) << "\" y1=\"" << num(py(t)) << "\" x2=\"" << num(r.x + r.w)
          << "\" y2=\"" << num(py(t)) << "\"/>\n";
    svg << "</g>\n<g class=\"ticks\" fill=\"#333\">\n";
    if (panel == (lower ? 1 : 0)) {
      const auto labels = tick_labels(xt, false);
      for (size_t k = 0; k < xt.size(); ++k)
        svg << "<text class=\"xtick\" x=\"" << num(px(xt[k])) << "\" y=\"" << num(r.y + r.h + 16)
            << "\" text-anchor=\"middle\">" << esc(labels[k]) << "</text>\n";
    }
    const auto labels = tick_labels(yt, y.log);
    for (size_t k = 0; k < yt.size(); ++k)
      svg << "<text class=\"ytick\" x=\"" << num(r.x - 6) << "\" y=\"" << num(py(yt[k]) + 4)
          << "\" text-anchor=\"end\">" << esc(labels[k]) << "</text>\n";
    svg << "</g>\n";
    const std::string& ylabel = panel == 0 ? o.y_label : o.lower_y_label;
    const double cy = r.y + r.h / 2;
    svg << "<text class=\"ylabel\" x=\"16\" y=\"" << num(cy)
        << "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " << num(cy) << ")\">"
        << esc(ylabel + ((panel == 0 ? o.log_y : o.lower_log_y) ? " (log)" : "")) << "</text>\n";
    if ((panel == 0 && ys[0].empty()) || (panel == 1 && ys[1].empty()))
      svg << "<text class=\"nodata\" x=\"" << num(r.x + r.w / 2) << "\" y=\"" << num(cy)
          << "\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n";

    // Series, clipped to the panel.
    svg << "<clipPath id=\"clip" << panel << "\"><rect x=\"" << num(r.x) << "\" y=\"" << num(r.y)
        << "\" width=\"" << num(r.w) << "\" height=\"" << num(r.h) << "\"/></clipPath>\n";
    std::vector<const Prepared*> legend;
    for (const auto& p : prepared) {
      if ((p.s->panel == 1 ? 1 : 0) != panel) continue;
      svg << "<g class=\"series\" data-name=\"" << esc(p.s->name) << "\" clip-path=\"url(#clip"
          << panel << ")\" opacity=\"" << num(p.s->opacity) << "\">\n";
      size_t i = 0;
      while (i < p.pts.size()) {
        if (!std::isfinite(p.pts[i].second)) {
          ++i;
          continue;
        }
        size_t j = i;
        while (j < p.pts.size() && std::isfinite(p.pts[j].second)) ++j;
        if (j - i == 1) {
          svg << "<circle cx=\"" << num(px(p.pts[i].first)) << "\" cy=\""
              << num(py(p.pts[i].second)) << "\" r=\"2.5\" fill=\"" << esc(p.color) << "\"/>\n";
        } else {
          svg << "<polyline fill=\"none\" stroke=\"" << esc(p.color) << "\" stroke-width=\""
              << num(p.s->stroke_width) << "\" stroke-linejoin=\"round\" points=\"";
          for (size_t k = i; k < j; ++k)
            svg << (k == i ? "" : " ") << num(px(p.pts[k].first)) << ","
                << num(py(p.pts[k].second));
          svg << "\"/>\n";
        }
        i = j;
      }
      svg << "</g>\n";
      legend.push_back(&p);
    }
    // Legend, top right inside the panel, on a white box so curves do not hide it.
    if (!legend.empty()) {
      size_t longest = 0;
      for (const auto* p : legend) longest = std::max(longest, p->s->name.size());
      const double box_w = 40 + 7.0 * static_cast<double>(std::min<size_t>(longest, 40));
      const double box_h = 8 + 16.0 * static_cast<double>(legend.size());
      const double bx = r.x + r.w - box_w - 8, by = r.y + 8;
      svg << "<g class=\"legend\">\n<rect x=\"" << num(bx) << "\" y=\"" << num(by) << "\" width=\""
          << num(box_w) << "\" height=\"" << num(box_h)
          << "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n";
      for (size_t k = 0; k < legend.size(); ++k) {
        const double lx = bx + 8, ly = by + 18 + 16.0 * static_cast<double>(k);
        svg << "<line x1=\"" << num(lx) << "\" y1=\"" << num(ly - 4) << "\" x2=\"" << num(lx + 20)
            << "\" y2=\"" << num(ly - 4) << "\" stroke=\"" << esc(legend[k]->color)
            << "\" stroke-width=\"2.5\"/><text x=\"" << num(lx + 26) << "\" y=\"" << num(ly)
            << "\">" << esc(legend[k]->s->name) << "</text>\n";
      }
      svg << "</g>\n";
    }
    svg << "</g>\n";
  }
  svg << "<text class=\"xlabel\" x=\"" << num(left + (W - left - right) / 2) << "\" y=\""
      << num(H - 12) << "\" text-anchor=\"middle\">" << esc(o.x_label) << "</text>\n";
  svg << "</svg>\n";
  return svg.str();
}

void write_plot_svg(const fs::path& path, const std::vector<PlotSeries>& series,
                    const PlotOptions& options) {
  io::write_file_atomic(path, render_plot_svg(series, options));
}

// ------------------------------------------------------------------ progress line

std::string format_duration(double s) {
  if (!(s >= 0) || !std::isfinite(s)) return "?";
  const auto t = static_cast<int64_t>(std::llround(s));
  char buf[48];
  if (t < 60)
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(t));
  else if (t < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(t / 60),
                  static_cast<long long>(t % 60));
  else if (t < 86400)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(t / 3600),
                  static_cast<long long>(t % 3600 / 60));
  else
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(t / 86400),
                  static_cast<long long>(t % 86400 / 3600));
  return buf;
}

std::string format_progress(const ProgressInfo& p) {
  std::string out = "step " + std::to_string(p.step) + "/" + std::to_string(p.total);
  char buf[64];
  if (!std::isnan(p.loss)) {
    std::snprintf(buf, sizeof buf, "  loss %.3f", p.loss);
    out += buf;
  }
  if (!std::isnan(p.lr)) {
    std::snprintf(buf, sizeof buf, "  lr %.1e", p.lr);
    out += buf;
  }
  const int64_t done = p.step - p.start_step;
  const double its =
      (done > 0 && p.elapsed_s > 0) ? static_cast<double>(done) / p.elapsed_s : std::nan("");
  if (!std::isnan(its)) {
    std::snprintf(buf, sizeof buf, "  %.2f it/s", its);
    out += buf;
  }
  if (!std::isnan(p.samples_per_s)) {
    std::snprintf(buf, sizeof buf, "  %.1f samples/s", p.samples_per_s);
    out += buf;
  }
  out += "  elapsed " + format_duration(p.elapsed_s);
  const int64_t left = std::max<int64_t>(0, p.total - p.step);
  out += "  ETA " + (left == 0         ? std::string("0s")
                     : std::isnan(its) ? std::string("?")
                                       : format_duration(left / its));
  return out;
}

}  // namespace amused::training
