// Image-caption datasets for training: an image folder with metadata.jsonl (Hugging Face
// imagefolder), a folder of images with a .txt caption beside each, WebDataset .tar shards, or one
// image repeated (train_amused.py --instance_data_image). Each sample goes through
// train_amused.py's process_image: EXIF transpose, RGB, shorter side resized to `resolution` with
// PIL's BILINEAR filter, a resolution x resolution crop (random, or centre), no flip unless asked.
//
// Basic usage:
//   DatasetOptions o;  o.data = "data/pokemon";  o.resolution = 256;  o.seed = 42;
//   auto ds = ImageCaptionDataset::open(o);           // validates everything but the pixels
//   ds->seek(saved_position);                         // when resuming
//   for (...) { auto batch = collate(ds->next_batch(8)); ...  save ds->position() with the
//   checkpoint; }
//
// Order and resumability. Everything random is a pure function of (seed, epoch, which sample),
// never of a running stream, so a DataPosition recreates the exact continuation:
//  * folders: epoch e visits the samples in a permutation drawn from (seed, e) (Fisher-Yates on
//    SplitMix64, independent of LibTorch's version); rank r of world_size takes permutation
//    entries r, r + world_size, ... and every rank has floor(n / world_size) samples per epoch
//    (the few left over differ each epoch). DataPosition.index counts permutation entries this
//    rank consumed in the epoch, bad ones included.
//  * tar shards: epoch e reads the shards in a permutation drawn from (seed, e); with at least
//    world_size shards, rank r reads every world_size-th shard of it, otherwise every rank reads
//    all of them and keeps every world_size-th record. An optional shuffle buffer (WebDataset's)
//    reorders records with a generator seeded from (seed, e, rank). DataPosition.index counts the
//    records this rank emitted in the epoch; seek() re-reads the shards up to there (without
//    decoding images). A shard that ends in corruption counts as ended there (policy skip).
//  * the crop offsets (and flip) of a sample come from a torch CPU generator seeded from (seed,
//    epoch, the sample's identity: its index in the sorted folder, or (shard, record ordinal)),
//    drawn as torchvision's RandomCrop.get_params draws them: top = randint(0, h - res + 1), then
//    left = randint(0, w - res + 1), nothing drawn when the image is exactly res x res; the flip
//    draws rand(1) < 0.5 after the crop.
//
// Errors: amused::IoError for anything about the files (missing folder, bad metadata.jsonl line
// with its number, an escaping file_name, no samples, a bad sample under policy fail);
// amused::InvalidArgument for bad options; amused::Unsupported for a metadata.csv (only
// metadata.jsonl is read). Indexing reads metadata only, never image pixels.
//
// Ref: diffusers examples/amused/train_amused.py (process_image, InstanceDataRootDataset,
//      InstanceDataImageDataset, HuggingFaceDataset with --prompt_prefix)
// Ref: datasets' imagefolder (metadata.jsonl, file_name); webdataset (keys, shuffle buffer)
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "amused/pipeline.h"

namespace amused::training {

enum class BadSamplePolicy { Skip, Fail };
// "skip" or "fail"; throws InvalidArgument otherwise.
BadSamplePolicy parse_bad_sample_policy(const std::string& name);

enum class CropMode { Random, Center };

struct DatasetOptions {
  // A folder (with metadata.jsonl, or with name.txt beside each image, or holding .tar shards), a
  // .tar file, or a pattern of .tar files: braces "shard-{000..099}.tar", "{a,b}.tar", or a glob
  // (* ? [..]) in the file name.
  std::string data;
  // Single-image mode (train_amused.py --instance_data_image): this image is processed once (one
  // crop) and every sample is that one. `data` must then be empty.
  std::string instance_image;
  std::string instance_prompt;  // its caption; empty: the file stem, as train_amused.py does
  // Single-image mode: draw a new crop (and flip, with random_flip) for every sample instead of
  // train_amused.py's one crop (the style recipe of amused train --lora --instance-image).
  bool instance_augment = false;
  int resolution = 512;
  CropMode crop = CropMode::Random;
  bool random_flip = false;          // the reference never flips
  std::string caption_prefix;        // prepended to every caption (--prompt_prefix)
  std::string caption_key = "text";  // metadata.jsonl key of the caption (--prompt_key)
  // Folders without metadata.jsonl: use the image's file stem as its caption (as train_amused.py's
  // --instance_data_dir) instead of reading name.txt.
  bool caption_from_file_stem = false;
  BadSamplePolicy on_bad_sample = BadSamplePolicy::Skip;
  // false: an image without a caption (no metadata.jsonl key, no name.txt, no .txt/.json member)
  // gets "" instead of being a bad sample (VQ-GAN training reads no captions).
  bool require_captions = true;
  // Image folders: keep one split only. "" keeps every image; "train" or "validation" keeps the
  // metadata.jsonl rows whose "split" equals it (rows without "split" count as "train"). When no
  // row has a "split" (or there is no metadata.jsonl), `holdout_fraction` of the images, spread
  // evenly over the folder's order (metadata.jsonl lines, or sorted paths) and at least one when
  // there are two or more, form "validation" and the rest "train". Tar shards take "" only
  // (Unsupported otherwise). No image in the split: IoError.
  std::string split;
  double holdout_fraction = 0.0;
  uint64_t seed = 0;
  bool shuffle = true;         // false: sorted order, shards in the given order
  int64_t shuffle_buffer = 0;  // tar shards: records held for shuffling (0 = none)
  int rank = 0;
  int world_size = 1;
};

struct Sample {
  Image image;          // RGB8, resolution x resolution
  std::string caption;  // with caption_prefix
  // [orig_width, orig_height, crop_top, crop_left, 6.0]: the size after EXIF transpose and before
  // the resize, the crop offsets in the resized image, the fixed aesthetic score.
  std::array<float, 5> micro_conds{};
  std::string id;  // "folder/sub/a.png" or "shard-000.tar:key", for messages
};

// Where the next sample comes from; saved in checkpoints. See the header comment for `index`.
struct DataPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const DataPosition&) const = default;
};
nlohmann::json to_json(const DataPosition& position);
// Throws InvalidArgument naming the missing or negative field.
DataPosition data_position_from_json(const nlohmann::json& j);

class ImageCaptionDataset {
 public:
  virtual ~ImageCaptionDataset() = default;

  // Finds and validates the source (metadata, captions' presence, shard headers). Throws IoError
  // or InvalidArgument (see above) before any training starts.
  static std::unique_ptr<ImageCaptionDataset> open(const DatasetOptions& options);

  // Samples in the whole dataset (all ranks); -1 for tar shards (unknown without reading them).
  virtual int64_t size() const = 0;
  // Samples this rank sees per epoch; -1 for tar shards.
  virtual int64_t epoch_length() const = 0;

  // The next sample, crossing into the next epoch at the end of one. Bad samples are skipped
  // (policy skip: one warning each, counted) or thrown as IoError (policy fail).
  virtual Sample next() = 0;
  // batch_size consecutive samples (next() repeated).
  std::vector<Sample> next_batch(int64_t batch_size);

  virtual DataPosition position() const = 0;
  // Continues from `position` as if the samples before it had been read. Throws InvalidArgument
  // for a position outside the dataset (e.g. a checkpoint of another dataset).
  virtual void seek(const DataPosition& position) = 0;

  // Bad samples skipped so far (by this object).
  int64_t skipped() const { return skipped_; }
  // One line for logs: kind, location, sample count.
  virtual std::string description() const = 0;

 protected:
  int64_t skipped_ = 0;
};

// A batch as the trainer wants it: pixel_values float32 [B, 3, H, W] in [0, 1] (ToTensor, no
// normalisation, as train_amused.py feeds the VQ-GAN), micro_conds float32 [B, 5], the captions.
struct Batch {
  torch::Tensor pixel_values;
  torch::Tensor micro_conds;
  std::vector<std::string> captions;
};
Batch collate(const std::vector<Sample>& samples);

// Brace expansion as the shell does it ("a{0..2}b" -> a0b a1b a2b, zero padding kept,
// "{x,y}"), nested; a string without braces is returned alone.
std::vector<std::string> expand_braces(const std::string& pattern);

// The WebDataset key of a member: its path up to the first dot of the file name
// ("dir/a.b.jpg" -> "dir/a"), and the extension after that dot ("b.jpg").
std::pair<std::string, std::string> webdataset_key(const std::string& member_name);

// Resize + crop + flip of one decoded, oriented RGB image (process_image without the decoding),
// with the randomness drawn from `generator` as described above. Exposed for tests.
Sample process_image(const Image& oriented_rgb, int resolution, CropMode crop, bool random_flip,
                     at::Generator& generator);

}  // namespace amused::training
