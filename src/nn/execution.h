// How the models run: the one switch between the inference fast paths and the plain arithmetic
// that autograd can differentiate.
//
// Inference (pipelines, the server, benchmarks) may update fresh temporaries in place, keep
// 16-bit intermediates between the products of mixed-precision attention, reuse the
// conditioning-only work across denoising steps (nn/cond_cache.h) and hand freed memory back
// between the VQ decoder's blocks. Each of those is bit-identical to the plain arithmetic but is
// invisible to autograd. Training, and any forward outside an InferenceScope, runs the plain
// arithmetic only. Every fast path asks `inference_fast_paths()`, and nothing else decides it:
// neither autograd's grad mode nor the weights' dtype.
#pragma once

#include <torch/torch.h>

#include <optional>

namespace amused::nn {

enum class ExecutionMode {
  kTraining,   // plain arithmetic, autograd on: what training and gradient tests need
  kInference,  // fast paths, autograd off
};

// The mode of the calling thread: kTraining unless an ExecutionScope chose otherwise.
ExecutionMode execution_mode();

// True in kInference: the fast paths above may run.
inline bool inference_fast_paths() { return execution_mode() == ExecutionMode::kInference; }

// Sets this thread's mode for its lifetime (nested scopes restore the previous mode), and with it
// autograd: off in kInference (so an in-place fast path can never corrupt a graph), on in
// kTraining.
class ExecutionScope {
 public:
  explicit ExecutionScope(ExecutionMode mode);
  ~ExecutionScope();
  ExecutionScope(const ExecutionScope&) = delete;
  ExecutionScope& operator=(const ExecutionScope&) = delete;

 private:
  ExecutionMode previous_;
  torch::AutoGradMode grad_mode_;
};

}  // namespace amused::nn
