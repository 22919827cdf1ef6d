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

// `amused generate --attention-maps DIR`: where each word of the prompt drew the image's
// cross-attention (StepDetails::attention: averaged over heads and layers). For every image i:
//   img<i>-attention.png        the final image, then one panel per word of its prompt: the image
//                               dimmed under a heatmap of the word's share of attention averaged
//                               over the steps (each panel's colours span its own range, least
//                               to most), labelled with the word and its mean share;
//   img<i>-attention-steps.png  the same panels for every step, one row per step;
//   img<i>-attention.json       the text tokens, the words (a word = its BPE tokens up to one that
//                               ends in </w>), each word's mean share per step and its map over the
//                               run (row-major, grid height x width), and the start and end
//                               tokens' shares.
class AttentionRecorder {
 public:
  // `cell`: pixels per token in the panels (raised so that a panel is at least 128 px wide).
  explicit AttentionRecorder(int cell);
  // Called from the progress callback with StepInfo::details set (and its attention filled).
  void record(const StepInfo& info);
  std::vector<std::pair<std::filesystem::path, std::string>> files(const std::filesystem::path& dir,
                                                                   const std::vector<Image>& finals) const;
  // True when the labels could not be drawn (no font; the JSON still names the panels).
  bool labels_missing() const;

  struct Word {
    std::string text;
    std::vector<int> positions;  // text positions (into the prompt's tokens)
  };
  // The words of a prompt's tokens; the start and end tokens are not words.
  static std::vector<Word> words_of(const std::vector<std::string>& tokens);

 private:
  int cell_;
  int height_ = 0, width_ = 0;
  std::vector<std::vector<std::string>> tokens_;        // [image][position]
  std::vector<std::vector<std::vector<float>>> maps_;   // [image][step][position * h * w]
};

// Animated WebP (lossless) of equally sized RGB frames, each shown `frame_ms` and the last
// `last_ms`. Throws amused::IoError when libwebp refuses.
std::string encode_webp_animation(const std::vector<Image>& frames, int frame_ms, int last_ms);

}  // namespace amused::cli
