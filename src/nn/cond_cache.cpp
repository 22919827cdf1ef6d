#include "nn/cond_cache.h"

#include "nn/execution.h"

namespace amused::nn {
namespace {
thread_local ConditioningCache* g_active = nullptr;
}

ConditioningCache::ConditioningCache() : previous_(g_active) { g_active = this; }
ConditioningCache::~ConditioningCache() { g_active = previous_; }

torch::Tensor memo(const void* key, std::initializer_list<torch::Tensor> inputs,
                   const std::function<torch::Tensor()>& compute) {
  ConditioningCache* cache = g_active;
  if (cache == nullptr || !inference_fast_paths()) return compute();
  auto it = cache->entries_.find(key);
  if (it != cache->entries_.end() && it->second.inputs.size() == inputs.size()) {
    bool same = true;
    size_t i = 0;
    for (const auto& t : inputs) same = same && it->second.inputs[i++].unsafeGetTensorImpl() == t.unsafeGetTensorImpl();
    if (same) {
      ++cache->hits_;
      return it->second.value;
    }
  }
  ++cache->misses_;
  auto value = compute();
  cache->entries_[key] = ConditioningCache::Entry{std::vector<torch::Tensor>(inputs), value};
  return value;
}

}  // namespace amused::nn
