#include "training/optimizer.h"

#include <cmath>
#include <sstream>

#include "amused/error.h"
#include "core/threads.h"

namespace amused::training {
namespace {

std::string shape_str(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

}  // namespace

// ------------------------------------------------------------------------------- AdamW

const std::vector<std::string>& no_decay_substrings() {
  static const std::vector<std::string> kNoDecay = {"bias", "layer_norm.weight", "mlm_ln.weight",
                                                    "embeddings.weight"};
  return kNoDecay;
}

bool is_no_decay(const std::string& parameter_name) {
  for (const auto& s : no_decay_substrings())
    if (parameter_name.find(s) != std::string::npos) return true;
  return false;
}

std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& module,
                                                const AdamWOptions& options) {
  if (!(options.lr >= 0.0))
    throw InvalidArgument("AdamW: lr must be >= 0, got " + std::to_string(options.lr));
  if (!(options.beta1 >= 0.0 && options.beta1 < 1.0) ||
      !(options.beta2 >= 0.0 && options.beta2 < 1.0))
    throw InvalidArgument("AdamW: betas must be in [0, 1), got (" + std::to_string(options.beta1) +
                          ", " + std::to_string(options.beta2) + ")");
  if (!(options.eps >= 0.0))
    throw InvalidArgument("AdamW: eps must be >= 0, got " + std::to_string(options.eps));
  if (!(options.weight_decay >= 0.0))
    throw InvalidArgument("AdamW: weight_decay must be >= 0, got " +
                          std::to_string(options.weight_decay));

  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    (is_no_decay(item.key()) ? no_decay : decay).push_back(item.value());
  }
  if (decay.empty() && no_decay.empty())
    throw InvalidArgument("AdamW: the module has no trainable parameter");

  torch::optim::AdamWOptions defaults(options.lr);
  defaults.betas({options.beta1, options.beta2})
      .eps(options.eps)
      .weight_decay(options.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty())
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(defaults));
  if (!no_decay.empty()) {
    auto no_decay_options = std::make_unique<torch::optim::AdamWOptions>(defaults);
    no_decay_options->weight_decay(0.0);
    groups.emplace_back(no_decay, std::move(no_decay_options));
  }
  if (options.fused) return std::make_unique<FusedAdamW>(std::move(groups), defaults);
  return std::make_unique<torch::optim::AdamW>(std::move(groups), defaults);
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto& grad = p.grad();
      const bool fusable = p.device().is_cpu() && p.scalar_type() == torch::kFloat32 && p.is_contiguous() &&
                           grad.scalar_type() == torch::kFloat32 && grad.is_contiguous() && !grad.is_sparse() &&
                           !options.amsgrad();
      const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());
      auto it = state().find(key);
      if (it == state().end()) {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(0);
        s->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        s->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        if (options.amsgrad()) s->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = state().emplace(key, std::move(s)).first;
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
      s.step(s.step() + 1);
      const double beta1 = std::get<0>(options.betas()), beta2 = std::get<1>(options.betas());
      const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(s.step()));
      const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(s.step()));
      const double step_size = options.lr() / bias_correction1;
      if (!fusable || !s.exp_avg().is_contiguous() || !s.exp_avg_sq().is_contiguous()) {
        // torch::optim::AdamW's arithmetic (LibTorch 1.13 adamw.cpp), element-wise.
        if (options.weight_decay() != 0) p.mul_(1 - options.lr() * options.weight_decay());
        s.exp_avg().mul_(beta1).add_(grad, 1 - beta1);
        s.exp_avg_sq().mul_(beta2).addcmul_(grad, grad, 1 - beta2);
        torch::Tensor denom;
        if (options.amsgrad()) {
          torch::max_out(s.max_exp_avg_sq(), s.exp_avg_sq(), s.max_exp_avg_sq());
          denom = (s.max_exp_avg_sq().sqrt() / std::sqrt(bias_correction2)).add_(options.eps());
        } else {
          denom = (s.exp_avg_sq().sqrt() / std::sqrt(bias_correction2)).add_(options.eps());
        }
        p.addcdiv_(s.exp_avg(), denom, -step_size);
        continue;
      }
      // The same steps per element, in float32 like the element-wise kernels: decay, first and
      // second moment, then p += -step_size * m / (sqrt(v) / sqrt(bc2) + eps).
      const float decay = static_cast<float>(options.weight_decay() != 0 ? 1 - options.lr() * options.weight_decay() : 1);
      const float b1 = static_cast<float>(beta1), one_minus_b1 = static_cast<float>(1 - beta1);
      const float b2 = static_cast<float>(beta2), one_minus_b2 = static_cast<float>(1 - beta2);
      const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
      const float eps = static_cast<float>(options.eps());
      const float neg_step = static_cast<float>(-step_size);
      float* pw = p.data_ptr<float>();
      const float* g = grad.data_ptr<float>();
      float* m = s.exp_avg().data_ptr<float>();
      float* v = s.exp_avg_sq().data_ptr<float>();
      amused::parallel_for(0, p.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const float gi = g[i];
          const float mi = m[i] * b1 + one_minus_b1 * gi;
          const float vi = v[i] * b2 + one_minus_b2 * gi * gi;
          m[i] = mi;
          v[i] = vi;
          pw[i] = pw[i] * decay + neg_step * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
        }
      });
    }
  }
  return loss;
}

void zero_grad(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params()) p.mutable_grad() = torch::Tensor();
}

// ------------------------------------------------------------------------------- LR schedules

LrSchedule parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "constant_with_warmup") return LrSchedule::kConstantWithWarmup;
  if (name == "linear") return LrSchedule::kLinear;
  if (name == "cosine") return LrSchedule::kCosine;
  throw InvalidArgument("unknown learning-rate schedule '" + name +
                        "'; expected one of constant, constant_with_warmup, linear, cosine");
}

std::string to_string(LrSchedule schedule) {
  switch (schedule) {
    case LrSchedule::kConstant:
      return "constant";
    case LrSchedule::kConstantWithWarmup:
      return "constant_with_warmup";
    case LrSchedule::kLinear:
      return "linear";
    case LrSchedule::kCosine:
      return "cosine";
  }
  return "?";
}

double lr_at(int64_t step, double base_lr, LrSchedule schedule, int64_t warmup_steps,
             int64_t total_steps) {
  if (step < 0 || warmup_steps < 0 || total_steps < 0)
    throw InvalidArgument("lr_at: step, warmup_steps and total_steps must be >= 0, got " +
                          std::to_string(step) + ", " + std::to_string(warmup_steps) + ", " +
                          std::to_string(total_steps));
  // The lambdas of diffusers' optimization.py, in its float arithmetic; LambdaLR multiplies the
  // base lr by the lambda.
  const auto d = [](int64_t v) { return static_cast<double>(v); };
  double factor = 1.0;
  switch (schedule) {
    case LrSchedule::kConstant:
      factor = 1.0;
      break;
    case LrSchedule::kConstantWithWarmup:
      factor = step < warmup_steps ? d(step) / std::max(1.0, d(warmup_steps)) : 1.0;
      break;
    case LrSchedule::kLinear:
      if (step < warmup_steps)
        factor = d(step) / d(std::max<int64_t>(1, warmup_steps));
      else
        factor = std::max(
            0.0, d(total_steps - step) / d(std::max<int64_t>(1, total_steps - warmup_steps)));
      break;
    case LrSchedule::kCosine:
      if (step < warmup_steps) {
        factor = d(step) / d(std::max<int64_t>(1, warmup_steps));
      } else {
        const double num_cycles = 0.5;
        const double progress =
            d(step - warmup_steps) / d(std::max<int64_t>(1, total_steps - warmup_steps));
        factor = std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * num_cycles * 2.0 * progress)));
      }
      break;
  }
  return base_lr * factor;
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

// ------------------------------------------------------------------------------- clipping

double clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  if (!(max_norm > 0.0))
    throw InvalidArgument("max_grad_norm must be > 0, got " + std::to_string(max_norm));
  return torch::nn::utils::clip_grad_norm_(parameters, max_norm, 2.0);
}

double clip_grad_norm(torch::nn::Module& module, double max_norm) {
  return clip_grad_norm(module.parameters(/*recurse=*/true), max_norm);
}

// ------------------------------------------------------------------------------- EMA

EmaModel::EmaModel(const torch::nn::Module& module, EmaOptions options) : options_(options) {
  if (!(options.decay >= 0.0 && options.decay <= 1.0))
    throw InvalidArgument("EMA decay must be in [0, 1], got " + std::to_string(options.decay));
  if (options.update_after_step < 0)
    throw InvalidArgument("EMA update_after_step must be >= 0, got " +
                          std::to_string(options.update_after_step));
  torch::NoGradGuard no_grad;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    shadow_.emplace(item.key(), item.value().detach().clone());
}

double EmaModel::get_decay(int64_t optimization_step) const {
  const int64_t step = std::max<int64_t>(0, optimization_step - options_.update_after_step - 1);
  if (step <= 0) return 0.0;
  const double s = static_cast<double>(step);
  double value = options_.use_ema_warmup
                     ? 1.0 - std::pow(1.0 + s / options_.inv_gamma, -options_.power)
                     : (1.0 + s) / (10.0 + s);
  value = std::min(value, options_.decay);
  return std::max(value, options_.min_decay);
}

std::map<std::string, torch::Tensor> EmaModel::parameters_of(
    const torch::nn::Module& module) const {
  std::map<std::string, torch::Tensor> params;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    params.emplace(item.key(), item.value());
  for (const auto& [name, s] : shadow_) {
    auto it = params.find(name);
    if (it == params.end())
      throw InvalidArgument("EMA: the module has no parameter '" + name + "'");
    if (it->second.sizes() != s.sizes())
      throw InvalidArgument("EMA: parameter '" + name + "' has shape " + shape_str(it->second) +
                            ", the average " + shape_str(s));
  }
  if (params.size() != shadow_.size())
    for (const auto& [name, p] : params)
      if (!shadow_.count(name))
        throw InvalidArgument("EMA: the module's parameter '" + name + "' is not tracked");
  return params;
}

void EmaModel::step(const torch::nn::Module& module) {
  const auto params = parameters_of(module);
  ++optimization_step_;
  const double decay = get_decay(optimization_step_);
  cur_decay_value_ = decay;
  const double one_minus_decay = 1.0 - decay;
  torch::NoGradGuard no_grad;
  for (auto& [name, s] : shadow_) {
    const auto& p = params.at(name);
    if (p.requires_grad())
      s.sub_((s - p.to(s.options())) * one_minus_decay);
    else
      s.copy_(p);
  }
}

void EmaModel::copy_to(torch::nn::Module& module) const {
  const auto params = parameters_of(module);
  torch::NoGradGuard no_grad;
  for (const auto& [name, s] : shadow_) params.at(name).copy_(s);
}

void EmaModel::store(const torch::nn::Module& module) {
  const auto params = parameters_of(module);
  torch::NoGradGuard no_grad;
  stored_.clear();
  for (const auto& [name, p] : params) stored_.emplace(name, p.detach().clone());
}

void EmaModel::restore(torch::nn::Module& module) {
  if (stored_.empty()) throw InvalidArgument("EMA: restore() without a previous store()");
  const auto params = parameters_of(module);
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : stored_) params.at(name).copy_(t);
  stored_.clear();
}

void EmaModel::load_state(const std::map<std::string, torch::Tensor>& shadow_params,
                          int64_t optimization_step) {
  if (optimization_step < 0)
    throw CheckpointError("EMA state: optimization_step must be >= 0, got " +
                          std::to_string(optimization_step));
  for (const auto& [name, s] : shadow_) {
    auto it = shadow_params.find(name);
    if (it == shadow_params.end()) throw CheckpointError("EMA state: missing key '" + name + "'");
    if (it->second.sizes() != s.sizes())
      throw CheckpointError("EMA state: '" + name + "' has shape " + shape_str(it->second) +
                            ", expected " + shape_str(s));
  }
  for (const auto& [name, t] : shadow_params)
    if (!shadow_.count(name)) throw CheckpointError("EMA state: unexpected key '" + name + "'");
  torch::NoGradGuard no_grad;
  for (auto& [name, s] : shadow_) s.copy_(shadow_params.at(name));
  optimization_step_ = optimization_step;
}

}  // namespace amused::training
