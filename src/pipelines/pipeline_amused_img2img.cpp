// Image-to-image and the editing path it shares with inpainting.
// Ref: diffusers/pipelines/deprecated/amused/pipeline_amused_img2img.py,
//      pipeline_amused_inpaint.py
#include <cmath>

#include "amused/image_io.h"
#include "core/log.h"
#include "pipelines/pipeline_amused.h"

#include "nn/execution.h"

namespace amused {

namespace {
// Token mask [1, h, w] (bool) from a grey or RGB mask image: /255 -> nearest resize straight to the
// token grid (torch.nn.functional.interpolate, as the reference does for mask tensors) -> >= 0.5.
torch::Tensor mask_to_grid(const Image& mask, const Image& image, int64_t h, int64_t w, torch::Device device) {
  if (mask.width <= 0 || mask.height <= 0)
    throw InvalidArgument("mask image is empty");
  // Same aspect ratio, up to one pixel of rounding.
  const int64_t cross = std::llabs(static_cast<int64_t>(mask.width) * image.height -
                                   static_cast<int64_t>(mask.height) * image.width);
  if (cross > std::max(image.width, image.height))
    throw InvalidArgument("mask is " + std::to_string(mask.width) + "x" + std::to_string(mask.height) +
                          " but the image is " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                          ": the mask must have the image's aspect ratio");
  Image grey = to_grey(mask);
  auto m = torch::from_blob(grey.pixels.data(), {1, 1, grey.height, grey.width}, torch::kUInt8)
               .to(torch::kFloat32)
               .div(255.0);  // [1, 1, H, W]
  namespace F = torch::nn::functional;
  m = F::interpolate(m, F::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kNearest));
  auto bits = m.ge(0.5).reshape({1, h, w});  // [1, 1, h, w] -> [1, h, w]
  if (!bits.any().item<bool>())
    throw InvalidArgument("the mask is all black at the token resolution: nothing to inpaint (white = regenerate)");
  return bits.to(device);
}
}  // namespace

GenerationResult Pipeline::Impl::edit(const GenerationParams& params, const EditInput& in) {
  const Image* mask = in.mask;
  const auto t0 = Clock::now();
  validate(params);
  LoraScaleScope lora_scales(*this, params.lora_scales);
  if (!(in.strength >= 0.0 && in.strength <= 1.0))
    throw InvalidArgument("strength must be in [0, 1], got " + std::to_string(in.strength));
  if (mask != nullptr && static_cast<int>(static_cast<double>(params.num_inference_steps) * in.strength) == 0)
    throw InvalidArgument("strength " + std::to_string(in.strength) + " x " +
                          std::to_string(params.num_inference_steps) +
                          " steps runs no step (int(steps * strength) = 0), which would leave the masked part "
                          "unfilled: raise the strength or the steps");
  const Image image = prepare_input_image(in.image, in.width, in.height, params);
  const int64_t scale = vq_scale_factor;
  const int64_t h = image.height / scale, w = image.width / scale;
  const int64_t np = static_cast<int64_t>(params.prompts.size());
  const uint64_t seed = params.seed.value_or(random_seed());

  nn::ExecutionScope inference(nn::ExecutionMode::kInference);  // fast paths, no autograd
  Timings timings;
  DenoiseRequest req = prepare(params, image.width, image.height, timings);
  const int n = params.num_inference_steps;
  // int(N * strength) steps run, starting at index N - that.
  const int steps_to_run = static_cast<int>(static_cast<double>(n) * in.strength);
  req.start_step = n - steps_to_run;

  at::Generator generator = make_cpu_generator(seed);
  auto tokens = encode_image_tokens(image);  // [1, h, w]
  if (mask == nullptr) {
    // add_noise at timesteps[start - 1]; Python's timesteps[-1] (= 0) when start is 0.
    AmusedSchedulerConfig cfg = scheduler_config;
    if (params.masking_schedule != MaskingSchedule::FromConfig) cfg.masking_schedule = to_string(params.masking_schedule);
    AmusedScheduler scheduler(cfg);
    scheduler.set_timesteps(n, to_scheduler_temperature(params.temperature));
    const int64_t t_noise = scheduler.timesteps[req.start_step > 0 ? req.start_step - 1 : n - 1].item<int64_t>();
    tokens = scheduler.add_noise(tokens, t_noise, generator);
  } else {
    // The reference's inpaint pipeline switches its scheduler to the linear schedule; we do it for
    // this call only (unless the caller chose a schedule).
    if (params.masking_schedule == MaskingSchedule::FromConfig) req.masking_schedule = MaskingSchedule::Linear;
    auto bits = mask_to_grid(*mask, in.image, h, w, device);
    tokens = tokens.masked_fill(bits, scheduler_config.mask_token_id);
    // float32, as the reference's mask.sum() / latents.numel()
    const float ratio = static_cast<float>(bits.sum().item<int64_t>()) / static_cast<float>(tokens.numel());
    req.starting_mask_ratio = ratio;
  }
  // One image for every prompt, tiled like the prompts: [p0, p1, p0, p1].
  auto latents = tokens.repeat({np * params.num_images_per_prompt, 1, 1});  // [B, h, w]
  latents = denoise(latents, req, generator, timings);
  auto images = decode(latents, timings);
  timings.total_s = seconds_since(t0);
  return make_result(latents, images, seed, std::move(timings));
}

GenerationResult Pipeline::image_to_image(const ImageToImageParams& params) {
  return impl_->edit(params, {params.image, params.strength, params.width, params.height, nullptr});
}

}  // namespace amused
