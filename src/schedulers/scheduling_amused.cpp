// AmusedScheduler. Ref: diffusers src/diffusers/schedulers/scheduling_amused.py
#include "schedulers/scheduling_amused.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "amused/error.h"
#include "core/config.h"
#include "core/threads.h"

namespace amused {
using nlohmann::json;

namespace {

bool is_known_schedule(const std::string& s) { return s == "cosine" || s == "linear"; }

std::string shape_str(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// generator=None in the reference means the global CPU generator.
at::Generator resolve_generator(const at::Generator& generator) {
  return generator.defined() ? generator : at::detail::getDefaultCPUGenerator();
}

// torch.finfo(dtype).max
double finfo_max(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat16:
      return static_cast<double>(std::numeric_limits<c10::Half>::max());
    case torch::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::max());
    case torch::kFloat32:
      return static_cast<double>(std::numeric_limits<float>::max());
    case torch::kFloat64:
      return std::numeric_limits<double>::max();
    default:
      throw InvalidArgument(
          std::string("AmusedScheduler.step: expected floating-point logits, got ") +
          c10::toString(dtype));
  }
}

}  // namespace

// ------------------------------------------------------------------------------------ config

AmusedSchedulerConfig AmusedSchedulerConfig::from_json(const json& j, const std::string& source) {
  AmusedSchedulerConfig c;
  ConfigReader r(j, source, "AmusedScheduler");
  if (!j.contains("mask_token_id"))
    throw ConfigError(source +
                      ": key 'mask_token_id' is missing: expected the mask token id "
                      "(the transformer's vocab_size - 1, 8255 for amused-256/512), got nothing");
  r.field("mask_token_id", c.mask_token_id);
  r.field("masking_schedule", c.masking_schedule);
  config_check(is_known_schedule(c.masking_schedule), source, "masking_schedule",
               "expected \"cosine\" or \"linear\", got \"" + c.masking_schedule + "\"");
  r.finish();
  return c;
}

json AmusedSchedulerConfig::to_json() const {
  // _diffusers_version: the reference release whose config layout this mirrors.
  return json{{"_class_name", "AmusedScheduler"},
              {"_diffusers_version", "0.27.2"},
              {"mask_token_id", mask_token_id},
              {"masking_schedule", masking_schedule}};
}

at::Generator make_cpu_generator(uint64_t seed) {
  // Same state as torch.Generator().manual_seed(seed): a fresh mt19937 seeded with `seed` and no
  // cached normal samples.
  return at::detail::createCPUGenerator(seed);
}

// ------------------------------------------------------------------------------- temperature

TemperatureSchedule TemperatureSchedule::pair(double start, double end) {
  TemperatureSchedule t;
  t.kind_ = Kind::kPair;
  t.values_ = {start, end};
  return t;
}

TemperatureSchedule TemperatureSchedule::scalar(double value) {
  TemperatureSchedule t;
  t.kind_ = Kind::kScalar;
  t.values_ = {value};
  return t;
}

TemperatureSchedule TemperatureSchedule::list(std::vector<double> values) {
  if (values.size() == 2) return pair(values[0], values[1]);
  TemperatureSchedule t;
  t.kind_ = Kind::kList;
  t.values_ = std::move(values);
  return t;
}

TemperatureSchedule TemperatureSchedule::from_json(const json& j) {
  if (j.is_number()) return scalar(j.get<double>());
  if (j.is_array()) {
    std::vector<double> v;
    for (const auto& e : j) {
      if (!e.is_number())
        throw InvalidArgument("temperature: expected a number or a list of numbers, got " +
                              j.dump());
      v.push_back(e.get<double>());
    }
    return list(std::move(v));
  }
  throw InvalidArgument("temperature: expected a number or a list of numbers, got " + j.dump());
}

std::string TemperatureSchedule::to_string() const {
  std::ostringstream os;
  if (kind_ == Kind::kScalar) {
    os << values_[0];
    return os.str();
  }
  os << (kind_ == Kind::kPair ? "(" : "[");
  for (size_t i = 0; i < values_.size(); ++i) os << (i ? ", " : "") << values_[i];
  os << (kind_ == Kind::kPair ? ")" : "]");
  return os.str();
}

torch::Tensor TemperatureSchedule::resolve(int64_t n, torch::Device device) const {
  if (n < 1) throw InvalidArgument("num_inference_steps: expected >= 1, got " + std::to_string(n));
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  switch (kind_) {
    case Kind::kPair:
      return torch::linspace(values_[0], values_[1], n, opts);
    case Kind::kScalar:
      // The reference's scalar form decays to 0.01, not 0.
      return torch::linspace(values_[0], 0.01, n, opts);
    case Kind::kList:
      if (static_cast<int64_t>(values_.size()) != n)
        throw InvalidArgument("temperature: expected 2 values (start, end) or one per step (" +
                              std::to_string(n) + "), got " + std::to_string(values_.size()) +
                              " values " + to_string());
      return torch::tensor(values_, torch::kFloat64).to(opts);
  }
  throw InvalidArgument("temperature: unknown form");
}

// ------------------------------------------------------------------------------ step pieces

torch::Tensor draw_exponential(at::IntArrayRef sizes, at::Generator& generator,
                               torch::ScalarType dtype) {
  at::Generator gen = resolve_generator(generator);
  if (!gen.device().is_cpu())
    throw InvalidArgument("draw_exponential: expected a CPU generator, got one on " +
                          gen.device().str());
  // torch.rand(float64) draws one 64-bit number per element in row-major order, the same draws as
  // torch 1.13's CPU exponential_ (uniform_real_distribution<double>). They are turned into the
  // exponential draws in place.
  torch::Tensor q = torch::rand(sizes, gen, torch::TensorOptions().dtype(torch::kFloat64));
  double* qp = q.data_ptr<double>();
  amused::parallel_for(0, q.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    // -1/lambda * log(1 - u) in double with lambda = 1 (libm log), torch 1.13's transformation.
    for (int64_t i = begin; i < end; ++i) qp[i] = -1.0 * std::log(1.0 - qp[i]);
  });
  // The kernel's static_cast<scalar_t>: a plain rounding conversion.
  return dtype == torch::kFloat64 ? q : q.to(dtype);
}

torch::Tensor sample_multinomial(const torch::Tensor& probs, at::Generator& generator) {
  if (probs.dim() != 2 || probs.scalar_type() != torch::kFloat32 || !probs.device().is_cpu())
    throw InvalidArgument(
        "sample_multinomial: expected [N, K] float32 probabilities on the CPU, got " +
        shape_str(probs) + " " + c10::toString(probs.scalar_type()) + " on " +
        probs.device().str());
  // multinomial(probs, 1) without replacement is argmax(p / q), q ~ Exp(1) (Gumbel-max trick).
  torch::Tensor q = draw_exponential(probs.sizes(), generator);
  at::div_out(q, probs, q);  // probs / q (in float64), written over q: one [N, K] buffer, not two
  return torch::argmax(q, /*dim=*/-1, /*keepdim=*/true);
}

torch::Tensor gumbel_noise(const torch::Tensor& like, at::Generator& generator) {
  at::Generator gen = resolve_generator(generator);
  const torch::Tensor noise = torch::zeros(like.sizes(), like.options().device(gen.device()))
                                  .uniform_(0, 1, gen)
                                  .to(like.device());
  return -torch::log((-torch::log(noise.clamp(1e-20))).clamp(1e-20));
}

torch::Tensor mask_by_random_topk(const torch::Tensor& mask_len, const torch::Tensor& probs,
                                  const torch::Tensor& temperature, const torch::Tensor& gumbel) {
  const torch::Tensor confidence = torch::log(probs.clamp(1e-20)) + temperature * gumbel;
  const torch::Tensor sorted_confidence = std::get<0>(torch::sort(confidence, /*dim=*/-1));
  const torch::Tensor cut_off =
      torch::gather(sorted_confidence, 1, mask_len.to(confidence.device(), torch::kLong));
  return confidence < cut_off;
}

// ------------------------------------------------------------------------------- scheduler

AmusedScheduler::AmusedScheduler(AmusedSchedulerConfig config) : config_(std::move(config)) {
  if (!is_known_schedule(config_.masking_schedule))
    throw InvalidArgument(
        "AmusedScheduler: masking_schedule: expected \"cosine\" or \"linear\", got \"" +
        config_.masking_schedule + "\"");
}

AmusedScheduler AmusedScheduler::with_masking_schedule(const std::string& masking_schedule) const {
  AmusedSchedulerConfig c = config_;
  c.masking_schedule = masking_schedule;
  AmusedScheduler s(std::move(c));
  s.timesteps = timesteps;
  s.temperatures = temperatures;
  return s;
}

void AmusedScheduler::set_timesteps(int64_t num_inference_steps, const TemperatureSchedule& temperature,
                                    torch::Device device) {
  if (num_inference_steps < 1)
    throw InvalidArgument("num_inference_steps: expected >= 1, got " +
                          std::to_string(num_inference_steps));
  temperatures = temperature.resolve(num_inference_steps, device);
  timesteps =
      torch::arange(num_inference_steps, torch::TensorOptions().dtype(torch::kLong).device(device))
          .flip(0);
}

torch::Tensor AmusedScheduler::step_index(int64_t timestep) const {
  if (!timesteps.defined())
    throw InvalidArgument("AmusedScheduler: set_timesteps must be called before step/add_noise");
  // The reference's (timesteps == timestep).nonzero(): a [1, 1] int64 tensor.
  torch::Tensor step_idx = (timesteps == timestep).nonzero();
  if (step_idx.size(0) != 1)
    throw InvalidArgument("AmusedScheduler: timestep " + std::to_string(timestep) +
                          " is not in the schedule (expected 0.." +
                          std::to_string(timesteps.size(0) - 1) + ")");
  return step_idx;
}

torch::Tensor AmusedScheduler::mask_ratio(int64_t timestep, double starting_mask_ratio) const {
  const torch::Tensor step_idx = step_index(timestep);
  // int64 / int is a true division in float32, as in the reference.
  const torch::Tensor ratio = (step_idx + 1) / timesteps.size(0);
  torch::Tensor mask_ratio;
  if (config_.masking_schedule == "cosine") {
    mask_ratio = torch::cos(ratio * M_PI / 2);
  } else {
    mask_ratio = torch::rsub(ratio, 1);
  }
  return mask_ratio * starting_mask_ratio;
}

torch::Tensor AmusedScheduler::mask_len(int64_t timestep, const torch::Tensor& unknown_map,
                                        double starting_mask_ratio) const {
  if (unknown_map.dim() != 2)
    throw InvalidArgument("AmusedScheduler.mask_len: expected a [B, L] unknown map, got " +
                          shape_str(unknown_map));
  const int64_t seq_len = unknown_map.size(1);
  // Float32 like the reference: floor(L * ratio), then min/max against int64 counts (promoted).
  torch::Tensor mask_len =
      (mask_ratio(timestep, starting_mask_ratio) * seq_len).floor().to(unknown_map.device());
  // do not mask more than the amount previously masked
  mask_len = torch::minimum(unknown_map.sum(/*dim=*/-1, /*keepdim=*/true) - 1, mask_len);
  // mask at least one
  mask_len = torch::maximum(
      torch::tensor({int64_t{1}},
                    torch::TensorOptions().dtype(torch::kLong).device(mask_len.device())),
      mask_len);
  return mask_len.to(torch::kLong);
}

template <typename Sampler, typename Noise>
AmusedScheduler::StepOutput AmusedScheduler::step_impl(const torch::Tensor& model_output_in,
                                                       int64_t timestep,
                                                       const torch::Tensor& sample_in,
                                                       double starting_mask_ratio,
                                                       Sampler&& sampler, Noise&& noise) const {
  const bool two_dim_input = sample_in.dim() == 3 && model_output_in.dim() == 4;
  torch::Tensor model_output = model_output_in;
  torch::Tensor sample = sample_in;
  int64_t batch_size = 0, height = 0, width = 0;
  if (two_dim_input) {
    batch_size = model_output.size(0);
    const int64_t codebook_size = model_output.size(1);
    height = model_output.size(2);
    width = model_output.size(3);
    if (sample.size(0) != batch_size || sample.size(1) != height || sample.size(2) != width)
      throw InvalidArgument("AmusedScheduler.step: sample " + shape_str(sample_in) +
                            " does not match model_output " + shape_str(model_output_in) +
                            " (expected [B, h, w] with [B, K, h, w])");
    sample = sample.reshape({batch_size, height * width});  // [B, h, w] -> [B, L]
    model_output = model_output.reshape({batch_size, codebook_size, height * width})
                       .permute({0, 2, 1});  // [B, K, h, w] -> [B, K, L] -> [B, L, K]
  } else if (sample.dim() != 2 || model_output.dim() != 3 ||
             sample.size(0) != model_output.size(0) || sample.size(1) != model_output.size(1)) {
    throw InvalidArgument(
        "AmusedScheduler.step: expected model_output [B, K, h, w] with sample "
        "[B, h, w], or [B, L, K] with [B, L]; got " +
        shape_str(model_output_in) + " and " + shape_str(sample_in));
  }
  if (sample.scalar_type() != torch::kLong)
    throw InvalidArgument(std::string("AmusedScheduler.step: expected int64 token ids, got ") +
                          c10::toString(sample.scalar_type()));
  if (!at::isFloatingType(model_output.scalar_type()))
    throw InvalidArgument(
        std::string("AmusedScheduler.step: expected floating-point logits, got ") +
        c10::toString(model_output.scalar_type()));

  const torch::Tensor unknown_map = sample == config_.mask_token_id;
  const int64_t codebook_size = model_output.size(-1);
  if (sample.numel() > 0) {
    const torch::Tensor known = sample.masked_fill(unknown_map, 0);
    const int64_t lo = known.min().item<int64_t>(), hi = known.max().item<int64_t>();
    if (lo < 0 || hi >= codebook_size)
      throw InvalidArgument("AmusedScheduler.step: sample holds token id " +
                            std::to_string(lo < 0 ? lo : hi) + ", expected ids in [0, " +
                            std::to_string(codebook_size) + ") or the mask token " +
                            std::to_string(config_.mask_token_id) +
                            " (does the scheduler config match the transformer?)");
  }
  const torch::Tensor probs = model_output.softmax(-1);  // in the logits' dtype

  torch::Tensor pred_original_sample = sampler(probs);  // [B, L] int64 on probs' device
  pred_original_sample = torch::where(unknown_map, pred_original_sample, sample);

  StepOutput out;
  torch::Tensor prev_sample;
  if (timestep == 0) {
    step_index(timestep);  // same validation as the other steps
    prev_sample = pred_original_sample;
  } else {
    const torch::Tensor step_idx = step_index(timestep);
    const torch::Tensor mask_len = this->mask_len(timestep, unknown_map, starting_mask_ratio);

    torch::Tensor selected_probs = torch::gather(probs, -1, pred_original_sample.unsqueeze(-1))
                                       .select(-1, 0);  // [B, L, 1] -> [B, L]
    // Ignores the tokens given in the input by overwriting their confidence with finfo.max of the
    // probabilities' dtype (65504 in fp16: see the reference doc's fp16 note).
    selected_probs =
        torch::where(unknown_map, selected_probs,
                     torch::full_like(selected_probs, finfo_max(selected_probs.scalar_type())));

    // [1, 1] float32: promotes the confidence to float32 even for fp16 logits, as upstream.
    const torch::Tensor temperature = temperatures.index({step_idx}).to(probs.device());
    const torch::Tensor gumbel = noise(selected_probs);
    const torch::Tensor masking =
        mask_by_random_topk(mask_len, selected_probs, temperature, gumbel);

    // Masks tokens with lower confidence.
    prev_sample = pred_original_sample.masked_fill(masking, config_.mask_token_id);
    out.mask_len = mask_len;
    out.gumbel_noise = gumbel;
    out.masking = masking;
  }

  if (two_dim_input) {
    prev_sample = prev_sample.reshape({batch_size, height, width});  // [B, L] -> [B, h, w]
    pred_original_sample = pred_original_sample.reshape({batch_size, height, width});
  }
  out.prev_sample = prev_sample;
  out.pred_original_sample = pred_original_sample;
  return out;
}

AmusedScheduler::StepOutput AmusedScheduler::step(const torch::Tensor& model_output,
                                                  int64_t timestep, const torch::Tensor& sample,
                                                  at::Generator& generator,
                                                  double starting_mask_ratio) const {
  at::Generator gen = resolve_generator(generator);
  auto sampler = [&](const torch::Tensor& probs) {
    // Sampling happens on the generator's device; on the CPU in float32 (as upstream, whose CPU
    // multinomial has no half kernel).
    torch::Tensor probs_ = probs.to(gen.device());
    if (probs_.device().is_cpu() && probs_.scalar_type() != torch::kFloat32)
      probs_ = probs_.to(torch::kFloat32);
    probs_ = probs_.reshape({-1, probs.size(-1)});  // [B, L, K] -> [B*L, K]
    const torch::Tensor tokens = probs_.device().is_cpu()
                                     ? sample_multinomial(probs_, gen)
                                     : torch::multinomial(probs_, 1, /*replacement=*/false, gen);
    return tokens.to(probs.device())
        .select(1, 0)
        .view({probs.size(0), probs.size(1)});  // [B*L, 1] -> [B, L]
  };
  auto noise = [&](const torch::Tensor& like) { return gumbel_noise(like, gen); };
  return step_impl(model_output, timestep, sample, starting_mask_ratio, sampler, noise);
}

AmusedScheduler::StepOutput AmusedScheduler::step_with_noise(const torch::Tensor& model_output,
                                                             int64_t timestep,
                                                             const torch::Tensor& sample,
                                                             const torch::Tensor& sampled_tokens,
                                                             const torch::Tensor& gumbel,
                                                             double starting_mask_ratio) const {
  auto sampler = [&](const torch::Tensor& probs) {
    if (sampled_tokens.numel() != probs.size(0) * probs.size(1))
      throw InvalidArgument("AmusedScheduler.step_with_noise: sampled_tokens " +
                            shape_str(sampled_tokens) + " does not fit the sample (expected " +
                            std::to_string(probs.size(0) * probs.size(1)) + " tokens)");
    const torch::Tensor tokens = sampled_tokens
                                     .reshape({probs.size(0), probs.size(1)})  // -> [B, L]
                                     .to(probs.device(), torch::kLong);
    if (tokens.numel() > 0 &&
        (tokens.min().item<int64_t>() < 0 || tokens.max().item<int64_t>() >= probs.size(-1)))
      throw InvalidArgument("AmusedScheduler.step_with_noise: expected sampled token ids in [0, " +
                            std::to_string(probs.size(-1)) + "), got values in [" +
                            std::to_string(tokens.min().item<int64_t>()) + ", " +
                            std::to_string(tokens.max().item<int64_t>()) + "]");
    return tokens;
  };
  auto noise = [&](const torch::Tensor& like) {
    if (!gumbel.defined() || gumbel.sizes() != like.sizes())
      throw InvalidArgument("AmusedScheduler.step_with_noise: expected gumbel noise " +
                            shape_str(like) + ", got " +
                            (gumbel.defined() ? shape_str(gumbel) : std::string("none")));
    return gumbel.to(like.device(), like.scalar_type());
  };
  return step_impl(model_output, timestep, sample, starting_mask_ratio, sampler, noise);
}

torch::Tensor AmusedScheduler::add_noise(const torch::Tensor& sample, int64_t timestep,
                                         at::Generator& generator) const {
  at::Generator gen = resolve_generator(generator);
  const torch::Tensor mask_ratio = this->mask_ratio(timestep).to(sample.device());  // [1, 1]
  const torch::Tensor mask_indices =
      torch::rand(sample.sizes(), gen, torch::TensorOptions().device(gen.device()))
          .to(sample.device()) < mask_ratio;
  return sample.masked_fill(mask_indices, config_.mask_token_id);
}

}  // namespace amused
