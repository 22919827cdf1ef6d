// Where the image attends in the text: cross-attention probabilities, recorded on request.
//
// While an AttentionMapRecorder is live on a thread, every cross-attention (an Attention called
// with encoder_hidden_states) on that thread adds its probabilities, averaged over heads, to the
// recorder. `take(h, w)` returns the average over every layer recorded since the last take, each
// layer's query grid resampled to h x w. Without a live recorder nothing is recorded: the cost is
// one thread-local read per attention call.
//
//   nn::AttentionMapRecorder rec;
//   auto logits = transformer->forward(tokens, text, pooled, micro);
//   torch::Tensor maps = rec.take(16, 16);  // [B, M, 16, 16] float32: share of each text position
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <utility>

namespace amused::nn {

class AttentionMapRecorder {
 public:
  AttentionMapRecorder();   // becomes this thread's recorder
  ~AttentionMapRecorder();  // restores the previous one
  AttentionMapRecorder(const AttentionMapRecorder&) = delete;
  AttentionMapRecorder& operator=(const AttentionMapRecorder&) = delete;

  // This thread's live recorder, or nullptr.
  static AttentionMapRecorder* current();

  // probs [B, heads, N, M]: softmax over the M text positions for each of the N image positions.
  void add(const torch::Tensor& probs);
  // [B, M, h, w] float32 (on the CPU): the mean over the layers added since the last take, each
  // layer's N positions read as a square-scaled grid of the h x w aspect and resampled
  // (bilinear) to h x w. Undefined when nothing was added. Clears the recorder.
  torch::Tensor take(int64_t h, int64_t w);
  int64_t layers() const { return layers_; }

 private:
  std::map<int64_t, std::pair<torch::Tensor, int64_t>> sums_;  // by N: sum [B, N, M], layer count
  int64_t layers_ = 0;
  AttentionMapRecorder* previous_;
};

}  // namespace amused::nn
