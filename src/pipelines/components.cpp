#include "pipelines/components.h"

#include <cstdio>
#include <fstream>

#include "amused/error.h"
#include "core/config.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "nn/precision.h"

namespace amused {
namespace fs = std::filesystem;

namespace {
// The release whose file layout save_pretrained mirrors (the golden models were written by it).
constexpr const char* kDiffusersVersion = "0.27.2";
constexpr const char* kTransformersVersion = "4.38.0.dev0";

// Weights into `module` from `weights` (or random ones), with the precision's load options.
template <typename Model>
void fill(Model& model, const std::function<io::StateDict()>& weights, const std::string& source,
          const io::LoadOptions& lo, bool random_weights, const std::function<void()>& init_weights) {
  if (random_weights) {
    // Convert the (still untouched) parameters first, so random initialisation happens in the
    // final dtype and never holds a float32 copy of a 16-bit model.
    io::convert_parameters(*model, lo);
    init_weights();
  } else {
    io::load_state_dict(*model, weights(), source, lo);
  }
  model->eval();
}

std::string weights_base(const std::string& component) {
  return component == "text_encoder" ? "model" : "diffusion_pytorch_model";
}

std::string dump(const nlohmann::json& j) { return j.dump(2) + "\n"; }

// What error messages name: the weight file when there is one, else the folder (shards).
std::string weights_source(const std::vector<fs::path>& files, const fs::path& dir) {
  return files.size() == 1 ? files.front().string() : dir.string();
}
}  // namespace

io::LoadOptions precision_load_options(const torch::nn::Module& module, Precision precision,
                                       const torch::Device& device, bool is_vqvae) {
  io::LoadOptions lo;
  lo.device = device;
  switch (precision) {
    case Precision::kFloat32:
      lo.dtype = torch::kFloat32;
      break;
    case Precision::kMixedBFloat16:
      // Matrix weights in bfloat16 by module type; activations float32. The VQ-GAN takes the same
      // policy for its weights and keeps float32 activations (force_upcast).
      lo.dtype = torch::kFloat32;
      lo.dtype_for = nn::mixed_precision_dtype_for(module, torch::kBFloat16);
      break;
    case Precision::kFloat16:
      // force_upcast: the VQ-GAN overflows in float16, so it stays float32 altogether.
      lo.dtype = is_vqvae ? torch::kFloat32 : torch::kFloat16;
      break;
  }
  return lo;
}

namespace {
// The model a config describes must fit in its weight files: they hold at least two bytes (float16)
// for each parameter of the config's lower bound. A config asking for more (a wrong layer count or
// width beside real weights) is refused before the model is built, not after gigabytes were
// allocated for it. Nothing to check with random weights.
void check_weights_hold(const ModelSizeBound& bound, const std::vector<fs::path>& files,
                        const std::string& config_source) {
  if (files.empty()) return;
  double bytes = 0;
  for (const auto& f : files) {
    if (f.extension() != ".safetensors") return;
    std::error_code ec;
    const auto size = fs::file_size(f, ec);
    if (ec) return;  // the loader names the file and the problem
    bytes += static_cast<double>(size);
  }
  const double needed = 2.0 * bound.parameters;
  if (needed <= bytes) return;
  // Too small: a truncated or malformed file gets the loader's own message first (opening checks
  // it; the loader opens them again when it reads them, so this is only done here when failing).
  for (const auto& f : files) io::SafeTensorsFile::open(f);
  char text[160];
  std::snprintf(text, sizeof text, "at least %.3g parameters (%.1f MB even as float16) but its weight files hold %.1f MB",
                bound.parameters, needed / 1e6, bytes / 1e6);
  throw ConfigError(config_source + ": describes " + text + " (" + weights_source(files, files.front().parent_path()) +
                    "): the config does not belong to these weights (most of its parameters come from " +
                    bound.largest_term + ")");
}

std::string source_of(const fs::path& dir, const std::string& variant, const ComponentOptions& options) {
  if (options.random_weights) return dir.string();
  return weights_source(io::folder_weight_files(dir, variant), dir);
}
}  // namespace

models::UVit2DModel load_transformer(const fs::path& dir, const ComponentOptions& options, const std::string& variant) {
  const auto config_path = dir / "config.json";
  const auto config = models::UVit2DConfig::from_json(read_json_file(config_path), config_path.string());
  if (!options.random_weights)
    check_weights_hold(config.min_parameters(), io::folder_weight_files(dir, variant), config_path.string());
  models::UVit2DModel model(config);
  fill(model, [&] { return io::folder_weights(dir, variant); }, source_of(dir, variant, options),
       precision_load_options(*model, options.precision, options.device), options.random_weights,
       [&] { model->init_weights(); });
  return model;
}

models::VQModel load_vqvae(const fs::path& dir, const ComponentOptions& options, const std::string& variant) {
  const auto config_path = dir / "config.json";
  const auto config = models::VQModelConfig::from_json(read_json_file(config_path), config_path.string());
  if (!options.random_weights)
    check_weights_hold(config.min_parameters(), io::folder_weight_files(dir, variant), config_path.string());
  models::VQModel model(config, config_path.string());
  fill(model, [&] { return io::folder_weights(dir, variant); }, source_of(dir, variant, options),
       precision_load_options(*model, options.precision, options.device, /*is_vqvae=*/true), options.random_weights,
       [&] { model->init_weights(); });
  return model;
}

models::CLIPTextModelWithProjection load_text_encoder(const fs::path& dir, const ComponentOptions& options,
                                                      const std::string& variant) {
  const auto config_path = dir / "config.json";
  const auto config = models::CLIPTextConfig::from_json(read_json_file(config_path), config_path.string());
  if (!options.random_weights)
    check_weights_hold(config.min_parameters(), io::folder_weight_files(dir, variant), config_path.string());
  models::CLIPTextModelWithProjection model(config);
  fill(model, [&] { return io::folder_weights(dir, variant); }, source_of(dir, variant, options),
       precision_load_options(*model, options.precision, options.device), options.random_weights,
       [&] { model->init_weights(); });
  return model;
}

Components load_components(const io::DiffusersRepo& repo, const ComponentOptions& options) {
  Components c;
  auto config_source = [&](const std::string& name, const char* file) {
    return (repo.component_dir(name) / file).string();
  };
  c.tokenizer_dir = options.tokenizer_dir.empty() ? repo.component_dir("tokenizer") : options.tokenizer_dir;
  c.tokenizer = ClipTokenizer::from_folder(c.tokenizer_dir);
  // What error messages name for a component's weights, and its weights into `model`.
  auto random = [&](const std::string& name) {
    return options.random_weights || options.random_components.count(name) > 0;
  };
  auto source = [&](const std::string& name) {
    return random(name) ? std::string() : weights_source(repo.weight_files(name), repo.component_dir(name));
  };
  auto load = [&](auto& model, const std::string& name, const std::function<void()>& init) {
    fill(model, [&] { return repo.component_weights(name); }, source(name),
         precision_load_options(*model, options.precision, options.device), random(name), init);
  };
  // Each config is parsed (and bounded against memory), then checked against its weight files,
  // before its model is built.
  auto check_weights = [&](const ModelSizeBound& bound, const std::string& name) {
    if (!random(name)) check_weights_hold(bound, repo.weight_files(name), config_source(name, "config.json"));
  };
  const auto text_config = models::CLIPTextConfig::from_json(repo.component_config("text_encoder"),
                                                             config_source("text_encoder", "config.json"));
  check_weights(text_config.min_parameters(), "text_encoder");
  c.text_encoder = models::CLIPTextModelWithProjection(text_config);
  // Prompts are padded to the tokenizer's model_max_length (as in diffusers); the text encoder
  // must have that many positions.
  if (c.tokenizer->model_max_length() > c.text_encoder->config().max_position_embeddings)
    throw InvalidArgument((c.tokenizer_dir / "tokenizer_config.json").string() + ": model_max_length " +
                          std::to_string(c.tokenizer->model_max_length()) + " is more than the text encoder's " +
                          std::to_string(c.text_encoder->config().max_position_embeddings) +
                          " positions (text_encoder/config.json max_position_embeddings): lower it to at most " +
                          std::to_string(c.text_encoder->config().max_position_embeddings));
  load(c.text_encoder, "text_encoder", [&] { c.text_encoder->init_weights(); });
  const auto transformer_config =
      models::UVit2DConfig::from_json(repo.component_config("transformer"), config_source("transformer", "config.json"));
  check_weights(transformer_config.min_parameters(), "transformer");
  c.transformer = models::UVit2DModel(transformer_config);
  load(c.transformer, "transformer", [&] { c.transformer->init_weights(); });
  {
    auto cfg = models::VQModelConfig::from_json(repo.component_config("vqvae"), config_source("vqvae", "config.json"));
    check_weights(cfg.min_parameters(), "vqvae");
    c.vqvae = models::VQModel(cfg);
    models::VQModel vq = c.vqvae;
    const io::LoadOptions vq_lo = precision_load_options(*vq, options.precision, options.device, /*is_vqvae=*/true);
    if (!options.defer_vq_encoder) {
      fill(vq, [&] { return repo.component_weights("vqvae"); }, source("vqvae"), vq_lo,
           random("vqvae"), [&] { vq->init_weights(); });
    } else {
      // The encode path is checked now but loaded on the first edit.
      io::LoadOptions decoder_lo = vq_lo;
      decoder_lo.defer = models::VQModelImpl::is_encoder_key;
      io::LoadOptions encoder_lo = vq_lo;  // for the deferred part: only the encode path's keys
      encoder_lo.defer = [](const std::string& key) { return !models::VQModelImpl::is_encoder_key(key); };
      encoder_lo.partial = true;
      if (random("vqvae")) {
        fill(vq, {}, "", decoder_lo, true, [&] { vq->init_decoder_weights(); });
        c.load_vq_encoder = [vq, encoder_lo]() mutable {
          io::convert_parameters(*vq, encoder_lo);
          vq->init_encoder_weights();
        };
      } else {
        io::StateDict weights = repo.component_weights("vqvae");
        const std::string vq_source = source("vqvae");
        io::load_state_dict(*vq, weights, vq_source, decoder_lo);
        vq->eval();
        io::StateDict encoder_weights;
        for (auto& [key, t] : weights)
          if (models::VQModelImpl::is_encoder_key(key)) encoder_weights.emplace(key, t);
        c.load_vq_encoder = [vq, encoder_lo, vq_source, w = std::move(encoder_weights)]() mutable {
          io::load_state_dict(*vq, w, vq_source, encoder_lo);
        };
      }
    }
  }
  c.scheduler_config = AmusedSchedulerConfig::from_json(repo.component_config("scheduler"),
                                                        config_source("scheduler", "scheduler_config.json"));
  return c;
}

// ------------------------------------------------------------------------------- save_pretrained

nlohmann::json transformer_config_file(const models::UVit2DConfig& config) {
  nlohmann::json j = config.to_json();
  j["_diffusers_version"] = kDiffusersVersion;
  return j;
}

nlohmann::json vqvae_config_file(const models::VQModelConfig& config) {
  nlohmann::json j = config.to_json();
  j["_diffusers_version"] = kDiffusersVersion;
  return j;
}

nlohmann::json text_encoder_config_file(const models::CLIPTextConfig& config, torch::ScalarType dtype) {
  nlohmann::json j = config.to_json();
  j["architectures"] = {"CLIPTextModelWithProjection"};
  j["model_type"] = "clip_text_model";
  j["torch_dtype"] = dtype == torch::kFloat16 ? "float16" : "float32";
  j["transformers_version"] = kTransformersVersion;
  return j;
}

nlohmann::json scheduler_config_file(const AmusedSchedulerConfig& config) { return config.to_json(); }

nlohmann::json model_index_file() {
  return {{"_class_name", "AmusedPipeline"},
          {"_diffusers_version", kDiffusersVersion},
          {"scheduler", {"diffusers", "AmusedScheduler"}},
          {"text_encoder", {"transformers", "CLIPTextModelWithProjection"}},
          {"tokenizer", {"transformers", "CLIPTokenizer"}},
          {"transformer", {"diffusers", "UVit2DModel"}},
          {"vqvae", {"diffusers", "VQModel"}}};
}

namespace {
void check_variant(const SaveOptions& options) {
  if (!options.variant.empty() && options.variant != "fp16")
    throw InvalidArgument("save variant '" + options.variant + "' is not supported (\"\" for float32 or \"fp16\")");
}

// The tensors written for `module`: float32 (or float16 for the fp16 variant), whatever precision
// the module runs in.
io::StateDict weights_to_save(const torch::nn::Module& module, const SaveOptions& options) {
  const auto dtype = options.half() ? torch::kFloat16 : torch::kFloat32;
  io::StateDict out;
  for (const auto& [key, t] : io::module_state_dict(module)) {
    auto v = t.detach();
    out.emplace(key, torch::isFloatingType(v.scalar_type()) ? v.to(torch::kCPU, dtype) : v.to(torch::kCPU));
  }
  return out;
}

std::string weight_file_name(const std::string& base, const SaveOptions& options) {
  return base + (options.variant.empty() ? "" : "." + options.variant) + ".safetensors";
}

io::FileWriter weights_writer(const torch::nn::Module& module, const SaveOptions& options) {
  return [&module, options](std::ostream& out) {
    io::write_safetensors(out, weights_to_save(module, options), {{"format", "pt"}});
  };
}

io::FileWriter text_writer(std::string text) {
  return [text = std::move(text)](std::ostream& out) { out.write(text.data(), static_cast<std::streamsize>(text.size())); };
}

io::FileWriter copy_writer(const fs::path& from) {
  return [from](std::ostream& out) {
    std::ifstream in(from, std::ios::binary);
    if (!in) throw IoError("cannot read '" + from.string() + "' to copy it");
    out << in.rdbuf();
  };
}
}  // namespace

void save_weights(const torch::nn::Module& module, const fs::path& dir, const std::string& base,
                  const SaveOptions& options) {
  check_variant(options);
  io::write_file_atomic(dir / weight_file_name(base, options), weights_writer(module, options));
}

void save_vqvae(const models::VQModel& vqvae, const fs::path& dir, const SaveOptions& options) {
  check_variant(options);
  std::vector<std::pair<fs::path, io::FileWriter>> files;
  files.emplace_back(dir / "config.json", text_writer(dump(vqvae_config_file(vqvae->config()))));
  files.emplace_back(dir / weight_file_name(weights_base("vqvae"), options), weights_writer(*vqvae, options));
  io::write_files_atomic(files);
}

void save_pretrained(const Components& c, const fs::path& folder, const SaveOptions& options) {
  check_variant(options);
  if (!c.tokenizer_dir.empty() && !fs::is_directory(c.tokenizer_dir))
    throw IoError("tokenizer folder '" + c.tokenizer_dir.string() + "' is missing; cannot copy it");
  std::error_code ec;
  for (const char* sub : {"", "scheduler", "tokenizer", "text_encoder", "transformer", "vqvae"}) {
    fs::create_directories(folder / sub, ec);
    if (ec) throw IoError("cannot create '" + (folder / sub).string() + "': " + ec.message());
  }
  std::vector<std::pair<fs::path, io::FileWriter>> files;
  files.emplace_back(folder / "model_index.json", text_writer(dump(model_index_file())));
  files.emplace_back(folder / "scheduler" / "scheduler_config.json",
                     text_writer(dump(scheduler_config_file(c.scheduler_config))));
  for (const char* name : {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path from = c.tokenizer_dir / name;
    if (fs::is_regular_file(from)) files.emplace_back(folder / "tokenizer" / name, copy_writer(from));
  }
  const auto te_dtype = options.half() ? torch::kFloat16 : torch::kFloat32;
  files.emplace_back(folder / "text_encoder" / "config.json",
                     text_writer(dump(text_encoder_config_file(c.text_encoder->config(), te_dtype))));
  files.emplace_back(folder / "text_encoder" / weight_file_name(weights_base("text_encoder"), options),
                     weights_writer(*c.text_encoder, options));
  files.emplace_back(folder / "transformer" / "config.json",
                     text_writer(dump(transformer_config_file(c.transformer->config()))));
  files.emplace_back(folder / "transformer" / weight_file_name(weights_base("transformer"), options),
                     weights_writer(*c.transformer, options));
  files.emplace_back(folder / "vqvae" / "config.json", text_writer(dump(vqvae_config_file(c.vqvae->config()))));
  files.emplace_back(folder / "vqvae" / weight_file_name(weights_base("vqvae"), options),
                     weights_writer(*c.vqvae, options));
  // Every file first goes to a synced temporary beside its target; only when all are written are
  // they renamed into place (io/atomic_file.h).
  io::write_files_atomic(files);
}

}  // namespace amused
