// Writes a full-size aMUSEd checkpoint with random weights in the diffusers folder layout (configs
// written back from our config structs, weights as <name>.safetensors and the fp16 variant
// <name>.fp16.safetensors), for load-time benchmarks on machines without the real checkpoints.
//   make_random_checkpoint CONFIG_DIR TOKENIZER_DIR OUT_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/config.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "models/clip_text_model.h"
#include "models/uvit_2d.h"
#include "models/vq_model.h"
#include "schedulers/scheduling_amused.h"

namespace fs = std::filesystem;
using namespace amused;

void write_json(const fs::path& p, const nlohmann::json& j) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << j.dump(2) << "\n";
}

void save(const fs::path& dir, const std::string& base, torch::nn::Module& m) {
  auto sd = io::module_state_dict(m);
  io::save_safetensors(dir / (base + ".safetensors"), sd, {{"format", "pt"}});
  for (auto& [k, t] : sd)
    if (t.is_floating_point()) t = t.to(torch::kFloat16);
  io::save_safetensors(dir / (base + ".fp16.safetensors"), sd, {{"format", "pt"}});
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s CONFIG_DIR TOKENIZER_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path cfg(argv[1]), tok(argv[2]), out(argv[3]);
  torch::NoGradGuard g;
  fs::create_directories(out);
  fs::copy_file(cfg / "model_index.json", out / "model_index.json", fs::copy_options::overwrite_existing);
  fs::create_directories(out / "tokenizer");
  for (const auto& e : fs::directory_iterator(tok))
    fs::copy_file(e.path(), out / "tokenizer" / e.path().filename(), fs::copy_options::overwrite_existing);
  {
    auto c = models::CLIPTextConfig::from_json(read_json_file(cfg / "text_encoder/config.json"), "te");
    models::CLIPTextModelWithProjection m(c);
    m->init_weights();
    write_json(out / "text_encoder/config.json", c.to_json());
    save(out / "text_encoder", "model", *m);
  }
  {
    auto c = models::UVit2DConfig::from_json(read_json_file(cfg / "transformer/config.json"), "uvit");
    models::UVit2DModel m(c);
    for (auto& p : m->parameters()) p.normal_(0, 0.02);
    write_json(out / "transformer/config.json", c.to_json());
    save(out / "transformer", "diffusion_pytorch_model", *m);
  }
  {
    auto c = models::VQModelConfig::from_json(read_json_file(cfg / "vqvae/config.json"), "vq");
    models::VQModel m(c);
    m->init_weights();
    write_json(out / "vqvae/config.json", c.to_json());
    save(out / "vqvae", "diffusion_pytorch_model", *m);
  }
  auto s = AmusedSchedulerConfig::from_json(read_json_file(cfg / "scheduler/scheduler_config.json"), "sched");
  write_json(out / "scheduler/scheduler_config.json", s.to_json());
  std::printf("wrote %s\n", out.c_str());
}
