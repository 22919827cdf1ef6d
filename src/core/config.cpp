#include "core/config.h"

#include <cstdio>

#include "core/memory.h"
#include "core/files.h"

#include <fstream>
#include <limits>
#include <sstream>

#include "core/log.h"

namespace amused {
using nlohmann::json;

namespace {
// Counts nesting; stops (returns false) past the limit. Values are not kept.
class DepthLimiter : public nlohmann::json_sax<json> {
 public:
  DepthLimiter(int max_depth, const std::function<void(const std::string&)>& top_level_key)
      : max_depth_(max_depth), top_level_key_(top_level_key) {}
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return enter(); }
  bool key(string_t& k) override {
    if (depth_ == 1 && top_level_key_) top_level_key_(k);
    return true;
  }
  bool end_object() override { return --depth_, true; }
  bool start_array(std::size_t) override { return enter(); }
  bool end_array() override { return --depth_, true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
  bool too_deep = false;

 private:
  bool enter() {
    if (++depth_ > max_depth_) too_deep = true;
    return !too_deep;
  }
  int depth_ = 0;
  const int max_depth_;
  const std::function<void(const std::string&)>& top_level_key_;
};
}  // namespace

bool json_depth_within(std::string_view text, int max_depth,
                       const std::function<void(const std::string&)>& top_level_key) {
  DepthLimiter limiter(max_depth, top_level_key);
  json::sax_parse(text.begin(), text.end(), &limiter, nlohmann::detail::input_format_t::json, true);
  return !limiter.too_deep;
}

json parse_json_text(std::string_view text, const std::string& source) {
  if (text.size() > kMaxJsonFileBytes)
    throw ConfigError(source + " is " + std::to_string(text.size()) + " bytes, more than the " +
                      std::to_string(kMaxJsonFileBytes >> 20) +
                      " MiB limit for a JSON file (not a config?)");
  try {
    // The depth limit keeps recursive consumers (dump, comparisons) off deep stacks.
    if (!json_depth_within(text, kMaxJsonDepth))
      throw ConfigError(source + " nests JSON deeper than " + std::to_string(kMaxJsonDepth) +
                        " levels (not a config?)");
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw ConfigError(source + " is not valid JSON: " + e.what());
  }
}

json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (const std::string problem = input_file_problem(path); !problem.empty())
    throw ConfigError("config file '" + path.string() + "' " + problem);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("config file '" + path.string() + "' cannot be read");
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec && size > kMaxJsonFileBytes)
    throw ConfigError("config file '" + path.string() + "' is " + std::to_string(size) +
                      " bytes, more than the " + std::to_string(kMaxJsonFileBytes >> 20) +
                      " MiB limit for a JSON file (not a config?)");
  std::string text;
  text.resize(static_cast<size_t>(ec ? 0 : size));
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return parse_json_text(text, "config file '" + path.string() + "'");
}

ConfigReader::ConfigReader(const json& j, std::string source, const std::string& expected_class,
                           std::vector<std::string> alternative_classes)
    : j_(j), source_(std::move(source)) {
  if (!j_.is_object()) throw ConfigError(source_ + ": expected a JSON object, got " + j_.type_name());
  if (!expected_class.empty() && j_.contains("_class_name")) {
    const auto& c = j_["_class_name"];
    if (!c.is_string()) type_error("_class_name", "a string");
    const std::string got = c.get<std::string>();
    bool ok = got == expected_class;
    for (const auto& alt : alternative_classes) ok = ok || got == alt;
    if (!ok)
      throw ConfigError(source_ + ": _class_name is '" + got + "', expected '" + expected_class +
                        "' (is this the right model folder?)");
  }
}

void ConfigReader::type_error(const char* key, const char* expected) const {
  std::string value = j_.contains(key) ? j_[key].dump() : "nothing";
  if (value.size() > 60) value = value.substr(0, 57) + "...";
  throw ConfigError(source_ + ": key '" + key + "': expected " + expected + ", got " +
                    (j_.contains(key) ? j_[key].type_name() : "") + " " + value);
}

const json* ConfigReader::get(const char* key) {
  used_.insert(key);
  auto it = j_.find(key);
  return it == j_.end() ? nullptr : &*it;
}

void ConfigReader::field(const char* key, bool& out) {
  if (auto v = get(key)) {
    if (!v->is_boolean()) type_error(key, "true or false");
    out = v->get<bool>();
  }
}
void ConfigReader::field(const char* key, int64_t& out) {
  if (auto v = get(key)) {
    if (v->is_number_integer()) {
      out = v->get<int64_t>();
    } else if (const double d = v->is_number_float() ? v->get<double>() : 0.5;
               // The range check comes first: casting an out-of-range double is undefined.
               d >= -9.2e18 && d <= 9.2e18 && d == static_cast<double>(static_cast<int64_t>(d))) {
      out = static_cast<int64_t>(d);  // 16.0 is accepted as 16
    } else {
      type_error(key, "an integer");
    }
  }
}
void ConfigReader::field(const char* key, int& out) {
  int64_t v = out;
  field(key, v);
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    type_error(key, "an integer in the 32-bit range");
  out = static_cast<int>(v);
}
void ConfigReader::field(const char* key, double& out) {
  if (auto v = get(key)) {
    if (!v->is_number()) type_error(key, "a number");
    out = v->get<double>();
  }
}
void ConfigReader::field(const char* key, std::string& out) {
  if (auto v = get(key)) {
    if (!v->is_string()) type_error(key, "a string");
    out = v->get<std::string>();
  }
}
void ConfigReader::field(const char* key, std::vector<int64_t>& out) {
  if (auto v = get(key)) {
    if (!v->is_array()) type_error(key, "a list of integers");
    std::vector<int64_t> r;
    for (const auto& e : *v) {
      if (!e.is_number_integer()) type_error(key, "a list of integers");
      r.push_back(e.get<int64_t>());
    }
    out = std::move(r);
  }
}
void ConfigReader::field(const char* key, std::vector<std::string>& out) {
  if (auto v = get(key)) {
    if (!v->is_array()) type_error(key, "a list of strings");
    std::vector<std::string> r;
    for (const auto& e : *v) {
      if (!e.is_string()) type_error(key, "a list of strings");
      r.push_back(e.get<std::string>());
    }
    out = std::move(r);
  }
}
void ConfigReader::field(const char* key, std::optional<int64_t>& out) {
  if (auto v = get(key)) {
    if (v->is_null()) {
      out.reset();
    } else {
      int64_t x = 0;
      field(key, x);
      out = x;
    }
  }
}
void ConfigReader::field(const char* key, std::optional<std::string>& out) {
  if (auto v = get(key)) {
    if (v->is_null()) {
      out.reset();
    } else {
      std::string x;
      field(key, x);
      out = x;
    }
  }
}

void ConfigReader::ignore(std::initializer_list<const char*> keys) {
  for (auto k : keys) used_.insert(k);
}

void ConfigReader::finish() {
  std::vector<std::string> unknown;
  for (auto it = j_.begin(); it != j_.end(); ++it)
    if (!it.key().empty() && it.key()[0] != '_' && !used_.count(it.key())) unknown.push_back(it.key());
  if (unknown.empty()) return;
  std::string list;
  for (const auto& k : unknown) list += (list.empty() ? "" : ", ") + k;
  log::warn(source_ + ": ignoring unknown config keys: " + list);
}

void config_check(bool ok, const std::string& source, const std::string& key, const std::string& why) {
  if (!ok) throw ConfigError(source + ": " + key + " is invalid: " + why);
}

void config_check_size(int64_t v, const std::string& source, const std::string& key) {
  config_check(v > 0 && v <= kMaxConfigSize, source, key,
               "expected a positive integer of at most " + std::to_string(kMaxConfigSize) + ", got " +
                   std::to_string(v));
}

namespace {
std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f %s", bytes, units[u]);
  return buf;
}
}  // namespace

void config_check_model_fits(const ModelSizeBound& bound, const std::string& source, const std::string& model) {
  const double bytes = bound.parameters * 4.0;  // built in float32
  const uint64_t can = allocatable_bytes();
  if (bytes <= static_cast<double>(can)) return;
  char count[32];
  std::snprintf(count, sizeof count, "%.3g", bound.parameters);
  throw ConfigError(source + ": describes a " + model + " of at least " + count + " parameters (" +
                    human_bytes(bytes) + " as float32), more than the " + human_bytes(static_cast<double>(can)) +
                    " this process can allocate; most of them come from " + bound.largest_term +
                    ": is one of those values wrong?");
}

}  // namespace amused
