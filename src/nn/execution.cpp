#include "nn/execution.h"

namespace amused::nn {
namespace {
thread_local ExecutionMode g_mode = ExecutionMode::kTraining;
}

ExecutionMode execution_mode() { return g_mode; }

ExecutionScope::ExecutionScope(ExecutionMode mode)
    : previous_(g_mode), grad_mode_(mode == ExecutionMode::kTraining) {
  g_mode = mode;
}

ExecutionScope::~ExecutionScope() { g_mode = previous_; }

}  // namespace amused::nn
