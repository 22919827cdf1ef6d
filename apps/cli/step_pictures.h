// `amused generate --save-steps DIR`: pictures of how each image was filled in, step by step.
//
// For every image i of the call (i = 0 for a single image), in DIR:
//   img<i>-step<NN>.png   three panels: the model's prediction at step NN (every token, the masked
//                         ones sampled), the tokens fixed so far (grey: still masked), and the
//                         confidence of each predicted token (dark: low, yellow: high);
//   img<i>-sheet.png      the same panels for every step, one column per step (a contact sheet);
//   img<i>-steps.webp     an animation of the predictions, ending on the final image.
// Predictions are drawn from token colours (Pipeline::preview: no VQ decode) or, with
// `exact`, decoded by the VQ-GAN at every step.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "amused/pipeline.h"

namespace amused::cli {

class StepRecorder {
 public:
  StepRecorder(Pipeline& pipeline, bool exact);
  // Called from the progress callback with StepInfo::details set.
  void record(const StepInfo& info);
  // Every file, encoded, with its path under `dir` (written by the caller with the other outputs,
  // all or nothing). `finals` are the generated images.
  std::vector<std::pair<std::filesystem::path, std::string>> files(const std::filesystem::path& dir,
                                                                   const std::vector<Image>& finals) const;

 private:
  struct Step {
    Image prediction, fixed, confidence;  // per image: same size panels
  };
  Pipeline& pipeline_;
  bool exact_;
  int cell_ = 8;
  std::vector<std::vector<Step>> steps_;  // [image][step]
};

// Animated WebP (lossless) of equally sized RGB frames, each shown `frame_ms` and the last
// `last_ms`. Throws amused::IoError when libwebp refuses.
std::string encode_webp_animation(const std::vector<Image>& frames, int frame_ms, int last_ms);

}  // namespace amused::cli
