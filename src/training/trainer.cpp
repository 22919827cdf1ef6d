// amused::Trainer: the training loop of train_amused.py (VQ encode, text encode, masking,
// conditioning dropout, forward, cross-entropy, backward, clip, AdamW, EMA), with open-muse's
// pre-training options, run keeping (atomic checkpoints, exact resume, JSONL log, loss plot,
// validation images) and a progress callback.
// Ref: diffusers v0.27.2 examples/amused/train_amused.py (main loop, lines 700-900);
//      huggingface/open-muse training/train_muse.py.
#include "amused/train.h"

#include <ATen/autocast_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "amused/amused.h"
#include "amused/image_io.h"
#include "amused/system.h"
#include "core/config.h"
#include "core/log.h"
#include "core/threads.h"
#include "io/atomic_file.h"
#include "io/diffusers_repo.h"
#include "io/lora_file.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "nn/execution.h"
#include "nn/lora.h"
#include "nn/precision.h"
#include "pipelines/components.h"
#include "pipelines/pipeline_amused.h"
#include "training/checkpoint.h"
#include "training/dataset.h"
#include "training/masking.h"
#include "training/objective.h"
#include "training/optimizer.h"
#include "training/run_log.h"

namespace amused {
namespace training {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void check_range(const char* flag, double v, double lo, double hi, bool hi_inclusive = true) {
  if (!std::isfinite(v) || v < lo || (hi_inclusive ? v > hi : v >= hi))
    throw InvalidArgument(std::string(flag) + " must be in [" + fmt(lo) + ", " + fmt(hi) + (hi_inclusive ? "]" : ")") +
                          ", got " + fmt(v));
}

void validate(const TrainOptions& o) {
  if (o.model.empty()) throw InvalidArgument("no model given (-m: a pipeline folder or hub id, or a folder of configs)");
  if (o.data.empty() && o.instance_image.empty())
    throw InvalidArgument("no training data given (--data: an image folder or .tar shards; or --instance-image)");
  if (!o.data.empty() && !o.instance_image.empty())
    throw InvalidArgument("give --data or --instance-image, not both");
  if (o.lora) {
    if (o.lora_rank < 1) throw InvalidArgument("--lora-rank must be at least 1, got " + std::to_string(o.lora_rank));
    if (!(o.lora_alpha > 0 && std::isfinite(o.lora_alpha)))
      throw InvalidArgument("--lora-alpha must be a positive number, got " + fmt(o.lora_alpha));
    if (o.lora_targets.empty()) throw InvalidArgument("--lora-targets is empty (e.g. to_q,to_k,to_v)");
    if (o.use_ema)
      throw InvalidArgument("--use-ema is not available with --lora (the EMA covers the full transformer weights)");
  }
  if (o.output.empty() && o.write_outputs) throw InvalidArgument("no output folder given (--output)");
  if (o.resume && !o.write_outputs) throw InvalidArgument("resuming needs the run's outputs (write_outputs)");
  if (o.max_steps < 1) throw InvalidArgument("--max-steps must be at least 1, got " + std::to_string(o.max_steps));
  if (o.batch_size < 1) throw InvalidArgument("--batch-size must be at least 1, got " + std::to_string(o.batch_size));
  if (o.gradient_accumulation_steps < 1)
    throw InvalidArgument("--gradient-accumulation-steps must be at least 1, got " +
                          std::to_string(o.gradient_accumulation_steps));
  if (!(std::isfinite(o.learning_rate) && o.learning_rate > 0))
    throw InvalidArgument("--learning-rate must be a positive number, got " + fmt(o.learning_rate));
  parse_lr_schedule(o.lr_scheduler);
  if (o.lr_warmup_steps < 0) throw InvalidArgument("--lr-warmup-steps must be >= 0");
  check_range("--adam-beta1", o.adam_beta1, 0, 1, false);
  check_range("--adam-beta2", o.adam_beta2, 0, 1, false);
  check_range("--adam-weight-decay", o.adam_weight_decay, 0, 1e6);
  if (!(o.adam_epsilon > 0 && std::isfinite(o.adam_epsilon))) throw InvalidArgument("--adam-epsilon must be > 0");
  check_range("--max-grad-norm", o.max_grad_norm, 0, 1e30);
  check_range("--ema-decay", o.ema_decay, 0, 1);
  check_range("--min-masking-rate", o.min_masking_rate, 0, 1);
  check_range("--label-smoothing", o.label_smoothing, 0, 1);
  check_range("--cond-dropout-prob", o.cond_dropout_prob, 0, 1);
  check_range("--mask-contiguous-region-prob", o.mask_contiguous_region_prob, 0, 1);
  if (o.resolution < 0) throw InvalidArgument("--resolution must be positive (0 = the model's default)");
  if (o.checkpointing_steps < 1) throw InvalidArgument("--checkpointing-steps must be at least 1");
  if (o.logging_steps < 1) throw InvalidArgument("--logging-steps must be at least 1");
  if (o.validation_steps < 0) throw InvalidArgument("--validation-steps must be >= 0");
  if (o.mixed_precision != "no" && o.mixed_precision != "bf16" && o.mixed_precision != "fp16")
    throw InvalidArgument("--mixed-precision '" + o.mixed_precision + "' is unknown (no, bf16 or fp16)");
  parse_bad_sample_policy(o.on_bad_sample);
  if (o.pre_encode && (!o.center_crop || o.random_flip))
    throw InvalidArgument(
        "--pre-encode caches one crop of each image: it needs --center-crop and no --random-flip (with "
        "random crops every epoch sees other tokens)");
}

// CPU autocast (bfloat16) or CUDA autocast (bfloat16 / float16) for the forward pass.
class AutocastScope {
 public:
  AutocastScope(bool enabled, const torch::Device& device, torch::ScalarType dtype) : enabled_(enabled), cuda_(device.is_cuda()) {
    if (!enabled_) return;
    if (cuda_) {
      prev_ = at::autocast::is_enabled();
      prev_dtype_ = at::autocast::get_autocast_gpu_dtype();
      at::autocast::set_enabled(true);
      at::autocast::set_autocast_gpu_dtype(dtype);
    } else {
      prev_ = at::autocast::is_cpu_enabled();
      prev_dtype_ = at::autocast::get_autocast_cpu_dtype();
      at::autocast::set_cpu_enabled(true);
      at::autocast::set_autocast_cpu_dtype(dtype);
    }
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    if (cuda_) {
      at::autocast::set_enabled(prev_);
      at::autocast::set_autocast_gpu_dtype(prev_dtype_);
    } else {
      at::autocast::set_cpu_enabled(prev_);
      at::autocast::set_autocast_cpu_dtype(prev_dtype_);
    }
  }

 private:
  bool enabled_, cuda_, prev_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

// The trainable modules under one root, so that one optimizer (and its parameter names) covers the
// transformer and, with --train-text-encoder, the text encoder.
struct TrainableImpl : torch::nn::Module {};
TORCH_MODULE(Trainable);

std::vector<std::pair<std::string, torch::Tensor>> trainable_named(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  return out;
}

// Whether a component folder has weight files.
bool has_weights(const io::DiffusersRepo& repo, const std::string& name) {
  try {
    return !repo.weight_files(name).empty();
  } catch (const CheckpointError& e) {
    if (std::string(e.what()).find("has no weights") != std::string::npos) return false;
    throw;
  }
}

uint64_t parameter_bytes(const torch::nn::Module& m) {
  uint64_t n = 0;
  for (const auto& p : m.parameters()) n += static_cast<uint64_t>(p.numel()) * 4;
  return n;
}

struct Encoded {
  torch::Tensor tokens;                 // [L] int64
  torch::Tensor encoder_hidden_states;  // [77, H] (undefined when the text encoder trains)
  torch::Tensor cond_embeds;            // [P]
};

class TrainerImpl final : public Trainer {
 public:
  explicit TrainerImpl(const TrainOptions& options);
  TrainSummary run(const TrainCallback& progress) override;
  const TrainOptions& options() const override { return o_; }

 private:
  void write_checkpoint(int64_t step, double elapsed_seconds);
  void restore(const fs::path& checkpoint);
  fs::path write_validation(int64_t step);
  void write_plot();
  void save_lora(const fs::path& dir);
  torch::Tensor encode_tokens(const Batch& batch, const std::vector<Sample>& samples);
  TextConditioning encode_text(const Batch& batch, const std::vector<Sample>& samples);

  TrainOptions o_;
  torch::Device device_{torch::kCPU};
  Components c_;
  bool pretraining_ = false;
  int64_t h_ = 0, w_ = 0, mask_id_ = 0;
  std::unique_ptr<ImageCaptionDataset> data_;
  std::unique_ptr<CheckpointManager> checkpoints_;
  Trainable trainable_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<EmaModel> ema_;
  LrSchedule schedule_ = LrSchedule::kConstant;
  at::Generator mask_gen_;
  std::unique_ptr<PythonRandom> py_random_;
  TextConditioning empty_;
  std::map<std::string, Encoded> cache_;       // VQ tokens by sample id (pre_encode)
  std::map<std::string, Encoded> text_cache_;  // text states by caption (pre_encode, frozen text encoder)
  // Run state (saved in checkpoints).
  int64_t step_ = 0;
  double loss_smoothed_ = 0, loss_weight_sum_ = 0;
  double elapsed_before_ = 0;  // training seconds of earlier processes (resumes)
  int64_t resumed_from_ = 0;
  bool keep_gradients_ = true;  // zero gradients in place between steps (see run())
  std::vector<std::pair<double, double>> loss_history_, lr_history_;
};

TrainerImpl::TrainerImpl(const TrainOptions& options) : o_(options) {
  validate(o_);
  configure_threads_for_load(o_.threads);
  device_ = to_torch_device(Device::parse(o_.device));
  if (o_.mixed_precision == "fp16" && !device_.is_cuda())
    throw Unsupported("--mixed-precision fp16 needs a CUDA device (the CPU has no float16 matrix kernels); use bf16");
  schedule_ = parse_lr_schedule(o_.lr_scheduler);

  // ---- models: a pipeline with weights (fine-tuning) or a folder of configs (pre-training).
  RepoOptions ro;
  ro.offline = o_.offline;
  ro.variant = o_.variant;
  io::DiffusersRepo repo = io::DiffusersRepo::open(o_.model, ro);
  // With transformer weights: fine-tuning, and every component must have weights. Without them:
  // pre-training, where the transformer (and a text encoder without weights) start from random
  // weights and a VQ-GAN with weights (e.g. from `amused train-vq`) is used as it is, as MUSE
  // pre-trains on a VQ-GAN trained first.
  std::vector<std::string> with, without;
  for (const char* name : {"text_encoder", "transformer", "vqvae"})
    (has_weights(repo, name) ? with : without).emplace_back(name);
  auto join = [](const std::vector<std::string>& names) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    return list;
  };
  pretraining_ = !has_weights(repo, "transformer");
  if (!pretraining_ && !without.empty())
    throw CheckpointError("'" + repo.root().string() + "' has weights for some components but not for " +
                          join(without) +
                          ": give a complete pipeline (fine-tuning) or one without transformer weights "
                          "(pre-training from scratch)");
  torch::manual_seed(o_.seed);  // random initialisation when pre-training
  ComponentOptions co;
  co.device = device_;
  co.precision = Precision::kFloat32;  // float32 master weights; autocast does the 16-bit forward
  co.random_components = {without.begin(), without.end()};
  co.tokenizer_dir = o_.tokenizer_dir;
  if (co.tokenizer_dir.empty() && !fs::is_regular_file(repo.root() / "tokenizer" / "vocab.json"))
    throw ConfigError("'" + (repo.root() / "tokenizer").string() +
                      "' has no vocab.json: give a tokenizer folder with --tokenizer");
  c_ = load_components(repo, co);
  if (pretraining_) {
    log::info("pre-training from scratch: " + join(without) + " start from random weights (seed " +
              std::to_string(o_.seed) + ")" + (with.empty() ? "" : "; " + join(with) + " loaded from '" +
              repo.root().string() + "'"));
    if (std::count(without.begin(), without.end(), "vqvae"))
      log::warn("the VQ-GAN has random weights: its tokens carry little of the image (train one first with "
                "amused train-vq and put it in '" + (repo.root() / "vqvae").string() + "')");
    if (std::count(without.begin(), without.end(), "text_encoder") && !o_.train_text_encoder)
      log::warn("the text encoder has random weights and stays frozen (add --train-text-encoder to train it)");
  }

  const auto& tcfg = c_.transformer->config();
  const int64_t scale = c_.vqvae->config().scale_factor();
  if (o_.resolution == 0) o_.resolution = static_cast<int>(tcfg.sample_size * scale);
  const int64_t multiple = scale * (tcfg.downsample ? 2 : 1);
  if (o_.resolution % multiple != 0)
    throw InvalidArgument("--resolution " + std::to_string(o_.resolution) + " is not a multiple of " +
                          std::to_string(multiple) + " (the VQ scale factor" +
                          (tcfg.downsample ? " x 2 for this down-sampling transformer)" : ")"));
  h_ = w_ = o_.resolution / scale;
  mask_id_ = tcfg.vocab_size - 1;  // train_amused.py: mask_id = transformer.config.vocab_size - 1
  if (c_.scheduler_config.mask_token_id != mask_id_)
    log::warn("the scheduler's mask_token_id " + std::to_string(c_.scheduler_config.mask_token_id) +
              " differs from the transformer's vocab_size - 1 = " + std::to_string(mask_id_) +
              " (training masks with the latter, as train_amused.py)");
  if (o_.mask_contiguous_region_prob > 0 && h_ != w_)
    throw InvalidArgument("--mask-contiguous-region-prob needs a square token grid");

  // ---- data: indexed (not decoded) now, so a bad folder fails before step 1.
  DatasetOptions d;
  d.data = o_.data;
  d.instance_image = o_.instance_image;
  d.instance_prompt = o_.instance_prompt;
  d.instance_augment = true;
  d.resolution = o_.resolution;
  d.crop = o_.center_crop ? CropMode::Center : CropMode::Random;
  d.random_flip = o_.random_flip;
  d.caption_prefix = o_.caption_prefix;
  d.caption_key = o_.caption_key;
  d.split = o_.split;
  d.on_bad_sample = parse_bad_sample_policy(o_.on_bad_sample);
  d.seed = o_.seed;
  data_ = ImageCaptionDataset::open(d);
  log::info("data: " + data_->description());

  // ---- output: writable, room for two checkpoints and the final pipeline.
  const fs::path out(o_.output);
  uint64_t ckpt = parameter_bytes(*c_.transformer) * (o_.use_ema ? 4 : 3);
  if (o_.train_text_encoder) ckpt += parameter_bytes(*c_.text_encoder) * 3;
  uint64_t final_pipeline =
      parameter_bytes(*c_.transformer) + parameter_bytes(*c_.text_encoder) + parameter_bytes(*c_.vqvae);
  if (o_.lora) ckpt = final_pipeline = 64ull << 20;  // adapters only (r 16 on amused-256: ~10 MB)
  if (o_.write_outputs) {
    check_output_dir(out, 2 * ckpt + final_pipeline);
    checkpoints_ = std::make_unique<CheckpointManager>(out, o_.checkpoints_total_limit);
    checkpoints_->remove_stale_partials();
  }
  if (o_.write_outputs && !o_.resume) {
    std::error_code ec;
    auto existing = checkpoints_->latest();
    if (existing || fs::exists(out / "train_log.jsonl", ec))
      throw InvalidArgument("output folder '" + out.string() + "' already holds a training run" +
                            (existing ? " (" + existing->filename().string() + ")" : std::string()) +
                            ": pass --resume to continue it, or choose another --output");
  }

  // ---- what trains: the transformer (and the text encoder with --train-text-encoder).
  c_.vqvae->eval();
  for (auto& p : c_.vqvae->parameters()) p.set_requires_grad(false);
  trainable_ = Trainable();
  if (o_.lora) {
    // train_amused.py --use_lora: peft adapters, base weights frozen (no gradients, no optimizer
    // state); A drawn from the global generator seeded above, B = 0 (peft's init).
    nn::LoraConfig lc;
    lc.rank = o_.lora_rank;
    lc.alpha = o_.lora_alpha;
    lc.target_modules = o_.lora_targets;
    if (o_.mixed_precision != "no") {
      // Under autocast the frozen base weights are only read as 16-bit operands of the products
      // (autocast rounds the float32 weight to bfloat16/float16 in every forward): storing the
      // Linear/Conv weights in 16 bits once gives the same operands at half their memory. Norms,
      // biases, embeddings and the float32-kept heads stay float32; the adapters are float32.
      const auto low = o_.mixed_precision == "fp16" ? torch::kFloat16 : torch::kBFloat16;
      for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(c_.transformer.get()),
                                   static_cast<torch::nn::Module*>(c_.text_encoder.get())}) {
        auto plan = nn::mixed_precision_plan(*m, low);
        for (const auto& item : m->named_modules("", false))
          if (item.value()->as<nn::EmbeddingImpl>()) plan.erase(item.key() + ".weight");
        io::LoadOptions lo;
        lo.dtype_for = [plan](const std::string& key, const torch::Tensor&) -> std::optional<torch::ScalarType> {
          auto it = plan.find(key);
          if (it == plan.end()) return std::nullopt;
          return it->second;
        };
        io::convert_parameters(*m, lo);
      }
    }
    const auto layers = nn::add_lora_adapters(*c_.transformer, lc, "transformer");
    nn::freeze_all_but_lora(*c_.transformer);
    int64_t n = 0;
    for (const auto& [k, t] : nn::lora_parameters(*c_.transformer)) n += t.numel();
    if (o_.train_text_encoder) {
      lc.target_modules = {"q_proj", "k_proj", "v_proj", "out_proj"};  // text_encoder_lora_config
      nn::add_lora_adapters(*c_.text_encoder, lc, "text encoder");
      nn::freeze_all_but_lora(*c_.text_encoder);
      for (const auto& [k, t] : nn::lora_parameters(*c_.text_encoder)) n += t.numel();
    }
    log::info("LoRA: rank " + std::to_string(o_.lora_rank) + ", alpha " + fmt(o_.lora_alpha) + " (scale " +
              fmt(o_.lora_alpha / static_cast<double>(o_.lora_rank)) + ") on " + std::to_string(layers.size()) +
              " transformer layers" + (o_.train_text_encoder ? " and the text encoder's attention" : "") + ": " +
              std::to_string(n) + " trainable parameters");
  }
  trainable_->register_module("transformer", c_.transformer.ptr());
  c_.transformer->train();
  c_.transformer->gradient_checkpointing = o_.gradient_checkpointing;
  if (o_.train_text_encoder) {
    trainable_->register_module("text_encoder", c_.text_encoder.ptr());
    c_.text_encoder->train();
  } else {
    c_.text_encoder->eval();
    for (auto& p : c_.text_encoder->parameters()) p.set_requires_grad(false);
  }
  AdamWOptions ao;
  ao.lr = o_.learning_rate;
  if (o_.scale_lr) ao.lr *= static_cast<double>(o_.batch_size * o_.gradient_accumulation_steps);
  ao.beta1 = o_.adam_beta1;
  ao.beta2 = o_.adam_beta2;
  ao.weight_decay = o_.adam_weight_decay;
  ao.eps = o_.adam_epsilon;
  ao.fused = true;
  o_.learning_rate = ao.lr;
  optimizer_ = make_adamw(*trainable_, ao);
  if (o_.use_ema) {
    EmaOptions eo;
    eo.decay = o_.ema_decay;
    ema_ = std::make_unique<EmaModel>(*c_.transformer, eo);
  }
  mask_gen_ = make_cpu_generator(o_.seed);
  py_random_ = std::make_unique<PythonRandom>(static_cast<int64_t>(o_.seed));
}

torch::Tensor TrainerImpl::encode_tokens(const Batch& batch, const std::vector<Sample>& samples) {
  const int64_t B = static_cast<int64_t>(samples.size());
  std::vector<int64_t> missing;
  for (int64_t i = 0; i < B; ++i)
    if (!o_.pre_encode || !cache_.count(samples[static_cast<size_t>(i)].id)) missing.push_back(i);
  torch::Tensor fresh;
  if (!missing.empty()) {
    nn::ExecutionScope inference(nn::ExecutionMode::kInference);  // frozen VQ-GAN: no autograd
    auto idx = torch::tensor(missing, torch::kInt64);
    auto pixels = batch.pixel_values.index_select(0, idx).to(device_);
    // train_amused.py: vq_model.quantize(vq_model.encode(pixel_values).latents)[2][2].reshape(B, -1)
    fresh = c_.vqvae->quantize_indices(c_.vqvae->encode(pixels)).reshape({static_cast<int64_t>(missing.size()), -1});
  }
  std::vector<torch::Tensor> rows(static_cast<size_t>(B));
  for (size_t k = 0; k < missing.size(); ++k) {
    rows[static_cast<size_t>(missing[k])] = fresh[static_cast<int64_t>(k)];
    if (o_.pre_encode) cache_[samples[static_cast<size_t>(missing[k])].id].tokens = fresh[static_cast<int64_t>(k)];
  }
  for (int64_t i = 0; i < B; ++i)
    if (!rows[static_cast<size_t>(i)].defined()) rows[static_cast<size_t>(i)] = cache_.at(samples[static_cast<size_t>(i)].id).tokens;
  return torch::stack(rows);  // [B, L]
}

TextConditioning TrainerImpl::encode_text(const Batch& batch, const std::vector<Sample>& samples) {
  if (o_.train_text_encoder) {
    // The text encoder trains: encode with autograd (train_amused.py --train_text_encoder).
    return encode_ids(c_.text_encoder, tokenize_captions(*c_.tokenizer, batch.captions));
  }
  if (!o_.pre_encode) return encode_captions(*c_.tokenizer, c_.text_encoder, batch.captions);
  // Keyed by the caption: an image with several captions (a list in metadata.jsonl) gets another
  // one each epoch.
  std::vector<std::string> todo;
  for (const auto& s : samples)
    if (!text_cache_.count(s.caption) && std::find(todo.begin(), todo.end(), s.caption) == todo.end())
      todo.push_back(s.caption);
  if (!todo.empty()) {
    auto t = encode_captions(*c_.tokenizer, c_.text_encoder, todo);
    for (size_t k = 0; k < todo.size(); ++k) {
      auto& e = text_cache_[todo[k]];
      e.encoder_hidden_states = t.encoder_hidden_states[static_cast<int64_t>(k)];
      e.cond_embeds = t.cond_embeds[static_cast<int64_t>(k)];
    }
  }
  TextConditioning t;
  std::vector<torch::Tensor> ehs, pooled;
  for (const auto& s : samples) {
    ehs.push_back(text_cache_.at(s.caption).encoder_hidden_states);
    pooled.push_back(text_cache_.at(s.caption).cond_embeds);
  }
  t.encoder_hidden_states = torch::stack(ehs);
  t.cond_embeds = torch::stack(pooled);
  return t;
}

void TrainerImpl::write_checkpoint(int64_t step, double elapsed_seconds) {
  const auto t0 = Clock::now();
  const fs::path dir = checkpoints_->save(step, [&](const fs::path& d) {
    if (o_.lora) {
      save_lora(d);
    } else {
      fs::create_directories(d / "transformer");
      io::write_file_atomic(d / "transformer" / "config.json",
                            transformer_config_file(c_.transformer->config()).dump(2) + "\n");
      save_weights(*c_.transformer, d / "transformer", "diffusion_pytorch_model");
      if (o_.train_text_encoder) {
        fs::create_directories(d / "text_encoder");
        io::write_file_atomic(d / "text_encoder" / "config.json",
                              text_encoder_config_file(c_.text_encoder->config(), torch::kFloat32).dump(2) + "\n");
        save_weights(*c_.text_encoder, d / "text_encoder", "model");
      }
    }
    io::save_safetensors(d / "optimizer.safetensors", adamw_state(*optimizer_, trainable_named(*trainable_)),
                         {{"format", "amused-adamw/1"}});
    if (ema_) {
      io::StateDict e(ema_->shadow_params().begin(), ema_->shadow_params().end());
      io::save_safetensors(d / "ema.safetensors", e,
                           {{"optimization_step", std::to_string(ema_->optimization_step())}});
    }
    const auto py = py_random_->state();
    auto mt = torch::empty({624}, torch::kInt64);
    for (int i = 0; i < 624; ++i) mt[i] = static_cast<int64_t>(py.mt[static_cast<size_t>(i)]);
    io::save_safetensors(d / "random_states.safetensors",
                         {{"masking_generator", generator_state(mask_gen_)},
                          {"python_random_mt", mt},
                          {"python_random_index", torch::tensor({static_cast<int64_t>(py.index)}, torch::kInt64)}});
    nlohmann::json state = {{"step", step},
                            {"data_position", to_json(data_->position())},
                            {"loss_smoothed", loss_smoothed_},
                            {"loss_weight_sum", loss_weight_sum_},
                            {"elapsed_seconds", elapsed_seconds},
                            {"amused_version", version()}};
    io::write_file_atomic(d / kTrainerStateFile, state.dump(2) + "\n");  // last: marks it complete
  });
  log::info("checkpoint " + dir.string() + " written in " + fmt(std::round(seconds_since(t0) * 100) / 100) + " s");
}

// diffusers' save_lora_weights layout; alpha and rank go into the metadata too (diffusers ignores
// them and loads with scale 1: docs/training.md).
void TrainerImpl::save_lora(const fs::path& dir) {
  io::LoraSaveInfo info;
  info.rank = o_.lora_rank;
  info.alpha = o_.lora_alpha;
  std::map<std::string, torch::Tensor> te;
  if (o_.train_text_encoder) {
    te = nn::lora_parameters(*c_.text_encoder);
    info.text_encoder_rank = o_.lora_rank;
    info.text_encoder_alpha = o_.lora_alpha;
  }
  io::save_lora_file(dir, nn::lora_parameters(*c_.transformer), te, info);
}

void TrainerImpl::restore(const fs::path& ckpt) {
  const auto state = read_json_file(ckpt / kTrainerStateFile);
  step_ = state.at("step").get<int64_t>();
  if (o_.lora) {
    const fs::path f = ckpt / io::kLoraWeightsFile;
    if (!fs::is_regular_file(f))
      throw CheckpointError("checkpoint '" + ckpt.string() + "' has no " + io::kLoraWeightsFile +
                            ": it was written without --lora");
    auto file = io::load_safetensors(f);
    torch::NoGradGuard no_grad;
    auto fill = [&](const torch::nn::Module& m, const std::string& prefix) {
      for (auto& [k, p] : nn::lora_parameters(m)) {
        auto it = file.find(prefix + k);
        if (it == file.end())
          throw CheckpointError("checkpoint '" + f.string() + "' has no '" + prefix + k +
                                "' (was it written with other --lora-rank / --lora-targets / --train-text-encoder?)");
        if (it->second.sizes() != p.sizes())
          throw CheckpointError("checkpoint '" + f.string() + "': '" + prefix + k +
                                "' has another shape than this run's adapter (other --lora-rank?)");
        p.copy_(it->second);
      }
    };
    fill(*c_.transformer, "transformer.");
    if (o_.train_text_encoder) fill(*c_.text_encoder, "text_encoder.");
  } else {
    io::LoadOptions lo;
    lo.dtype = torch::kFloat32;
    lo.device = device_;
    lo.zero_copy = false;
    io::load_state_dict(*c_.transformer, io::folder_weights(ckpt / "transformer"), (ckpt / "transformer").string(), lo);
    if (o_.train_text_encoder) {
      if (!fs::is_directory(ckpt / "text_encoder"))
        throw CheckpointError("checkpoint '" + ckpt.string() +
                              "' has no text_encoder/: it was written without --train-text-encoder");
      io::load_state_dict(*c_.text_encoder, io::folder_weights(ckpt / "text_encoder"),
                          (ckpt / "text_encoder").string(), lo);
    }
  }
  load_adamw_state(*optimizer_, trainable_named(*trainable_), io::load_safetensors(ckpt / "optimizer.safetensors"),
                   (ckpt / "optimizer.safetensors").string());
  if (ema_) {
    const fs::path f = ckpt / "ema.safetensors";
    if (!fs::is_regular_file(f))
      throw CheckpointError("checkpoint '" + ckpt.string() + "' has no ema.safetensors: it was written without --use-ema");
    auto file = io::SafeTensorsFile::open(f);
    std::map<std::string, torch::Tensor> shadow;
    for (auto& [k, t] : file->tensors()) shadow.emplace(k, t.clone());
    ema_->load_state(shadow, std::stoll(file->metadata().at("optimization_step")));
  }
  const auto rs = io::load_safetensors(ckpt / "random_states.safetensors");
  set_generator_state(mask_gen_, rs.at("masking_generator"));
  PythonRandom::State py;
  const auto mt = rs.at("python_random_mt").contiguous();
  for (int i = 0; i < 624; ++i) py.mt[static_cast<size_t>(i)] = static_cast<uint32_t>(mt[i].item<int64_t>());
  py.index = static_cast<int>(rs.at("python_random_index").item<int64_t>());
  py_random_->set_state(py);
  data_->seek(data_position_from_json(state.at("data_position")));
  loss_smoothed_ = state.at("loss_smoothed").get<double>();
  loss_weight_sum_ = state.at("loss_weight_sum").get<double>();
  elapsed_before_ = state.at("elapsed_seconds").get<double>();
  resumed_from_ = step_;
}

fs::path TrainerImpl::write_validation(int64_t step) {
  const fs::path dir = fs::path(o_.output) / "validation" / ("step-" + std::to_string(step));
  fs::create_directories(dir);
  if (ema_) {
    ema_->store(*c_.transformer);
    ema_->copy_to(*c_.transformer);
  }
  c_.transformer->eval();
  c_.text_encoder->eval();
  try {
    auto pipe = PipelineAccess::from_components(c_, device_);
    for (size_t i = 0; i < o_.validation_prompts.size(); ++i) {
      TextToImageParams p;
      p.prompts = {o_.validation_prompts[i]};
      p.seed = o_.seed;
      auto r = pipe->text_to_image(p);
      save_png(dir / (std::to_string(i) + ".png"), r.images[0],
               {{"prompt", o_.validation_prompts[i]}, {"step", std::to_string(step)}});
    }
  } catch (...) {
    if (ema_) ema_->restore(*c_.transformer);
    c_.transformer->train();
    if (o_.train_text_encoder) c_.text_encoder->train();
    throw;
  }
  if (ema_) ema_->restore(*c_.transformer);
  c_.transformer->train();
  if (o_.train_text_encoder) c_.text_encoder->train();
  return dir;
}

void TrainerImpl::write_plot() {
  const std::vector<PlotSeries> series = {
      {"loss", loss_history_, "#9ecae1", 0, 1.0, 0.8},
      {"loss (smoothed)", ema_smooth(loss_history_, 0.9), "#08519c", 0, 2.0, 1.0},
      {"learning rate", lr_history_, "#e6550d", 1, 1.5, 1.0}};
  PlotOptions po;
  po.title = "training loss: " + fs::path(o_.output).filename().string();
  write_plot_svg(fs::path(o_.output) / "loss.svg", series, po);
}

TrainSummary TrainerImpl::run(const TrainCallback& progress) {
  const auto t_start = Clock::now();
  const fs::path out(o_.output);
  std::optional<fs::path> resume_from;
  if (o_.resume) {
    resume_from = checkpoints_->latest();
    if (!resume_from) log::info("--resume: no checkpoint in '" + out.string() + "'; starting a new run");
  }
  if (resume_from) {
    restore(*resume_from);
    log::info("resumed from " + resume_from->string() + " at step " + std::to_string(step_));
  }
  std::optional<StepLog> step_log;
  if (o_.write_outputs) step_log.emplace(out / "train_log.jsonl", resume_from ? step_ : -1);
  if (step_log && resume_from) {
    const auto records = read_step_log(step_log->path());
    loss_history_ = series_from_log(records, "loss");
    lr_history_ = series_from_log(records, "lr");
  } else if (step_log) {
    nlohmann::json header = {{"run", "amused train"}, {"amused_version", version()}, {"model", o_.model},
                             {"data", o_.data}, {"pretraining", pretraining_}};
    step_log->append_header(header);
  }

  // The empty caption's conditioning, the replacement of conditioning dropout (train_amused.py
  // encodes "" once before the loop).
  // (A trained text encoder changes them: then they are encoded again at every step, below.)
  if (o_.cond_dropout_prob > 0 && !o_.train_text_encoder)
    empty_ = encode_captions(*c_.tokenizer, c_.text_encoder, {""});

  const bool autocast = o_.mixed_precision != "no";
  const auto autocast_dtype = o_.mixed_precision == "fp16" ? torch::kFloat16 : torch::kBFloat16;
  const auto t_loop = Clock::now();
  const int64_t start_step = step_;
  double last_loss = std::nan("");
  bool stopped = false;
  nn::ExecutionScope training_mode(nn::ExecutionMode::kTraining);
  while (step_ < o_.max_steps) {
    const auto t_step = Clock::now();
    double step_loss = 0;
    TrainProgress p;
    for (int64_t micro = 0; micro < o_.gradient_accumulation_steps; ++micro) {
      auto t = Clock::now();
      const auto samples = data_->next_batch(o_.batch_size);
      const Batch batch = collate(samples);
      p.data_seconds += seconds_since(t);
      t = Clock::now();
      const torch::Tensor image_tokens = encode_tokens(batch, samples);  // [B, L]
      TextConditioning cond = encode_text(batch, samples);
      p.encode_seconds += seconds_since(t);
      t = Clock::now();
      // Masking: torch.rand(B), torch.rand(B, L) (and open-muse's rectangles from Python's random).
      MaskedBatch masked =
          o_.mask_contiguous_region_prob > 0
              ? mask_tokens_open_muse(image_tokens.cpu(), mask_id_, o_.min_masking_rate,
                                      o_.mask_contiguous_region_prob, mask_gen_, *py_random_, h_, w_)
              : mask_tokens(image_tokens.cpu(), mask_id_, o_.min_masking_rate, mask_gen_, h_, w_);
      torch::Tensor ehs = cond.encoder_hidden_states, pooled = cond.cond_embeds;
      if (o_.cond_dropout_prob > 0) {
        TextConditioning empty = empty_;
        if (o_.train_text_encoder) empty = encode_captions(*c_.tokenizer, c_.text_encoder, {""});
        auto dropped = apply_cond_dropout(ehs, pooled, empty.encoder_hidden_states, empty.cond_embeds,
                                          o_.cond_dropout_prob, mask_gen_);
        ehs = dropped.encoder_hidden_states;
        pooled = dropped.cond_embeds;
      }
      torch::Tensor loss;
      {
        AutocastScope amp(autocast, device_, autocast_dtype);
        auto logits = c_.transformer->forward(masked.input_ids.to(device_), ehs, pooled,
                                              batch.micro_conds.to(device_));  // [B, K, h, w]
        loss = masked_token_loss(logits.to(torch::kFloat32), masked.labels.to(device_), o_.label_smoothing);
      }
      step_loss += loss.item<double>() / static_cast<double>(o_.gradient_accumulation_steps);
      p.forward_seconds += seconds_since(t);
      t = Clock::now();
      (loss / static_cast<double>(o_.gradient_accumulation_steps)).backward();
      p.backward_seconds += seconds_since(t);
    }
    const auto t_update = Clock::now();
    std::vector<torch::Tensor> params;
    for (auto& [name, p] : trainable_named(*trainable_)) {
      params.push_back(p);
      if (!p.grad().defined() && keep_gradients_) {
        keep_gradients_ = false;  // zeroed memory would make AdamW move it; free gradients instead
        log::info("parameter '" + name + "' got no gradient: gradients are freed between steps");
      }
    }
    double grad_norm = 0;
    if (o_.max_grad_norm > 0) {
      grad_norm = clip_grad_norm(params, o_.max_grad_norm);
    } else {
      // The norm clipping would use (one pass per gradient, no copies): logged, not applied.
      torch::NoGradGuard no_grad;
      double sq = 0;
      for (const auto& p : params) {
        if (!p.grad().defined()) continue;
        const double n = p.grad().norm().item<double>();
        sq += n * n;
      }
      grad_norm = std::sqrt(sq);
    }
    const double lr = lr_at(step_, o_.learning_rate, schedule_, o_.lr_warmup_steps, o_.max_steps);
    set_lr(*optimizer_, lr);
    optimizer_->step();
    // Gradients are zeroed in place rather than freed (set_to_none), so each backward accumulates
    // into the same memory instead of faulting in 2.4 GB of fresh pages (amused-256: backward
    // 4.3 -> 3.2 s). The update is the same as set_to_none's as long as every trained parameter
    // gets a gradient at every step, which the first step checks; if one does not, the run frees
    // them as the reference does.
    if (keep_gradients_) {
      optimizer_->zero_grad();
    } else {
      zero_grad(*optimizer_);
    }
    if (ema_) ema_->step(*c_.transformer);
    p.update_seconds = seconds_since(t_update);
    ++step_;
    last_loss = step_loss;
    loss_weight_sum_ = 0.98 * loss_weight_sum_ + 0.02;
    loss_smoothed_ = 0.98 * loss_smoothed_ + 0.02 * step_loss;

    p.step = step_;
    p.max_steps = o_.max_steps;
    p.epoch = data_->position().epoch;
    p.loss = step_loss;
    p.loss_smoothed = loss_weight_sum_ > 0 ? loss_smoothed_ / loss_weight_sum_ : step_loss;
    p.learning_rate = lr;
    p.grad_norm = grad_norm;
    p.step_seconds = seconds_since(t_step);
    const double elapsed = seconds_since(t_loop);
    const double per_step = elapsed / static_cast<double>(step_ - start_step);
    p.samples_per_second = static_cast<double>(o_.batch_size * o_.gradient_accumulation_steps) / per_step;
    p.elapsed_seconds = elapsed_before_ + elapsed;
    p.eta_seconds = per_step * static_cast<double>(o_.max_steps - step_);
    loss_history_.emplace_back(static_cast<double>(step_), step_loss);
    lr_history_.emplace_back(static_cast<double>(step_), lr);
    if (step_log && (step_ % o_.logging_steps == 0 || step_ == o_.max_steps)) {
      step_log->append({{"step", step_},
                       {"epoch", p.epoch},
                       {"loss", step_loss},
                       {"loss_smoothed", p.loss_smoothed},
                       {"lr", lr},
                       {"grad_norm", grad_norm},
                       {"step_seconds", p.step_seconds},
                       {"data_seconds", p.data_seconds},
                       {"encode_seconds", p.encode_seconds},
                       {"forward_seconds", p.forward_seconds},
                       {"backward_seconds", p.backward_seconds},
                       {"update_seconds", p.update_seconds},
                       {"samples_per_second", p.samples_per_second},
                       {"elapsed_seconds", p.elapsed_seconds},
                       {"peak_rss_mib", peak_rss_mib()}});
    }
    if (!std::isfinite(step_loss))
      throw Error("the loss became " + fmt(step_loss) + " at step " + std::to_string(step_) +
                  " (learning rate too high? try a lower --learning-rate or --max-grad-norm 1); the last "
                  "checkpoint is intact");
    const bool keep_going = !progress || progress(p);
    if (!keep_going) stopped = true;
    const bool checkpoint_now =
        o_.write_outputs && (step_ % o_.checkpointing_steps == 0 || step_ == o_.max_steps || stopped);
    if (checkpoint_now) {
      write_checkpoint(step_, elapsed_before_ + seconds_since(t_loop));
      write_plot();
    }
    if (o_.write_outputs && o_.validation_steps > 0 && !o_.validation_prompts.empty() &&
        step_ % o_.validation_steps == 0)
      write_validation(step_);
    if (stopped) break;
  }

  TrainSummary s;
  s.steps = step_;
  s.resumed_from = resumed_from_;
  // Resumed at the last step: no step ran here; the log has the run's final loss.
  if (std::isnan(last_loss) && o_.write_outputs) last_loss = last_logged_value(out / "train_log.jsonl", "loss");
  s.final_loss = last_loss;
  s.output = out.string();
  if (!stopped && o_.write_outputs) {
    if (!o_.validation_prompts.empty() && (o_.validation_steps == 0 || step_ % o_.validation_steps != 0))
      write_validation(step_);
    // train_amused.py: the EMA weights (when used) go into the saved model.
    if (ema_) ema_->copy_to(*c_.transformer);
    c_.transformer->eval();
    c_.text_encoder->eval();
    if (o_.lora) {
      save_lora(out);
      log::info("saved the LoRA to '" + (out / io::kLoraWeightsFile).string() + "' (load it with amused generate --lora)");
    } else {
      save_pretrained(c_, out);
      log::info("saved the trained pipeline to '" + out.string() + "'");
    }
    write_plot();
  }
  s.seconds = seconds_since(t_start);
  s.peak_rss_mib = peak_rss_mib();
  return s;
}

}  // namespace
}  // namespace training

std::unique_ptr<Trainer> Trainer::create(const TrainOptions& options) {
  return std::make_unique<training::TrainerImpl>(options);
}

}  // namespace amused
