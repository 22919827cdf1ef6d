// libFuzzer target: the JSON readers of a model folder. The input is parsed as JSON (size and
// depth limits of parse_json_text) and fed to every config reader (UVit2DConfig, VQModelConfig,
// CLIPTextConfig, AmusedSchedulerConfig), to the shard-index parser, and, as model_index.json,
// to DiffusersRepo::open. A config that is accepted must survive to_json() -> from_json(). Only
// amused::Error may be thrown.
#include <fstream>

#include "amused/error.h"
#include "core/config.h"
#include "fuzz_common.h"
#include "io/diffusers_repo.h"
#include "io/hf_hub.h"
#include "models/clip_text_model.h"
#include "models/uvit_2d.h"
#include "models/vq_model.h"
#include "schedulers/scheduling_amused.h"

namespace {

template <typename Config>
void round_trip(const nlohmann::json& j) {
  try {
    const Config c = Config::from_json(j, "fuzz config.json");
    // What we accept we must be able to write back and read again.
    const Config again = Config::from_json(c.to_json(), "fuzz round trip");
    if (again.to_json() != c.to_json()) __builtin_trap();
  } catch (const amused::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  amused::fuzz::quiet_logs();
  const std::string_view text = amused::fuzz::as_view(data, size);
  try {
    (void)amused::io::hub::parse_shard_index(text, "fuzz.safetensors.index.json");
  } catch (const amused::Error&) {
  }
  nlohmann::json j;
  try {
    j = amused::parse_json_text(text, "fuzz config.json");
  } catch (const amused::Error&) {
    return 0;
  }
  round_trip<amused::models::UVit2DConfig>(j);
  round_trip<amused::models::VQModelConfig>(j);
  round_trip<amused::models::CLIPTextConfig>(j);
  round_trip<amused::AmusedSchedulerConfig>(j);
  // model_index.json of a folder whose components are all missing.
  try {
    const auto dir = amused::fuzz::scratch_dir() / "model";
    std::filesystem::create_directories(dir);
    amused::fuzz::write_scratch("model/model_index.json", text);
    auto repo = amused::io::DiffusersRepo::open(dir.string(), [] {
      amused::RepoOptions o;
      o.offline = true;
      return o;
    }());
    for (const auto& name : repo.component_names()) {
      (void)repo.component_class(name);
      try {
        (void)repo.component_config_path(name);
      } catch (const amused::Error&) {
      }
    }
  } catch (const amused::Error&) {
  }
  return 0;
}
