// amused::convert_pipeline: see include/amused/convert.h.
#include "amused/convert.h"

#include <filesystem>

#include "amused/pipeline.h"
#include "io/diffusers_repo.h"
#include "pipelines/components.h"

namespace amused {

namespace fs = std::filesystem;

ConvertSummary convert_pipeline(const ConvertOptions& o) {
  if (o.model.empty()) throw InvalidArgument("no model to convert (-m: a pipeline folder or hub id)");
  if (o.output.empty()) throw InvalidArgument("no output folder (-o)");
  if (o.dtype != DType::Float16 && o.dtype != DType::Float32)
    throw InvalidArgument(std::string("--dtype ") + to_string(o.dtype) + " cannot be written: float16 or float32");
  if (!o.variant.empty() && o.variant != "fp16")
    throw InvalidArgument("--variant '" + o.variant + "' is not supported (\"\" or \"fp16\")");
  if (o.variant == "fp16" && o.dtype != DType::Float16)
    throw InvalidArgument("--variant fp16 holds float16 weights: use --dtype float16 with it");
  RepoOptions ro;
  ro.offline = o.offline;
  ro.variant = o.model_variant;
  const io::DiffusersRepo repo = io::DiffusersRepo::open(o.model, ro);
  if (fs::weakly_canonical(repo.root()) == fs::weakly_canonical(fs::path(o.output)))
    throw InvalidArgument("-o '" + o.output + "' is the model folder itself: write the conversion elsewhere");
  ComponentOptions co;
  co.precision = Precision::kFloat32;
  const Components c = load_components(repo, co);
  SaveOptions so;
  so.variant = o.variant;
  so.float16 = o.dtype == DType::Float16;
  save_pretrained(c, o.output, so);
  ConvertSummary s;
  for (const torch::nn::Module* m : {static_cast<const torch::nn::Module*>(c.text_encoder.get()),
                                     static_cast<const torch::nn::Module*>(c.transformer.get()),
                                     static_cast<const torch::nn::Module*>(c.vqvae.get())})
    for (const auto& p : m->parameters()) s.parameters += p.numel();
  for (const auto& e : fs::recursive_directory_iterator(o.output))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") s.weight_bytes += e.file_size();
  return s;
}

}  // namespace amused
