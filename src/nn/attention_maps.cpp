#include "nn/attention_maps.h"

#include <cmath>
#include <string>

#include "amused/error.h"

namespace amused::nn {

namespace {
thread_local AttentionMapRecorder* t_current = nullptr;
}

AttentionMapRecorder::AttentionMapRecorder() : previous_(t_current) { t_current = this; }
AttentionMapRecorder::~AttentionMapRecorder() { t_current = previous_; }

AttentionMapRecorder* AttentionMapRecorder::current() { return t_current; }

void AttentionMapRecorder::add(const torch::Tensor& probs) {
  torch::NoGradGuard no_grad;
  auto mean = probs.detach().to(torch::kFloat32).mean(1);  // [B, N, M]
  auto& [sum, count] = sums_[mean.size(1)];
  sum = sum.defined() ? sum + mean : mean;
  ++count;
  ++layers_;
}

torch::Tensor AttentionMapRecorder::take(int64_t h, int64_t w) {
  torch::NoGradGuard no_grad;
  torch::Tensor total;
  for (auto& [n, entry] : sums_) {
    auto& [sum, count] = entry;
    // N positions on a grid of the image's aspect: (h / f) x (w / f).
    const double f = std::sqrt(static_cast<double>(h * w) / static_cast<double>(n));
    const auto gh = static_cast<int64_t>(std::lround(static_cast<double>(h) / f));
    const auto gw = static_cast<int64_t>(std::lround(static_cast<double>(w) / f));
    if (gh * gw != n)
      throw Error("attention maps: " + std::to_string(n) + " query positions do not form a grid of " +
                          std::to_string(h) + "x" + std::to_string(w) + "'s aspect");
    // [B, N, M] -> [B, M, gh, gw]
    auto grid = sum.permute({0, 2, 1}).reshape({sum.size(0), sum.size(2), gh, gw});
    if (gh != h || gw != w)
      grid = torch::nn::functional::interpolate(
          grid, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kBilinear).align_corners(false));
    total = total.defined() ? total + grid : grid;
  }
  const int64_t layers = layers_;
  sums_.clear();
  layers_ = 0;
  if (!total.defined()) return total;
  return (total / static_cast<double>(layers)).to(torch::kCPU).contiguous();
}

}  // namespace amused::nn
