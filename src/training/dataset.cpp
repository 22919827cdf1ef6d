// Image-caption datasets for training (folders, WebDataset shards, one image), see dataset.h.
#include "training/dataset.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "amused/error.h"
#include "core/log.h"
#include "training/image_transforms.h"
#include "training/tar_reader.h"

namespace amused::training {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxImageFileBytes = 256ull << 20;
constexpr uint64_t kMaxCaptionBytes = 1ull << 20;
constexpr int kLoggedBadSamples = 20;

// ------------------------------------------------------------------ deterministic randomness

// SplitMix64 (Steele, Lea, Flood 2014): tiny, fully specified, the same on every platform.
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A seed that depends on every part, in order.
uint64_t mix(std::initializer_list<uint64_t> parts) {
  uint64_t state = 0x6A09E667F3BCC908ull;
  uint64_t out = 0;
  for (uint64_t p : parts) {
    state ^= p;
    out = splitmix64(state);
    state = out;
  }
  return out;
}

// Which random stream a seed is for.
enum Stream : uint64_t { kOrder = 1, kAugment = 2, kShardOrder = 3, kBuffer = 4, kCaption = 5 };

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return splitmix64(state_); }
  // Uniform in [0, n) without modulo bias (rejection below the largest multiple of n).
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      const uint64_t x = next();
      if (x >= threshold) return x % n;
    }
  }

 private:
  uint64_t state_;
};

// Fisher-Yates; identity when shuffle is off.
std::vector<int64_t> permutation(int64_t n, bool shuffle, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  if (!shuffle) return p;
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[rng.below(static_cast<uint64_t>(i) + 1)]);
  return p;
}

at::Generator augment_generator(uint64_t seed, int64_t epoch, uint64_t a, uint64_t b) {
  return at::detail::createCPUGenerator(mix({seed, kAugment, static_cast<uint64_t>(epoch), a, b}));
}

// ------------------------------------------------------------------ files and names

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_image_extension(const std::string& ext) {
  const std::string e = lower(ext);
  return e == ".png" || e == ".jpg" || e == ".jpeg";
}

std::string read_file_limited(const fs::path& path, uint64_t limit, const std::string& what) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw IoError(what + " '" + path.string() + "' " +
                  (fs::exists(path, ec) ? "is not a regular file" : "does not exist"));
  const auto size = fs::file_size(path, ec);
  if (!ec && size > limit)
    throw IoError(what + " '" + path.string() + "' is " + std::to_string(size) +
                  " bytes, more than the " + std::to_string(limit >> 20) + " MiB limit");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot read " + what + " '" + path.string() + "'");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw IoError("cannot read " + what + " '" + path.string() + "'");
  return data;
}

// Caption files usually end with a newline an editor added: trailing white space is dropped.
std::string trim_trailing(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

bool has_glob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

// `p` lexically normal, relative and inside its folder (no leading "..").
bool stays_inside(const fs::path& p) {
  if (p.empty() || p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
  const fs::path n = p.lexically_normal();
  if (n.empty() || n == ".") return false;
  return *n.begin() != "..";
}

// ------------------------------------------------------------------ common behaviour

class DatasetBase : public ImageCaptionDataset {
 public:
  explicit DatasetBase(DatasetOptions options) : options_(std::move(options)) {}

 protected:
  // A bad sample: thrown (policy fail) or logged and counted (policy skip).
  void bad_sample(const std::string& message) {
    if (options_.on_bad_sample == BadSamplePolicy::Fail)
      throw IoError(message + " (on_bad_sample=fail; use skip to leave such samples out)");
    ++skipped_;
    if (skipped_ <= kLoggedBadSamples) log::warn("skipping bad sample: " + message);
    if (skipped_ == kLoggedBadSamples)
      log::warn(
          "further bad samples are skipped without a message each (count in the run summary)");
  }

  Sample finish(const Image& oriented, std::string caption, std::string id,
                at::Generator gen) const {
    Sample s =
        process_image(oriented, options_.resolution, options_.crop, options_.random_flip, gen);
    s.caption = options_.caption_prefix + caption;
    s.id = std::move(id);
    return s;
  }

  DatasetOptions options_;
};

// ------------------------------------------------------------------ folders

struct FolderEntry {
  fs::path image;
  std::string rel;                     // relative path, for messages and ids
  std::optional<std::string> caption;  // known from metadata.jsonl or the file stem
  std::vector<std::string> caption_choices;  // a list in metadata.jsonl: one drawn per epoch
  fs::path caption_file;               // else read from here
  std::optional<std::string> split;    // metadata.jsonl "split"
};

class FolderDataset : public DatasetBase {
 public:
  FolderDataset(DatasetOptions options, fs::path root, std::vector<FolderEntry> entries,
                std::string kind)
      : DatasetBase(std::move(options)),
        root_(std::move(root)),
        entries_(std::move(entries)),
        kind_(std::move(kind)) {
    const int64_t n = static_cast<int64_t>(entries_.size());
    if (n < options_.world_size)
      throw IoError(description() + " has fewer samples than world_size " +
                    std::to_string(options_.world_size));
  }

  int64_t size() const override { return static_cast<int64_t>(entries_.size()); }
  int64_t epoch_length() const override { return size() / options_.world_size; }

  Sample next() override {
    int64_t failures = 0;
    for (;;) {
      if (pos_.index >= epoch_length()) pos_ = {pos_.epoch + 1, 0};
      const int64_t epoch = pos_.epoch;
      const int64_t k =
          order(epoch)[static_cast<size_t>(pos_.index * options_.world_size + options_.rank)];
      ++pos_.index;
      try {
        return load(k, epoch);
      } catch (const Cancelled&) {
        throw;
      } catch (const Error& e) {
        bad_sample("'" + entries_[k].rel + "' in " + root_.string() + ": " + e.what());
      }
      if (++failures >= epoch_length())
        throw IoError("no readable sample in a whole epoch of " + description() + " (" +
                      std::to_string(failures) + " bad in a row)");
    }
  }

  DataPosition position() const override { return pos_; }

  void seek(const DataPosition& p) override {
    if (p.epoch < 0 || p.index < 0 || p.index > epoch_length())
      throw InvalidArgument("data position (epoch " + std::to_string(p.epoch) + ", index " +
                            std::to_string(p.index) + ") is outside " + description() + " (" +
                            std::to_string(epoch_length()) +
                            " samples per epoch on this rank); was the "
                            "checkpoint made with another dataset or world size?");
    pos_ = p;
  }

  std::string description() const override {
    return kind_ + " '" + root_.string() + "' (" + std::to_string(entries_.size()) + " images)";
  }

 private:
  const std::vector<int64_t>& order(int64_t epoch) {
    if (order_epoch_ != epoch) {
      order_ = permutation(size(), options_.shuffle,
                           mix({options_.seed, kOrder, static_cast<uint64_t>(epoch)}));
      order_epoch_ = epoch;
    }
    return order_;
  }

  Sample load(int64_t k, int64_t epoch) const {
    const FolderEntry& e = entries_[static_cast<size_t>(k)];
    const std::string bytes = read_file_limited(e.image, kMaxImageFileBytes, "image");
    const Image image = decode_oriented_rgb(bytes, e.image.string());
    std::string caption;
    if (!e.caption_choices.empty()) {
      // Several captions for one image: one of them, drawn anew each epoch (and the same again
      // after a resume: the draw depends only on the seed, the epoch and the image).
      Rng rng(mix({options_.seed, kCaption, static_cast<uint64_t>(epoch), static_cast<uint64_t>(k)}));
      caption = e.caption_choices[static_cast<size_t>(rng.below(e.caption_choices.size()))];
    } else if (e.caption) {
      caption = *e.caption;
    } else {
      std::error_code ec;
      if (!fs::exists(e.caption_file, ec)) {
        if (options_.require_captions)
          throw IoError("its caption file '" + e.caption_file.filename().string() +
                        "' does not exist");
      } else {
        caption =
            trim_trailing(read_file_limited(e.caption_file, kMaxCaptionBytes, "caption file"));
      }
    }
    return finish(image, caption, e.rel,
                  augment_generator(options_.seed, epoch, static_cast<uint64_t>(k), 0));
  }

  fs::path root_;
  std::vector<FolderEntry> entries_;
  std::string kind_;
  DataPosition pos_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

// Reports a problem found while indexing: thrown under policy fail, else warned (the first few)
// and counted.
struct IndexProblems {
  BadSamplePolicy policy;
  int64_t count = 0;
  void report(const std::string& message) {
    if (policy == BadSamplePolicy::Fail)
      throw IoError(message + " (on_bad_sample=fail; use skip to leave such samples out)");
    if (++count <= kLoggedBadSamples) log::warn("skipping bad sample: " + message);
  }
  void summary(const fs::path& root) const {
    if (count > kLoggedBadSamples)
      log::warn(std::to_string(count) + " samples of '" + root.string() + "' were left out (" +
                std::to_string(kLoggedBadSamples) + " shown above)");
  }
};

std::vector<FolderEntry> index_metadata(const fs::path& root, const DatasetOptions& o,
                                        IndexProblems& problems) {
  const fs::path meta = root / "metadata.jsonl";
  std::ifstream in(meta, std::ios::binary);
  if (!in) throw IoError("cannot read '" + meta.string() + "'");
  std::vector<FolderEntry> entries;
  std::string line;
  int64_t line_no = 0;
  const auto where = [&] { return "'" + meta.string() + "' line " + std::to_string(line_no); };
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (std::all_of(line.begin(), line.end(),
                    [](char c) { return std::isspace(static_cast<unsigned char>(c)); }))
      continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      throw IoError(where() + " is not valid JSON (" + std::string(e.what()) + ")");
    }
    if (!j.is_object())
      throw IoError(where() + ": expected a JSON object, got " + std::string(j.type_name()));
    const auto fn = j.find("file_name");
    if (fn == j.end()) throw IoError(where() + " has no \"file_name\"");
    if (!fn->is_string())
      throw IoError(where() + ": \"file_name\" must be a string, got " +
                    std::string(fn->type_name()));
    const auto cap = j.find(o.caption_key);
    const bool no_caption = cap == j.end() || (!o.require_captions && cap->is_null());
    if (no_caption && o.require_captions)
      throw IoError(where() + " has no \"" + o.caption_key +
                    "\" (the caption; caption_key names another key)");
    std::vector<std::string> choices;
    if (!no_caption && cap->is_array()) {
      for (const auto& c : *cap) {
        if (!c.is_string())
          throw IoError(where() + ": \"" + o.caption_key + "\" must be a string or a list of strings, got a list holding " +
                        std::string(c.type_name()));
        choices.push_back(c.get<std::string>());
      }
      if (choices.empty())
        throw IoError(where() + ": \"" + o.caption_key + "\" is an empty list (give at least one caption)");
    } else if (!no_caption && !cap->is_string()) {
      throw IoError(where() + ": \"" + o.caption_key + "\" must be a string or a list of strings, got " +
                    std::string(cap->type_name()));
    }
    const std::string name = fn->get<std::string>();
    const fs::path rel = fs::path(name);
    if (!stays_inside(rel))
      throw IoError(where() + ": file_name '" + name +
                    "' is outside the dataset folder (absolute, empty or with ..)");
    FolderEntry e;
    e.rel = rel.lexically_normal().generic_string();
    e.image = root / rel.lexically_normal();
    if (choices.size() == 1) {
      e.caption = choices[0];
    } else if (!choices.empty()) {
      e.caption = choices[0];
      e.caption_choices = std::move(choices);
    } else {
      e.caption = no_caption ? std::string() : cap->get<std::string>();
    }
    if (const auto sp = j.find("split"); sp != j.end() && !sp->is_null()) {
      if (!sp->is_string())
        throw IoError(where() + ": \"split\" must be a string (\"train\" or \"validation\"), got " +
                      std::string(sp->type_name()));
      e.split = sp->get<std::string>();
    }
    std::error_code ec;
    if (!fs::is_regular_file(e.image, ec)) {
      problems.report(where() + ": image '" + name + "' does not exist");
      continue;
    }
    entries.push_back(std::move(e));
  }
  if (in.bad()) throw IoError("cannot read '" + meta.string() + "'");
  return entries;
}

// Image files under `root` (recursive, hidden entries skipped), sorted by relative path.
std::vector<fs::path> scan_images(const fs::path& root) {
  std::vector<fs::path> found;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
  if (ec) throw IoError("cannot list '" + root.string() + "': " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw IoError("cannot list '" + root.string() + "': " + ec.message());
    const fs::path& p = it->path();
    if (p.filename().string().rfind('.', 0) == 0) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(ec) && is_image_extension(p.extension().string())) found.push_back(p);
  }
  std::sort(found.begin(), found.end(), [&](const fs::path& a, const fs::path& b) {
    return a.lexically_relative(root).generic_string() <
           b.lexically_relative(root).generic_string();
  });
  return found;
}

std::vector<FolderEntry> index_caption_files(const fs::path& root,
                                             const std::vector<fs::path>& images,
                                             const DatasetOptions& o, IndexProblems& problems) {
  std::vector<FolderEntry> entries;
  for (const auto& p : images) {
    FolderEntry e;
    e.image = p;
    e.rel = p.lexically_relative(root).generic_string();
    if (o.caption_from_file_stem) {
      e.caption = p.stem().string();
    } else {
      e.caption_file = fs::path(p).replace_extension(".txt");
      std::error_code ec;
      if (!fs::is_regular_file(e.caption_file, ec) && o.require_captions) {
        problems.report("'" + e.rel + "' in '" + root.string() + "' has no caption file '" +
                        e.caption_file.filename().string() +
                        "' (or set caption_from_file_stem to use the file name)");
        continue;
      }
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

// The entries of split `o.split` (see DatasetOptions::split).
std::vector<FolderEntry> select_split(std::vector<FolderEntry> entries, const DatasetOptions& o,
                                      const fs::path& root) {
  if (o.split.empty()) return entries;
  const bool labelled = std::any_of(entries.begin(), entries.end(),
                                    [](const FolderEntry& e) { return e.split.has_value(); });
  std::vector<FolderEntry> kept;
  if (labelled) {
    for (auto& e : entries)
      if (e.split.value_or("train") == o.split) kept.push_back(std::move(e));
  } else {
    const size_t n = entries.size();
    size_t n_val = 0;
    if (o.holdout_fraction > 0 && n >= 2)
      n_val = std::clamp<size_t>(static_cast<size_t>(std::llround(o.holdout_fraction * n)), 1, n - 1);
    std::vector<bool> is_val(n, false);
    for (size_t j = 0; j < n_val; ++j) is_val[(2 * j + 1) * n / (2 * n_val)] = true;
    for (size_t i = 0; i < n; ++i)
      if (is_val[i] == (o.split == "validation")) kept.push_back(std::move(entries[i]));
  }
  if (kept.empty())
    throw IoError("no images of split '" + o.split + "' in '" + root.string() + "' (" +
                  (labelled ? std::string("its metadata.jsonl rows name other splits")
                            : "no metadata.jsonl row has a \"split\", and the held-out fraction " +
                                  std::to_string(o.holdout_fraction) + " of " +
                                  std::to_string(entries.size()) + " images selects none") +
                  ")");
  return kept;
}

// ------------------------------------------------------------------ WebDataset shards

struct RawRecord {
  size_t shard = 0;     // index into the sorted shard list
  int64_t ordinal = 0;  // record number inside its shard
  std::string key;
  std::map<std::string, std::string> files;  // extension -> bytes (images and captions only)
  std::vector<std::string> other;            // extensions present but not kept, for messages
};

bool wanted_extension(const std::string& ext) {
  const std::string e = lower(ext);
  return e == "png" || e == "jpg" || e == "jpeg" || e == "txt" || e == "json";
}

class TarDataset : public DatasetBase {
 public:
  TarDataset(DatasetOptions options, std::vector<fs::path> shards, std::string label)
      : DatasetBase(std::move(options)), shards_(std::move(shards)), label_(std::move(label)) {
    start_epoch(0);
  }

  int64_t size() const override { return -1; }
  int64_t epoch_length() const override { return -1; }

  Sample next() override {
    for (;;) {
      RawRecord r;
      if (!next_record(r)) {
        if (!good_in_epoch_)
          throw IoError("no usable sample in " + description() + " in epoch " +
                        std::to_string(pos_.epoch) +
                        (options_.world_size > 1 ? " for rank " + std::to_string(options_.rank)
                                                 : std::string()) +
                        " (" + std::to_string(pos_.index) + " records, all bad or none)");
        start_epoch(pos_.epoch + 1);
        continue;
      }
      ++pos_.index;
      try {
        Sample s = decode(r);
        good_in_epoch_ = true;
        return s;
      } catch (const Cancelled&) {
        throw;
      } catch (const Error& e) {
        bad_sample(e.what());
      }
    }
  }

  DataPosition position() const override { return pos_; }

  void seek(const DataPosition& p) override {
    if (p.epoch < 0 || p.index < 0)
      throw InvalidArgument("data position (epoch " + std::to_string(p.epoch) + ", index " +
                            std::to_string(p.index) + ") is negative");
    start_epoch(p.epoch);
    RawRecord r;
    for (int64_t i = 0; i < p.index; ++i) {
      if (!next_record(r))
        throw InvalidArgument("data position (epoch " + std::to_string(p.epoch) + ", index " +
                              std::to_string(p.index) + ") is past the end of that epoch of " +
                              description() + " (" + std::to_string(i) +
                              " records); were the shards changed since the checkpoint?");
    }
    pos_ = p;
    // Whether the skipped records were good is not known without decoding them; assume so.
    good_in_epoch_ = p.index > 0;
  }

  std::string description() const override {
    return "WebDataset " + label_ + " (" + std::to_string(shards_.size()) + " shard" +
           (shards_.size() == 1 ? "" : "s") + ")";
  }

 private:
  void start_epoch(int64_t epoch) {
    pos_ = {epoch, 0};
    good_in_epoch_ = false;
    const auto order = permutation(static_cast<int64_t>(shards_.size()), options_.shuffle,
                                   mix({options_.seed, kShardOrder, static_cast<uint64_t>(epoch)}));
    const auto world = static_cast<size_t>(options_.world_size),
               rank = static_cast<size_t>(options_.rank);
    my_shards_.clear();
    split_records_ = shards_.size() < world;
    for (size_t i = 0; i < order.size(); ++i)
      if (split_records_ || i % world == rank) my_shards_.push_back(static_cast<size_t>(order[i]));
    next_shard_ = 0;
    reader_.reset();
    pending_.reset();
    stream_ordinal_ = 0;
    buffer_.clear();
    exhausted_ = false;
    buffer_rng_ = Rng(mix({options_.seed, kBuffer, static_cast<uint64_t>(epoch), rank}));
  }

  // Reads one member into pending_, opening shards as needed; false when all shards are done.
  bool fill_pending() {
    while (!pending_) {
      if (!reader_) {
        if (next_shard_ >= my_shards_.size()) return false;
        current_shard_ = my_shards_[next_shard_++];
        shard_ordinal_ = 0;
        try {
          reader_ = std::make_unique<TarReader>(shards_[current_shard_]);
        } catch (const IoError& e) {
          bad_sample(std::string(e.what()) + "; the shard is left out");
          shard_boundary_ = true;
          continue;
        }
      }
      TarMember m;
      bool ok = false;
      try {
        ok = reader_->next_keeping(m, [](const std::string& name) {
          return wanted_extension(webdataset_key(name).second);
        });
      } catch (const Cancelled&) {
        throw;
      } catch (const IoError& e) {
        bad_sample(std::string(e.what()) + "; the rest of this shard is left out");
        ok = false;
      }
      if (!ok) {
        reader_.reset();
        shard_boundary_ = true;
        continue;
      }
      pending_ = std::move(m);
    }
    return true;
  }

  // The next group of members sharing a key in the epoch's shard stream (all ranks' records).
  bool next_group(RawRecord& rec) {
    shard_boundary_ = false;
    bool have = false;
    for (;;) {
      if (!fill_pending() || (have && shard_boundary_)) return have;
      auto [key, ext] = webdataset_key(pending_->name);
      if (!have) {
        rec = RawRecord{};
        rec.shard = current_shard_;
        rec.ordinal = shard_ordinal_++;
        rec.key = key;
        have = true;
      } else if (key != rec.key) {
        return true;
      }
      if (wanted_extension(ext))
        rec.files[lower(ext)] = std::move(pending_->data);
      else
        rec.other.push_back(ext);
      pending_.reset();
    }
  }

  // This rank's next record before shuffling.
  bool next_raw(RawRecord& rec) {
    for (;;) {
      if (!next_group(rec)) return false;
      const int64_t g = stream_ordinal_++;
      if (!split_records_ || g % options_.world_size == options_.rank) return true;
    }
  }

  bool next_record(RawRecord& rec) {
    if (options_.shuffle_buffer <= 0) return next_raw(rec);
    while (!exhausted_ && static_cast<int64_t>(buffer_.size()) < options_.shuffle_buffer) {
      RawRecord r;
      if (next_raw(r))
        buffer_.push_back(std::move(r));
      else
        exhausted_ = true;
    }
    if (buffer_.empty()) return false;
    const size_t k = static_cast<size_t>(buffer_rng_.below(buffer_.size()));
    rec = std::move(buffer_[k]);
    if (k + 1 != buffer_.size()) buffer_[k] = std::move(buffer_.back());
    buffer_.pop_back();
    return true;
  }

  Sample decode(const RawRecord& r) const {
    const std::string id = shards_[r.shard].filename().string() + ":" + r.key;
    const std::string* image_bytes = nullptr;
    for (const char* ext : {"jpg", "jpeg", "png"}) {
      const auto it = r.files.find(ext);
      if (it != r.files.end()) {
        image_bytes = &it->second;
        break;
      }
    }
    const auto members = [&] {
      std::string s;
      for (const auto& [ext, _] : r.files) s += (s.empty() ? "." : ", .") + ext;
      for (const auto& ext : r.other) s += (s.empty() ? "." : ", .") + ext;
      return s;
    };
    if (!image_bytes)
      throw IoError("sample '" + id + "' in '" + shards_[r.shard].string() +
                    "' has no .png/.jpg/.jpeg member (it has: " + members() + ")");
    std::optional<std::string> caption;
    if (const auto it = r.files.find("txt"); it != r.files.end()) {
      caption = trim_trailing(it->second);
    } else if (const auto js = r.files.find("json"); js != r.files.end()) {
      json j;
      try {
        j = json::parse(js->second);
      } catch (const json::parse_error& e) {
        throw IoError("sample '" + id + "': its .json is not valid JSON (" + std::string(e.what()) +
                      ")");
      }
      for (const std::string& key :
           {options_.caption_key, std::string("text"), std::string("caption")}) {
        if (j.is_object() && j.contains(key) && j[key].is_string()) {
          caption = j[key].get<std::string>();
          break;
        }
      }
      if (!caption)
        throw IoError("sample '" + id + "': its .json has no string \"" + options_.caption_key +
                      "\", \"text\" or \"caption\"");
    }
    if (!caption && !options_.require_captions) caption = std::string();
    if (!caption)
      throw IoError("sample '" + id + "' in '" + shards_[r.shard].string() +
                    "' has no caption (.txt or .json; it has: " + members() + ")");
    const Image image = decode_oriented_rgb(*image_bytes, id);
    return finish(
        image, *caption, id,
        augment_generator(options_.seed, pos_.epoch, r.shard, static_cast<uint64_t>(r.ordinal)));
  }

  std::vector<fs::path> shards_;
  std::string label_;
  DataPosition pos_;
  bool good_in_epoch_ = false;
  std::vector<size_t> my_shards_;
  bool split_records_ = false;
  size_t next_shard_ = 0;
  size_t current_shard_ = 0;
  std::unique_ptr<TarReader> reader_;
  std::optional<TarMember> pending_;
  bool shard_boundary_ = false;
  int64_t shard_ordinal_ = 0;
  int64_t stream_ordinal_ = 0;
  std::vector<RawRecord> buffer_;
  bool exhausted_ = false;
  Rng buffer_rng_{0};
};

// ------------------------------------------------------------------ one image

class SingleImageDataset : public DatasetBase {
 public:
  explicit SingleImageDataset(DatasetOptions options) : DatasetBase(std::move(options)) {
    const fs::path path = options_.instance_image;
    const std::string bytes = read_file_limited(path, kMaxImageFileBytes, "image");
    image_ = decode_oriented_rgb(bytes, path.string());
    caption_ = options_.instance_prompt.empty() ? path.stem().string() : options_.instance_prompt;
    // The crop is drawn once, as train_amused.py processes the image once in the constructor
    // (unless instance_augment asks for one per sample).
    sample_ = finish(image_, caption_, path.filename().string(), augment_generator(options_.seed, 0, 0, 0));
  }
  int64_t size() const override { return 1; }
  int64_t epoch_length() const override { return 1; }
  Sample next() override {
    ++pos_.index;
    if (!options_.instance_augment) return sample_;
    // A pure function of (seed, sample count): resuming redraws the same crops.
    return finish(image_, caption_, fs::path(options_.instance_image).filename().string(),
                  augment_generator(options_.seed, pos_.epoch, static_cast<uint64_t>(pos_.index), 1));
  }
  DataPosition position() const override { return pos_; }
  void seek(const DataPosition& p) override {
    if (p.epoch < 0 || p.index < 0) throw InvalidArgument("data position is negative");
    pos_ = p;
  }
  std::string description() const override {
    return "single image '" + options_.instance_image + "' (\"" + sample_.caption + "\")";
  }

 private:
  Image image_;
  std::string caption_;
  Sample sample_;
  DataPosition pos_;
};

// ------------------------------------------------------------------ opening

std::vector<fs::path> expand_shard_pattern(const std::string& pattern) {
  std::vector<fs::path> out;
  for (const std::string& p : expand_braces(pattern)) {
    const fs::path path = p;
    const std::string name = path.filename().string();
    if (!has_glob(name)) {
      out.push_back(path);
      continue;
    }
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
      throw IoError("folder '" + dir.string() + "' of '" + p + "' does not exist");
    std::vector<fs::path> matched;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (fnmatch(name.c_str(), e.path().filename().c_str(), FNM_PERIOD) == 0)
        matched.push_back(e.path());
    if (ec) throw IoError("cannot list '" + dir.string() + "': " + ec.message());
    if (matched.empty()) throw IoError("no file matches '" + p + "'");
    std::sort(matched.begin(), matched.end());
    out.insert(out.end(), matched.begin(), matched.end());
  }
  return out;
}

std::unique_ptr<ImageCaptionDataset> open_shards(const DatasetOptions& o,
                                                 std::vector<fs::path> shards,
                                                 const std::string& label) {
  if (!o.split.empty())
    throw Unsupported("the WebDataset " + label + " has no splits: split '" + o.split +
                      "' needs an image folder (give the validation images separately)");
  int64_t empty = 0;
  for (const auto& s : shards) {
    if (lower(s.extension().string()) != ".tar")
      throw IoError("'" + s.string() +
                    "' is not a .tar shard (WebDataset shards must be uncompressed .tar files)");
    TarReader reader(s);  // throws when missing
    TarMember m;
    if (!reader.next(m, false)) ++empty;  // throws when the first header is not a tar header
  }
  if (empty == static_cast<int64_t>(shards.size()))
    throw IoError("the WebDataset " + label + " has no members in any of its " +
                  std::to_string(shards.size()) + " shard(s)");
  return std::make_unique<TarDataset>(o, std::move(shards), label);
}

}  // namespace

// ------------------------------------------------------------------ public functions

BadSamplePolicy parse_bad_sample_policy(const std::string& name) {
  if (name == "skip") return BadSamplePolicy::Skip;
  if (name == "fail") return BadSamplePolicy::Fail;
  throw InvalidArgument("on_bad_sample must be skip or fail, got '" + name + "'");
}

json to_json(const DataPosition& p) { return json{{"epoch", p.epoch}, {"index", p.index}}; }

DataPosition data_position_from_json(const json& j) {
  DataPosition p;
  for (const char* key : {"epoch", "index"}) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer() ||
        j[key].get<int64_t>() < 0)
      throw InvalidArgument(
          std::string("data position: \"") + key + "\" must be a non-negative integer, got " +
          (j.is_object() && j.contains(key) ? j[key].dump() : std::string("nothing")));
  }
  p.epoch = j["epoch"].get<int64_t>();
  p.index = j["index"].get<int64_t>();
  return p;
}

std::vector<Sample> ImageCaptionDataset::next_batch(int64_t batch_size) {
  if (batch_size <= 0)
    throw InvalidArgument("batch size must be positive, got " + std::to_string(batch_size));
  std::vector<Sample> batch;
  batch.reserve(static_cast<size_t>(batch_size));
  for (int64_t i = 0; i < batch_size; ++i) batch.push_back(next());
  return batch;
}

std::unique_ptr<ImageCaptionDataset> ImageCaptionDataset::open(const DatasetOptions& o) {
  if (o.resolution <= 0 || o.resolution > 16384)
    throw InvalidArgument("resolution must be in 1..16384, got " + std::to_string(o.resolution));
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size)
    throw InvalidArgument("rank " + std::to_string(o.rank) + " does not fit world_size " +
                          std::to_string(o.world_size));
  if (o.shuffle_buffer < 0)
    throw InvalidArgument("shuffle_buffer must be >= 0, got " + std::to_string(o.shuffle_buffer));
  if (!(o.holdout_fraction >= 0 && o.holdout_fraction < 1))
    throw InvalidArgument("holdout_fraction must be in [0, 1), got " +
                          std::to_string(o.holdout_fraction));
  if (!o.split.empty() && o.split != "train" && o.split != "validation")
    throw InvalidArgument("split must be \"\", \"train\" or \"validation\", got '" + o.split + "'");

  if (!o.instance_image.empty()) {
    if (!o.data.empty())
      throw InvalidArgument("give either a dataset ('" + o.data + "') or a single image ('" +
                            o.instance_image + "'), not both");
    return std::make_unique<SingleImageDataset>(o);
  }
  if (o.data.empty())
    throw InvalidArgument("no training data given (a folder, .tar shards, or a single image)");

  const fs::path data = o.data;
  std::error_code ec;
  const bool exists = fs::exists(data, ec);
  if (!exists && (o.data.find('{') != std::string::npos || has_glob(data.filename().string())))
    return open_shards(o, expand_shard_pattern(o.data), "'" + o.data + "'");
  if (!exists) throw IoError("training data '" + o.data + "' does not exist");
  if (fs::is_regular_file(data, ec)) {
    if (is_image_extension(data.extension().string()))
      throw InvalidArgument("training data '" + o.data +
                            "' is one image: use single-image mode "
                            "(instance_image) for it, or give its folder");
    return open_shards(o, {data}, "'" + o.data + "'");
  }
  if (!fs::is_directory(data, ec))
    throw IoError("training data '" + o.data + "' is neither a file nor a folder");

  IndexProblems problems{o.on_bad_sample};
  std::vector<FolderEntry> entries;
  std::string kind;
  if (fs::exists(data / "metadata.jsonl", ec)) {
    entries = index_metadata(data, o, problems);
    kind = "image folder with metadata.jsonl";
  } else if (fs::exists(data / "metadata.csv", ec)) {
    throw Unsupported("'" + (data / "metadata.csv").string() +
                      "': only metadata.jsonl is read (one JSON object "
                      "per line with \"file_name\" and \"" +
                      o.caption_key + "\"); convert the CSV to it");
  } else {
    const auto images = scan_images(data);
    if (images.empty()) {
      std::vector<fs::path> shards;
      for (const auto& e : fs::directory_iterator(data, ec))
        if (e.is_regular_file() && lower(e.path().extension().string()) == ".tar")
          shards.push_back(e.path());
      if (!shards.empty()) {
        std::sort(shards.begin(), shards.end());
        return open_shards(o, std::move(shards), "folder '" + o.data + "'");
      }
      throw IoError("no images (.png, .jpg, .jpeg), metadata.jsonl or .tar shards found in '" +
                    o.data + "'");
    }
    entries = index_caption_files(data, images, o, problems);
    kind = o.caption_from_file_stem ? "image folder (captions from file names)"
                                    : "image folder with .txt captions";
  }
  problems.summary(data);
  if (!entries.empty()) {
    entries = select_split(std::move(entries), o, data);
    if (!o.split.empty()) kind += ", split '" + o.split + "'";
  }
  if (entries.empty())
    throw IoError("no usable samples in '" + o.data + "'" +
                  (problems.count
                       ? " (" + std::to_string(problems.count) + " left out, see the warnings)"
                       : std::string()));
  auto ds = std::make_unique<FolderDataset>(o, data, std::move(entries), kind);
  return ds;
}

Batch collate(const std::vector<Sample>& samples) {
  if (samples.empty()) throw InvalidArgument("cannot collate an empty batch");
  const int64_t b = static_cast<int64_t>(samples.size());
  const int64_t h = samples[0].image.height, w = samples[0].image.width;
  Batch batch;
  auto pixels = torch::empty({b, h, w, 3}, torch::kUInt8);
  auto micro = torch::empty({b, 5}, torch::kFloat32);
  for (int64_t i = 0; i < b; ++i) {
    const Sample& s = samples[static_cast<size_t>(i)];
    if (s.image.height != h || s.image.width != w || s.image.channels != 3 ||
        s.image.pixels.size() != static_cast<size_t>(h * w * 3))
      throw InvalidArgument("cannot collate sample '" + s.id + "': expected a " +
                            std::to_string(w) + "x" + std::to_string(h) + " RGB image, got " +
                            std::to_string(s.image.width) + "x" + std::to_string(s.image.height) +
                            "x" + std::to_string(s.image.channels));
    std::memcpy(pixels[i].data_ptr<uint8_t>(), s.image.pixels.data(), s.image.pixels.size());
    for (int k = 0; k < 5; ++k) micro[i][k] = s.micro_conds[static_cast<size_t>(k)];
    batch.captions.push_back(s.caption);
  }
  // [B, H, W, 3] uint8 -> [B, 3, H, W] float in [0, 1] (ToTensor)
  batch.pixel_values = pixels.permute({0, 3, 1, 2}).to(torch::kFloat32).div_(255.0f).contiguous();
  batch.micro_conds = micro;
  return batch;
}

std::vector<std::string> expand_braces(const std::string& pattern) {
  // The first top-level {...} whose body has a ',' or a '..' range; others stay literal.
  int depth = 0;
  size_t open = std::string::npos;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '{') {
      if (depth++ == 0) open = i;
    } else if (pattern[i] == '}' && depth > 0 && --depth == 0) {
      const std::string body = pattern.substr(open + 1, i - open - 1);
      const std::string head = pattern.substr(0, open), tail = pattern.substr(i + 1);
      std::vector<std::string> alternatives;
      // Split the body at top-level commas.
      int d = 0;
      size_t start = 0;
      for (size_t k = 0; k <= body.size(); ++k) {
        if (k == body.size() || (body[k] == ',' && d == 0)) {
          alternatives.push_back(body.substr(start, k - start));
          start = k + 1;
        } else if (body[k] == '{') {
          ++d;
        } else if (body[k] == '}') {
          --d;
        }
      }
      if (alternatives.size() == 1) {
        const size_t dots = body.find("..");
        const auto all_digits = [](const std::string& s) {
          return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
            return std::isdigit(static_cast<unsigned char>(c));
          });
        };
        if (dots == std::string::npos || !all_digits(body.substr(0, dots)) ||
            !all_digits(body.substr(dots + 2))) {
          // Not an expansion: keep "{body}" literally and expand what follows.
          std::vector<std::string> out;
          for (const auto& t : expand_braces(tail)) out.push_back(head + "{" + body + "}" + t);
          return out;
        }
        const std::string a = body.substr(0, dots), b = body.substr(dots + 2);
        if (a.size() > 12 || b.size() > 12)
          throw InvalidArgument("brace range '{" + body + "}' is too large");
        const int64_t lo = std::stoll(a), hi = std::stoll(b);
        if (std::llabs(hi - lo) > 1'000'000)
          throw InvalidArgument("brace range '{" + body + "}' is too large");
        const bool pad = (a.size() > 1 && a[0] == '0') || (b.size() > 1 && b[0] == '0');
        const size_t width = pad ? std::max(a.size(), b.size()) : 0;
        alternatives.clear();
        const int64_t step = lo <= hi ? 1 : -1;
        for (int64_t v = lo;; v += step) {
          std::string s = std::to_string(v);
          if (s.size() < width) s.insert(0, width - s.size(), '0');
          alternatives.push_back(s);
          if (v == hi) break;
        }
      }
      std::vector<std::string> out;
      const auto tails = expand_braces(tail);
      for (const auto& alt : alternatives)
        for (const auto& x : expand_braces(alt))
          for (const auto& t : tails) out.push_back(head + x + t);
      return out;
    }
  }
  return {pattern};
}

std::pair<std::string, std::string> webdataset_key(const std::string& member_name) {
  const size_t slash = member_name.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  const size_t dot = member_name.find('.', base);
  if (dot == std::string::npos) return {member_name, ""};
  return {member_name.substr(0, dot), member_name.substr(dot + 1)};
}

Sample process_image(const Image& image, int resolution, CropMode crop_mode, bool random_flip,
                     at::Generator& generator) {
  if (image.channels != 3)
    throw InvalidArgument("process_image expects RGB, got " + std::to_string(image.channels) +
                          " channels");
  const auto [rw, rh] = shorter_side_size(image.width, image.height, resolution);
  const Image resized =
      (rw == image.width && rh == image.height) ? image : resize_bilinear_pil(image, rw, rh);
  int top = 0, left = 0;
  if (crop_mode == CropMode::Random) {
    // torchvision RandomCrop.get_params: nothing drawn for an exact fit, else top then left.
    if (!(rw == resolution && rh == resolution)) {
      const auto opts = torch::TensorOptions().dtype(torch::kInt64);
      top = static_cast<int>(
          torch::randint(0, rh - resolution + 1, {1}, generator, opts).item<int64_t>());
      left = static_cast<int>(
          torch::randint(0, rw - resolution + 1, {1}, generator, opts).item<int64_t>());
    }
  } else {
    // torchvision CenterCrop: int(round((h - th) / 2.0)), Python's round (half to even).
    top = static_cast<int>(std::nearbyint((rh - resolution) / 2.0));
    left = static_cast<int>(std::nearbyint((rw - resolution) / 2.0));
  }
  Sample s;
  s.image = crop(resized, top, left, resolution);
  if (random_flip && torch::rand({1}, generator).item<float>() < 0.5f)
    s.image = flip_horizontal(s.image);
  s.micro_conds = {static_cast<float>(image.width), static_cast<float>(image.height),
                   static_cast<float>(top), static_cast<float>(left), 6.0f};
  return s;
}

}  // namespace amused::training
