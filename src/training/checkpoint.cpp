#include "training/checkpoint.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <random>

#include "amused/error.h"
#include "core/log.h"

namespace amused::training {
namespace fs = std::filesystem;

namespace {
void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void fsync_tree(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) fsync_path(e.path());
  fsync_path(dir);
}

std::string optimizer_key(const torch::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }
}  // namespace

CheckpointManager::CheckpointManager(fs::path output_dir, int keep_last)
    : output_dir_(std::move(output_dir)), keep_last_(keep_last) {}

std::optional<int64_t> CheckpointManager::step_of(const fs::path& dir) {
  const std::string name = dir.filename().string();
  const std::string prefix = "checkpoint-";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || name.size() > prefix.size() + 18)
    return std::nullopt;
  int64_t n = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    n = n * 10 + (name[i] - '0');
  }
  return n;
}

std::vector<fs::path> CheckpointManager::list() const {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(output_dir_, ec)) {
    auto step = step_of(e.path());
    if (step && e.is_directory(ec) && fs::is_regular_file(e.path() / kTrainerStateFile, ec))
      found.emplace_back(*step, e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [_, p] : found) out.push_back(p);
  return out;
}

std::optional<fs::path> CheckpointManager::latest() const {
  auto all = list();
  if (all.empty()) return std::nullopt;
  return all.back();
}

void CheckpointManager::remove_stale_partials() const {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(output_dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".checkpoint-", 0) == 0 && name.find(".partial") != std::string::npos) {
      log::info("removing the partial checkpoint '" + e.path().string() + "' an interrupted run left");
      fs::remove_all(e.path(), ec);
    }
  }
}

fs::path CheckpointManager::save(int64_t step, const std::function<void(const fs::path&)>& write) {
  const fs::path final_dir = output_dir_ / ("checkpoint-" + std::to_string(step));
  const fs::path partial = output_dir_ / (".checkpoint-" + std::to_string(step) + ".partial");
  std::error_code ec;
  fs::remove_all(partial, ec);
  if (!fs::create_directories(partial, ec) || ec)
    throw IoError("cannot create '" + partial.string() + "': " + (ec ? ec.message() : "exists"));
  try {
    write(partial);
    fsync_tree(partial);
    if (fs::exists(final_dir, ec)) {
      // Same step saved again (e.g. the final step): replace it only now that the new one is whole.
      const fs::path old = output_dir_ / (".checkpoint-" + std::to_string(step) + ".old.partial");
      fs::remove_all(old, ec);
      fs::rename(final_dir, old, ec);
      if (ec) throw IoError("cannot replace '" + final_dir.string() + "': " + ec.message());
      fs::rename(partial, final_dir, ec);
      if (ec) {
        std::error_code ec2;
        fs::rename(old, final_dir, ec2);
        throw IoError("cannot move '" + partial.string() + "' to '" + final_dir.string() + "': " + ec.message());
      }
      fs::remove_all(old, ec);
    } else {
      fs::rename(partial, final_dir, ec);
      if (ec) throw IoError("cannot move '" + partial.string() + "' to '" + final_dir.string() + "': " + ec.message());
    }
    fsync_path(output_dir_);
  } catch (...) {
    fs::remove_all(partial, ec);
    throw;
  }
  if (keep_last_ > 0) {
    auto all = list();
    for (size_t i = 0; i + static_cast<size_t>(keep_last_) < all.size(); ++i) {
      if (all[i] == final_dir) continue;
      fs::remove_all(all[i], ec);
    }
  }
  return final_dir;
}

io::StateDict adamw_state(const torch::optim::Optimizer& optimizer,
                          const std::vector<std::pair<std::string, torch::Tensor>>& named_params) {
  io::StateDict out;
  const auto& state = optimizer.state();
  for (const auto& [name, p] : named_params) {
    auto it = state.find(optimizer_key(p));
    if (it == state.end()) continue;  // no step taken for it yet
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    out.emplace(name + ".exp_avg", s.exp_avg());
    out.emplace(name + ".exp_avg_sq", s.exp_avg_sq());
    out.emplace(name + ".step", torch::tensor({s.step()}, torch::kInt64));
    if (s.max_exp_avg_sq().defined()) out.emplace(name + ".max_exp_avg_sq", s.max_exp_avg_sq());
  }
  return out;
}

void load_adamw_state(torch::optim::Optimizer& optimizer,
                      const std::vector<std::pair<std::string, torch::Tensor>>& named_params,
                      const io::StateDict& state, const std::string& source) {
  auto& target = optimizer.state();
  size_t used = 0;
  for (const auto& [name, p] : named_params) {
    auto avg = state.find(name + ".exp_avg");
    auto sq = state.find(name + ".exp_avg_sq");
    auto st = state.find(name + ".step");
    if (avg == state.end() && sq == state.end() && st == state.end()) continue;  // never stepped
    if (avg == state.end() || sq == state.end() || st == state.end())
      throw CheckpointError("optimizer state '" + source + "' is incomplete for parameter '" + name + "'");
    if (avg->second.sizes() != p.sizes() || sq->second.sizes() != p.sizes())
      throw CheckpointError("optimizer state '" + source + "' for '" + name + "' has shape " +
                            c10::str(avg->second.sizes()) + ", the parameter " + c10::str(p.sizes()) +
                            " (a checkpoint of another model?)");
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(st->second.item<int64_t>());
    s->exp_avg(avg->second.to(p.device(), p.scalar_type()).clone());
    s->exp_avg_sq(sq->second.to(p.device(), p.scalar_type()).clone());
    auto mx = state.find(name + ".max_exp_avg_sq");
    if (mx != state.end()) s->max_exp_avg_sq(mx->second.to(p.device(), p.scalar_type()).clone());
    target[optimizer_key(p)] = std::move(s);
    used += mx != state.end() ? 4 : 3;
  }
  if (used != state.size())
    throw CheckpointError("optimizer state '" + source + "' holds " + std::to_string(state.size() - used) +
                          " tensors for parameters this model does not train (another model or other "
                          "--train-text-encoder / --lora settings?)");
}

torch::Tensor generator_state(const at::Generator& generator) { return generator.get_state().clone(); }

void set_generator_state(at::Generator& generator, const torch::Tensor& state) {
  generator.set_state(state.to(torch::kCPU, torch::kUInt8).contiguous());
}

uint64_t free_bytes(const fs::path& path) {
  fs::path p = path;
  std::error_code ec;
  while (!p.empty() && !fs::exists(p, ec)) p = p.parent_path();
  if (p.empty()) p = ".";
  struct statvfs st {};
  if (::statvfs(p.c_str(), &st) != 0) return UINT64_MAX;  // unknown: do not refuse
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

void check_output_dir(const fs::path& output_dir, uint64_t bytes_needed) {
  std::error_code ec;
  if (fs::exists(output_dir, ec) && !fs::is_directory(output_dir, ec))
    throw IoError("output '" + output_dir.string() + "' exists and is not a folder (give a folder path)");
  fs::create_directories(output_dir, ec);
  if (ec) throw IoError("cannot create the output folder '" + output_dir.string() + "': " + ec.message());
  const fs::path probe = output_dir / (".write-probe." + std::to_string(::getpid()));
  {
    std::ofstream out(probe, std::ios::binary | std::ios::trunc);
    out << "probe";
    out.flush();
    if (!out) {
      fs::remove(probe, ec);
      throw IoError("cannot write in the output folder '" + output_dir.string() +
                    "' (read-only or no permission?)");
    }
  }
  fs::remove(probe, ec);
  const uint64_t free = free_bytes(output_dir);
  if (free < bytes_needed) {
    auto mib = [](uint64_t b) { return std::to_string(b >> 20) + " MiB"; };
    throw IoError("the output folder '" + output_dir.string() + "' has " + mib(free) + " free, but a run needs " +
                  mib(bytes_needed) + " (two checkpoints); free space or choose another --output");
  }
}

}  // namespace amused::training
