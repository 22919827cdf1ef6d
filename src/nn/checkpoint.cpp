#include "nn/checkpoint.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

namespace amused::nn {
namespace {

// The autocast state of the forward, restored while backward recomputes.
struct AutocastState {
  bool cpu = false, cuda = false;
  at::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
  static AutocastState current() {
    return {at::autocast::is_cpu_enabled(), at::autocast::is_enabled(), at::autocast::get_autocast_cpu_dtype(),
            at::autocast::get_autocast_gpu_dtype()};
  }
  void apply() const {
    at::autocast::set_cpu_enabled(cpu);
    at::autocast::set_enabled(cuda);
    at::autocast::set_autocast_cpu_dtype(cpu_dtype);
    at::autocast::set_autocast_gpu_dtype(cuda_dtype);
  }
};

class RecomputeBackward : public torch::autograd::Node {
 public:
  RecomputeBackward(CheckpointedFunction fn, const std::vector<torch::Tensor>& inputs)
      : fn_(std::move(fn)), autocast_(AutocastState::current()) {
    for (const auto& x : inputs) {
      inputs_.push_back(x.defined() ? x.detach() : x);
      needs_grad_.push_back(x.defined() && x.requires_grad());
    }
  }
  std::string name() const override { return "amused::nn::RecomputeBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    TORCH_CHECK(fn_, "a checkpointed block was backpropagated twice (retain_graph is not supported)");
    if (!grads[0].defined()) {
      release_variables();
      return torch::autograd::variable_list(needs_grad_.size());
    }
    std::vector<torch::Tensor> xs;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      auto x = inputs_[i].defined() ? inputs_[i].detach() : inputs_[i];
      if (needs_grad_[i]) x.requires_grad_(true);
      xs.push_back(x);
    }
    torch::Tensor out;
    {
      torch::AutoGradMode recording(true);
      const AutocastState outer = AutocastState::current();
      autocast_.apply();
      try {
        out = fn_(xs);
      } catch (...) {
        outer.apply();
        throw;
      }
      outer.apply();
    }
    // Reentrant backward through the recomputed block: parameters accumulate their gradients.
    if (out.requires_grad()) torch::autograd::backward({out}, {grads[0]});
    torch::autograd::variable_list result;
    for (size_t i = 0; i < xs.size(); ++i) result.push_back(needs_grad_[i] ? xs[i].grad() : torch::Tensor());
    release_variables();
    return result;
  }

  void release_variables() override {
    inputs_.clear();
    fn_ = nullptr;
  }

 private:
  CheckpointedFunction fn_;
  std::vector<torch::Tensor> inputs_;
  std::vector<bool> needs_grad_;
  AutocastState autocast_;
};

}  // namespace

torch::Tensor checkpoint(const CheckpointedFunction& fn, const std::vector<torch::Tensor>& inputs) {
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  torch::Tensor out;
  {
    torch::NoGradGuard no_grad;
    out = fn(inputs);
  }
  auto node = std::shared_ptr<RecomputeBackward>(new RecomputeBackward(fn, inputs), torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  torch::autograd::set_history(out, node);
  return out;
}

}  // namespace amused::nn
