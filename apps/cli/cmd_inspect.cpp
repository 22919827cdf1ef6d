// `amused inspect`: what a model folder / hub repo holds (from its JSON files and safetensors
// headers, no model is built), or the text metadata of a PNG.
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "amused/amused.h"
#include "amused/png_text.h"
#include "amused/repo.h"
#include "command.h"

namespace {

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string grouped(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

bool is_png_path(const std::string& s) {
  if (s.size() < 4) return false;
  std::string tail = s.substr(s.size() - 4);
  for (auto& c : tail) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return tail == ".png";
}

// A one-line download progress bar on stderr, redrawn at most every 100 ms.
struct ProgressBar {
  std::string file;
  std::chrono::steady_clock::time_point last{};
  void operator()(const std::string& f, uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    const bool finished = total > 0 && done >= total;
    if (f == file && !finished && now - last < std::chrono::milliseconds(100)) return;
    if (f != file && !file.empty()) std::fprintf(stderr, "\n");
    file = f;
    last = now;
    const int width = 30;
    const int filled =
        total > 0 ? static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total))
                  : 0;
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '-');
    std::fprintf(stderr, "\r%-48.48s [%s] %s / %s", f.c_str(), bar.c_str(),
                 human_bytes(done).c_str(), total > 0 ? human_bytes(total).c_str() : "?");
    std::fflush(stderr);
  }
  void finish() {
    if (!file.empty()) std::fprintf(stderr, "\n");
  }
};

void print_text(const amused::ModelInfo& info) {
  std::printf("model:     %s\n", info.model.c_str());
  std::printf("path:      %s%s\n", info.path.c_str(),
              info.from_hub_cache ? "  (Hugging Face cache)" : "");
  std::printf("pipeline:  %s%s\n",
              info.pipeline_class.empty() ? "(no _class_name)" : info.pipeline_class.c_str(),
              info.diffusers_version.empty()
                  ? ""
                  : (" (diffusers " + info.diffusers_version + ")").c_str());
  std::printf("variant:   %s\n", info.variant.empty() ? "default" : info.variant.c_str());
  for (const auto& c : info.components) {
    std::printf("\n%s: %s (%s)\n", c.name.c_str(), c.class_name.c_str(), c.library.c_str());
    std::printf("  folder:   %s\n", c.path.c_str());
    if (!c.config_file.empty()) std::printf("  config:   %s\n", c.config_file.c_str());
    for (const auto& [k, v] : c.config) std::printf("    %-24s %s\n", k.c_str(), v.c_str());
    if (!c.files.empty()) {
      std::string files;
      for (const auto& f : c.files) files += (files.empty() ? "" : ", ") + f;
      std::printf("  files:    %s\n", files.c_str());
    }
    if (c.weight_files.empty()) continue;
    for (const auto& w : c.weight_files) {
      std::printf("  weights:  %s (%s, %s tensors)\n",
                  std::filesystem::path(w.path).filename().c_str(),
                  human_bytes(w.size_bytes).c_str(), grouped(w.tensor_count).c_str());
    }
    std::string dtypes;
    for (const auto& [d, n] : c.dtypes)
      dtypes += (dtypes.empty() ? "" : ", ") + d + " x" + std::to_string(n);
    std::printf("  tensors:  %s, parameters: %s, dtypes: %s\n", grouped(c.tensor_count).c_str(),
                grouped(c.parameter_count).c_str(), dtypes.c_str());
  }
  std::printf("\ntotal:     %s parameters, %s of weights\n", grouped(info.total_parameters).c_str(),
              human_bytes(info.total_weight_bytes).c_str());
}

int inspect_png(const std::string& path, bool as_json) {
  const auto text = amused::read_png_text(path);
  if (as_json) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : text) j[k] = v;
    // Any bytes (a non-UTF-8 path, prompt or PNG text chunk) print, as U+FFFD where not UTF-8.
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf("file: %s\n", path.c_str());
  if (text.empty()) std::printf("(no text metadata)\n");
  for (const auto& [k, v] : text) std::printf("%s: %s\n", k.c_str(), v.c_str());
  return 0;
}

struct Args {
  std::string target;
  std::string model;
  std::string variant;
  std::string revision = "main";
  bool offline = false;
  bool json = false;
};

amused::cli::Registrar reg(
    "inspect", "Show what a model folder / hub repo holds (or a PNG's text metadata)",
    [](CLI::App& sub) {
      auto args = std::make_shared<Args>();
      sub.add_option("target", args->target, "A model folder / hub repo id, or an image FILE.png");
      sub.add_option("-m,--model", args->model,
                     "Model folder or hub repo id (e.g. amused/amused-256)");
      sub.add_option("--variant", args->variant,
                     "Weight variant, e.g. fp16 (default: the plain weights)");
      sub.add_option("--revision", args->revision, "Hub branch, tag or commit")
          ->capture_default_str();
      sub.add_flag("--offline", args->offline, "Never use the network (also HF_HUB_OFFLINE=1)");
      sub.add_flag("--json", args->json, "Print JSON");
      return std::function<int()>([args] {
        if (!args->target.empty() && !args->model.empty())
          throw amused::InvalidArgument("give either a positional target or -m/--model, not both");
        const std::string target = args->model.empty() ? args->target : args->model;
        if (target.empty())
          throw amused::InvalidArgument("nothing to inspect: pass -m MODEL or FILE.png");
        std::error_code ec;
        if (args->model.empty() && is_png_path(target) &&
            !std::filesystem::is_directory(target, ec))
          return inspect_png(target, args->json);
        amused::RepoOptions options;
        options.offline = args->offline;
        options.variant = args->variant;
        options.revision = args->revision;
        auto bar = std::make_shared<ProgressBar>();
        if (amused::cli::stderr_is_tty())
          options.progress = [bar](const std::string& f, uint64_t d, uint64_t t) {
            (*bar)(f, d, t);
          };
        amused::ModelInfo info;
        try {
          info = amused::inspect_model(target, options);
        } catch (...) {
          bar->finish();
          throw;
        }
        bar->finish();
        if (args->json) {
          std::printf("%s\n", amused::model_info_json(info).c_str());
        } else {
          print_text(info);
        }
        return 0;
      });
    });

}  // namespace
