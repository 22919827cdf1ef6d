#include "nn/activations.h"

namespace amused::nn {

GEGLUImpl::GEGLUImpl(int64_t dim_in, int64_t dim_out, bool bias) {
  proj = register_module("proj", Linear(dim_in, dim_out * 2, bias));
}

torch::Tensor GEGLUImpl::forward(const torch::Tensor& hidden_states) {
  auto chunks = proj(hidden_states).chunk(2, /*dim=*/-1);
  return chunks[0] * torch::gelu(chunks[1]);
}

void GEGLUImpl::reset_parameters() { proj->reset_parameters(); }

}  // namespace amused::nn
