// A program built against an installed amused.cpp (find_package(amused) + amused::amused): draws
// one picture with the model folder given as its one argument and writes it to text-to-image.png.
//
//   text-to-image MODEL_DIR            # e.g. /usr/local/share/amused/models/amused-emoji
//
// Optional environment: PROMPT (default "red apple"), STEPS (default 12), SEED (default 0),
// DTYPE (default auto: bfloat16 on CPUs with bfloat16 instructions, else float32).
#include <amused/amused.h>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

namespace {
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " MODEL_DIR   (a diffusers-format aMUSEd folder)\n";
    return 2;
  }
  try {
    amused::LoadOptions load;
    load.offline = true;
    load.dtype = amused::parse_dtype(env_or("DTYPE", "auto"));
    auto pipe = amused::Pipeline::load(argv[1], load);
    amused::TextToImageParams params;
    params.prompts = {env_or("PROMPT", "red apple")};
    params.num_inference_steps = std::stoi(env_or("STEPS", "12"));
    params.seed = std::stoull(env_or("SEED", "0"));
    params.progress = [](const amused::StepInfo& s) {
      std::cerr << "\rstep " << s.step << "/" << s.num_steps << std::flush;
      return true;
    };
    const amused::GenerationResult result = pipe->text_to_image(params);
    std::cerr << "\n";
    amused::save_png("text-to-image.png", result.images.at(0));
    std::cout << "amused " << amused::version() << ": wrote text-to-image.png (" << result.images[0].width
              << "x" << result.images[0].height << ", seed " << result.seed << ", "
              << amused::to_string(pipe->summary().dtype) << ")\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
