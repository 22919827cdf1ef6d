// AmusedScheduler: the masked-token sampler of aMUSEd (timesteps, temperatures, one denoising step,
// img2img noising), reproducing the reference's random draws bit for bit on a CPU generator.
//
//   AmusedScheduler s(AmusedSchedulerConfig::from_json(json, path));
//   s.set_timesteps(12);                                   // temperature (2, 0)
//   at::Generator g = make_cpu_generator(0);               // = torch.Generator().manual_seed(0)
//   for (int64_t i = 0; i < s.timesteps.size(0); ++i)
//     latents = s.step(logits, s.timesteps[i].item<int64_t>(), latents, g).prev_sample;
//
// Random numbers (CPU generator, in this order, as the reference):
//   step:      multinomial over the [B*L, K] probabilities (drawn as argmax(p / q), q = -log(1 -
//   u),
//              u = rand(float64), see sample_multinomial), then, unless timestep == 0, a [B, L]
//              uniform_ in the probabilities' dtype for the Gumbel noise;
//   add_noise: rand(sample.shape) in float32.
// The probabilities are moved to the generator's device (and to float32 on the CPU) for sampling;
// all other math stays on the logits' device and in their dtype, as in the reference.
//
// Ref: diffusers src/diffusers/schedulers/scheduling_amused.py (v0.27.2 .. v0.33.1)
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace amused {

struct AmusedSchedulerConfig {
  int64_t mask_token_id = 0;  // required in scheduler_config.json (no default upstream)
  std::string masking_schedule = "cosine";  // "cosine" | "linear"

  // `_class_name` must be "AmusedScheduler"; a missing mask_token_id or an unknown schedule is a
  // ConfigError naming `source`.
  static AmusedSchedulerConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
};

// torch.Generator().manual_seed(seed) on the CPU (mt19937). Works with LibTorch 1.13 and 2.x.
// Torch ops that take the generator lock its mutex themselves: never hold gen.mutex() around them
// (std::mutex is not recursive); only direct engine calls
// (gen.get<at::CPUGeneratorImpl>()->random()) need the lock.
at::Generator make_cpu_generator(uint64_t seed);

// The temperature argument of set_timesteps, in the forms the reference accepts.
class TemperatureSchedule {
 public:
  // (a, b) -> linspace(a, b, N): the reference's tuple/list form; default (2, 0).
  static TemperatureSchedule pair(double start, double end);
  // t -> linspace(t, 0.01, N): the reference's scalar form.
  static TemperatureSchedule scalar(double t);
  // A list: 2 values are a pair (as in the reference); any other length must equal N and gives
  // the per-step temperatures directly (an extension: the reference would only read the first
  // two). A wrong length is an InvalidArgument at set_timesteps.
  static TemperatureSchedule list(std::vector<double> values);
  // A JSON number (scalar) or array (list).
  static TemperatureSchedule from_json(const nlohmann::json& j);

  // The [N] float32 temperatures on `device`.
  torch::Tensor resolve(int64_t num_inference_steps, torch::Device device = torch::kCPU) const;
  std::string to_string() const;

 private:
  enum class Kind { kPair, kScalar, kList };
  Kind kind_ = Kind::kPair;
  std::vector<double> values_ = {2.0, 0.0};
};

// --- the step's pieces, public so pipelines and tests can feed recorded (teacher) data ---------

// q ~ Exp(1) exactly as torch 1.13's CPU exponential_ draws it: u = rand(sizes, gen, float64)
// (one 64-bit draw per element, row-major), q = float32(-log(1 - u)) with libm log in double.
// Used instead of exponential_ because some LibTorch 2.x builds draw that from MKL or ignore the
// generator. `generator` must be a CPU generator. `dtype`: the tensor's dtype (exponential_ on a
// float64 tensor keeps the double).
torch::Tensor draw_exponential(at::IntArrayRef sizes, at::Generator& generator,
                               torch::ScalarType dtype = torch::kFloat32);

// torch.multinomial(probs, 1, generator=g) with replacement=False, the way torch 1.13 computes it
// on the CPU: argmax(probs / q, -1, keepdim) with q = draw_exponential (fp32 division, first
// maximum wins). `probs`: [N, K] float32 on the CPU. Returns [N, 1] int64.
torch::Tensor sample_multinomial(const torch::Tensor& probs, at::Generator& generator);

// -log(clamp(-log(clamp(u, 1e-20)), 1e-20)) with u = uniform_(0, 1) drawn on the generator's device
// in like's dtype, then moved to like's device. Returns a tensor shaped like `like`.
torch::Tensor gumbel_noise(const torch::Tensor& like, at::Generator& generator);

// confidence = log(clamp(probs, 1e-20)) + temperature * gumbel; the cut-off is the
// mask_len-th (0-based) smallest confidence per row; returns confidence < cut_off ([B, L] bool).
// mask_len: [B, 1] (integral or float); probs, gumbel: [B, L]; temperature: broadcastable.
torch::Tensor mask_by_random_topk(const torch::Tensor& mask_len, const torch::Tensor& probs,
                                  const torch::Tensor& temperature, const torch::Tensor& gumbel);

class AmusedScheduler {
 public:
  explicit AmusedScheduler(AmusedSchedulerConfig config);

  // timesteps = [N-1, ..., 0] (int64), temperatures = TemperatureSchedule::resolve (float32), on `device`.
  // N < 1 or a list temperature of the wrong length is an InvalidArgument.
  void set_timesteps(int64_t num_inference_steps,
                     const TemperatureSchedule& temperature = TemperatureSchedule::pair(2.0, 0.0),
                     torch::Device device = torch::kCPU);

  torch::Tensor timesteps;     // [N] int64
  torch::Tensor temperatures;  // [N] float32

  struct StepOutput {
    torch::Tensor prev_sample;           // like `sample`
    torch::Tensor pred_original_sample;  // like `sample`
    // Intermediate values (undefined when timestep == 0), for debugging and teacher comparisons:
    torch::Tensor mask_len;      // [B, 1] int64: number of tokens re-masked per row
    torch::Tensor gumbel_noise;  // [B, L] in the logits' dtype
    torch::Tensor masking;       // [B, L] bool: positions set back to mask_token_id
  };

  // One denoising step. model_output: logits [B, K, h, w] with sample [B, h, w], or [B, L, K] with
  // sample [B, L] (int64 token ids, mask_token_id = unknown). `generator` may be undefined (the
  // default CPU generator is used, like generator=None). starting_mask_ratio scales the schedule
  // (inpainting: the masked fraction); it is applied in float32 like the reference's tensor math.
  StepOutput step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample,
                  at::Generator& generator, double starting_mask_ratio = 1.0) const;

  // The same step without random draws: `sampled_tokens` ([B, h, w] or [B, L]) stands in for the
  // multinomial result (a recorded pred_original_sample works, known positions are taken from
  // `sample` anyway) and `gumbel` ([B, L]) for the Gumbel noise (ignored, may be undefined, when
  // timestep == 0). Lets tests replay a reference trajectory from its teacher data.
  StepOutput step_with_noise(const torch::Tensor& model_output, int64_t timestep,
                             const torch::Tensor& sample, const torch::Tensor& sampled_tokens,
                             const torch::Tensor& gumbel, double starting_mask_ratio = 1.0) const;

  // img2img noising: every token is independently replaced by mask_token_id with probability
  // mask_ratio(timestep) (draw: rand(sample.shape) float32 on the generator's device).
  torch::Tensor add_noise(const torch::Tensor& sample, int64_t timestep,
                          at::Generator& generator) const;

  // Index of `timestep` in timesteps as the reference's [1, 1] int64 tensor (on the timesteps'
  // device); InvalidArgument when set_timesteps was not called or the timestep is not scheduled.
  torch::Tensor step_index(int64_t timestep) const;
  // [1, 1] float32: cos(ratio*pi/2) (cosine) or 1 - ratio (linear), ratio = (step_idx + 1) / N,
  // times starting_mask_ratio; computed with float32 tensors like the reference.
  torch::Tensor mask_ratio(int64_t timestep, double starting_mask_ratio = 1.0) const;
  // [B, 1] int64: clamp(min(#unknown - 1, floor(L * mask_ratio)), min 1) for unknown_map [B, L].
  torch::Tensor mask_len(int64_t timestep, const torch::Tensor& unknown_map,
                         double starting_mask_ratio = 1.0) const;

  // A copy (timesteps and temperatures included) using another masking schedule: the inpaint
  // pipeline uses "linear" without mutating a shared scheduler (the reference mutates it).
  AmusedScheduler with_masking_schedule(const std::string& masking_schedule) const;

  const AmusedSchedulerConfig& config() const { return config_; }

 private:
  template <typename Sampler, typename Noise>
  StepOutput step_impl(const torch::Tensor& model_output, int64_t timestep,
                       const torch::Tensor& sample, double starting_mask_ratio, Sampler&& sampler,
                       Noise&& noise) const;

  AmusedSchedulerConfig config_;
};

}  // namespace amused
