// amused::evaluate: prompt following, generalisation and the step/guidance curves on the emoji set.
// See include/amused/eval.h.
#include "amused/eval.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "amused/image_io.h"
#include "eval/retrieval.h"
#include "io/atomic_file.h"
#include "training/run_log.h"

namespace amused {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Row {
  std::string file, name;
  std::vector<std::string> keywords;
  std::string split;
  std::string family;  // the name before ':' (skin-tone variants share it)
  bool skin_tone = false;
};

}  // namespace

namespace eval {

torch::Tensor image_feature(const Image& image) {
  constexpr int kSide = 16;
  Image im = image;
  if (im.channels != 3) throw InvalidArgument("evaluation images must be RGB");
  if (im.width % kSide != 0 || im.height % kSide != 0) im = resize_image(im, kSide * 4, kSide * 4);
  auto t = torch::from_blob(im.pixels.data(), {im.height, im.width, 3}, torch::kUInt8)
               .to(torch::kFloat32)
               .div(255.0)
               .permute({2, 0, 1})
               .unsqueeze(0);
  return torch::adaptive_avg_pool2d(t, {kSide, kSide}).reshape({-1});
}

RetrievalIndex::RetrievalIndex(const std::vector<Image>& gallery) {
  if (gallery.empty()) throw InvalidArgument("retrieval needs at least one gallery image");
  std::vector<torch::Tensor> f;
  f.reserve(gallery.size());
  for (const auto& im : gallery) f.push_back(image_feature(im));
  features_ = torch::stack(f);           // [G, D]
  squared_ = features_.pow(2).sum(1);    // [G]
}

torch::Tensor RetrievalIndex::distances(const Image& query) const {
  const torch::Tensor q = image_feature(query);
  return (squared_ - 2 * features_.matmul(q) + q.pow(2).sum()).clamp_min(0);
}

RetrievalIndex::Match RetrievalIndex::match(const Image& query, size_t target) const {
  if (target >= size()) throw InvalidArgument("retrieval target out of range");
  const torch::Tensor d = distances(query);
  const double t = d[static_cast<int64_t>(target)].item<double>();
  return {d.lt(t - 1e-6).sum().item<int64_t>(), static_cast<size_t>(d.argmin().item<int64_t>())};
}

int64_t RetrievalIndex::rank(const Image& query, size_t target) const { return match(query, target).rank; }

size_t RetrievalIndex::nearest(const Image& query) const {
  return static_cast<size_t>(distances(query).argmin().item<int64_t>());
}

size_t RetrievalIndex::nearest_among(const Image& query, const std::vector<size_t>& candidates) const {
  if (candidates.empty()) throw InvalidArgument("retrieval among no candidates");
  std::vector<int64_t> idx(candidates.begin(), candidates.end());
  const torch::Tensor among = distances(query).index_select(0, torch::tensor(idx, torch::kInt64));
  return candidates[static_cast<size_t>(among.argmin().item<int64_t>())];  // the first of equals, as before
}

}  // namespace eval

namespace {

std::vector<Row> read_rows(const fs::path& data) {
  const fs::path meta = data / "metadata.jsonl";
  std::ifstream in(meta, std::ios::binary);
  if (!in) throw IoError("'" + meta.string() + "' does not exist: --data must be an `amused dataset emoji` folder");
  std::vector<Row> rows;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = "'" + meta.string() + "' line " + std::to_string(line_no);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      throw IoError(where + " is not valid JSON (" + std::string(e.what()) + ")");
    }
    Row r;
    if (!j.contains("file_name") || !j["file_name"].is_string()) throw IoError(where + " has no \"file_name\"");
    r.file = j["file_name"].get<std::string>();
    const char* name_key = j.contains("name") ? "name" : "text";
    if (!j.contains(name_key) || !j[name_key].is_string())
      throw IoError(where + " has no \"name\" or \"text\" (the emoji's name, the prompt of the train set)");
    r.name = j[name_key].get<std::string>();
    if (j.contains("keywords") && j["keywords"].is_array())
      for (const auto& k : j["keywords"])
        if (k.is_string()) r.keywords.push_back(k.get<std::string>());
    r.split = j.contains("split") && j["split"].is_string() ? j["split"].get<std::string>() : "train";
    const auto colon = r.name.find(':');
    r.family = colon == std::string::npos ? r.name : r.name.substr(0, colon);
    r.skin_tone = r.name.find("skin tone") != std::string::npos;
    rows.push_back(std::move(r));
  }
  if (rows.empty()) throw IoError("'" + meta.string() + "' holds no rows");
  return rows;
}

// Paraphrase: the keywords that are not the name, reversed; else the name's words reversed.
std::string paraphrase(const Row& r) {
  std::vector<std::string> kw;
  for (const auto& k : r.keywords)
    if (k != r.name) kw.push_back(k);
  std::string out;
  if (!kw.empty()) {
    for (auto it = kw.rbegin(); it != kw.rend(); ++it) out += (out.empty() ? "" : ", ") + *it;
    return out;
  }
  std::istringstream words(r.name);
  std::vector<std::string> w;
  for (std::string s; words >> s;) w.push_back(s);
  for (auto it = w.rbegin(); it != w.rend(); ++it) out += (out.empty() ? "" : " ") + *it;
  return out;
}

Image upscale(const Image& im, int factor) {
  Image out;
  out.width = im.width * factor;
  out.height = im.height * factor;
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * 3);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x)
      for (int c = 0; c < 3; ++c)
        out.pixels[(static_cast<size_t>(y) * out.width + x) * 3 + c] =
            im.pixels[(static_cast<size_t>(y / factor) * im.width + x / factor) * 3 + c];
  return out;
}

// Rows of cells (all the same size), a gap between them, on light grey.
Image tile(const std::vector<std::vector<Image>>& rows, int gap = 4) {
  int cell_w = 0, cell_h = 0;
  size_t cols = 0;
  for (const auto& r : rows) {
    cols = std::max(cols, r.size());
    for (const auto& c : r) cell_w = std::max(cell_w, c.width), cell_h = std::max(cell_h, c.height);
  }
  Image out;
  out.width = static_cast<int>(cols) * (cell_w + gap) + gap;
  out.height = static_cast<int>(rows.size()) * (cell_h + gap) + gap;
  out.pixels.assign(static_cast<size_t>(out.width) * out.height * 3, 200);
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) {
      const Image& c = rows[i][j];
      const int x0 = gap + static_cast<int>(j) * (cell_w + gap), y0 = gap + static_cast<int>(i) * (cell_h + gap);
      for (int y = 0; y < c.height; ++y)
        std::copy_n(&c.pixels[static_cast<size_t>(y) * c.width * 3], static_cast<size_t>(c.width) * 3,
                    &out.pixels[(static_cast<size_t>(y0 + y) * out.width + x0) * 3]);
    }
  return out;
}

std::string pct(double f) {
  if (std::isnan(f)) return "–";
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", 100.0 * f);
  return b;
}

class Evaluator {
 public:
  Evaluator(const EvalOptions& o) : o_(o) {
    rows_ = read_rows(o.data);
    for (const auto& r : rows_) images_.push_back(load_image(fs::path(o.data) / r.file));
    index_ = std::make_unique<eval::RetrievalIndex>(images_);
    pipe_ = Pipeline::load(o.model, o.load);
  }

  struct Query {
    size_t row;
    std::string prompt;
  };
  struct Outcome {
    int64_t rank = 0;  // images nearer than the target
    size_t nearest = 0;
    Image image;
  };

  // Generates every query (batches of batch_size, seed + batch index) and ranks the target.
  std::vector<Outcome> run(const std::vector<Query>& qs, int steps, double guidance, const std::string& stage,
                           double* seconds = nullptr) {
    std::vector<Outcome> out;
    double total = 0;
    for (size_t b = 0; b < qs.size(); b += static_cast<size_t>(o_.batch_size)) {
      const size_t e = std::min(qs.size(), b + static_cast<size_t>(o_.batch_size));
      TextToImageParams p;
      for (size_t i = b; i < e; ++i) p.prompts.push_back(qs[i].prompt);
      p.num_inference_steps = steps;
      p.guidance_scale = guidance;
      p.seed = o_.seed + b / static_cast<size_t>(o_.batch_size);
      const GenerationResult r = pipe_->text_to_image(p);
      total += r.timings.total_s;
      for (size_t i = b; i < e; ++i) {
        Outcome oc;
        oc.image = r.images[i - b];
        const auto m = index_->match(oc.image, qs[i].row);  // one distance computation for both
        oc.rank = m.rank;
        oc.nearest = m.nearest;
        out.push_back(std::move(oc));
      }
      done_ += static_cast<int64_t>(e - b);
      if (o_.progress) o_.progress(stage, done_, planned_);
    }
    if (seconds) *seconds = total;
    return out;
  }

  EvalScore score(const std::string& set, const std::vector<Outcome>& oc) const {
    EvalScore s;
    s.set = set;
    s.n = static_cast<int64_t>(oc.size());
    for (const auto& x : oc) {
      s.top1 += x.rank < 1;
      s.top5 += x.rank < 5;
    }
    if (s.n > 0) s.top1 /= s.n, s.top5 /= s.n;
    return s;
  }

  const std::vector<Row>& rows() const { return rows_; }
  const std::vector<Image>& images() const { return images_; }
  const eval::RetrievalIndex& index() const { return *index_; }
  Pipeline& pipe() { return *pipe_; }
  void plan(int64_t n) { planned_ = n; }

 private:
  const EvalOptions& o_;
  std::vector<Row> rows_;
  std::vector<Image> images_;
  std::unique_ptr<eval::RetrievalIndex> index_;
  std::unique_ptr<Pipeline> pipe_;
  int64_t done_ = 0, planned_ = 0;
};

}  // namespace

EvalReport evaluate(const EvalOptions& o) {
  if (o.model.empty()) throw InvalidArgument("no model to evaluate (-m)");
  if (o.data.empty()) throw InvalidArgument("no data: --data must be an `amused dataset emoji` folder");
  if (o.samples < 1 || o.batch_size < 1 || o.steps < 1)
    throw InvalidArgument("--samples, --batch-size and --steps must be at least 1");
  const auto t0 = std::chrono::steady_clock::now();
  Evaluator ev(o);
  const auto& rows = ev.rows();

  // ---- the sets
  std::vector<size_t> train, held_out, skin;
  std::map<std::string, std::vector<size_t>> families;
  for (size_t i = 0; i < rows.size(); ++i) {
    (rows[i].split == "validation" ? held_out : train).push_back(i);
    families[rows[i].family].push_back(i);
  }
  if (train.empty()) throw IoError("'" + o.data + "' has no training rows");
  std::mt19937_64 rng(o.seed);
  std::shuffle(train.begin(), train.end(), rng);
  train.resize(std::min(train.size(), static_cast<size_t>(o.samples)));
  for (size_t i : held_out)
    if (rows[i].skin_tone && families[rows[i].family].size() >= 2) skin.push_back(i);
  std::vector<Evaluator::Query> q_train, q_para, q_held;
  for (size_t i : train) q_train.push_back({i, rows[i].name});
  for (size_t i : train) q_para.push_back({i, paraphrase(rows[i])});
  for (size_t i : held_out) q_held.push_back({i, rows[i].name});
  const size_t nc = std::min(train.size(), static_cast<size_t>(std::max<int64_t>(o.curve_samples, 1)));
  std::vector<Evaluator::Query> q_curve(q_train.begin(), q_train.begin() + static_cast<std::ptrdiff_t>(nc));
  int64_t planned = static_cast<int64_t>(q_train.size() + q_para.size() + q_held.size());
  if (o.curves) planned += static_cast<int64_t>(nc * (o.steps_curve.size() + o.guidance_curve.size()));
  ev.plan(planned);

  EvalReport rep;
  rep.steps = o.steps;
  rep.guidance_scale = o.guidance_scale;
  rep.device = ev.pipe().summary().device;
  rep.dtype = ev.pipe().summary().dtype;
  rep.threads = ev.pipe().summary().threads;

  double train_seconds = 0;
  const auto o_train = ev.run(q_train, o.steps, o.guidance_scale, "training names", &train_seconds);
  rep.images_per_second = train_seconds > 0 ? static_cast<double>(q_train.size()) / train_seconds : 0;
  const auto o_para = ev.run(q_para, o.steps, o.guidance_scale, "paraphrases");
  const auto o_held = ev.run(q_held, o.steps, o.guidance_scale, "held-out emoji");
  rep.scores.push_back(ev.score("train", o_train));
  rep.scores.push_back(ev.score("paraphrase", o_para));
  rep.scores.push_back(ev.score("held-out", o_held));
  {
    // Skin-tone combinations never trained on: identity and tone.
    std::vector<Evaluator::Outcome> o_skin;
    EvalScore s;
    s.set = "held-out skin tones";
    double identity = 0, tone = 0;
    for (size_t k = 0; k < q_held.size(); ++k) {
      const size_t row = q_held[k].row;
      if (std::find(skin.begin(), skin.end(), row) == skin.end()) continue;
      o_skin.push_back(o_held[k]);
      const auto& fam = families[rows[row].family];
      identity += rows[o_held[k].nearest].family == rows[row].family;
      // The target's tone is the nearest among the family's images.
      const size_t best_row = ev.index().nearest_among(o_held[k].image, fam);
      tone += best_row == row;
    }
    s = ev.score("held-out skin tones", o_skin);
    if (s.n > 0) {
      s.identity = identity / s.n;
      s.skin_tone = tone / s.n;
    }
    rep.scores.push_back(s);
  }
  if (o.curves) {
    for (int st : o.steps_curve) {
      double sec = 0;
      const auto oc = ev.run(q_curve, st, o.guidance_scale, "steps " + std::to_string(st), &sec);
      const auto s = ev.score("", oc);
      rep.steps_curve.push_back({static_cast<double>(st), s.top1, s.top5, sec / static_cast<double>(nc)});
    }
    for (double g : o.guidance_curve) {
      double sec = 0;
      char name[48];
      std::snprintf(name, sizeof name, "guidance %g", g);
      const auto oc = ev.run(q_curve, o.steps, g, name, &sec);
      const auto s = ev.score("", oc);
      rep.guidance_curve.push_back({g, s.top1, s.top5, sec / static_cast<double>(nc)});
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (o.output.empty()) return rep;

  // ---- the report
  const fs::path out(o.output);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw IoError("cannot create '" + out.string() + "': " + ec.message());
  constexpr int kCols = 12;
  auto cell = [](const Image& im) { return upscale(im, std::max(1, 128 / std::max(1, im.width))); };
  {
    std::vector<std::vector<Image>> g(3);
    for (size_t k = 0; k < std::min<size_t>(kCols, o_train.size()); ++k) {
      g[0].push_back(cell(ev.images()[q_train[k].row]));
      g[1].push_back(cell(o_train[k].image));
      g[2].push_back(cell(o_para[k].image));
    }
    save_png(out / "train-and-paraphrase.png", tile(g));
  }
  {
    std::vector<std::vector<Image>> g(2);
    std::vector<size_t> pick;
    for (size_t k = 0; k < q_held.size() && pick.size() < kCols; ++k)
      if (std::find(skin.begin(), skin.end(), q_held[k].row) != skin.end()) pick.push_back(k);
    for (size_t k = 0; k < q_held.size() && pick.size() < kCols; ++k)
      if (std::find(pick.begin(), pick.end(), k) == pick.end()) pick.push_back(k);
    for (size_t k : pick) {
      g[0].push_back(cell(ev.images()[q_held[k].row]));
      g[1].push_back(cell(o_held[k].image));
    }
    save_png(out / "held-out.png", tile(g));
  }
  if (o.curves) {
    std::vector<training::PlotSeries> series(2);
    series[0].name = "top-1";
    series[1].name = "top-5";
    for (const auto& p : rep.steps_curve) series[0].points.push_back({p.x, 100 * p.top1}), series[1].points.push_back({p.x, 100 * p.top5});
    training::PlotOptions po;
    po.title = "prompt following vs steps (guidance " + std::to_string(o.guidance_scale).substr(0, 4) + ", " +
               std::to_string(nc) + " training names)";
    po.x_label = "steps";
    po.y_label = "% of images that are the prompted emoji";
    training::write_plot_svg(out / "accuracy-vs-steps.svg", series, po);
    for (auto& s : series) s.points.clear();
    for (const auto& p : rep.guidance_curve) series[0].points.push_back({p.x, 100 * p.top1}), series[1].points.push_back({p.x, 100 * p.top5});
    po.title = "prompt following vs guidance scale (" + std::to_string(o.steps) + " steps)";
    po.x_label = "guidance scale";
    training::write_plot_svg(out / "accuracy-vs-guidance.svg", series, po);
  }
  json j;
  j["model"] = o.model;
  j["data"] = o.data;
  j["steps"] = o.steps;
  j["guidance_scale"] = o.guidance_scale;
  j["seed"] = o.seed;
  j["device"] = rep.device.str();
  j["dtype"] = to_string(rep.dtype);
  j["threads"] = rep.threads;
  j["images_per_second"] = rep.images_per_second;
  j["seconds"] = rep.seconds;
  for (const auto& s : rep.scores) {
    json r = {{"set", s.set}, {"n", s.n}, {"top1", s.top1}, {"top5", s.top5}};
    if (!std::isnan(s.identity)) r["identity"] = s.identity, r["skin_tone"] = s.skin_tone;
    j["scores"].push_back(r);
  }
  for (const auto& p : rep.steps_curve)
    j["steps_curve"].push_back({{"steps", p.x}, {"top1", p.top1}, {"top5", p.top5}, {"seconds_per_image", p.seconds_per_image}});
  for (const auto& p : rep.guidance_curve)
    j["guidance_curve"].push_back({{"guidance_scale", p.x}, {"top1", p.top1}, {"top5", p.top5}});
  std::ostringstream md;
  md << "# amused eval\n\nModel `" << o.model << "`, data `" << o.data << "`; " << o.steps << " steps, guidance "
     << o.guidance_scale << ", seed " << o.seed << "; " << rep.device.str() << " " << to_string(rep.dtype) << ", " << rep.threads
     << " threads.\n\n| set | images | top-1 | top-5 | identity | skin tone |\n|---|---:|---:|---:|---:|---:|\n";
  for (const auto& s : rep.scores)
    md << "| " << s.set << " | " << s.n << " | " << pct(s.top1) << " | " << pct(s.top5) << " | " << pct(s.identity)
       << " | " << pct(s.skin_tone) << " |\n";
  char speed[96];
  std::snprintf(speed, sizeof speed, "%.2f images/s (batches of %d)", rep.images_per_second, o.batch_size);
  md << "\nSpeed at " << o.steps << " steps: " << speed << ".\n";
  if (o.curves) {
    md << "\n## Steps (guidance " << o.guidance_scale << ", " << nc << " training names)\n\n| steps | top-1 | top-5 | s/image |\n|---:|---:|---:|---:|\n";
    for (const auto& p : rep.steps_curve) {
      char b[160];
      std::snprintf(b, sizeof b, "| %g | %s | %s | %.3f |\n", p.x, pct(p.top1).c_str(), pct(p.top5).c_str(), p.seconds_per_image);
      md << b;
    }
    md << "\n![accuracy vs steps](accuracy-vs-steps.svg)\n\n## Guidance (" << o.steps << " steps)\n\n| guidance | top-1 | top-5 |\n|---:|---:|---:|\n";
    for (const auto& p : rep.guidance_curve) md << "| " << p.x << " | " << pct(p.top1) << " | " << pct(p.top5) << " |\n";
    md << "\n![accuracy vs guidance](accuracy-vs-guidance.svg)\n";
  }
  md << "\n## Pictures\n\n`train-and-paraphrase.png`: the emoji (top row), generated from its name (middle), from "
        "the paraphrase (bottom), left to right:\n\n";
  for (size_t k = 0; k < std::min<size_t>(kCols, q_train.size()); ++k)
    md << k + 1 << ". " << q_train[k].prompt << " / " << q_para[k].prompt << "\n";
  md << "\n![train and paraphrase](train-and-paraphrase.png)\n\n`held-out.png`: never-trained emoji (top) and the "
        "generations from their names (bottom).\n\n![held out](held-out.png)\n";
  io::write_files_atomic({{out / "results.json", j.dump(2) + "\n"}, {out / "report.md", md.str()}});
  return rep;
}

}  // namespace amused
