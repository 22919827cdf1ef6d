#include "server/request.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "amused/amused.h"

namespace amused::server {
namespace {
using json = nlohmann::json;

double default_strength(GenerationMode mode) { return mode == GenerationMode::Inpaint ? 1.0 : 0.5; }
}  // namespace

const char* to_string(GenerationMode mode) {
  switch (mode) {
    case GenerationMode::ImageToImage: return "image-to-image";
    case GenerationMode::Inpaint: return "inpaint";
    case GenerationMode::TextToImage: break;
  }
  return "text-to-image";
}

std::string validate_request(const GenerationRequest& r, std::string* param) {
  auto fail = [&](const char* name, std::string message) {
    if (param) *param = name;
    return message;
  };
  if (r.prompts.empty()) return fail("prompt", "at least one prompt is required");
  if (r.negative_prompts.size() > 1 && r.negative_prompts.size() != r.prompts.size())
    return fail("negative_prompt", "got " + std::to_string(r.negative_prompts.size()) + " negative prompts for " +
                                       std::to_string(r.prompts.size()) +
                                       " prompts (give one for all, or one per prompt)");
  if (r.n < 1) return fail("n", "at least one image per prompt");
  if (r.steps < 1) return fail("steps", "'steps' must be at least 1, got " + std::to_string(r.steps));
  if (!std::isfinite(r.guidance_scale)) return fail("guidance_scale", "'guidance_scale' must be a finite number");
  if (!std::isfinite(r.aesthetic_score)) return fail("aesthetic_score", "'aesthetic_score' must be a finite number");
  if (r.temperature.size() != 1 && r.temperature.size() != 2)
    return fail("temperature", "'temperature' must be one value T or a pair (start, end)");
  for (double t : r.temperature)
    if (!std::isfinite(t)) return fail("temperature", "'temperature' values must be finite");
  const bool edit = r.mode != GenerationMode::TextToImage;
  if (!edit && r.strength) return fail("strength", "'strength' applies to image edits (give an input image)");
  if (r.strength && !(*r.strength >= 0.0 && *r.strength <= 1.0))
    return fail("strength", "'strength' must be in [0, 1], got " + json(*r.strength).dump());
  if (edit && r.image.pixels.empty()) return fail("image", "image-to-image and inpainting need an input image");
  if (r.mode == GenerationMode::Inpaint && r.mask.pixels.empty()) return fail("mask", "inpainting needs a mask");
  if (r.mode != GenerationMode::Inpaint && !r.mask.pixels.empty())
    return fail("mask", "a mask applies to inpainting only");
  return "";
}

GenerationCall to_params(const GenerationRequest& r) {
  GenerationCall call;
  GenerationParams& p = call.common(r.mode);
  p.prompts = r.prompts;
  p.negative_prompts = r.negative_prompts;
  p.num_inference_steps = r.steps;
  p.guidance_scale = r.guidance_scale;
  p.num_images_per_prompt = r.n;
  p.aesthetic_score = r.aesthetic_score;
  p.crop_coord = r.crop_coord;
  p.temperature = r.temperature.size() == 1 ? Temperature::single(r.temperature[0])
                                            : Temperature::pair(r.temperature.at(0), r.temperature.at(1));
  p.masking_schedule = r.masking_schedule;
  p.seed = r.seed;
  p.lora_scales = r.loras;
  p.step_details = r.step_details;
  p.attention_maps = r.attention_maps;
  if (r.mode == GenerationMode::Inpaint) {
    call.inpaint.image = r.image;
    call.inpaint.mask = r.mask;
    call.inpaint.width = r.width;
    call.inpaint.height = r.height;
    call.inpaint.strength = r.strength.value_or(default_strength(r.mode));
  } else if (r.mode == GenerationMode::ImageToImage) {
    call.img2img.image = r.image;
    call.img2img.width = r.width;
    call.img2img.height = r.height;
    call.img2img.strength = r.strength.value_or(default_strength(r.mode));
  } else {
    call.t2i.width = r.width;
    call.t2i.height = r.height;
  }
  return call;
}

GenerationResult run_request(Pipeline& pipeline, const GenerationRequest& r, const ProgressCallback& progress) {
  GenerationCall call = to_params(r);
  call.common(r.mode).progress = progress;
  if (r.mode == GenerationMode::TextToImage) return pipeline.text_to_image(call.t2i);
  if (r.mode == GenerationMode::ImageToImage) return pipeline.image_to_image(call.img2img);
  return pipeline.inpaint(call.inpaint);
}

int steps_to_run(const GenerationRequest& r) {
  if (r.mode == GenerationMode::TextToImage) return r.steps;
  const double strength = r.strength.value_or(default_strength(r.mode));
  return static_cast<int>(static_cast<double>(r.steps) * strength);  // the pipelines' int(steps * strength)
}

TextChunks png_metadata(const GenerationRequest& r, const GenerationResult& result, size_t index,
                        const std::string& model, MaskingSchedule default_masking_schedule, DType dtype) {
  std::ostringstream temp_s;
  for (size_t t = 0; t < r.temperature.size(); ++t) temp_s << (t ? "," : "") << r.temperature[t];
  const Image& im = result.images.at(index);
  const size_t np = std::max<size_t>(1, r.prompts.size());
  const size_t pi = index % np;  // images per prompt are tiled: [p0, p1, p0, p1]
  const std::string prompt = r.prompts.empty() ? "" : r.prompts[pi];
  const std::string negative = r.negative_prompts.empty()        ? ""
                               : r.negative_prompts.size() == 1 ? r.negative_prompts[0]
                                                                : r.negative_prompts.at(pi);
  TextChunks text = {
      {"prompt", prompt},
      {"negative_prompt", negative},
      {"seed", std::to_string(result.seed)},
      {"steps", std::to_string(r.steps)},
      {"guidance_scale", json(r.guidance_scale).dump()},
      {"model", model},
      {"width", std::to_string(im.width)},
      {"height", std::to_string(im.height)},
      {"aesthetic_score", json(r.aesthetic_score).dump()},
      {"crop_coord", std::to_string(r.crop_coord.first) + "," + std::to_string(r.crop_coord.second)},
      {"temperature", temp_s.str()},
      {"masking_schedule", to_string(r.masking_schedule == MaskingSchedule::FromConfig ? default_masking_schedule
                                                                                        : r.masking_schedule)},
      {"dtype", to_string(dtype)},
      {"mode", to_string(r.mode)},
      {"image_index", std::to_string(index)},
      {"software", std::string("amused.cpp ") + version()},
  };
  if (r.mode != GenerationMode::TextToImage) {
    text.emplace_back("init_image", r.image_name);
    text.emplace_back("strength", json(r.strength.value_or(default_strength(r.mode))).dump());
  }
  if (r.mode == GenerationMode::Inpaint) text.emplace_back("mask", r.mask_name);
  return text;
}

}  // namespace amused::server
