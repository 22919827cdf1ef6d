// safetensors reader (memory-mapped, zero-copy where alignment allows) and atomic writer.
// Format: 8-byte LE u64 header length N, N bytes of JSON, then the raw little-endian data.
// Every field of the header is validated before any tensor is touched.
// Ref: https://github.com/huggingface/safetensors (format description).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace amused::io {

// Ordered by key so iteration is deterministic.
using StateDict = std::map<std::string, torch::Tensor>;
using Metadata = std::map<std::string, std::string>;

struct TensorInfo {
  std::string dtype;            // safetensors name: "F32", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;           // offsets relative to the start of the data area
  uint64_t end = 0;
};

class SafeTensorsFile : public std::enable_shared_from_this<SafeTensorsFile> {
 public:
  // Header cap: real checkpoints have headers of a few hundred KiB.
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

  // Maps and validates the file; throws amused::CheckpointError naming the file (and the tensor).
  static std::shared_ptr<SafeTensorsFile> open(const std::filesystem::path& path);
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<std::string>& keys() const { return keys_; }  // sorted
  bool contains(const std::string& key) const { return infos_.count(key) != 0; }
  const TensorInfo& info(const std::string& key) const;
  const Metadata& metadata() const { return metadata_; }
  uint64_t file_size() const { return size_; }

  // A CPU tensor viewing the mapped bytes (zero-copy) when the dtype is native to LibTorch and the
  // data is aligned; otherwise a converted copy (U16->I32, U32->I64, F8_E4M3/F8_E5M2->F32,
  // unaligned data). The tensor keeps the mapping alive. Writing to it never touches the file
  // (private copy-on-write mapping).
  torch::Tensor get(const std::string& key) const;

  // All tensors, optionally only those whose key starts with `prefix` (prefix kept in the keys).
  StateDict tensors(const std::string& prefix = "") const;

 private:
  SafeTensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::vector<std::string> keys_;
  Metadata metadata_;
};

// If `t` views a memory-mapped safetensors file, drops its whole pages from this process's resident
// memory (madvise DONTNEED). The data stays valid: a later read maps the pages in again from the
// file. Used after converting a tensor to another dtype, so loading a float32 checkpoint into a
// 16-bit model never holds both in memory. No-op for any other tensor.
void release_mapped_pages(const torch::Tensor& t);

// Convenience: open + tensors().
StateDict load_safetensors(const std::filesystem::path& path);

// Writes `tensors` (any device, made contiguous and moved to CPU) atomically. Keys are ordered by
// dtype size (descending) then name, like the reference writer; the header is padded with spaces
// to a multiple of 8. Throws amused::IoError / amused::InvalidArgument.
void save_safetensors(const std::filesystem::path& path, const StateDict& tensors,
                      const Metadata& metadata = {});

// Streams the file's bytes to `out`, one tensor at a time (no copy of the whole file in memory).
void write_safetensors(std::ostream& out, const StateDict& tensors, const Metadata& metadata = {});

// Serialises to bytes (tests that build corrupt files, in-memory uses).
std::string serialize_safetensors(const StateDict& tensors, const Metadata& metadata = {});

// "F32" <-> torch dtype for the dtypes LibTorch can hold natively.
std::string safetensors_dtype_name(torch::ScalarType t);

}  // namespace amused::io
