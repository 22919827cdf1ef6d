// Gradient checkpointing: run a block without keeping its activations for backward, and compute
// them again when backward reaches it. Trades one more forward of the block for its activation
// memory (the transformer layers of a U-ViT hold most of a training step's activations).
// Ref: torch/utils/checkpoint.py (checkpoint, use_reentrant=True).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace amused::nn {

using CheckpointedFunction = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// fn(inputs) with autograd recording only the result: the forward runs without recording, and
// backward runs `fn` again with recording on (and the autocast state of this call), then
// backpropagates through that recomputation, which accumulates the gradients of the parameters
// `fn` uses and returns those of `inputs`. `fn` must compute the same thing both times (no
// randomness: dropout is 0 in aMUSEd). Without autograd recording this is fn(inputs).
torch::Tensor checkpoint(const CheckpointedFunction& fn, const std::vector<torch::Tensor>& inputs);

}  // namespace amused::nn
