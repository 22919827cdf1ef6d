// amused::VQTrainer: training diffusers' VQModel (aMUSEd's VQ-GAN) from scratch or from a trained
// one, with the run keeping of amused::Trainer (atomic checkpoints, exact resume, JSONL log, loss
// plot) and validation metrics. One step, in order:
//   1. z = quant_conv(encoder(x)); dead codes restarted from rows of z (all codes at step 1 of a
//      model started from scratch: the codebook is initialised from data);
//   2. straight-through quantisation; x_rec = decoder(post_quant_conv(z_q));
//   3. loss = l1 |x_rec - x| + l2 (x_rec - x)^2 + commitment ||z - sg(z_q)||^2
//             [+ codebook ||sg(z) - z_q||^2 with gradient updates] [+ disc_weight * -mean(D(x_rec))];
//      backward, optional clipping, AdamW;
//   4. the EMA codebook update from (z, indices); the discriminator's hinge step once active.
// Ref: see include/amused/train_vq.h.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>
#include <sstream>

#include "amused/amused.h"
#include "amused/image_io.h"
#include "amused/system.h"
#include "amused/train_vq.h"
#include "core/config.h"
#include "core/log.h"
#include "core/threads.h"
#include "io/atomic_file.h"
#include "io/diffusers_repo.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "nn/execution.h"
#include "pipelines/components.h"
#include "pipelines/pipeline_amused.h"
#include "schedulers/scheduling_amused.h"
#include "training/checkpoint.h"
#include "training/dataset.h"
#include "training/optimizer.h"
#include "training/run_log.h"
#include "training/vq_objective.h"

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

void check_weight(const char* flag, double v) {
  if (!std::isfinite(v) || v < 0) throw InvalidArgument(std::string(flag) + " must be >= 0, got " + fmt(v));
}

void validate(const VQTrainOptions& o) {
  if (o.data.empty()) throw InvalidArgument("no training data given (--data: an image folder or .tar shards)");
  if (o.output.empty() && o.write_outputs) throw InvalidArgument("no output folder given (--output)");
  if (o.resume && !o.write_outputs) throw InvalidArgument("resuming needs the run's outputs (write_outputs)");
  if (o.max_steps < 1) throw InvalidArgument("--max-steps must be at least 1, got " + std::to_string(o.max_steps));
  if (o.batch_size < 1) throw InvalidArgument("--batch-size must be at least 1, got " + std::to_string(o.batch_size));
  if (!(std::isfinite(o.learning_rate) && o.learning_rate > 0))
    throw InvalidArgument("--learning-rate must be a positive number, got " + fmt(o.learning_rate));
  parse_lr_schedule(o.lr_scheduler);  // throws, naming the choices
  if (o.lr_warmup_steps < 0)
    throw InvalidArgument("--lr-warmup-steps must be >= 0, got " + std::to_string(o.lr_warmup_steps));
  if (!(std::isfinite(o.disc_learning_rate) && o.disc_learning_rate >= 0))
    throw InvalidArgument("--disc-learning-rate must be >= 0 (0: --learning-rate), got " + fmt(o.disc_learning_rate));
  if (o.resolution < 1) throw InvalidArgument("--resolution must be positive, got " + std::to_string(o.resolution));
  check_weight("--l1-weight", o.l1_weight);
  check_weight("--l2-weight", o.l2_weight);
  if (o.l1_weight == 0 && o.l2_weight == 0)
    throw InvalidArgument("--l1-weight and --l2-weight are both 0: the model would learn no reconstruction");
  check_weight("--commitment-weight", o.commitment_weight);
  check_weight("--codebook-weight", o.codebook_weight);
  check_weight("--disc-weight", o.disc_weight);
  check_weight("--max-grad-norm", o.max_grad_norm);
  check_weight("--adam-weight-decay", o.adam_weight_decay);
  if (o.codebook_update != "ema" && o.codebook_update != "gradient")
    throw InvalidArgument("--codebook-update '" + o.codebook_update + "' is unknown (ema or gradient)");
  if (!(o.ema_decay > 0 && o.ema_decay < 1)) throw InvalidArgument("--ema-decay must be in (0, 1), got " + fmt(o.ema_decay));
  for (const auto& [flag, v] : {std::pair{"--adam-beta1", o.adam_beta1}, std::pair{"--adam-beta2", o.adam_beta2}})
    if (!(v >= 0 && v < 1)) throw InvalidArgument(std::string(flag) + " must be in [0, 1), got " + fmt(v));
  if (!(o.adam_epsilon > 0)) throw InvalidArgument("--adam-epsilon must be > 0");
  if (o.dead_code_steps < 0) throw InvalidArgument("--dead-code-steps must be >= 0 (0: no restarts)");
  if (o.disc_start < 0) throw InvalidArgument("--disc-start must be >= 0");
  if (o.disc_layers < 1 || o.disc_layers > 6) throw InvalidArgument("--disc-layers must be in 1..6");
  if (o.disc_channels < 1) throw InvalidArgument("--disc-channels must be >= 1");
  if (!(o.validation_fraction >= 0 && o.validation_fraction < 1))
    throw InvalidArgument("--validation-fraction must be in [0, 1), got " + fmt(o.validation_fraction));
  if (o.max_validation_images < 1) throw InvalidArgument("--max-validation-images must be >= 1");
  if (o.num_validation_samples < 0) throw InvalidArgument("--num-validation-samples must be >= 0");
  if (o.checkpointing_steps < 1) throw InvalidArgument("--checkpointing-steps must be at least 1");
  if (o.logging_steps < 1) throw InvalidArgument("--logging-steps must be at least 1");
  if (o.validation_steps < 0) throw InvalidArgument("--validation-steps must be >= 0 (0: only at the end)");
  parse_bad_sample_policy(o.on_bad_sample);
}

// The config of a VQ built from the architecture options (aMUSEd's VQ family).
models::VQModelConfig config_from_options(const VQTrainOptions& o) {
  models::VQModelConfig c;
  const size_t n = o.block_out_channels.size();
  c.block_out_channels = o.block_out_channels;
  c.down_block_types.assign(n, "DownEncoderBlock2D");
  c.up_block_types.assign(n, "UpDecoderBlock2D");
  c.layers_per_block = o.layers_per_block;
  c.latent_channels = o.latent_channels;
  c.num_vq_embeddings = o.num_vq_embeddings;
  c.norm_num_groups = o.norm_num_groups;
  c.sample_size = o.resolution;
  c.mid_block_add_attention = false;
  c.lookup_from_codebook = true;
  c.force_upcast = true;
  c.validate("the VQ config built from --block-out-channels, --layers-per-block, --latent-channels, "
             "--num-vq-embeddings, --norm-num-groups");
  return c;
}

bool has_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// The VQ folder `-m` names: itself (config.json) or its vqvae/ (a pipeline); empty for a file.
fs::path vq_folder_of(const std::string& model) {
  const fs::path p(model);
  std::error_code ec;
  if (fs::is_regular_file(p, ec)) return {};
  if (!fs::is_directory(p, ec))
    throw IoError("-m '" + model + "' does not exist (give a VQ folder, a pipeline folder or a config.json)");
  if (has_file(p / "config.json")) return p;
  if (has_file(p / "vqvae" / "config.json")) return p / "vqvae";
  throw ConfigError("-m '" + model + "' has neither config.json nor vqvae/config.json (give a VQ folder, a "
                    "pipeline folder or a config.json)");
}

using NamedParams = std::vector<std::pair<std::string, torch::Tensor>>;
NamedParams trainable_named(const torch::nn::Module& m) {
  NamedParams out;
  for (const auto& p : m.named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  return out;
}

// Parameters and buffers (BatchNorm statistics) of a module, by name, as CPU copies.
io::StateDict full_state(const torch::nn::Module& m) {
  io::StateDict out;
  for (const auto& p : m.named_parameters()) out.emplace(p.key(), p.value().detach().cpu().clone());
  for (const auto& b : m.named_buffers()) out.emplace(b.key(), b.value().detach().cpu().clone());
  return out;
}
void load_full_state(torch::nn::Module& m, const io::StateDict& s, const std::string& source) {
  torch::NoGradGuard no_grad;
  auto put = [&](const std::string& key, torch::Tensor& t) {
    const auto it = s.find(key);
    if (it == s.end()) throw CheckpointError("'" + source + "' has no tensor '" + key + "'");
    if (it->second.sizes() != t.sizes()) throw CheckpointError("'" + source + "': tensor '" + key + "' has another shape");
    t.copy_(it->second);
  };
  for (auto& p : m.named_parameters()) put(p.key(), p.value());
  for (auto& b : m.named_buffers()) put(b.key(), b.value());
}

class VQTrainerImpl final : public VQTrainer {
 public:
  explicit VQTrainerImpl(const VQTrainOptions& options);
  VQTrainSummary run(const VQTrainCallback& progress) override;
  const VQTrainOptions& options() const override { return o_; }

 private:
  void write_checkpoint(int64_t step, double elapsed_seconds);
  void restore(const fs::path& checkpoint);
  VQValidation validate_now(int64_t step);
  void write_plot();
  bool disc_active(int64_t step) const { return disc_ && step > o_.disc_start; }

  VQTrainOptions o_;
  torch::Device device_{torch::kCPU};
  models::VQModel vq_{nullptr};
  bool from_scratch_ = false;
  bool ema_codebook_ = true;
  std::unique_ptr<ImageCaptionDataset> data_;
  torch::Tensor val_images_;  // [V, 3, H, W] in [0, 1]
  std::unique_ptr<CheckpointManager> checkpoints_;
  std::unique_ptr<torch::optim::AdamW> optimizer_, disc_optimizer_;
  NLayerDiscriminator disc_{nullptr};
  CodebookState codebook_;
  at::Generator gen_;
  int64_t step_ = 0;
  double loss_smoothed_ = 0, loss_weight_sum_ = 0, elapsed_before_ = 0;
  int64_t resumed_from_ = 0;
  std::vector<std::pair<double, double>> loss_history_, rec_history_, psnr_history_;
};

VQTrainerImpl::VQTrainerImpl(const VQTrainOptions& options) : o_(options) {
  validate(o_);
  configure_threads_for_load(o_.threads);
  device_ = to_torch_device(Device::parse(o_.device));
  ema_codebook_ = o_.codebook_update == "ema";

  // ---- model: a VQ folder with weights (continue), or a config (from scratch).
  torch::manual_seed(o_.seed);
  if (o_.model.empty()) {
    vq_ = models::VQModel(config_from_options(o_), "VQ config from flags");
    from_scratch_ = true;
  } else {
    const fs::path folder = vq_folder_of(o_.model);
    const fs::path config_path = folder.empty() ? fs::path(o_.model) : folder / "config.json";
    auto config = models::VQModelConfig::from_json(read_json_file(config_path), config_path.string());
    from_scratch_ = folder.empty() || !has_file(folder / "diffusion_pytorch_model.safetensors");
    if (from_scratch_) {
      vq_ = models::VQModel(config, config_path.string());
    } else {
      ComponentOptions co;
      co.device = device_;
      co.precision = Precision::kFloat32;
      vq_ = load_vqvae(folder, co);
    }
  }
  if (from_scratch_) vq_->init_weights();
  vq_->to(device_);
  const int64_t f = vq_->scale_factor();
  if (o_.resolution % f != 0)
    throw InvalidArgument("--resolution " + std::to_string(o_.resolution) + " is not a multiple of " +
                          std::to_string(f) + ", the VQ's scale factor (2^(levels - 1) for " +
                          std::to_string(vq_->config().block_out_channels.size()) +
                          " block_out_channels); use " + std::to_string(std::max<int64_t>(f, o_.resolution / f * f)));
  log::info(std::string(from_scratch_ ? "training a VQ-GAN from scratch" : "continuing a trained VQ-GAN") + ": " +
            std::to_string(vq_->config().num_vq_embeddings) + " codes, " + std::to_string(o_.resolution) + " px -> " +
            std::to_string(o_.resolution / f) + "x" + std::to_string(o_.resolution / f) + " tokens");

  // ---- data: training images, and the validation images (kept in memory, centre-cropped).
  DatasetOptions d;
  d.data = o_.data;
  d.resolution = o_.resolution;
  d.crop = o_.center_crop ? CropMode::Center : CropMode::Random;
  d.random_flip = o_.random_flip;
  d.on_bad_sample = parse_bad_sample_policy(o_.on_bad_sample);
  d.require_captions = false;
  d.seed = o_.seed;
  DatasetOptions v = d;
  v.crop = CropMode::Center;
  v.random_flip = false;
  v.shuffle = false;
  if (o_.validation_data.empty()) {
    d.split = "train";
    d.holdout_fraction = o_.validation_fraction;
    v.split = "validation";
    v.holdout_fraction = o_.validation_fraction;
  } else {
    v.data = o_.validation_data;
  }
  try {
    data_ = ImageCaptionDataset::open(d);
  } catch (const Unsupported& e) {
    throw Unsupported(std::string(e.what()) + ": give the validation images with --validation-data");
  }
  log::info("data: " + data_->description());
  std::unique_ptr<ImageCaptionDataset> val;
  try {
    val = ImageCaptionDataset::open(v);
  } catch (const Error& e) {
    throw InvalidArgument(std::string("no validation images: ") + e.what() +
                          "; add \"split\": \"validation\" rows to metadata.jsonl, a --validation-fraction > 0 "
                          "(image folders), or --validation-data");
  }
  std::vector<Sample> val_samples;
  while (static_cast<int64_t>(val_samples.size()) < o_.max_validation_images) {
    Sample s = val->next();
    if (val->position().epoch > 0) break;  // read every image once
    val_samples.push_back(std::move(s));
  }
  val_images_ = collate(val_samples).pixel_values;
  log::info("validation: " + std::to_string(val_samples.size()) + " images of " + val->description());

  // ---- output
  const fs::path out(o_.output);
  uint64_t param_bytes = 0;
  for (const auto& p : vq_->parameters()) param_bytes += static_cast<uint64_t>(p.numel()) * 4;
  if (o_.write_outputs) {
    check_output_dir(out, 8 * param_bytes + (64u << 20));
    checkpoints_ = std::make_unique<CheckpointManager>(out, o_.checkpoints_total_limit);
    checkpoints_->remove_stale_partials();
    std::error_code ec;
    if (!o_.resume && (checkpoints_->latest() || fs::exists(out / "train_log.jsonl", ec)))
      throw InvalidArgument("output folder '" + out.string() +
                            "' already holds a training run: pass --resume to continue it, or choose another --output");
  }

  // ---- what trains: the VQ (its codebook by EMA or by gradient), and the discriminator.
  vq_->train();
  vq_->quantize->embedding->weight.set_requires_grad(!ema_codebook_);
  AdamWOptions ao;
  ao.lr = o_.learning_rate;
  ao.beta1 = o_.adam_beta1;
  ao.beta2 = o_.adam_beta2;
  ao.weight_decay = o_.adam_weight_decay;
  ao.eps = o_.adam_epsilon;
  ao.fused = true;
  optimizer_ = make_adamw(*vq_, ao);
  if (o_.disc_weight > 0) {
    disc_ = NLayerDiscriminator(vq_->config().out_channels, o_.disc_channels, o_.disc_layers);
    disc_->init_weights();
    disc_->to(device_);
    disc_->train();
    AdamWOptions dao = ao;
    if (o_.disc_learning_rate > 0) dao.lr = o_.disc_learning_rate;
    disc_optimizer_ = make_adamw(*disc_, dao);
  }
  codebook_ = CodebookState::init(vq_->quantize->embedding->weight);
  gen_ = make_cpu_generator(o_.seed);
}

void VQTrainerImpl::write_checkpoint(int64_t step, double elapsed_seconds) {
  checkpoints_->save(step, [&](const fs::path& d) {
    fs::create_directories(d / "vqvae");
    save_vqvae(vq_, d / "vqvae");
    io::save_safetensors(d / "optimizer.safetensors", adamw_state(*optimizer_, trainable_named(*vq_)),
                         {{"format", "amused-adamw/1"}});
    if (disc_) {
      io::save_safetensors(d / "discriminator.safetensors", full_state(*disc_));
      io::save_safetensors(d / "optimizer_discriminator.safetensors",
                           adamw_state(*disc_optimizer_, trainable_named(*disc_)), {{"format", "amused-adamw/1"}});
    }
    io::save_safetensors(d / "codebook_state.safetensors", {{"cluster_size", codebook_.cluster_size.cpu()},
                                                            {"embed_sum", codebook_.embed_sum.cpu()},
                                                            {"last_used", codebook_.last_used.cpu()}});
    io::save_safetensors(d / "random_states.safetensors", {{"generator", generator_state(gen_)}});
    const nlohmann::json state = {{"step", step},
                                  {"data_position", to_json(data_->position())},
                                  {"loss_smoothed", loss_smoothed_},
                                  {"loss_weight_sum", loss_weight_sum_},
                                  {"elapsed_seconds", elapsed_seconds},
                                  {"amused_version", version()}};
    io::write_file_atomic(d / kTrainerStateFile, state.dump(2) + "\n");  // last: marks it complete
  });
}

void VQTrainerImpl::restore(const fs::path& ckpt) {
  const auto state = read_json_file(ckpt / kTrainerStateFile);
  step_ = state.at("step").get<int64_t>();
  {
    io::LoadOptions lo;
    lo.dtype = torch::kFloat32;
    lo.device = device_;
    lo.zero_copy = false;
    io::load_state_dict(*vq_, io::folder_weights(ckpt / "vqvae"), (ckpt / "vqvae").string(), lo);
  }
  load_adamw_state(*optimizer_, trainable_named(*vq_), io::load_safetensors(ckpt / "optimizer.safetensors"),
                   (ckpt / "optimizer.safetensors").string());
  if (disc_) {
    const fs::path f = ckpt / "discriminator.safetensors";
    if (!has_file(f))
      throw CheckpointError("checkpoint '" + ckpt.string() + "' has no discriminator: it was written with --disc-weight 0");
    load_full_state(*disc_, io::load_safetensors(f), f.string());
    load_adamw_state(*disc_optimizer_, trainable_named(*disc_),
                     io::load_safetensors(ckpt / "optimizer_discriminator.safetensors"),
                     (ckpt / "optimizer_discriminator.safetensors").string());
  }
  const auto cb = io::load_safetensors(ckpt / "codebook_state.safetensors");
  codebook_.cluster_size.copy_(cb.at("cluster_size"));
  codebook_.embed_sum.copy_(cb.at("embed_sum"));
  codebook_.last_used.copy_(cb.at("last_used"));
  set_generator_state(gen_, io::load_safetensors(ckpt / "random_states.safetensors").at("generator"));
  data_->seek(data_position_from_json(state.at("data_position")));
  loss_smoothed_ = state.at("loss_smoothed").get<double>();
  loss_weight_sum_ = state.at("loss_weight_sum").get<double>();
  elapsed_before_ = state.at("elapsed_seconds").get<double>();
  resumed_from_ = step_;
}

VQValidation VQTrainerImpl::validate_now(int64_t step) {
  nn::ExecutionScope inference(nn::ExecutionMode::kInference);
  VQValidation r;
  const int64_t n = val_images_.size(0), K = vq_->config().num_vq_embeddings;
  auto counts = torch::zeros({K}, torch::kLong);
  double psnr_sum = 0, l1_sum = 0;
  std::vector<torch::Tensor> shown;
  for (int64_t i = 0; i < n; i += o_.batch_size) {
    const auto x = val_images_.narrow(0, i, std::min(o_.batch_size, n - i)).to(device_);
    const auto ids = vq_->quantize_indices(vq_->encode(x));  // [b, h, w]
    const auto rec = vq_->decode_tokens(ids).clamp(0.0, 1.0);
    counts += torch::bincount(ids.flatten().cpu(), {}, K);
    psnr_sum += psnr_per_image(rec, x).sum().item<double>();
    l1_sum += (rec - x).abs().flatten(1).mean(1).sum().item<double>();
    if (static_cast<int64_t>(shown.size()) * o_.batch_size < o_.num_validation_samples) shown.push_back(rec.cpu());
  }
  r.images = n;
  r.psnr = psnr_sum / static_cast<double>(n);
  r.l1 = l1_sum / static_cast<double>(n);
  const auto usage = code_usage(counts);
  r.codes_used = usage.codes_used;
  r.codebook_size = K;
  r.codebook_usage = usage.fraction;
  r.perplexity = usage.perplexity;
  const int64_t m = std::min(o_.num_validation_samples, n);
  if (o_.write_outputs && m > 0) {
    // Originals row above reconstructions row: [2, m, 3, H, W] -> [2H, mW, 3] uint8.
    const auto rec = torch::cat(shown).narrow(0, 0, m);
    const auto grid = torch::stack({val_images_.narrow(0, 0, m), rec});  // [2, m, 3, H, W]
    const int64_t H = grid.size(3), W = grid.size(4);
    // [2, m, 3, H, W] -> [2, H, m, W, 3] -> [2H, mW, 3]
    const auto pixels = grid.permute({0, 3, 1, 4, 2}).reshape({2 * H, m * W, 3}).mul(255.0).round().clamp(0, 255)
                            .to(torch::kUInt8).contiguous();
    Image im;
    im.width = static_cast<int>(m * W);
    im.height = static_cast<int>(2 * H);
    im.pixels.assign(pixels.data_ptr<uint8_t>(), pixels.data_ptr<uint8_t>() + pixels.numel());
    const fs::path dir = fs::path(o_.output) / "validation";
    fs::create_directories(dir);
    const fs::path file = dir / ("step-" + std::to_string(step) + ".png");
    io::write_file_atomic(file, encode_png(im, {{"step", std::to_string(step)}, {"psnr", fmt(r.psnr)}}));
    r.reconstructions = file.string();
  }
  return r;
}

void VQTrainerImpl::write_plot() {
  const std::vector<PlotSeries> series = {
      {"loss", loss_history_, "#9ecae1", 0, 1.0, 0.8},
      {"loss (smoothed)", ema_smooth(loss_history_, 0.9), "#08519c", 0, 2.0, 1.0},
      {"reconstruction (smoothed)", ema_smooth(rec_history_, 0.9), "#31a354", 0, 1.5, 1.0},
      {"validation PSNR", psnr_history_, "#e6550d", 1, 1.5, 1.0}};
  PlotOptions po;
  po.title = "VQ-GAN training: " + fs::path(o_.output).filename().string();
  po.log_y = true;
  po.lower_y_label = "validation PSNR (dB)";
  write_plot_svg(fs::path(o_.output) / "loss.svg", series, po);
}

VQTrainSummary VQTrainerImpl::run(const VQTrainCallback& progress) {
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
    rec_history_ = series_from_log(records, "rec_loss");
    psnr_history_ = series_from_log(records, "val_psnr");
  } else if (step_log) {
    step_log->append_header({{"run", "amused train-vq"}, {"amused_version", version()}, {"model", o_.model},
                             {"data", o_.data}, {"from_scratch", from_scratch_},
                             {"config", vq_->config().to_json()}});
  }

  auto& codebook = vq_->quantize->embedding->weight;
  const auto t_loop = Clock::now();
  const int64_t start_step = step_;
  double last_loss = std::nan("");
  bool stopped = false;
  VQValidation last_validation;
  bool have_validation = false;
  nn::ExecutionScope training_mode(nn::ExecutionMode::kTraining);
  while (step_ < o_.max_steps) {
    const auto t_step = Clock::now();
    const int64_t step = step_ + 1;
    VQTrainProgress p;
    const auto x = collate(data_->next_batch(o_.batch_size)).pixel_values.to(device_);  // [B, 3, H, W]
    const auto z = vq_->encode(x);                                                        // [B, D, h, w]
    const auto z_flat = flatten_latents(z);                                               // [B*h*w, D]
    p.codes_restarted = restart_dead_codes(codebook_, codebook, z_flat, step, o_.dead_code_steps, gen_,
                                           /*all=*/from_scratch_ && step == 1);
    auto q = quantize_straight_through(*vq_->quantize, z);
    const auto recon = vq_->decode(q.quantized);
    const auto diff = recon - x;
    auto rec_loss = o_.l1_weight * diff.abs().mean() + o_.l2_weight * diff.pow(2).mean();
    auto loss = rec_loss + o_.commitment_weight * q.commit_loss;
    if (q.codebook_loss.defined()) loss = loss + o_.codebook_weight * q.codebook_loss;
    const bool adversarial = disc_active(step);
    if (adversarial) {
      for (auto& prm : disc_->parameters()) prm.set_requires_grad(false);
      const auto g_loss = -disc_->forward(recon).mean();
      for (auto& prm : disc_->parameters()) prm.set_requires_grad(true);
      loss = loss + o_.disc_weight * g_loss;
      p.g_loss = g_loss.item<double>();
    }
    loss.backward();
    const auto params = trainable_named(*vq_);
    std::vector<torch::Tensor> tensors;
    for (const auto& [name, t] : params) tensors.push_back(t);
    double grad_norm = 0;
    if (o_.max_grad_norm > 0) {
      grad_norm = clip_grad_norm(tensors, o_.max_grad_norm);
    } else {
      torch::NoGradGuard no_grad;
      double sq = 0;
      for (const auto& t : tensors)
        if (t.grad().defined()) sq += std::pow(t.grad().norm().item<double>(), 2);
      grad_norm = std::sqrt(sq);
    }
    const LrSchedule schedule = parse_lr_schedule(o_.lr_scheduler);
    const double lr = lr_at(step_, o_.learning_rate, schedule, o_.lr_warmup_steps, o_.max_steps);
    set_lr(*optimizer_, lr);
    if (disc_optimizer_) {
      const double disc_base = o_.disc_learning_rate > 0 ? o_.disc_learning_rate : o_.learning_rate;
      set_lr(*disc_optimizer_, lr_at(step_, disc_base, schedule, o_.lr_warmup_steps, o_.max_steps));
    }
    optimizer_->step();
    zero_grad(*optimizer_);
    if (ema_codebook_) ema_update(codebook_, codebook, z_flat, q.indices, o_.ema_decay);
    mark_used(codebook_, q.indices, step);
    if (adversarial) {
      // The discriminator's hinge step on real images and the (detached) reconstructions.
      const auto d_loss = hinge_d_loss(disc_->forward(x), disc_->forward(recon.detach()));
      d_loss.backward();
      disc_optimizer_->step();
      zero_grad(*disc_optimizer_);
      p.d_loss = d_loss.item<double>();
    }
    step_ = step;
    const double step_loss = loss.item<double>();
    last_loss = step_loss;
    loss_weight_sum_ = 0.98 * loss_weight_sum_ + 0.02;
    loss_smoothed_ = 0.98 * loss_smoothed_ + 0.02 * step_loss;

    p.step = step_;
    p.max_steps = o_.max_steps;
    p.epoch = data_->position().epoch;
    p.loss = step_loss;
    p.loss_smoothed = loss_smoothed_ / loss_weight_sum_;
    p.rec_loss = rec_loss.item<double>();
    p.commit_loss = q.commit_loss.item<double>();
    p.learning_rate = lr;
    p.grad_norm = grad_norm;
    p.batch_codes_used =
        (torch::bincount(q.indices.flatten(), {}, vq_->config().num_vq_embeddings) > 0).sum().item<int64_t>();
    p.step_seconds = seconds_since(t_step);
    const double elapsed = seconds_since(t_loop);
    const double per_step = elapsed / static_cast<double>(step_ - start_step);
    p.samples_per_second = static_cast<double>(o_.batch_size) / per_step;
    p.elapsed_seconds = elapsed_before_ + elapsed;
    p.eta_seconds = per_step * static_cast<double>(o_.max_steps - step_);
    if ((o_.validation_steps > 0 && step_ % o_.validation_steps == 0) || step_ == o_.max_steps) {
      p.validation = validate_now(step_);
      p.validated = true;
      last_validation = p.validation;
      have_validation = true;
      psnr_history_.emplace_back(static_cast<double>(step_), p.validation.psnr);
    }
    loss_history_.emplace_back(static_cast<double>(step_), step_loss);
    rec_history_.emplace_back(static_cast<double>(step_), p.rec_loss);
    if (step_log && (step_ % o_.logging_steps == 0 || step_ == o_.max_steps || p.validated)) {
      nlohmann::json rec = {{"step", step_},
                            {"epoch", p.epoch},
                            {"loss", step_loss},
                            {"loss_smoothed", p.loss_smoothed},
                            {"rec_loss", p.rec_loss},
                            {"commit_loss", p.commit_loss},
                            {"lr", p.learning_rate},
                            {"grad_norm", grad_norm},
                            {"batch_codes_used", p.batch_codes_used},
                            {"codes_restarted", p.codes_restarted},
                            {"step_seconds", p.step_seconds},
                            {"samples_per_second", p.samples_per_second},
                            {"elapsed_seconds", p.elapsed_seconds},
                            {"peak_rss_mib", peak_rss_mib()}};
      if (q.codebook_loss.defined()) rec["codebook_loss"] = q.codebook_loss.item<double>();
      if (adversarial) {
        rec["g_loss"] = p.g_loss;
        rec["d_loss"] = p.d_loss;
      }
      if (p.validated) {
        rec["val_psnr"] = p.validation.psnr;
        rec["val_l1"] = p.validation.l1;
        rec["val_images"] = p.validation.images;
        rec["val_codes_used"] = p.validation.codes_used;
        rec["val_codebook_usage"] = p.validation.codebook_usage;
        rec["val_perplexity"] = p.validation.perplexity;
      }
      step_log->append(rec);
    }
    if (!std::isfinite(step_loss))
      throw Error("the loss became " + fmt(step_loss) + " at step " + std::to_string(step_) +
                  " (learning rate too high? try a lower --learning-rate or --max-grad-norm 1); the last "
                  "checkpoint is intact");
    const bool checkpoint_now = o_.write_outputs && (step_ % o_.checkpointing_steps == 0 || step_ == o_.max_steps);
    if (checkpoint_now) p.checkpoint = (out / ("checkpoint-" + std::to_string(step_))).string();
    const bool keep_going = !progress || progress(p);
    if (!keep_going) stopped = true;
    if (o_.write_outputs && (checkpoint_now || stopped)) {
      write_checkpoint(step_, elapsed_before_ + seconds_since(t_loop));
      write_plot();
    }
    if (stopped) break;
  }

  VQTrainSummary s;
  s.steps = step_;
  s.resumed_from = resumed_from_;
  // Resumed at the last step: no step ran here; the log has the run's final loss.
  if (std::isnan(last_loss) && o_.write_outputs) last_loss = last_logged_value(out / "train_log.jsonl", "loss");
  s.final_loss = last_loss;
  s.output = out.string();
  if (!have_validation) last_validation = validate_now(step_);
  s.validation = last_validation;
  if (!stopped && o_.write_outputs) {
    vq_->eval();
    save_vqvae(vq_, out);
    write_plot();
    log::info("saved the trained VQ-GAN to '" + out.string() + "'");
  }
  s.seconds = seconds_since(t_start);
  s.peak_rss_mib = peak_rss_mib();
  return s;
}

}  // namespace
}  // namespace training

std::unique_ptr<VQTrainer> VQTrainer::create(const VQTrainOptions& options) {
  return std::make_unique<training::VQTrainerImpl>(options);
}

}  // namespace amused
