// The fixed image feature of `amused eval`: an image reduced to 16x16 RGB in [0, 1] (area average;
// a resize first when a side is not a multiple of 16), compared by Euclidean distance.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "amused/pipeline.h"

namespace amused::eval {

torch::Tensor image_feature(const Image& image);  // [768] float32

class RetrievalIndex {
 public:
  explicit RetrievalIndex(const std::vector<Image>& gallery);
  // Squared distances from `query` to every gallery image [G].
  torch::Tensor distances(const Image& query) const;
  // Gallery images strictly nearer to `query` than gallery[target] (0: the target is the nearest;
  // exact duplicates of the target tie with it and do not count).
  int64_t rank(const Image& query, size_t target) const;
  size_t nearest(const Image& query) const;
  // rank() and nearest() from one computation of the distances.
  struct Match {
    int64_t rank = 0;
    size_t nearest = 0;
  };
  Match match(const Image& query, size_t target) const;
  // Among `candidates` (gallery indices), the nearest to `query`.
  size_t nearest_among(const Image& query, const std::vector<size_t>& candidates) const;
  size_t size() const { return static_cast<size_t>(features_.size(0)); }

 private:
  torch::Tensor features_, squared_;
};

}  // namespace amused::eval
