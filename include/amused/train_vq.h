// Training aMUSEd's VQ-GAN (diffusers' VQModel) from scratch or from a trained one: reconstruction
// (L1 + L2), commitment and codebook terms with the straight-through estimator, an EMA codebook
// with restarts of dead codes, an optional PatchGAN discriminator (hinge loss), and validation
// metrics (PSNR, codebook usage, perplexity). The result is a diffusers `vqvae/` folder.
//
//   amused::VQTrainOptions o;
//   o.data = "emoji/";                     // images (+ optional metadata.jsonl with "split")
//   o.output = "runs/vq";                  // a VQModel folder: config.json + weights, and the run
//   o.max_steps = 20000;
//   auto trainer = amused::VQTrainer::create(o);   // every check that can fail happens here
//   amused::VQTrainSummary s = trainer->run([](const amused::VQTrainProgress& p) { return true; });
//   // amused::load_vqvae("runs/vq") and diffusers' VQModel.from_pretrained("runs/vq") load it.
//
// Runs are kept as `amused train` keeps them (atomic checkpoints, exact resume after a kill, JSONL
// log, loss plot); docs/training.md ("Training the VQ-GAN") describes every option.
// Ref: diffusers/models/autoencoders/vq_model.py (the model); taming-transformers
//      taming/modules/losses/vqperceptual.py, discriminator/model.py (hinge loss, PatchGAN);
//      VQ-VAE-2 / sonnet (EMA codebook), Dhariwal et al. 2020 "Jukebox" (code restarts).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "amused/error.h"

namespace amused {

struct VQTrainOptions {
  // ---- model, data, output
  // A VQ folder (config.json, with weights to continue from them or without to start from
  // scratch), a pipeline folder (its vqvae/), or a config.json file. Empty: a config built from
  // the architecture fields below.
  std::string model;
  std::string data;             // image folder (captions not needed) or .tar shards
  std::string validation_data;  // optional separate validation images (folder or shards)
  std::string output;           // the trained VQModel folder, and the run (checkpoints, logs)
  // Validation images when `validation_data` is empty: the metadata.jsonl rows with
  // "split": "validation", or else this share of the folder's images (held out of training).
  double validation_fraction = 0.05;
  int64_t max_validation_images = 256;  // PSNR and usage over at most this many
  int64_t num_validation_samples = 8;   // reconstructions shown in the PNG grid
  // ---- architecture when `model` is empty (diffusers' VQModel config keys; aMUSEd's VQ family
  // at small width: GroupNorm 32, no mid-block attention, vq_embed_dim = latent_channels)
  std::vector<int64_t> block_out_channels = {64, 128, 128};  // 3 levels: 64 px -> 16x16 tokens
  int64_t layers_per_block = 1;
  int64_t latent_channels = 64;
  int64_t num_vq_embeddings = 256;
  int64_t norm_num_groups = 32;
  // ---- data
  int resolution = 64;
  bool center_crop = false;
  bool random_flip = false;
  std::string on_bad_sample = "fail";  // fail | skip
  // ---- losses (weights; 0 turns a term off)
  double l1_weight = 1.0;
  double l2_weight = 1.0;
  double commitment_weight = 0.25;  // ||z - sg(z_q)||^2: keeps the encoder near its codes
  double codebook_weight = 1.0;     // ||sg(z) - z_q||^2: only with codebook_update "gradient"
  std::string codebook_update = "ema";  // ema | gradient
  double ema_decay = 0.99;              // EMA codebook decay
  // A code that no sample used for this many steps is re-initialised from an encoder output of
  // the current batch (0: never). A model started from scratch restarts every code at step 1
  // (data-dependent initialisation of the codebook).
  int64_t dead_code_steps = 100;
  double disc_weight = 0.0;  // > 0: PatchGAN discriminator, hinge loss
  int64_t disc_start = 2000;  // steps before the adversarial terms start
  int64_t disc_layers = 2;    // PatchGAN depth (taming's n_layers)
  int64_t disc_channels = 64;  // its first layer's width (ndf)
  double disc_learning_rate = 0;  // 0: learning_rate
  // ---- optimisation (AdamW for the VQ model and, separately, the discriminator)
  int64_t max_steps = 10000;
  int64_t batch_size = 16;
  double learning_rate = 2e-4;
  // constant | constant_with_warmup | linear | cosine (as `amused train`; the discriminator's rate
  // follows the same curve). A decay at the end of a run settles the reconstruction error.
  std::string lr_scheduler = "constant";
  int64_t lr_warmup_steps = 0;
  double adam_beta1 = 0.5, adam_beta2 = 0.9;  // taming-transformers' VQGAN betas
  double adam_weight_decay = 0.0;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 0.0;  // > 0: clip the VQ model's global gradient norm
  uint64_t seed = 0;
  // ---- run keeping
  int64_t checkpointing_steps = 500;
  int checkpoints_total_limit = 3;  // <= 0: all
  bool resume = false;
  int64_t validation_steps = 500;  // metrics + reconstruction grid every N steps (and at the end)
  int64_t logging_steps = 1;
  bool write_outputs = true;  // false: nothing is written (benchmarks)
  // ---- machine
  std::string device = "cpu";
  int threads = 0;  // <= 0: all physical cores
};

// Validation metrics (at validation steps).
struct VQValidation {
  double psnr = 0;              // dB, mean over images of 10 log10(1 / MSE) on [0, 1] after clipping
  double l1 = 0;                // mean absolute error on [0, 1]
  int64_t codes_used = 0;       // distinct codes over the validation tokens
  int64_t codebook_size = 0;    // num_vq_embeddings
  double codebook_usage = 0;    // codes_used / num_vq_embeddings
  double perplexity = 0;        // exp(entropy) of the validation code histogram
  int64_t images = 0;
  std::string reconstructions;  // the PNG grid written (empty when outputs are off)
};

struct VQTrainProgress {
  int64_t step = 0, max_steps = 0;
  int64_t epoch = 0;
  double loss = 0;  // the VQ model's total loss
  double loss_smoothed = 0;
  double rec_loss = 0;     // weighted L1 + L2
  double commit_loss = 0;  // unweighted ||z - sg(z_q)||^2
  double g_loss = 0, d_loss = 0;  // adversarial terms (0 before disc_start)
  double learning_rate = 0;
  double grad_norm = 0;
  int64_t batch_codes_used = 0;  // distinct codes in this batch
  int64_t codes_restarted = 0;   // dead codes re-initialised at this step
  double step_seconds = 0, samples_per_second = 0, elapsed_seconds = 0, eta_seconds = 0;
  bool validated = false;        // `validation` holds this step's metrics
  VQValidation validation;
  std::string checkpoint;        // set on the step that wrote one
};
// Called after every step; return false to stop early (a checkpoint is written first).
using VQTrainCallback = std::function<bool(const VQTrainProgress&)>;

struct VQTrainSummary {
  int64_t steps = 0;
  int64_t resumed_from = 0;
  double final_loss = 0;
  VQValidation validation;  // at the end
  double seconds = 0;
  double peak_rss_mib = 0;
  std::string output;
};

class VQTrainer {
 public:
  // Checks the options, opens the data (training and validation), builds or loads the model, and
  // checks `output`: every failure that can be known before step 1 happens here.
  static std::unique_ptr<VQTrainer> create(const VQTrainOptions& options);
  virtual ~VQTrainer() = default;
  // Trains to max_steps (or until `progress` returns false), then writes the VQModel folder.
  virtual VQTrainSummary run(const VQTrainCallback& progress = {}) = 0;
  virtual const VQTrainOptions& options() const = 0;
};

}  // namespace amused
