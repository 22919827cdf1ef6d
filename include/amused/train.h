// Training aMUSEd: masked-image-model pre-training from configs and fine-tuning from a pipeline,
// step for step what diffusers' train_amused.py (and open-muse's train_muse.py) compute.
//
//   amused::TrainOptions o;
//   o.model = "amused/amused-256";        // a pipeline folder / hub id, or a folder of configs
//   o.data = "photos/";                    // images + metadata.jsonl (or name.txt), or .tar shards
//   o.output = "runs/photos";
//   o.max_steps = 1000;
//   auto trainer = amused::Trainer::create(o);   // every check that can fail happens here
//   amused::TrainSummary s = trainer->run([](const amused::TrainProgress& p) { return true; });
//   // runs/photos/checkpoint-N/ every o.checkpointing_steps; the trained pipeline in runs/photos/
//
// A run never loses its work: checkpoints are written atomically, keep the last
// `checkpoints_total_limit`, and hold the weights, the optimizer, the EMA, every random state and the
// data position, so `resume` after a kill continues with the same losses and weights as a run that
// was never interrupted. docs/training.md describes every option.
// Ref: diffusers/examples/amused/train_amused.py; huggingface/open-muse training/train_muse.py
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "amused/error.h"

namespace amused {

struct TrainOptions {
  // ---- model, data, output
  std::string model;   // diffusers pipeline folder or hub id (fine-tune), or configs only (pre-train)
  std::string data;    // image folder (metadata.jsonl or name.txt captions) or .tar shards (or instance_image)
  std::string output;  // run folder: checkpoints, logs, validation images, the final pipeline
  std::string variant;             // weight files to read ("" or "fp16")
  std::string tokenizer_dir;       // tokenizer to use instead of MODEL/tokenizer
  bool offline = false;
  // ---- data
  int resolution = 0;              // pixels; 0 = the model's default (sample_size x VQ scale)
  bool center_crop = false;        // else a random crop, as train_amused.py
  bool random_flip = false;        // horizontal flip with probability 0.5
  std::string caption_prefix;      // prepended to every caption (train_amused.py --prompt_prefix)
  // metadata.jsonl key of the caption (train_amused.py --prompt_key). Its value is a string, or a
  // list of strings of which one is drawn for each image each epoch (e.g. "captions" in
  // `amused dataset emoji` folders: the name, with keywords, with the group).
  std::string caption_key = "text";
  // Image folders: "" trains on every image; "train" (or "validation") on the metadata.jsonl rows
  // whose "split" is that (rows without one count as "train").
  std::string split;
  std::string on_bad_sample = "fail";  // "fail" | "skip": an unreadable image or missing caption
  bool pre_encode = false;         // cache every sample's VQ tokens and text states once
  // ---- objective
  double min_masking_rate = 0.0;
  double label_smoothing = 0.0;    // open-muse: 0.1
  double cond_dropout_prob = 0.0;  // open-muse: 0.1 (row-wise, as intended; see docs/training.md)
  double mask_contiguous_region_prob = 0.0;  // open-muse: 0.15
  bool train_text_encoder = false;
  // ---- one image (train_amused.py --instance_data_image): `data` stays empty; every sample is
  // this image with `instance_prompt` (default: the file stem), a new random crop (and flip, with
  // random_flip) each step.
  std::string instance_image;
  std::string instance_prompt;
  // ---- LoRA (train_amused.py --use_lora): only adapters on the `lora_targets` linear layers of the
  // transformer train (W x + alpha/r * B A x; base weights frozen: no gradients, no optimizer
  // state); with train_text_encoder, adapters on the text encoder's q/k/v/out projections too.
  // Checkpoints hold the adapters and their optimizer state; the run ends with
  // `output`/pytorch_lora_weights.safetensors (diffusers' save_lora_weights layout).
  bool lora = false;
  int64_t lora_rank = 16;
  double lora_alpha = 32;
  std::vector<std::string> lora_targets{"to_q", "to_k", "to_v"};
  // ---- optimisation
  int64_t max_steps = 1000;        // optimizer steps
  int64_t batch_size = 1;          // per step and per process (train_batch_size)
  int64_t gradient_accumulation_steps = 1;
  double learning_rate = 3e-4;
  bool scale_lr = false;           // lr x batch x accumulation x processes
  std::string lr_scheduler = "constant";  // constant | constant_with_warmup | linear | cosine
  int64_t lr_warmup_steps = 500;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_weight_decay = 0.01, adam_epsilon = 1e-8;
  double max_grad_norm = 0.0;      // > 0: clip the global gradient norm
  bool use_ema = false;
  double ema_decay = 0.9999;
  // Recompute the transformer layers in backward instead of keeping their activations: the same
  // gradients for about one more forward pass, much less memory at larger batches.
  bool gradient_checkpointing = false;
  std::string mixed_precision = "no";  // no | bf16 | fp16 (CUDA): autocast, float32 master weights
  uint64_t seed = 0;
  // ---- run keeping
  int64_t checkpointing_steps = 500;
  int checkpoints_total_limit = 3;  // keep the last K checkpoints (<= 0: all)
  bool resume = false;              // continue from the newest checkpoint in `output`
  int64_t validation_steps = 0;     // > 0: validation images every N steps
  std::vector<std::string> validation_prompts;
  int64_t logging_steps = 1;        // a JSONL line every N steps (and the loss plot)
  // false: no checkpoints, logs, plots, validation images or saved pipeline, and `output` is not
  // needed (benchmarks: `amused bench --train`).
  bool write_outputs = true;
  // ---- machine
  std::string device = "cpu";
  int threads = 0;                  // <= 0: all physical cores
};

struct TrainProgress {
  int64_t step = 0, max_steps = 0;  // optimizer steps done / to do
  int64_t epoch = 0;
  double loss = 0;                  // this step's loss (mean over its micro-batches)
  double loss_smoothed = 0;         // exponential moving average of the loss
  double learning_rate = 0;
  double grad_norm = 0;             // before clipping
  double samples_per_second = 0;
  double step_seconds = 0;
  // Where this step's time went: reading and transforming images, the frozen VQ-GAN and text
  // encoder, forward + loss, backward, and the update (norm/clipping, AdamW, EMA).
  double data_seconds = 0, encode_seconds = 0, forward_seconds = 0, backward_seconds = 0, update_seconds = 0;
  double elapsed_seconds = 0;
  double eta_seconds = 0;
  std::string checkpoint;           // set on the step that wrote one
  std::string validation_images;    // set on the step that wrote them
};
// Called after every optimizer step; return false to stop early (a checkpoint is written first).
using TrainCallback = std::function<bool(const TrainProgress&)>;

struct TrainSummary {
  int64_t steps = 0;                // the step the run ended at
  int64_t resumed_from = 0;         // 0 when started fresh
  double final_loss = 0;
  double seconds = 0;
  double peak_rss_mib = 0;
  std::string output;               // the folder holding the saved pipeline (or LoRA file)
};

class Trainer {
 public:
  // Checks the options, opens the data (indexing it, not decoding it), loads or builds the models,
  // and checks that `output` is writable with room for two checkpoints: every failure that can be
  // known before step 1 happens here. Throws amused::Error subclasses naming the option or file.
  static std::unique_ptr<Trainer> create(const TrainOptions& options);
  virtual ~Trainer() = default;
  // Trains to `max_steps` (or until `progress` returns false), writing checkpoints, logs and
  // validation images on the way, then saves the pipeline (save_pretrained layout) to `output`.
  virtual TrainSummary run(const TrainCallback& progress = {}) = 0;
  virtual const TrainOptions& options() const = 0;
};

}  // namespace amused
