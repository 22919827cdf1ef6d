// Reuse of conditioning-only work across denoising steps (inference fast path).
//
// In aMUSEd every step feeds the transformer the same text states, pooled embedding and
// micro-conditioning; only the tokens change. The text projection, the cross-attention keys and
// values, the kv mappers and every adaptive-norm modulation are therefore the same at each step.
// While a ConditioningCache is active in an inference scope (nn/execution.h), `memo(module, inputs, compute)`
// returns the value computed at the first step for the same module and the same input tensors;
// without an active cache (training, or any plain forward) it simply computes. Results are
// bit-identical to recomputing.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <initializer_list>
#include <unordered_map>
#include <vector>

namespace amused::nn {

class ConditioningCache {
 public:
  ConditioningCache();   // becomes the active cache of this thread
  ~ConditioningCache();  // restores the previous one
  ConditioningCache(const ConditioningCache&) = delete;
  ConditioningCache& operator=(const ConditioningCache&) = delete;

  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  friend torch::Tensor memo(const void*, std::initializer_list<torch::Tensor>,
                            const std::function<torch::Tensor()>&);
  struct Entry {
    std::vector<torch::Tensor> inputs;  // held, so their addresses cannot be reused meanwhile
    torch::Tensor value;
  };
  std::unordered_map<const void*, Entry> entries_;
  ConditioningCache* previous_;
  int64_t hits_ = 0, misses_ = 0;
};

// `key` identifies the computation (the module doing it); `inputs` are the tensors it depends on
// (compared by identity, not by value).
torch::Tensor memo(const void* key, std::initializer_list<torch::Tensor> inputs,
                   const std::function<torch::Tensor()>& compute);

}  // namespace amused::nn
