// Reading and writing config.json files into config structs whose field names equal the JSON keys.
//
//   UVit2DConfig c;                       // defaults = the reference's defaults
//   ConfigReader r(json, path, "UVit2DModel");
//   r.field("hidden_size", c.hidden_size);  // type-checked; absent keys keep the default
//   ...
//   r.finish();                           // one warning listing unknown keys
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "amused/error.h"

namespace amused {

// Limits on JSON inputs, checked before anything is allocated for them. Real files are far
// smaller: configs and shard indexes are a few KiB, CLIP's vocab.json is 1.6 MiB.
inline constexpr uint64_t kMaxJsonFileBytes = 64ull << 20;
inline constexpr int kMaxJsonDepth = 64;
// Largest value a config size field (hidden sizes, vocab sizes, layer counts) may hold: larger
// values describe no real model and would only ask LibTorch for absurd allocations.
inline constexpr int64_t kMaxConfigSize = int64_t{1} << 20;

// Reads a JSON file; throws ConfigError naming the file when it is missing, larger than
// kMaxJsonFileBytes, nested deeper than kMaxJsonDepth or not valid JSON.
nlohmann::json read_json_file(const std::filesystem::path& path);
// The same checks on text already in memory (`source` names it in messages).
nlohmann::json parse_json_text(std::string_view text, const std::string& source);

// One linear pass over JSON text without building it (nlohmann's SAX parser): false when objects
// and arrays nest deeper than `max_depth` (the text may still be invalid JSON: parse it after).
// `top_level_key`, when given, sees every key of the outermost object in order. (nlohmann's parse
// callbacks, the other way to limit depth, rescan a parent object on each of its keys: quadratic.)
bool json_depth_within(std::string_view text, int max_depth,
                       const std::function<void(const std::string&)>& top_level_key = {});

class ConfigReader {
 public:
  // Checks `_class_name` (when `expected_class` is non-empty and the key is present): a different
  // class is a ConfigError. `source` names the file in messages.
  ConfigReader(const nlohmann::json& j, std::string source, const std::string& expected_class = "",
               std::vector<std::string> alternative_classes = {});
  // The reader keeps a reference to `j`: a temporary would dangle (found by ASan as a
  // stack-use-after-scope), so binding one is a compile error.
  ConfigReader(nlohmann::json&& j, std::string source, const std::string& expected_class = "",
               std::vector<std::string> alternative_classes = {}) = delete;

  void field(const char* key, bool& out);
  void field(const char* key, int64_t& out);
  void field(const char* key, int& out);
  void field(const char* key, double& out);
  void field(const char* key, std::string& out);
  void field(const char* key, std::vector<int64_t>& out);
  void field(const char* key, std::vector<std::string>& out);
  void field(const char* key, std::optional<int64_t>& out);  // null -> nullopt
  void field(const char* key, std::optional<std::string>& out);

  // Marks keys as known without reading them (e.g. keys the reference also ignores).
  void ignore(std::initializer_list<const char*> keys);

  // Warns once about keys that were neither read nor ignored (keys starting with '_' are skipped).
  void finish();

  const nlohmann::json& raw() const { return j_; }
  const std::string& source() const { return source_; }

  // Throws ConfigError "<source>: key '<key>': expected <what>, got <type> <value>".
  [[noreturn]] void type_error(const char* key, const char* expected) const;

 private:
  const nlohmann::json* get(const char* key);
  const nlohmann::json& j_;
  std::string source_;
  std::set<std::string> used_;
};

// Throws ConfigError "<source>: <key> = <value> is invalid: <why>" when `ok` is false.
void config_check(bool ok, const std::string& source, const std::string& key, const std::string& why);
// config_check for a size field: 0 < v <= kMaxConfigSize.
void config_check_size(int64_t v, const std::string& source, const std::string& key);

// A lower bound on the parameters a config describes (the matrices every such model has; biases
// and norms left out), and which of its terms is largest, so that an error can name the keys that
// make a model too big. Built by each config's min_parameters().
struct ModelSizeBound {
  double parameters = 0;
  std::string largest_term;  // e.g. "num_hidden_layers x hidden_size, intermediate_size"
  double largest = 0;
  void add(double n, const std::string& term) {
    parameters += n;
    if (n > largest) {
      largest = n;
      largest_term = term;
    }
  }
};

// Throws ConfigError naming `source`, the model and its largest term when the model `bound`
// describes cannot be allocated: its parameters as float32 (how models are built) exceed what this
// process can still allocate (allocatable_bytes(), core/memory.h). Configs check this when parsed,
// before anything is allocated.
void config_check_model_fits(const ModelSizeBound& bound, const std::string& source, const std::string& model);

}  // namespace amused
