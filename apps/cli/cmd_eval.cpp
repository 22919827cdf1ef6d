// amused eval: prompt following, generalisation and the step/guidance curves of a model on the
// emoji set (include/amused/eval.h); writes report.md, results.json, pictures and curves.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "amused/eval.h"
#include "command.h"
#include "train_common.h"

namespace {

using amused::cli::duration;

struct EvalArgs {
  amused::EvalOptions o;
  std::string device = "cpu", dtype = "auto", variant;
  int threads = 0;
  bool offline = false, no_curves = false, quiet = false;
};

std::string pct(double f) {
  char b[16];
  std::snprintf(b, sizeof b, "%5.1f%%", 100 * f);
  return f != f ? std::string("    -") : std::string(b);
}

amused::cli::Registrar reg(
    "eval", "Measure prompt following on the emoji set: top-1/top-5, paraphrases, held-out, steps and guidance curves",
    [](CLI::App& sub) {
      auto a = std::make_shared<EvalArgs>();
      sub.add_option("-m,--model", a->o.model, "Model folder or hub repo id; default: the embedded emoji model");
      sub.add_option("--data", a->o.data, "An `amused dataset emoji` folder")->required();
      sub.add_option("-o,--output", a->o.output, "Report folder (report.md, results.json, pictures, curves)");
      sub.add_option("--samples", a->o.samples, "Training names evaluated (and their paraphrases)")
          ->capture_default_str();
      sub.add_option("--curve-samples", a->o.curve_samples, "Names per point of the curves")->capture_default_str();
      sub.add_option("--steps", a->o.steps, "Steps of the main sets (default: the model's generation_config.json, else 12)")->capture_default_str();
      sub.add_option("--guidance-scale", a->o.guidance_scale, "Guidance of the main sets (default: the model's generation_config.json, else 10)")->capture_default_str();
      sub.add_option("--steps-curve", a->o.steps_curve, "Step counts of the steps curve")->delimiter(',');
      sub.add_option("--guidance-curve", a->o.guidance_curve, "Scales of the guidance curve")->delimiter(',');
      sub.add_flag("--no-curves", a->no_curves, "Only the main sets");
      sub.add_option("--batch-size", a->o.batch_size, "Images per generation call")->capture_default_str();
      sub.add_option("--seed", a->o.seed, "Seed (sample choice and generation)")->capture_default_str()
      ->check(amused::cli::seed_range());
      sub.add_option("--device", a->device, "cpu | cuda | cuda:N")->check(amused::cli::device_choice())->capture_default_str();
      sub.add_option("--dtype", a->dtype, "auto | float32 | bfloat16 | float16")->check(amused::cli::dtype_choice())->capture_default_str();
      sub.add_option("--variant", a->variant, "Weight variant to read (e.g. fp16)");
      sub.add_option("--threads", a->threads, "Compute threads (default: all physical cores)");
      sub.add_flag("--offline", a->offline, "Never use the network");
      sub.add_flag("-q,--quiet", a->quiet, "No progress lines");
      return std::function<int()>([a, &sub] {
        amused::EvalOptions o = a->o;
        if (o.model.empty()) o.model = amused::cli::default_model();
        const amused::cli::ModelDefaults defaults = amused::cli::model_defaults(o.model);
        if (sub.get_option("--steps")->count() == 0 && defaults.steps) o.steps = *defaults.steps;
        if (sub.get_option("--guidance-scale")->count() == 0 && defaults.guidance_scale)
          o.guidance_scale = *defaults.guidance_scale;
        o.load = amused::cli::load_options(a->device, a->dtype, a->threads, a->variant, a->offline);
        o.curves = !a->no_curves;
        const auto start = std::chrono::steady_clock::now();
        if (!a->quiet)
          o.progress = [start](const std::string& stage, int64_t done, int64_t total) {
            const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            const double eta = done > 0 ? el * static_cast<double>(total - done) / static_cast<double>(done) : 0;
            std::fprintf(stderr, "eval: %-16s %lld/%lld images  elapsed %s  ETA %s\n", stage.c_str(),
                         static_cast<long long>(done), static_cast<long long>(total), duration(el).c_str(),
                         duration(eta).c_str());
          };
        const amused::EvalReport r = amused::evaluate(o);
        std::printf("%-22s %7s %7s %7s %9s %9s\n", "set", "images", "top-1", "top-5", "identity", "skin tone");
        for (const auto& s : r.scores)
          std::printf("%-22s %7lld %7s %7s %9s %9s\n", s.set.c_str(), static_cast<long long>(s.n), pct(s.top1).c_str(),
                      pct(s.top5).c_str(), pct(s.identity).c_str(), pct(s.skin_tone).c_str());
        for (const auto& p : r.steps_curve)
          std::printf("steps %-4g top-1 %s  top-5 %s  %.3f s/image\n", p.x, pct(p.top1).c_str(), pct(p.top5).c_str(),
                      p.seconds_per_image);
        for (const auto& p : r.guidance_curve)
          std::printf("guidance %-4g top-1 %s  top-5 %s\n", p.x, pct(p.top1).c_str(), pct(p.top5).c_str());
        std::printf("%.2f images/s at %d steps (%s %s, %d threads); %s in all%s%s\n", r.images_per_second, r.steps,
                    r.device.str().c_str(), amused::to_string(r.dtype), r.threads, duration(r.seconds).c_str(),
                    o.output.empty() ? "" : "; report: ", o.output.empty() ? "" : (o.output + "/report.md").c_str());
        return 0;
      });
    });

}  // namespace
