// `amused train-vq`: training aMUSEd's VQ-GAN (diffusers' VQModel) from scratch or from a trained
// one (amused::VQTrainer). Flags are named like `amused train`'s; `--config FILE` reads the same
// names from a TOML file ([train-vq] section or none; flags win), and the resolved options are
// echoed into the run folder (train_vq_config.toml).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "amused/amused.h"
#include "amused/train_vq.h"
#include "command.h"
#include "train_common.h"

namespace {

using amused::cli::duration;
using amused::cli::exit_code_after_signal;
using amused::cli::g_stop_signal;
using amused::cli::keep_going_after_signal;

void print_validation(const amused::VQValidation& v, int64_t step) {
  std::fprintf(stderr, "validation at step %lld: PSNR %.2f dB  L1 %.4f  codes used %lld/%lld (%.1f%%)  perplexity %.1f  (%lld images)%s%s\n",
               static_cast<long long>(step), v.psnr, v.l1, static_cast<long long>(v.codes_used),
               static_cast<long long>(v.codebook_size), 100.0 * v.codebook_usage, v.perplexity,
               static_cast<long long>(v.images), v.reconstructions.empty() ? "" : "  -> ", v.reconstructions.c_str());
}

int run(CLI::App& sub, const amused::VQTrainOptions& options, bool quiet) {
  auto trainer = amused::VQTrainer::create(options);
  const auto& o = trainer->options();
  {
    std::ofstream echo(std::filesystem::path(o.output) / "train_vq_config.toml");
    echo << "# amused train-vq " << amused::version() << ": the options of this run (amused train-vq --config FILE)\n"
         << sub.config_to_str(/*default_also=*/true, /*write_description=*/false);
  }
  amused::cli::install_stop_handlers();
  const bool tty = amused::cli::stderr_is_tty();
  auto summary = trainer->run([&](const amused::VQTrainProgress& p) {
    const bool line = !quiet && (tty || p.step % o.logging_steps == 0 || p.step == p.max_steps || p.validated);
    if (line) {
      std::fprintf(stderr, "%sstep %lld/%lld  loss %.4f (avg %.4f)  rec %.4f  commit %.4f", tty ? "\r\033[K" : "",
                   static_cast<long long>(p.step), static_cast<long long>(p.max_steps), p.loss, p.loss_smoothed,
                   p.rec_loss, p.commit_loss);
      if (p.g_loss != 0 || p.d_loss != 0) std::fprintf(stderr, "  g %.3f  d %.3f", p.g_loss, p.d_loss);
      std::fprintf(stderr, "  codes %lld%s  |g| %.3g  %.2f s/step  %.1f samples/s  elapsed %s  ETA %s%s",
                   static_cast<long long>(p.batch_codes_used),
                   p.codes_restarted ? (" (+" + std::to_string(p.codes_restarted) + " restarted)").c_str() : "",
                   p.grad_norm, p.step_seconds, p.samples_per_second, duration(p.elapsed_seconds).c_str(),
                   duration(p.eta_seconds).c_str(), tty ? "" : "\n");
      if (p.validated) {
        if (tty) std::fprintf(stderr, "\n");
        print_validation(p.validation, p.step);
      }
      std::fflush(stderr);
    }
    return keep_going_after_signal(p.step);
  });
  if (tty && !quiet) std::fprintf(stderr, "\n");
  if (const int code = exit_code_after_signal(summary.steps, o.output); code != 0) return code;
  const auto& v = summary.validation;
  std::printf("trained %lld steps%s in %s (peak RSS %.0f MiB), final loss %.4f; validation PSNR %.2f dB, "
              "%lld codes used (%.1f%%), perplexity %.1f; VQ-GAN saved to %s\n",
              static_cast<long long>(summary.steps),
              summary.resumed_from > 0 ? (" (resumed at " + std::to_string(summary.resumed_from) + ")").c_str() : "",
              duration(summary.seconds).c_str(), summary.peak_rss_mib, summary.final_loss, v.psnr,
              static_cast<long long>(v.codes_used), 100.0 * v.codebook_usage, v.perplexity, summary.output.c_str());
  return 0;
}

amused::cli::Registrar reg(
    "train-vq", "Train the VQ-GAN (diffusers VQModel) from scratch or from a VQ folder (docs/training.md)",
    [](CLI::App& sub) {
      auto o = std::make_shared<amused::VQTrainOptions>();
      auto quiet = std::make_shared<bool>(false);
      auto config = std::make_shared<std::string>();
      sub.add_option("--config", *config, "Read options from a TOML file with the same names (flags win)");
      sub.add_option("-m,--model", o->model,
                     "VQ folder (with weights: continue; without: from scratch), pipeline folder (its vqvae/) or "
                     "config.json; none: a config from the architecture flags");
      sub.add_option("--data", o->data, "Image folder (captions not needed; metadata.jsonl may carry \"split\") or .tar shards");
      sub.add_option("-o,--output", o->output, "Run folder: the trained VQ (config.json + weights), checkpoints, log");
      sub.add_option("--validation-data", o->validation_data, "Separate validation images (folder or shards)");
      sub.add_option("--validation-fraction", o->validation_fraction,
                     "Share of an image folder held out for validation when metadata.jsonl has no \"split\"")
          ->capture_default_str();
      sub.add_option("--max-validation-images", o->max_validation_images, "Validation images for the metrics (at most)")
          ->capture_default_str();
      sub.add_option("--num-validation-samples", o->num_validation_samples, "Reconstructions in the PNG grid")
          ->capture_default_str();
      sub.add_option("--block-out-channels", o->block_out_channels, "Widths per level, comma-separated (without -m)")
          ->delimiter(',')
          ->capture_default_str();
      sub.add_option("--layers-per-block", o->layers_per_block, "Resnets per level (without -m)")->capture_default_str();
      sub.add_option("--latent-channels", o->latent_channels, "Code vector size (without -m)")->capture_default_str();
      sub.add_option("--num-vq-embeddings", o->num_vq_embeddings, "Codebook size (without -m)")->capture_default_str();
      sub.add_option("--norm-num-groups", o->norm_num_groups, "GroupNorm groups (without -m)")->capture_default_str();
      sub.add_option("--resolution", o->resolution, "Training resolution in pixels (a multiple of the VQ scale factor)")
          ->capture_default_str();
      sub.add_flag("--center-crop", o->center_crop, "Centre crop instead of random crops");
      sub.add_flag("--random-flip", o->random_flip, "Random horizontal flips");
      sub.add_option("--on-bad-sample", o->on_bad_sample, "fail | skip (an unreadable image)")->capture_default_str();
      sub.add_option("--l1-weight", o->l1_weight, "Weight of the L1 reconstruction loss")->capture_default_str();
      sub.add_option("--l2-weight", o->l2_weight, "Weight of the L2 (MSE) reconstruction loss")->capture_default_str();
      sub.add_option("--commitment-weight", o->commitment_weight, "Weight of ||z - sg(z_q)||^2")->capture_default_str();
      sub.add_option("--codebook-weight", o->codebook_weight, "Weight of ||sg(z) - z_q||^2 (--codebook-update gradient)")
          ->capture_default_str();
      sub.add_option("--codebook-update", o->codebook_update, "ema | gradient")->capture_default_str();
      sub.add_option("--ema-decay", o->ema_decay, "EMA codebook decay")->capture_default_str();
      sub.add_option("--dead-code-steps", o->dead_code_steps, "Restart codes unused for N steps (0: never)")
          ->capture_default_str();
      sub.add_option("--disc-weight", o->disc_weight, "PatchGAN adversarial weight (0: no discriminator)")
          ->capture_default_str();
      sub.add_option("--disc-start", o->disc_start, "Steps before the adversarial terms start")->capture_default_str();
      sub.add_option("--disc-layers", o->disc_layers, "PatchGAN depth")->capture_default_str();
      sub.add_option("--disc-channels", o->disc_channels, "PatchGAN first-layer width")->capture_default_str();
      sub.add_option("--disc-learning-rate", o->disc_learning_rate, "Discriminator learning rate (0: --learning-rate)")
          ->capture_default_str();
      sub.add_option("--max-steps", o->max_steps, "Optimizer steps")->capture_default_str();
      sub.add_option("--batch-size", o->batch_size, "Images per step")->capture_default_str();
      sub.add_option("--learning-rate,--lr", o->learning_rate, "AdamW learning rate (peak, with a schedule)")
          ->capture_default_str();
      sub.add_option("--lr-scheduler", o->lr_scheduler, "constant | constant_with_warmup | linear | cosine")
          ->capture_default_str();
      sub.add_option("--lr-warmup-steps", o->lr_warmup_steps, "Warm-up steps of the schedules that have one")
          ->capture_default_str();
      sub.add_option("--adam-beta1", o->adam_beta1, "AdamW beta1")->capture_default_str();
      sub.add_option("--adam-beta2", o->adam_beta2, "AdamW beta2")->capture_default_str();
      sub.add_option("--adam-weight-decay", o->adam_weight_decay, "AdamW weight decay")->capture_default_str();
      sub.add_option("--adam-epsilon", o->adam_epsilon, "AdamW epsilon")->capture_default_str();
      sub.add_option("--max-grad-norm", o->max_grad_norm, "Clip the gradient norm (0: off)")->capture_default_str();
      sub.add_option("--seed", o->seed, "Seed (initialisation, crops, shuffling, restarts)")->capture_default_str()
          ->check(amused::cli::seed_range());
      sub.add_option("--checkpointing-steps", o->checkpointing_steps, "Checkpoint every N steps")->capture_default_str();
      sub.add_option("--checkpoints-total-limit", o->checkpoints_total_limit, "Keep the last K checkpoints (0: all)")
          ->capture_default_str();
      sub.add_flag("--resume", o->resume, "Continue from the newest checkpoint in --output");
      sub.add_option("--validation-steps", o->validation_steps, "Metrics and reconstructions every N steps (0: at the end)")
          ->capture_default_str();
      sub.add_option("--logging-steps", o->logging_steps, "A log line every N steps")->capture_default_str();
      sub.add_option("--device", o->device, "cpu | cuda | cuda:N")->check(amused::cli::device_choice())->capture_default_str();
      sub.add_option("--threads", o->threads, "Compute threads (default: all physical cores)");
      sub.add_flag("-q,--quiet", *quiet, "No progress lines");
      return std::function<int()>([&sub, o, quiet, config] {
        if (!config->empty()) amused::cli::apply_config_file(sub, *config, "train-vq");
        return run(sub, *o, *quiet);
      });
    });

}  // namespace
