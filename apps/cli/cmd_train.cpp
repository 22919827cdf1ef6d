// `amused train`: MIM pre-training and fine-tuning (amused::Trainer). Flags follow
// train_amused.py's names with dashes; `--config FILE` reads the same names from a TOML/INI file
// (flags given on the command line win), and the configuration is echoed into the run folder
// (train_config.toml, which --config accepts back).
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "amused/amused.h"
#include "amused/system.h"
#include "amused/train.h"
#include "command.h"
#include "train_common.h"

namespace {

using amused::cli::apply_config_file;
using amused::cli::duration;
using amused::cli::exit_code_after_signal;
using amused::cli::g_stop_signal;
using amused::cli::keep_going_after_signal;

int run(CLI::App& sub, const amused::TrainOptions& options, bool quiet) {
  auto trainer = amused::Trainer::create(options);
  const auto& o = trainer->options();
  {
    // The resolved configuration, in the format --config reads.
    std::ofstream echo(std::filesystem::path(o.output) / "train_config.toml");
    echo << "# amused train " << amused::version() << ": the options of this run (amused train --config FILE)\n"
         << sub.config_to_str(/*default_also=*/true, /*write_description=*/false);
  }
  amused::cli::install_stop_handlers();
  const bool tty = amused::cli::stderr_is_tty();
  auto summary = trainer->run([&](const amused::TrainProgress& p) {
    if (!quiet && (tty || p.step % o.logging_steps == 0 || p.step == p.max_steps || !p.checkpoint.empty())) {
      std::fprintf(stderr, "%sstep %lld/%lld  loss %.4f (avg %.4f)  lr %.2e  |g| %.3g  %.2f s/step  %.2f samples/s  elapsed %s  ETA %s%s",
                   tty ? "\r\033[K" : "", static_cast<long long>(p.step), static_cast<long long>(p.max_steps), p.loss,
                   p.loss_smoothed, p.learning_rate, p.grad_norm, p.step_seconds, p.samples_per_second,
                   duration(p.elapsed_seconds).c_str(), duration(p.eta_seconds).c_str(), tty ? "" : "\n");
      std::fflush(stderr);
    }
    return keep_going_after_signal(p.step);
  });
  if (tty && !quiet) std::fprintf(stderr, "\n");
  if (const int code = exit_code_after_signal(summary.steps, o.output); code != 0) return code;
  std::printf("trained %lld steps%s in %s (peak RSS %.0f MiB), final loss %.4f; %s saved to %s\n",
              static_cast<long long>(summary.steps),
              summary.resumed_from > 0 ? (" (resumed at " + std::to_string(summary.resumed_from) + ")").c_str() : "",
              duration(summary.seconds).c_str(), summary.peak_rss_mib, summary.final_loss,
              o.lora ? "LoRA" : "pipeline", summary.output.c_str());
  return 0;
}

amused::cli::Registrar reg(
    "train", "Train aMUSEd: fine-tune a pipeline or pre-train from configs (docs/training.md)", [](CLI::App& sub) {
      auto o = std::make_shared<amused::TrainOptions>();
      auto quiet = std::make_shared<bool>(false);
      auto config = std::make_shared<std::string>();
      sub.add_option("--config", *config, "Read options from a TOML file with the same names (flags win)");
      sub.add_option("-m,--model", o->model,
                     "Pipeline folder or hub id (fine-tuning), or a folder of configs (pre-training)");
      sub.add_option("--data", o->data, "Image folder (metadata.jsonl or name.txt captions) or .tar shards");
      // (Required, but checked by the library: CLI11 checks requirements before it reads --config.)
      sub.add_option("-o,--output", o->output, "Run folder: checkpoints, log, loss plot, validation, final pipeline");
      sub.add_option("--variant", o->variant, "Weight files to read (e.g. fp16)");
      sub.add_option("--tokenizer", o->tokenizer_dir, "Tokenizer folder (for folders of configs)");
      sub.add_flag("--offline", o->offline, "Never use the network");
      sub.add_option("--resolution", o->resolution, "Training resolution in pixels (0: the model's default)")
          ->capture_default_str();
      sub.add_flag("--center-crop", o->center_crop, "Centre crop instead of random crops");
      sub.add_flag("--random-flip", o->random_flip, "Random horizontal flips");
      sub.add_option("--caption-prefix", o->caption_prefix, "Text prepended to every caption");
      sub.add_option("--caption-key", o->caption_key,
                     "metadata.jsonl key of the caption: a string, or a list drawn from each epoch")
          ->capture_default_str();
      sub.add_option("--split", o->split, "Train on this metadata.jsonl split only (e.g. train; \"\": all)");
      sub.add_option("--on-bad-sample", o->on_bad_sample, "fail | skip (an unreadable image or missing caption)")
          ->capture_default_str();
      sub.add_flag("--pre-encode", o->pre_encode, "Cache VQ tokens and text states (needs --center-crop)");
      sub.add_option("--min-masking-rate", o->min_masking_rate, "Lowest share of masked tokens")->capture_default_str();
      sub.add_option("--label-smoothing", o->label_smoothing, "Cross-entropy label smoothing (open-muse: 0.1)")
          ->capture_default_str();
      sub.add_option("--cond-dropout-prob", o->cond_dropout_prob, "Share of captions replaced by \"\" (open-muse: 0.1)")
          ->capture_default_str();
      sub.add_option("--mask-contiguous-region-prob", o->mask_contiguous_region_prob,
                     "Share of batches masking one rectangle (open-muse: 0.15)")
          ->capture_default_str();
      sub.add_flag("--train-text-encoder", o->train_text_encoder,
                   "Train the text encoder too (with --lora: adapters on its q/k/v/out projections)");
      sub.add_option("--instance-image", o->instance_image,
                     "Train on this one image (style from one image; instead of --data), a new crop each step");
      sub.add_option("--instance-prompt", o->instance_prompt,
                     "Caption of --instance-image (default: its file stem), e.g. \"A mushroom in [V] style\"");
      sub.add_flag("--lora", o->lora, "Train LoRA adapters only (base weights frozen); saves pytorch_lora_weights.safetensors");
      sub.add_option("--lora-rank", o->lora_rank, "LoRA rank r")->capture_default_str();
      sub.add_option("--lora-alpha", o->lora_alpha, "LoRA alpha (scale alpha / r)")->capture_default_str();
      sub.add_option("--lora-targets", o->lora_targets, "Linear layers that get adapters (comma-separated names)")
          ->delimiter(',')
          ->capture_default_str();
      sub.add_option("--max-steps", o->max_steps, "Optimizer steps")->capture_default_str();
      sub.add_option("--batch-size", o->batch_size, "Samples per step (per process)")->capture_default_str();
      sub.add_option("--gradient-accumulation-steps", o->gradient_accumulation_steps, "Micro-batches per step")
          ->capture_default_str();
      sub.add_option("--learning-rate,--lr", o->learning_rate, "Learning rate")->capture_default_str();
      sub.add_flag("--scale-lr", o->scale_lr, "Multiply the learning rate by batch size x accumulation");
      sub.add_option("--lr-scheduler", o->lr_scheduler, "constant | constant_with_warmup | linear | cosine")
          ->capture_default_str();
      sub.add_option("--lr-warmup-steps", o->lr_warmup_steps, "Warm-up steps (warm-up schedules)")
          ->capture_default_str();
      sub.add_option("--adam-beta1", o->adam_beta1, "AdamW beta1")->capture_default_str();
      sub.add_option("--adam-beta2", o->adam_beta2, "AdamW beta2")->capture_default_str();
      sub.add_option("--adam-weight-decay", o->adam_weight_decay, "AdamW weight decay")->capture_default_str();
      sub.add_option("--adam-epsilon", o->adam_epsilon, "AdamW epsilon")->capture_default_str();
      sub.add_option("--max-grad-norm", o->max_grad_norm, "Clip the gradient norm (0: off)")->capture_default_str();
      sub.add_flag("--use-ema", o->use_ema, "Keep an exponential moving average of the weights (saved at the end)");
      sub.add_option("--ema-decay", o->ema_decay, "EMA decay")->capture_default_str();
      sub.add_flag("--gradient-checkpointing", o->gradient_checkpointing,
                   "Recompute the transformer layers in backward (less memory, one more forward)");
      sub.add_option("--mixed-precision", o->mixed_precision,
                     "no | bf16 | fp16 (CUDA): autocast forward, float32 master weights")
          ->capture_default_str();
      sub.add_option("--seed", o->seed, "Seed (masking, crops, initialisation)")->capture_default_str()
          ->check(amused::cli::seed_range());
      sub.add_option("--checkpointing-steps", o->checkpointing_steps, "Checkpoint every N steps")
          ->capture_default_str();
      sub.add_option("--checkpoints-total-limit", o->checkpoints_total_limit, "Keep the last K checkpoints (0: all)")
          ->capture_default_str();
      sub.add_flag("--resume", o->resume, "Continue from the newest checkpoint in --output");
      sub.add_option("--validation-steps", o->validation_steps, "Validation images every N steps (0: at the end)")
          ->capture_default_str();
      sub.add_option("--validation-prompt", o->validation_prompts, "A validation prompt (repeatable)");
      sub.add_option("--logging-steps", o->logging_steps, "A log line every N steps")->capture_default_str();
      sub.add_option("--device", o->device, "cpu | cuda | cuda:N")->check(amused::cli::device_choice())->capture_default_str();
      sub.add_option("--threads", o->threads, "Compute threads (default: all physical cores)");
      sub.add_flag("-q,--quiet", *quiet, "No progress lines");
      return std::function<int()>([&sub, o, quiet, config] {
        if (!config->empty()) apply_config_file(sub, *config, "train");
        if (!o->instance_image.empty() && o->lora) {
          // The StyleDrop recipe of diffusers' examples/amused README (amused-256: lr 4e-4, constant
          // schedule, batch 1, r 16 / alpha 32, decent results after 1500-2000 steps) for what the
          // command line leaves open.
          std::string applied;
          if (sub.get_option("--learning-rate")->count() == 0) {
            o->learning_rate = 4e-4;
            applied += " --learning-rate 4e-4";
          }
          if (sub.get_option("--max-steps")->count() == 0) {
            o->max_steps = 2000;
            applied += " --max-steps 2000";
          }
          if (!applied.empty())
            std::fprintf(stderr, "style from one image: the StyleDrop recipe's%s (give the flags to change them)\n",
                         applied.c_str());
        }
        return run(sub, *o, *quiet);
      });
    });

}  // namespace
