// One generation request for the CLI and the server: what `amused generate`'s flags and the images
// API's bodies both turn into, with one validation, one mapping onto the library's parameters, one
// PNG-metadata builder and one run function. The CLI (apps/cli/cmd_generate.cpp) and the server
// (apps/server) parse into it; nothing else maps a request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "amused/image_io.h"
#include "amused/pipeline.h"

namespace amused::server {

// What a request asks for; to_string gives the names the PNG metadata and the API's answers use.
enum class GenerationMode { TextToImage, ImageToImage, Inpaint };
// "text-to-image", "image-to-image", "inpaint".
const char* to_string(GenerationMode mode);

struct GenerationRequest {
  GenerationMode mode = GenerationMode::TextToImage;
  std::vector<std::string> prompts;
  // Empty: "" for every prompt; one: for every prompt; else one per prompt.
  std::vector<std::string> negative_prompts;
  int n = 1;  // images per prompt
  std::optional<int> width, height;  // absent = the model's default / the input's size
  int steps = 12;
  double guidance_scale = 10.0;
  std::optional<uint64_t> seed;
  std::vector<double> temperature{2.0, 0.0};  // one value or a (start, end) pair
  double aesthetic_score = 6.0;
  std::pair<int, int> crop_coord{0, 0};
  MaskingSchedule masking_schedule = MaskingSchedule::FromConfig;  // FromConfig: the model's
  std::map<std::string, double> loras;  // LoRA scales of this request by adapter name
  bool step_details = false;            // StepInfo::details for the progress callback
  bool attention_maps = false;          // StepDetails::attention too
  // Server-sent events instead of one JSON answer (OpenAI's `stream`), with up to 3 partial
  // images (`partial_images`): previews of the prediction at evenly spaced steps.
  bool stream = false;
  int partial_images = 0;
  // Job API: a preview of the prediction after every step (GET /v1/jobs/{id}/preview).
  bool preview = false;
  std::optional<double> strength;       // edits only; default 0.5 (img2img) or 1.0 (inpaint)
  Image image, mask;
  // What the PNG metadata records for the inputs: the CLI's paths, the server's upload names.
  std::string image_name, mask_name;
};

// What must hold whoever built the request (the parsers check types and their own limits first):
// "" when it is sound, else the message. `param` receives the offending field's name.
std::string validate_request(const GenerationRequest& request, std::string* param = nullptr);

// The library parameters of each mode; `common(mode)` is the one a request fills.
struct GenerationCall {
  TextToImageParams t2i;          // GenerationMode::TextToImage
  ImageToImageParams img2img;     // ImageToImage
  InpaintParams inpaint;          // Inpaint
  GenerationParams& common(GenerationMode mode) {
    switch (mode) {
      case GenerationMode::ImageToImage: return img2img;
      case GenerationMode::Inpaint: return inpaint;
      case GenerationMode::TextToImage: break;
    }
    return t2i;
  }
};
GenerationCall to_params(const GenerationRequest& request);

// Runs the request's mode on `pipeline`; `progress` (may be empty) is called after every step.
GenerationResult run_request(Pipeline& pipeline, const GenerationRequest& request,
                             const ProgressCallback& progress = {});

// The denoising steps a request runs: `steps` for text-to-image, int(steps * strength) for edits
// (what a job's progress counts and a response's "steps" reports).
int steps_to_run(const GenerationRequest& request);

// The PNG text chunks of image `index` of a result (prompt and negative prompt of its prompt:
// images per prompt are tiled [p0, p1, p0, p1]). `model` is the -m argument, `default_masking_schedule`
// the model's, `dtype` the load dtype.
TextChunks png_metadata(const GenerationRequest& request, const GenerationResult& result, size_t index,
                        const std::string& model, MaskingSchedule default_masking_schedule, DType dtype);

}  // namespace amused::server
