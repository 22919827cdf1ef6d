// Optimisation for training: AdamW with train_amused.py's two weight-decay groups, diffusers'
// learning-rate schedules, global-norm gradient clipping and diffusers' EMAModel.
//
//   auto opt = make_adamw(*transformer, {.lr = 1e-4});
//   for (int64_t step = 0; step < total; ++step) {
//     set_lr(*opt, lr_at(step, 1e-4, LrSchedule::kConstant, 0, total));
//     loss.backward();
//     if (max_grad_norm) clip_grad_norm(*transformer, *max_grad_norm);
//     opt->step();
//     zero_grad(*opt);  // set_to_none, as the script
//     ema.step(*transformer);
//   }
//
// Ref: diffusers v0.27.2 examples/amused/train_amused.py lines 596-622 (parameter groups,
//      AdamW), 845-858 (clip, step, zero_grad, EMA); diffusers v0.27.2
//      src/diffusers/optimization.py (get_scheduler and the schedules);
//      src/diffusers/training_utils.py (EMAModel); torch 1.13 torch/nn/utils/clip_grad.py.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace amused::training {

// train_amused.py's defaults, except lr (its --learning_rate default is 3e-4).
struct AdamWOptions {
  double lr = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double weight_decay = 0.01;
  double eps = 1e-8;
  // One pass over each parameter's memory per step, split over the threads (FusedAdamW), instead
  // of LibTorch's nine element-wise passes. The same formula; float32 rounding may differ in the
  // last bit where the element-wise kernels fuse a multiply-add.
  bool fused = false;
};

// torch::optim::AdamW whose step() updates each float32 CPU parameter, its two moments and its
// weight decay in one pass (the training step's update is memory-bound: ~9 passes over 2.4 GB of
// weights, 4.8 GB of moments and 2.4 GB of gradients for amused-256). Same state objects
// (AdamWParamState) and options as the base class, so checkpoints and set_lr work unchanged;
// other parameters (CUDA, other dtypes, amsgrad) take the base class's arithmetic.
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

// Names containing any of these get weight decay 0 (train_amused.py's `no_decay`, carried over
// from open-muse's module names: in UVit2DModel only encoder_proj_layer_norm.weight,
// embed.embeddings.weight, embed.layer_norm.weight and mlm_layer.layer_norm.weight match, so the
// other RMSNorm weights and the GlobalResponseNorm gamma/beta are decayed, as in the reference).
const std::vector<std::string>& no_decay_substrings();
bool is_no_decay(const std::string& parameter_name);

// torch::optim::AdamW over the module's parameters that require grad, in two groups: the decayed
// one (weight_decay = options.weight_decay), then the is_no_decay one (weight decay 0), each in
// named_parameters() order; an empty group is left out. Throws InvalidArgument for out-of-range
// options or no trainable parameter.
std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& module,
                                                const AdamWOptions& options);

// optimizer.zero_grad(set_to_none=True): gradients become undefined, so a parameter that gets no
// gradient in the next step is skipped by AdamW (no decay, no moment update), as in PyTorch.
void zero_grad(torch::optim::Optimizer& optimizer);

// diffusers' get_scheduler names: "constant", "constant_with_warmup", "linear", "cosine".
enum class LrSchedule { kConstant, kConstantWithWarmup, kLinear, kCosine };
// Throws InvalidArgument naming the accepted values for any other name.
LrSchedule parse_lr_schedule(const std::string& name);
std::string to_string(LrSchedule schedule);

// The learning rate of the update with 0-based index `step` (= the number of optimizer steps
// already taken; LambdaLR's last_epoch): base_lr * lambda(step) with diffusers' lambdas
//   constant:             1
//   constant_with_warmup: step < warmup ? step / max(1, warmup) : 1
//   linear:               step < warmup ? step / max(1, warmup)
//                                       : max(0, (total - step) / max(1, total - warmup))
//   cosine:               step < warmup ? step / max(1, warmup)
//                                       : max(0, 0.5 * (1 + cos(pi * progress))),
//                         progress = (step - warmup) / max(1, total - warmup)
// (warm-up schedules therefore make their first update with lr 0, as diffusers does; "constant"
// ignores warmup_steps). Throws InvalidArgument for negative step/warmup/total.
double lr_at(int64_t step, double base_lr, LrSchedule schedule, int64_t warmup_steps,
             int64_t total_steps);
// Sets the learning rate of every parameter group.
void set_lr(torch::optim::Optimizer& optimizer, double lr);

// torch.nn.utils.clip_grad_norm_(parameters, max_norm) over the module's parameters that have a
// gradient: scales every gradient by min(1, max_norm / (total_norm + 1e-6)); returns the total
// L2 norm before clipping (0 when no parameter has a gradient). Throws InvalidArgument for
// max_norm <= 0.
double clip_grad_norm(torch::nn::Module& module, double max_norm);
double clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm);

// diffusers' EMAModel options (train_amused.py passes decay and update_after_step only).
struct EmaOptions {
  double decay = 0.9999;
  double min_decay = 0.0;
  int64_t update_after_step = 0;
  bool use_ema_warmup = false;
  double inv_gamma = 1.0;
  double power = 2.0 / 3.0;
};

// Exponential moving average of a module's parameters, tracked by named_parameters() name.
// step(): optimization_step += 1, decay = get_decay(optimization_step); every shadow s of a
// parameter p that requires grad: s -= (1 - decay) * (s - p); of a frozen one: s = p.
class EmaModel {
 public:
  // Shadows start as copies of the module's parameters.
  EmaModel(const torch::nn::Module& module, EmaOptions options = {});

  // diffusers' get_decay: s = max(0, optimization_step - update_after_step - 1); 0 when s == 0,
  // else min(decay, (1 + s) / (10 + s)) (or 1 - (1 + s / inv_gamma)^-power with use_ema_warmup),
  // floored at min_decay. So the first step copies the weights.
  double get_decay(int64_t optimization_step) const;
  void step(const torch::nn::Module& module);
  // Writes the averaged weights into the module (no autograd history).
  void copy_to(torch::nn::Module& module) const;
  // store(): keeps a copy of the module's current weights; restore(): writes them back and
  // forgets them. restore() without store() throws InvalidArgument.
  void store(const torch::nn::Module& module);
  void restore(torch::nn::Module& module);

  int64_t optimization_step() const { return optimization_step_; }
  double cur_decay_value() const { return cur_decay_value_; }
  const EmaOptions& options() const { return options_; }

  // Checkpoint state: the shadow tensors by parameter name and the step count.
  const std::map<std::string, torch::Tensor>& shadow_params() const { return shadow_; }
  // Replaces the state; names and shapes must equal the current shadows (CheckpointError naming
  // the first missing, unexpected or mis-shaped key otherwise). Tensors are copied.
  void load_state(const std::map<std::string, torch::Tensor>& shadow_params,
                  int64_t optimization_step);

 private:
  // The module's parameters by name, checked against the shadows (InvalidArgument on mismatch).
  std::map<std::string, torch::Tensor> parameters_of(const torch::nn::Module& module) const;

  EmaOptions options_;
  std::map<std::string, torch::Tensor> shadow_;
  std::map<std::string, torch::Tensor> stored_;
  int64_t optimization_step_ = 0;
  double cur_decay_value_ = 0.0;
};

}  // namespace amused::training
