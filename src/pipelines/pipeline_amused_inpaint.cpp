// Inpainting: the editing path with a mask instead of noise.
// Ref: diffusers/pipelines/deprecated/amused/pipeline_amused_inpaint.py
#include "pipelines/pipeline_amused.h"

namespace amused {

GenerationResult Pipeline::inpaint(const InpaintParams& params) {
  return impl_->edit(params, {params.image, params.strength, params.width, params.height, &params.mask});
}

}  // namespace amused
