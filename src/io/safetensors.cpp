#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "amused/error.h"
#include "core/files.h"
#include "core/config.h"
#include "io/atomic_file.h"

namespace amused::io {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct DtypeDesc {
  const char* name;
  int size;
  std::optional<torch::ScalarType> native;  // LibTorch type for a zero-copy view
};

const DtypeDesc* find_dtype(const std::string& name) {
  static const DtypeDesc kTable[] = {
      {"F64", 8, torch::kFloat64}, {"F32", 4, torch::kFloat32}, {"F16", 2, torch::kFloat16},
      {"BF16", 2, torch::kBFloat16}, {"I64", 8, torch::kInt64}, {"I32", 4, torch::kInt32},
      {"I16", 2, torch::kInt16},     {"I8", 1, torch::kInt8},     {"U8", 1, torch::kUInt8},
      {"BOOL", 1, torch::kBool},     {"U16", 2, std::nullopt},    {"U32", 4, std::nullopt},
      {"U64", 8, std::nullopt},      {"F8_E4M3", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt},
  };
  for (const auto& d : kTable)
    if (name == d.name) return &d;
  return nullptr;
}

[[noreturn]] void fail(const fs::path& path, const std::string& what) {
  throw CheckpointError("invalid safetensors file '" + path.string() + "': " + what);
}

// Decodes an 8-bit float (E4M3 "fn" variant: no infinities, S.1111.111 = NaN; or E5M2, IEEE-like).
float decode_f8(uint8_t v, bool e4m3) {
  const int sign = (v >> 7) & 1;
  const int ebits = e4m3 ? 4 : 5, mbits = e4m3 ? 3 : 2, bias = e4m3 ? 7 : 15;
  const int e = (v >> mbits) & ((1 << ebits) - 1);
  const int m = v & ((1 << mbits) - 1);
  float out;
  if (e4m3 && e == 15 && m == 7) {
    out = std::numeric_limits<float>::quiet_NaN();
  } else if (!e4m3 && e == 31) {
    out = m == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else if (e == 0) {
    out = std::ldexp(static_cast<float>(m) / (1 << mbits), 1 - bias);
  } else {
    out = std::ldexp(1.0f + static_cast<float>(m) / (1 << mbits), e - bias);
  }
  return sign ? -out : out;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

namespace {
// Live mappings, for release_mapped_pages.
std::mutex g_maps_mutex;
std::map<uintptr_t, uintptr_t> g_maps;  // begin -> end
}  // namespace

SafeTensorsFile::~SafeTensorsFile() {
  if (map_ && map_ != MAP_FAILED) {
    {
      std::lock_guard<std::mutex> lock(g_maps_mutex);
      g_maps.erase(reinterpret_cast<uintptr_t>(map_));
    }
    ::munmap(map_, size_);
  }
}

void release_mapped_pages(const torch::Tensor& t) {
  if (!t.defined() || !t.device().is_cpu() || t.numel() == 0) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto end = begin + static_cast<uintptr_t>(t.numel()) * t.element_size();
  {
    std::lock_guard<std::mutex> lock(g_maps_mutex);
    auto it = g_maps.upper_bound(begin);
    if (it == g_maps.begin()) return;
    --it;
    if (begin < it->first || end > it->second) return;
  }
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = (begin + page - 1) / page * page;  // whole pages inside the tensor only
  const uintptr_t last = end / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

std::shared_ptr<SafeTensorsFile> SafeTensorsFile::open(const fs::path& path) {
  if (const std::string problem = input_file_problem(path); !problem.empty()) {
    throw CheckpointError("weight file '" + path.string() + "' " +
                          (problem.rfind("is a folder", 0) == 0 ? "is a folder, expected a .safetensors file"
                                                                : problem));
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError("cannot open '" + path.string() + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw CheckpointError("cannot stat '" + path.string() + "': " + std::strerror(errno));
  }
  std::shared_ptr<SafeTensorsFile> f(new SafeTensorsFile());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    fail(path, "file is " + std::to_string(f->size_) + " bytes, too short for the 8-byte header length");
  }
  // Private + writable: tensors may be modified in place without touching the file (copy-on-write).
  f->map_ = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (f->map_ == MAP_FAILED) {
    f->map_ = nullptr;
    throw CheckpointError("cannot memory-map '" + path.string() + "': " + std::strerror(errno));
  }
  {
    std::lock_guard<std::mutex> lock(g_maps_mutex);
    g_maps[reinterpret_cast<uintptr_t>(f->map_)] = reinterpret_cast<uintptr_t>(f->map_) + f->size_;
  }
  const auto* bytes = static_cast<const uint8_t*>(f->map_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeaderBytes) {
    fail(path, "header length " + std::to_string(n) + " exceeds the " +
                   std::to_string(kMaxHeaderBytes) + "-byte limit (not a safetensors file?)");
  }
  if (n > f->size_ - 8) {
    fail(path, "header length " + std::to_string(n) + " runs past the end of the " +
                   std::to_string(f->size_) + "-byte file (truncated download?)");
  }
  f->data_start_ = 8 + n;
  const uint64_t data_size = f->size_ - f->data_start_;

  // Parse the JSON, rejecting duplicate top-level keys.
  std::set<std::string> seen;
  std::string duplicate;
  json header;
  try {
    const std::string_view text(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(n));
    // Real headers nest 3 levels; deep nesting only costs stack in recursive consumers.
    if (!json_depth_within(text, kMaxJsonDepth, [&](const std::string& k) {
          if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
        }))
      fail(path, "header nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    header = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail(path, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!duplicate.empty()) fail(path, "tensor '" + duplicate + "' appears twice in the header");
  if (!header.is_object()) fail(path, "header must be a JSON object");

  std::vector<std::pair<uint64_t, uint64_t>> spans;
  std::vector<std::string> span_keys;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) fail(path, "__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(path, "__metadata__ value '" + m.key() + "' is not a string");
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + key + "': ";
    if (!v.is_object()) fail(path, where + "entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail(path, where + "missing string 'dtype'");
    if (!v.contains("shape") || !v["shape"].is_array()) fail(path, where + "missing array 'shape'");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail(path, where + "'data_offsets' must be an array [begin, end]");
    TensorInfo info;
    info.dtype = v["dtype"].get<std::string>();
    const DtypeDesc* d = find_dtype(info.dtype);
    if (!d) fail(path, where + "unknown dtype '" + info.dtype + "'");
    uint64_t numel = 1;
    for (const auto& s : v["shape"]) {
      if (!s.is_number_unsigned()) fail(path, where + "shape entries must be non-negative integers");
      const uint64_t dim = s.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || !checked_mul(numel, dim, &numel))
        fail(path, where + "shape is too large");
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned()) fail(path, where + "data_offsets must be non-negative integers");
    info.begin = v["data_offsets"][0].get<uint64_t>();
    info.end = v["data_offsets"][1].get<uint64_t>();
    if (info.begin > info.end)
      fail(path, where + "data_offsets begin " + std::to_string(info.begin) + " > end " + std::to_string(info.end));
    if (info.end > data_size)
      fail(path, where + "data_offsets end " + std::to_string(info.end) + " is past the data area (" +
                     std::to_string(data_size) + " bytes; truncated file?)");
    uint64_t nbytes = 0;
    if (!checked_mul(numel, static_cast<uint64_t>(d->size), &nbytes) || nbytes != info.end - info.begin)
      fail(path, where + "shape x dtype size = " + std::to_string(nbytes) + " bytes, but data_offsets span " +
                     std::to_string(info.end - info.begin) + " bytes");
    if (nbytes > 0) {
      spans.emplace_back(info.begin, info.end);
      span_keys.push_back(key);
    }
    f->infos_.emplace(key, std::move(info));
  }
  // Non-overlapping data spans.
  std::vector<size_t> order(spans.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spans[a] < spans[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = spans[order[i - 1]];
    const auto& cur = spans[order[i]];
    if (cur.first < prev.second)
      fail(path, "tensors '" + span_keys[order[i - 1]] + "' and '" + span_keys[order[i]] + "' overlap");
  }
  for (const auto& [k, _] : f->infos_) f->keys_.push_back(k);
  return f;
}

const TensorInfo& SafeTensorsFile::info(const std::string& key) const {
  auto it = infos_.find(key);
  if (it == infos_.end())
    throw CheckpointError("tensor '" + key + "' not found in '" + path_.string() + "'");
  return it->second;
}

torch::Tensor SafeTensorsFile::get(const std::string& key) const {
  const TensorInfo& ti = info(key);
  const DtypeDesc* d = find_dtype(ti.dtype);
  uint8_t* ptr = static_cast<uint8_t*>(map_) + data_start_ + ti.begin;
  const int64_t numel = [&] {
    int64_t n = 1;
    for (auto s : ti.shape) n *= s;
    return n;
  }();
  if (d->native) {
    const auto opts = torch::TensorOptions().dtype(*d->native);
    if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(d->size) == 0) {
      auto keep = shared_from_this();
      return torch::from_blob(ptr, ti.shape, [keep](void*) {}, opts);
    }
    auto out = torch::empty(ti.shape, opts);
    // An empty tensor has no storage (data_ptr() is null): memcpy(nullptr, .., 0) is undefined.
    if (numel > 0) std::memcpy(out.data_ptr(), ptr, static_cast<size_t>(numel) * d->size);
    return out;
  }
  // Converted copies for dtypes LibTorch lacks.
  const std::string& t = ti.dtype;
  if (t == "U16") {
    auto out = torch::empty(ti.shape, torch::kInt32);
    auto* o = out.data_ptr<int32_t>();
    for (int64_t i = 0; i < numel; ++i) {
      uint16_t v;
      std::memcpy(&v, ptr + 2 * i, 2);
      o[i] = v;
    }
    return out;
  }
  if (t == "U32") {
    auto out = torch::empty(ti.shape, torch::kInt64);
    auto* o = out.data_ptr<int64_t>();
    for (int64_t i = 0; i < numel; ++i) {
      uint32_t v;
      std::memcpy(&v, ptr + 4 * i, 4);
      o[i] = v;
    }
    return out;
  }
  if (t == "U64") {
    auto out = torch::empty(ti.shape, torch::kInt64);
    auto* o = out.data_ptr<int64_t>();
    for (int64_t i = 0; i < numel; ++i) {
      uint64_t v;
      std::memcpy(&v, ptr + 8 * i, 8);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Unsupported("tensor '" + key + "' in '" + path_.string() + "': U64 value " + std::to_string(v) +
                          " does not fit in int64");
      o[i] = static_cast<int64_t>(v);
    }
    return out;
  }
  const bool e4m3 = t == "F8_E4M3";
  float table[256];
  for (int i = 0; i < 256; ++i) table[i] = decode_f8(static_cast<uint8_t>(i), e4m3);
  auto out = torch::empty(ti.shape, torch::kFloat32);
  auto* o = out.data_ptr<float>();
  for (int64_t i = 0; i < numel; ++i) o[i] = table[ptr[i]];
  return out;
}

StateDict SafeTensorsFile::tensors(const std::string& prefix) const {
  StateDict out;
  for (const auto& k : keys_)
    if (k.rfind(prefix, 0) == 0) out.emplace(k, get(k));
  return out;
}

StateDict load_safetensors(const fs::path& path) { return SafeTensorsFile::open(path)->tensors(); }

std::string safetensors_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat64: return "F64";
    case torch::kFloat32: return "F32";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: break;
  }
  throw InvalidArgument(std::string("dtype ") + c10::toString(t) + " cannot be stored in safetensors");
}

void write_safetensors(std::ostream& out, const StateDict& tensors, const Metadata& metadata) {
  struct Entry {
    std::string key;
    const torch::Tensor* t;
    int64_t elem;
  };
  std::vector<Entry> entries;
  for (const auto& [k, t] : tensors) {
    if (!t.defined()) throw InvalidArgument("tensor '" + k + "' is undefined");
    if (k == "__metadata__") throw InvalidArgument("'__metadata__' is reserved and cannot be a tensor name");
    safetensors_dtype_name(t.scalar_type());  // throws for a dtype the format cannot hold
    entries.push_back({k, &t, static_cast<int64_t>(t.element_size())});
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.elem != b.elem ? a.elem > b.elem : a.key < b.key;
  });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& e : entries) {
    const uint64_t nbytes = static_cast<uint64_t>(e.t->numel()) * static_cast<uint64_t>(e.elem);
    header[e.key] = {{"dtype", safetensors_dtype_name(e.t->scalar_type())},
                     {"shape", e.t->sizes().vec()},
                     {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  char length[8];
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.write(length, 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  // One tensor at a time: only its CPU, contiguous copy (if it needs one) is ever held extra.
  for (const auto& e : entries) {
    const torch::Tensor c = e.t->detach().to(torch::kCPU).contiguous();
    out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * e.elem));
  }
}

std::string serialize_safetensors(const StateDict& tensors, const Metadata& metadata) {
  std::ostringstream out(std::ios::binary);
  write_safetensors(out, tensors, metadata);
  return std::move(out).str();
}

void save_safetensors(const fs::path& path, const StateDict& tensors, const Metadata& metadata) {
  write_file_atomic(path, [&](std::ostream& out) { write_safetensors(out, tensors, metadata); });
}

}  // namespace amused::io
