// Training-time image preprocessing as train_amused.py's process_image does it on a PIL image:
// EXIF orientation, resize of the shorter side with PIL's BILINEAR filter, random or centre crop,
// optional horizontal flip.
//
// Ref: diffusers examples/amused/train_amused.py (process_image)
// Ref: Pillow src/libImaging/Resample.c (precompute_coeffs, ImagingResample*_8bpc),
// ImageOps.exif_transpose Ref: torchvision transforms.Resize (_compute_resized_output_size),
// RandomCrop.get_params, CenterCrop
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "amused/pipeline.h"

namespace amused::training {

// The EXIF orientation (1..8) stored in a JPEG's APP1 "Exif" segment or a PNG's eXIf chunk; 1
// (as stored) when there is none or it cannot be parsed. Never throws.
int exif_orientation(std::string_view file_bytes);

// Applies an EXIF orientation as PIL's ImageOps.exif_transpose does (2 mirror, 3 rotate 180,
// 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise);
// other values return the image unchanged.
Image apply_exif_orientation(const Image& image, int orientation);

// Decodes an image file's bytes (PNG/JPEG/BMP via amused::decode_image) to RGB8 and applies its
// EXIF orientation. Throws amused::IoError naming `source`.
Image decode_oriented_rgb(std::string_view file_bytes, const std::string& source);

// PIL's Image.resize(size, Image.BILINEAR) on an 8-bit image, bit for bit: a separable triangle
// filter whose support is scaled by the shrink factor (antialiased when shrinking), coefficients
// normalised and rounded to 22-bit fixed point, a horizontal pass to 8 bits then a vertical pass.
// An axis whose size does not change is copied. Throws InvalidArgument for a bad size or buffer.
Image resize_bilinear_pil(const Image& image, int width, int height);

// torchvision Resize(size) with an int size: the output size (width, height) whose shorter side
// is `size`, the longer one int(size * long / short).
std::pair<int, int> shorter_side_size(int width, int height, int size);

// The `size` x `size` window starting at (top, left). Throws InvalidArgument if it does not fit.
Image crop(const Image& image, int top, int left, int size);

Image flip_horizontal(const Image& image);

}  // namespace amused::training
