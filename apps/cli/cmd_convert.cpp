// amused convert: a pipeline folder rewritten with float16 (or float32) weights.
#include <cstdio>
#include <memory>
#include <string>

#include "amused/convert.h"
#include "command.h"

namespace {

amused::cli::Registrar reg(
    "convert", "Rewrite a pipeline folder with float16 or float32 weights (diffusers layout)",
    [](CLI::App& sub) {
      auto o = std::make_shared<amused::ConvertOptions>();
      auto quiet = std::make_shared<bool>(false);
      auto dtype = std::make_shared<std::string>("float16");
      sub.add_option("-m,--model", o->model, "Pipeline folder or hub repo id")->required();
      sub.add_option("--model-variant", o->model_variant, "Weight files to read (e.g. fp16)");
      sub.add_flag("--offline", o->offline, "Never use the network (also HF_HUB_OFFLINE=1)");
      sub.add_option("-o,--output", o->output, "Pipeline folder to write")->required();
      sub.add_option("--dtype", *dtype, "float16 | float32: the weights written")
          ->check(amused::cli::dtype_choice())
          ->capture_default_str();
      sub.add_option("--variant", o->variant,
                     "\"\": plain file names (loads without a variant); fp16: <base>.fp16.safetensors");
      sub.add_flag("-q,--quiet", *quiet, "Print nothing on success");
      return std::function<int()>([o, quiet, dtype] {
        o->dtype = amused::parse_dtype(*dtype);
        const auto s = amused::convert_pipeline(*o);
        if (!*quiet)
          std::printf("%s: %.2f M parameters, %.1f MB of %s weights\n", o->output.c_str(), s.parameters / 1e6,
                      s.weight_bytes / 1e6, amused::to_string(o->dtype));
        return 0;
      });
    });

}  // namespace
