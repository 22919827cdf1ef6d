// Image files: PNG output with generation parameters in text chunks, and reading those back.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "amused/image.h"
#include "amused/png_text.h"  // read_png_text

namespace amused {

using TextChunks = std::vector<std::pair<std::string, std::string>>;

// Writes an 8-bit RGB PNG atomically (temporary file + rename), with `text` as iTXt chunks (UTF-8).
// Throws amused::IoError naming the path (e.g. the folder does not exist).
void save_png(const std::filesystem::path& path, const Image& image, const TextChunks& text = {});

// The bytes of the PNG file save_png would write (same encoder, same chunks), for callers that
// keep images in memory (the server's b64_json). Throws amused::InvalidArgument for a malformed
// image buffer.
std::string encode_png(const Image& image, const TextChunks& text = {});

// Writes several files (path, bytes) all or nothing, e.g. a batch of images and their token file:
// every file is first written and synced beside its target, and only when all are written are
// they renamed into place. Throws amused::IoError naming the file that failed (a missing folder, a
// full disk); then no target has been touched and no temporary file is left.
void save_files(const std::vector<std::pair<std::filesystem::path, std::string>>& files);

}  // namespace amused

namespace amused {

// Writes token grids as one int64 tensor [B, h, w] under the key `tokens` in a safetensors file
// (atomically). All grids must have the same size.
void save_token_grids(const std::filesystem::path& path, const std::vector<TokenGrid>& grids);

// The bytes of the file save_token_grids would write.
std::string encode_token_grids(const std::vector<TokenGrid>& grids);

// Reads a file written by save_token_grids (key `tokens`, int64 or int32 [B, h, w] or [h, w]).
std::vector<TokenGrid> load_token_grids(const std::filesystem::path& path);

}  // namespace amused

namespace amused {

// Reads a PNG, JPEG or BMP file (8-bit grey, grey+alpha, RGB, RGBA, palette; 16-bit PNG is reduced
// to 8 bits) as 8-bit RGB: alpha is dropped and grey replicated, as PIL's convert("RGB") does.
// JPEG goes through libjpeg with its default (PIL's) decoder settings. Throws amused::IoError naming
// the file when it is missing, truncated or not an image.
Image load_image(const std::filesystem::path& path);
// The same decoder on bytes already in memory (an upload); `source` names them in messages.
// Images over 16384 pixels per side or 100 megapixels, and files over 256 MiB, are refused
// before any pixel memory is allocated.
Image decode_image(std::string_view data, const std::string& source);

// 8-bit grey version of an RGB image with PIL's convert("L") weights (ITU-R 601-2 luma).
// Throws InvalidArgument when `image` is inconsistent (as resize_image).
Image to_grey(const Image& image);

// Resizes with a Lanczos-3 filter (antialiased when shrinking, like PIL's Image.LANCZOS).
// Throws InvalidArgument when `image` is inconsistent (pixels.size() != width*height*channels,
// channels not 1, 3 or 4) or the target size is not positive or over the decoder's limits.
Image resize_image(const Image& image, int width, int height);

}  // namespace amused
