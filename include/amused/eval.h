// Measuring a model on prompts with known answers (the emoji set of `amused dataset emoji`): does
// the image show what the prompt names, on captions it trained on, on paraphrases it never saw and
// on held-out combinations, and how does that depend on the number of steps and the guidance scale.
//
// An image "is" the prompted emoji when the emoji's own image is among its nearest neighbours in
// the whole set (every split) under a fixed feature: the image reduced to 16x16 RGB (area average),
// compared by Euclidean distance. Top-k: fewer than k images of the set are nearer than the
// target (exact duplicates of the target tie and do not count against it).
//
//   amused::EvalOptions o;
//   o.model = "models/amused-emoji";  o.data = "runs/emoji64";  o.output = "runs/eval";
//   amused::EvalReport r = amused::evaluate(o);   // also writes report.md, results.json, pictures
//
// Sets (each row of metadata.jsonl has file_name, text/name, keywords, split):
//   train       the name of `samples` training emoji (a caption it trained on)
//   paraphrase  the same emoji described by their keywords instead of the name, in reverse order
//               (or the name's words reversed when there are no other keywords): never trained on
//   held-out    every validation emoji (never trained on, image or caption)
//   skin-tone   the held-out emoji with a skin tone whose base emoji is in the set: identity (the
//               nearest image is the same base emoji, any tone) and tone (among the base emoji's
//               tone variants, the target's is the nearest)
// Curves: top-1/top-5 on `curve_samples` training names for each step count in steps_curve (at
// guidance_scale) and each guidance scale in guidance_curve (at `steps`).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "amused/error.h"
#include "amused/pipeline.h"

namespace amused {

struct EvalOptions {
  std::string model;
  std::string data;    // an `amused dataset emoji` folder (metadata.jsonl + images)
  std::string output;  // report folder (created); "" writes nothing
  LoadOptions load;
  int64_t samples = 200;        // training names (and their paraphrases)
  int64_t curve_samples = 64;   // names per curve point
  std::vector<int> steps_curve{1, 2, 4, 8, 12, 16, 24};
  std::vector<double> guidance_curve{1, 2, 4, 6, 8, 10, 14};
  bool curves = true;
  int steps = 12;
  double guidance_scale = 10.0;
  int batch_size = 16;
  uint64_t seed = 0;
  // Called after every batch: what is being generated, images done / planned in all.
  std::function<void(const std::string& stage, int64_t done, int64_t total)> progress;
};

struct EvalScore {
  std::string set;
  int64_t n = 0;
  double top1 = 0, top5 = 0;  // fractions
  double identity = std::numeric_limits<double>::quiet_NaN();   // skin-tone set only
  double skin_tone = std::numeric_limits<double>::quiet_NaN();  // skin-tone set only
};

struct EvalCurvePoint {
  double x = 0;  // steps or guidance scale
  double top1 = 0, top5 = 0;
  double seconds_per_image = 0;
};

struct EvalReport {
  std::vector<EvalScore> scores;
  std::vector<EvalCurvePoint> steps_curve, guidance_curve;
  double images_per_second = 0;  // at `steps`, `guidance_scale`, `batch_size`
  int steps = 0;
  double guidance_scale = 0;
  Device device;
  DType dtype = DType::Float32;
  int threads = 0;
  double seconds = 0;
};

// Throws IoError for a data folder that is not an emoji set (names the file and field).
EvalReport evaluate(const EvalOptions& options);

}  // namespace amused
