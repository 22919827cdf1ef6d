// `amused generate`: text-to-image from the command line.
#include <nlohmann/json.hpp>

#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <set>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "amused/amused.h"
#include "amused/image_io.h"
#include "amused/pipeline.h"
#include "amused/log.h"
#include "command.h"
#include "progress.h"
#include "step_pictures.h"
#include "server/request.h"  // GenerationRequest, shared with the server

namespace {
namespace fs = std::filesystem;

struct GenerateArgs {
  std::string model;
  std::vector<std::string> prompts, negative_prompts;
  int steps = 12;
  double guidance = 10.0;
  bool steps_given = false, guidance_given = false;  // else the model's generation_config.json may set them
  std::optional<uint64_t> seed;
  int num_images = 1;
  std::optional<int> width, height;
  double aesthetic = 6.0;
  std::string crop = "0,0";
  std::string temperature = "2,0";
  std::string masking_schedule;
  std::string device = "cpu", dtype = "auto", variant;
  int threads = 0;
  bool offline = false;
  std::string output = "output.png";
  std::string save_tokens;
  std::string save_steps;          // folder for the step pictures (step_pictures.h)
  bool save_steps_exact = false;   // decode every step's prediction with the VQ-GAN
  std::string attention_maps;      // folder for the attention sheets (step_pictures.h)
  bool quiet = false, json = false;
  std::string init_image, mask;
  std::optional<double> strength;
  std::vector<std::string> loras;
  std::string lora_mode = "merge";
};

std::vector<double> parse_numbers(const std::string& s, const char* flag) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stod(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw amused::InvalidArgument(std::string(flag) + ": '" + s + "' is not a number or a comma-separated list of numbers");
    }
  }
  if (out.empty()) throw amused::InvalidArgument(std::string(flag) + ": no value given");
  return out;
}

// SIGINT/SIGTERM during a generation: the next step cancels it (nothing written, exit 128 + signal);
// during the writing of the outputs: the set is finished first (the previous files or the complete
// new set, never half of each), then the command exits 128 + signal.
volatile std::sig_atomic_t g_interrupt = 0;
extern "C" void on_interrupt(int sig) { g_interrupt = sig; }

struct InterruptHandlers {
  struct sigaction old_int {}, old_term {};
  InterruptHandlers() {
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~InterruptHandlers() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

// FILE.png for one image, FILE-0.png, FILE-1.png, ... for several.
std::vector<fs::path> output_paths(const fs::path& output, size_t n) {
  if (n == 1) return {output};
  std::vector<fs::path> out;
  for (size_t i = 0; i < n; ++i)
    out.push_back(output.parent_path() / (output.stem().string() + "-" + std::to_string(i) + output.extension().string()));
  return out;
}

int run(const GenerateArgs& given) {
  GenerateArgs a = given;
  // --quiet: nothing but errors, the library's info lines (LoRA adapters, ...) and warnings included.
  if (a.quiet) amused::set_log_level(amused::LogLevel::Error);
  if (a.model.empty()) a.model = amused::cli::default_model();  // the embedded emoji model
  const amused::cli::ModelDefaults defaults = amused::cli::model_defaults(a.model);
  if (!a.steps_given && defaults.steps) a.steps = *defaults.steps;
  if (!a.guidance_given && defaults.guidance_scale) a.guidance = *defaults.guidance_scale;
  // Validate everything cheap before loading the model.
  if (a.prompts.empty()) throw amused::InvalidArgument("--prompt: at least one prompt is required");
  if (a.negative_prompts.size() > 1 && a.negative_prompts.size() != a.prompts.size())
    throw amused::InvalidArgument("got " + std::to_string(a.negative_prompts.size()) + " --negative-prompt for " +
                                  std::to_string(a.prompts.size()) +
                                  " --prompt (give one negative prompt for all, or one per prompt)");
  if (a.steps < 1) throw amused::InvalidArgument("--steps must be at least 1, got " + std::to_string(a.steps));
  if (a.num_images < 1) throw amused::InvalidArgument("--num-images must be at least 1");
  const fs::path output(a.output);
  if (output.extension() != ".png")
    throw amused::InvalidArgument("--output '" + a.output + "' must end in .png");
  const auto is_dir = [](const fs::path& p) {
    std::error_code ec;  // a path that cannot be examined is not a folder (the write then says why)
    return fs::is_directory(p, ec);
  };
  // Names longer than the file system takes, before any call that would stat them.
  for (const std::string& name : {output.filename().string(), fs::path(a.save_tokens).filename().string()})
    if (name.size() > NAME_MAX)
      throw amused::InvalidArgument("output name '" + name.substr(0, 40) + "...' is " + std::to_string(name.size()) +
                                    " bytes; the limit is " + std::to_string(NAME_MAX));
  const fs::path out_dir = output.has_parent_path() ? output.parent_path() : fs::path(".");
  if (!is_dir(out_dir))
    throw amused::InvalidArgument("--output: folder '" + out_dir.string() + "' does not exist (create it first)");
  // Caught here rather than after minutes of generation (or after the images were written).
  if (is_dir(output))
    throw amused::InvalidArgument("--output '" + a.output + "' is a folder, expected the path of a .png file");
  // Every file this run will write, checked before minutes of generation: none is a folder, none
  // is written twice, every name fits the file system, every folder is writable.
  {
    const size_t n_images = a.prompts.size() * static_cast<size_t>(a.num_images);
    std::vector<fs::path> outs = output_paths(output, n_images);
    if (!a.save_tokens.empty()) outs.emplace_back(a.save_tokens);
    std::set<fs::path> seen;
    for (const auto& o : outs) {
      if (o.filename().string().size() > NAME_MAX)
        throw amused::InvalidArgument("output name '" + o.filename().string().substr(0, 40) + "...' is " +
                                      std::to_string(o.filename().string().size()) + " bytes; the limit is " +
                                      std::to_string(NAME_MAX));
      if (!seen.insert(fs::absolute(o).lexically_normal()).second)
        throw amused::InvalidArgument("'" + o.string() +
                                      "' would be written twice (--output and --save-tokens, or a --output "
                                      "whose numbered names meet it): give them different names");
      std::error_code ec;
      if (o != output && o.string() != a.save_tokens && fs::is_directory(o, ec))
        throw amused::InvalidArgument("'" + o.string() + "' (one of the numbered outputs of --output '" + a.output +
                                      "') is a folder; choose another --output");
      const fs::path dir = o.has_parent_path() ? o.parent_path() : fs::path(".");
      if (fs::is_directory(dir, ec) && ::access(dir.c_str(), W_OK) != 0)
        throw amused::InvalidArgument("cannot write into folder '" + dir.string() + "': " + std::strerror(errno));
    }
  }
  for (const auto& [flag, folder] : {std::pair<const char*, const std::string&>{"--save-steps", a.save_steps},
                                      {"--attention-maps", a.attention_maps}}) {
    std::error_code ec;
    if (!folder.empty() && fs::exists(folder, ec) && !fs::is_directory(folder, ec))
      throw amused::InvalidArgument(std::string(flag) + " '" + folder + "' is a file, expected a folder (it is created)");
  }
  if (a.save_steps.empty() && a.save_steps_exact) {
    throw amused::InvalidArgument("--save-steps-exact needs --save-steps DIR");
  }
  if (!a.save_tokens.empty() && is_dir(a.save_tokens))
    throw amused::InvalidArgument("--save-tokens '" + a.save_tokens +
                                  "' is a folder, expected the path of a .safetensors file");
  if (!a.save_tokens.empty()) {
    const fs::path tp(a.save_tokens);
    const fs::path td = tp.has_parent_path() ? tp.parent_path() : fs::path(".");
    if (!is_dir(td))
      throw amused::InvalidArgument("--save-tokens: folder '" + td.string() + "' does not exist");
  }
  if (!a.mask.empty() && a.init_image.empty())
    throw amused::InvalidArgument("--mask needs --init-image (the image to inpaint)");
  if (a.strength && a.init_image.empty())
    throw amused::InvalidArgument("--strength applies to --init-image (image-to-image or inpainting)");
  if (a.strength && !(*a.strength >= 0.0 && *a.strength <= 1.0))
    throw amused::InvalidArgument("--strength must be in [0, 1], got " + std::to_string(*a.strength));
  using amused::server::GenerationMode;
  const GenerationMode mode = a.init_image.empty() ? GenerationMode::TextToImage
                              : a.mask.empty()     ? GenerationMode::ImageToImage
                                                   : GenerationMode::Inpaint;

  // The request the server would build from the same fields (apps/server/request.h): one mapping
  // onto the library, one PNG-metadata builder for both.
  amused::server::GenerationRequest req;
  req.mode = mode;
  req.prompts = a.prompts;
  req.negative_prompts = a.negative_prompts;
  req.steps = a.steps;
  req.guidance_scale = a.guidance;
  req.n = a.num_images;
  req.aesthetic_score = a.aesthetic;
  const auto crop = parse_numbers(a.crop, "--crop-coord");
  if (crop.size() != 2) throw amused::InvalidArgument("--crop-coord expects X,Y");
  for (double c : crop)
    if (!std::isfinite(c) || c != std::floor(c) || std::fabs(c) > 1e9)
      throw amused::InvalidArgument("--crop-coord '" + a.crop + "': X and Y must be whole numbers (pixels)");
  req.crop_coord = {static_cast<int>(crop[0]), static_cast<int>(crop[1])};
  req.temperature = parse_numbers(a.temperature, "--temperature");
  if (req.temperature.size() != 1 && req.temperature.size() != 2)
    throw amused::InvalidArgument("--temperature expects T or A,B");
  req.masking_schedule = amused::parse_masking_schedule(a.masking_schedule);
  req.seed = a.seed;
  req.width = a.width;
  req.height = a.height;
  req.strength = a.strength;
  if (mode != GenerationMode::TextToImage) {
    req.image = amused::load_image(a.init_image);
    req.image_name = a.init_image;
  }
  if (mode == GenerationMode::Inpaint) {
    req.mask = amused::load_image(a.mask);
    req.mask_name = a.mask;
  }
  std::string bad_param;
  if (const std::string problem = amused::server::validate_request(req, &bad_param); !problem.empty())
    throw amused::InvalidArgument(problem);

  const bool show_progress = !a.quiet && !a.json && amused::cli::stderr_is_tty();
  amused::LoadOptions lo = amused::cli::load_options(a.device, a.dtype, a.threads, a.variant, a.offline);
  for (const auto& spec : a.loras) lo.loras.push_back(amused::cli::parse_lora_flag(spec));
  if (a.lora_mode != "merge" && a.lora_mode != "runtime")
    throw amused::InvalidArgument("--lora-mode '" + a.lora_mode + "' is unknown (merge or runtime)");
  lo.merge_loras = a.lora_mode == "merge";
  amused::cli::ProgressBar download_bar(show_progress, "download ");
  lo.download_progress = [&](const std::string&, uint64_t done, uint64_t total) {
    download_bar.update(static_cast<double>(done) / (1 << 20), static_cast<double>(total) / (1 << 20));
  };
  auto pipe = amused::Pipeline::load(a.model, lo);
  download_bar.finish();

  amused::cli::ProgressBar bar(show_progress, "generating ");
  g_interrupt = 0;
  const InterruptHandlers interrupt_handlers;
  std::optional<amused::cli::StepRecorder> recorder;
  if (!a.save_steps.empty()) recorder.emplace(*pipe, a.save_steps_exact);
  std::optional<amused::cli::AttentionRecorder> attention;
  if (!a.attention_maps.empty()) attention.emplace(std::max(8, pipe->summary().vq_scale_factor));
  req.step_details = recorder.has_value() || attention.has_value();
  req.attention_maps = attention.has_value();
  const amused::ProgressCallback progress = [&](const amused::StepInfo& s) {
    if (recorder) recorder->record(s);
    if (attention) attention->record(s);
    bar.update(s.step, s.num_steps, s.elapsed_seconds > 0 ? s.step / s.elapsed_seconds : 0);
    return g_interrupt == 0;  // false: the library throws amused::Cancelled
  };
  amused::GenerationResult result;
  try {
    result = amused::server::run_request(*pipe, req, progress);
  } catch (const amused::Cancelled&) {
    if (!g_interrupt) throw;
    bar.finish();
    std::fprintf(stderr, "interrupted (signal %d): nothing written\n", static_cast<int>(g_interrupt));
    return 128 + static_cast<int>(g_interrupt);
  }
  bar.finish();

  const auto paths = output_paths(output, result.images.size());
  // Every output (images, token file) is encoded first and written all or nothing.
  std::vector<std::pair<fs::path, std::string>> files;
  for (size_t i = 0; i < result.images.size(); ++i)
    files.emplace_back(paths[i], amused::encode_png(result.images[i],
                                                    amused::server::png_metadata(req, result, i, a.model,
                                                                                 pipe->summary().masking_schedule,
                                                                                 pipe->summary().dtype)));
  if (!a.save_tokens.empty()) files.emplace_back(a.save_tokens, amused::encode_token_grids(result.tokens));
  if (recorder) {
    for (auto& f : recorder->files(a.save_steps, result.images)) files.push_back(std::move(f));
    std::error_code ec;
    fs::create_directories(a.save_steps, ec);
    if (ec) throw amused::IoError("--save-steps: cannot create folder '" + a.save_steps + "': " + ec.message());
  }
  if (attention) {
    for (auto& f : attention->files(a.attention_maps, result.images)) files.push_back(std::move(f));
    std::error_code ec;
    fs::create_directories(a.attention_maps, ec);
    if (ec)
      throw amused::IoError("--attention-maps: cannot create folder '" + a.attention_maps + "': " + ec.message());
    if (attention->labels_missing())
      std::fprintf(stderr,
                   "warning: --attention-maps: no font for the labels (install fonts-dejavu-core, or set "
                   "AMUSED_FONT); img<i>-attention.json names the panels\n");
  }
  if (g_interrupt) {
    std::fprintf(stderr, "interrupted (signal %d): nothing written\n", static_cast<int>(g_interrupt));
    return 128 + static_cast<int>(g_interrupt);
  }
  amused::save_files(files);  // a signal now waits for the whole set (the handlers stay in place)
  if (g_interrupt) {
    std::fprintf(stderr, "interrupted (signal %d) after the outputs were written\n", static_cast<int>(g_interrupt));
    return 128 + static_cast<int>(g_interrupt);
  }

  const auto& t = result.timings;
  if (a.json) {
    nlohmann::json j;
    j["outputs"] = nlohmann::json::array();
    for (const auto& pth : paths) j["outputs"].push_back(pth.string());
    if (!a.save_tokens.empty()) j["tokens"] = a.save_tokens;
    if (!a.save_steps.empty()) j["steps_folder"] = a.save_steps;
    if (!a.attention_maps.empty()) j["attention_folder"] = a.attention_maps;
    j["seed"] = result.seed;
    j["model"] = a.model;
    j["width"] = result.images[0].width;
    j["height"] = result.images[0].height;
    j["steps"] = a.steps;
    j["guidance_scale"] = a.guidance;
    j["mode"] = to_string(mode);
    j["timings"] = {{"load_s", pipe->summary().load_seconds},
                    {"text_encoder_s", t.text_encoder_s},
                    {"transformer_s", t.transformer_s},
                    {"scheduler_s", t.scheduler_s},
                    {"vq_decode_s", t.vq_decode_s},
                    {"generate_s", t.total_s},
                    {"step_s", t.step_s}};
    // Any bytes (a non-UTF-8 path, prompt or PNG text chunk) print, as U+FFFD where not UTF-8.
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else if (!a.quiet) {
    std::printf("seed: %llu\n", static_cast<unsigned long long>(result.seed));
    for (const auto& pth : paths) std::printf("wrote %s\n", pth.c_str());
    if (!a.save_tokens.empty()) std::printf("wrote %s\n", a.save_tokens.c_str());
    if (!a.save_steps.empty())
      std::printf("wrote the step pictures into %s (img0-sheet.png, img0-steps.webp, ...)\n", a.save_steps.c_str());
    if (!a.attention_maps.empty())
      std::printf("wrote the attention maps into %s (img0-attention.png, img0-attention-steps.png, ...)\n",
                  a.attention_maps.c_str());
    std::printf("load %.2f s, generate %.2f s (text %.2f s, %d steps %.2f s, decode %.2f s)\n",
                pipe->summary().load_seconds, t.total_s, t.text_encoder_s, static_cast<int>(t.step_s.size()),
                t.transformer_s + t.scheduler_s, t.vq_decode_s);
  }
  return 0;
}

amused::cli::Registrar reg("generate", "Generate images from text prompts", [](CLI::App& sub) {
  auto a = std::make_shared<GenerateArgs>();
  sub.add_option("-m,--model", a->model, "Model folder or hub repo id (e.g. amused/amused-256); default: the embedded emoji model");
  sub.add_option("-p,--prompt", a->prompts, "Prompt (repeat for several)")->required();
  sub.add_option("-n,--negative-prompt", a->negative_prompts, "Negative prompt (one for all, or one per prompt)");
  sub.add_option("--steps", a->steps, "Denoising steps (default: the model's generation_config.json, else 12)")
      ->capture_default_str();
  sub.add_option("--guidance,--cfg-scale", a->guidance, "Classifier-free guidance scale (off when <= 1; default: the model's generation_config.json, else 10)")
      ->capture_default_str();
  sub.add_option("--seed", a->seed, "Random seed (random when omitted; printed)")
      ->check(amused::cli::seed_range());
  sub.add_option("--num-images", a->num_images, "Images per prompt")->capture_default_str();
  sub.add_option("--width", a->width, "Image width (multiple of the VQ scale factor; default: the model's)");
  sub.add_option("--height", a->height, "Image height (multiple of the VQ scale factor; default: the model's)");
  sub.add_option("--aesthetic-score", a->aesthetic, "Micro-conditioning aesthetic score")->capture_default_str();
  sub.add_option("--crop-coord", a->crop, "Micro-conditioning crop coordinates X,Y")->capture_default_str();
  sub.add_option("--temperature", a->temperature, "Re-masking temperature: A,B (linear from A to B) or T")
      ->capture_default_str();
  sub.add_option("--masking-schedule", a->masking_schedule, "cosine | linear (default: the model's)")
      ->check(amused::cli::masking_schedule_choice());
  sub.add_option("--device", a->device, "cpu | cuda | cuda:N")->check(amused::cli::device_choice())->capture_default_str();
  sub.add_option("--dtype", a->dtype, "auto | float32 | bfloat16 | float16 (auto: bfloat16 on CPUs with native bf16, float16 on CUDA, else float32; float32 reproduces the reference exactly)")->check(amused::cli::dtype_choice())->capture_default_str();
  sub.add_option("--threads", a->threads, "Compute threads (default: all physical cores)");
  sub.add_option("--variant", a->variant, "Weight variant to load (e.g. fp16)");
  sub.add_flag("--offline", a->offline, "Never use the network (also HF_HUB_OFFLINE=1)");
  sub.add_option("-o,--output", a->output, "Output PNG (several images: FILE-0.png, FILE-1.png, ...)")
      ->capture_default_str();
  sub.add_option("--save-tokens", a->save_tokens, "Also save the final token grids (int64 [B,h,w], key `tokens`)");
  sub.add_option("--save-steps", a->save_steps,
                 "Folder for pictures of every step: prediction, fixed tokens and confidence per step, a contact "
                 "sheet and an animated WebP per image (docs/interpretability.md)");
  sub.add_flag("--save-steps-exact", a->save_steps_exact,
               "Decode each step's prediction with the VQ-GAN (slower) instead of drawing token colours");
  sub.add_option("--attention-maps", a->attention_maps,
                 "Folder for where each word of the prompt drew the image's cross-attention: a sheet over the "
                 "run, one per step and the numbers as JSON, per image (docs/interpretability.md)");
  sub.add_option("--init-image", a->init_image,
                 "Image-to-image: start from this PNG/JPEG/BMP (sizes not a multiple of the VQ scale factor "
                 "are resized down, with a warning)");
  sub.add_option("--strength", a->strength,
                 "Share of the steps to re-run on the input: 0.5 for image-to-image, 1.0 for inpainting. Kept "
                 "as in the reference: img2img at strength 1.0 masks no token on its first step and barely "
                 "changes the image");
  sub.add_option("--mask", a->mask, "Inpainting mask (white = regenerate), same aspect ratio as --init-image");
  sub.add_option("--lora", a->loras,
                 "LoRA adapter FILE[:SCALE] (diffusers pytorch_lora_weights.safetensors or a peft adapter folder; "
                 "repeat to stack; scale multiplies alpha/r, default 1)");
  sub.add_option("--lora-mode", a->lora_mode,
                 "merge (into the weights, no cost per step) | runtime (per-layer, scales changeable)")
      ->capture_default_str();
  sub.add_flag("-q,--quiet", a->quiet, "Print nothing but errors");
  sub.add_flag("--json", a->json, "Print one JSON summary (outputs, seed, timings) on stdout");
  return std::function<int()>([a, &sub] {
    a->steps_given = sub.get_option("--steps")->count() > 0;
    a->guidance_given = sub.get_option("--guidance")->count() > 0;
    return run(*a);
  });
});
}  // namespace
