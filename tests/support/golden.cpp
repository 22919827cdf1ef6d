#include "support/golden.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <thread>
#include <chrono>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>

#include "io/safetensors.h"

namespace amused::testing {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path golden_dir() {
  if (const char* env = std::getenv("AMUSED_GOLDEN_DIR"); env && *env) return fs::path(env);
  return fs::weakly_canonical(fs::path(AMUSED_SOURCE_DIR) / ".." / "shared" / "golden");
}

fs::path keys_dir() { return golden_dir().parent_path() / "docs" / "keys"; }

bool golden_available() { return fs::exists(golden_dir() / "manifest.json"); }

bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

fs::path golden_path(const std::string& relative) { return golden_dir() / relative; }

const json& manifest() {
  static std::once_flag once;
  static json m;
  std::call_once(once, [] {
    std::ifstream in(golden_dir() / "manifest.json");
    if (!in) throw std::runtime_error("cannot open " + (golden_dir() / "manifest.json").string());
    in >> m;
  });
  return m;
}

const json& golden_case(const std::string& id) {
  for (const auto& c : manifest()["cases"])
    if (c["id"] == id) return c;
  throw std::runtime_error("golden case '" + id + "' not in the manifest");
}

std::vector<json> golden_cases_of_kind(const std::string& kind) {
  std::vector<json> out;
  for (const auto& c : manifest()["cases"])
    if (c["kind"] == kind) out.push_back(c);
  return out;
}

torch::Tensor golden_tensor(const json& d) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<io::SafeTensorsFile>> files;
  const std::string file = d.at("file").get<std::string>();
  std::shared_ptr<io::SafeTensorsFile> f;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto& slot = files[file];
    if (!slot) slot = io::SafeTensorsFile::open(golden_dir() / file);
    f = slot;
  }
  return f->get(d.at("key").get<std::string>()).clone();
}

namespace {
std::string first_values(const torch::Tensor& a, const torch::Tensor& e, int64_t around) {
  auto af = a.reshape(-1).to(torch::kFloat64);
  auto ef = e.reshape(-1).to(torch::kFloat64);
  std::ostringstream os;
  os << "\n   index        actual      expected";
  const int64_t n = af.numel();
  auto show = [&](int64_t i) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "\n%8lld %13.7g %13.7g", static_cast<long long>(i), af[i].item<double>(),
                  ef[i].item<double>());
    os << buf;
  };
  for (int64_t i = 0; i < std::min<int64_t>(n, 6); ++i) show(i);
  if (around >= 6) {
    os << "\n   ... around the worst:";
    for (int64_t i = std::max<int64_t>(6, around - 2); i < std::min<int64_t>(n, around + 3); ++i) show(i);
  }
  return os.str();
}

std::string index_string(const torch::Tensor& t, int64_t flat) {
  std::ostringstream os;
  os << "[";
  auto sizes = t.sizes();
  std::vector<int64_t> idx(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    idx[d] = flat % sizes[d];
    flat /= sizes[d];
  }
  for (size_t i = 0; i < idx.size(); ++i) os << (i ? "," : "") << idx[i];
  os << "]";
  return os.str();
}

::testing::AssertionResult shape_check(const torch::Tensor& a, const torch::Tensor& e, const std::string& name) {
  if (!a.defined()) return ::testing::AssertionFailure() << name << ": actual tensor is undefined";
  if (a.sizes() != e.sizes())
    return ::testing::AssertionFailure() << name << ": shape " << a.sizes() << " != expected " << e.sizes();
  return ::testing::AssertionSuccess();
}
}  // namespace

::testing::AssertionResult tensors_equal(const torch::Tensor& actual, const torch::Tensor& expected,
                                         const std::string& name) {
  if (auto r = shape_check(actual, expected, name); !r) return r;
  auto a = actual.detach().cpu();
  auto e = expected.detach().cpu();
  auto neq = a.to(torch::kFloat64).ne(e.to(torch::kFloat64));
  const int64_t bad = neq.sum().item<int64_t>();
  if (bad == 0) return ::testing::AssertionSuccess();
  const int64_t first = neq.reshape(-1).to(torch::kInt32).argmax().item<int64_t>();
  return ::testing::AssertionFailure() << name << ": " << bad << " of " << a.numel()
                                       << " elements differ; first at " << index_string(a, first)
                                       << first_values(a, e, first);
}

::testing::AssertionResult tensors_close(const torch::Tensor& actual, const torch::Tensor& expected, double atol,
                                         double rtol, const std::string& name) {
  if (auto r = shape_check(actual, expected, name); !r) return r;
  auto a = actual.detach().cpu().to(torch::kFloat64);
  auto e = expected.detach().cpu().to(torch::kFloat64);
  auto diff = (a - e).abs();
  auto bound = atol + rtol * e.abs();
  auto bad = diff.gt(bound).logical_or(a.isnan().logical_xor(e.isnan()));
  const int64_t nbad = bad.sum().item<int64_t>();
  if (nbad == 0) return ::testing::AssertionSuccess();
  const int64_t worst = (diff - bound).reshape(-1).nan_to_num(1e300).argmax().item<int64_t>();
  return ::testing::AssertionFailure() << name << ": " << nbad << " of " << a.numel()
                                       << " elements outside atol=" << atol << " rtol=" << rtol
                                       << "; max-abs " << diff.max().item<double>() << " at "
                                       << index_string(a, worst) << first_values(a, e, worst);
}

::testing::AssertionResult matches_descriptor(const torch::Tensor& actual, const json& d, const std::string& name) {
  auto expected = golden_tensor(d);
  const json tol = d.value("tolerance", json{{"kind", "exact"}});
  const std::string kind = tol.value("kind", "exact");
  if (kind == "exact") return tensors_equal(actual, expected, name);
  if (kind == "allclose")
    return tensors_close(actual, expected, tol.value("atol", 0.0), tol.value("rtol", 0.0), name);
  if (kind == "max_abs_diff") return tensors_close(actual, expected, tol.value("max", tol.value("value", 1.0)), 0.0, name);
  return ::testing::AssertionFailure() << name << ": unknown tolerance kind '" << kind << "'";
}

torch::Tensor tokens_tensor(const std::vector<amused::TokenGrid>& grids) {
  std::vector<torch::Tensor> ts;
  for (const auto& g : grids) ts.push_back(torch::tensor(g.ids, torch::kInt64).reshape({g.height, g.width}));
  return torch::stack(ts);
}

torch::Tensor images_tensor(const std::vector<amused::Image>& images) {
  std::vector<torch::Tensor> ts;
  for (const auto& im : images)
    ts.push_back(torch::from_blob(const_cast<uint8_t*>(im.pixels.data()), {im.height, im.width, 3}, torch::kUInt8).clone());
  return torch::stack(ts);
}

TempDir::TempDir() {
  std::random_device rd;
  path_ = fs::temp_directory_path() / ("amused-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  fs::create_directories(path_);
}
TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

CliResult run_cli(const std::string& args) {
  TempDir tmp;
  const std::string cmd = std::string("'") + AMUSED_CLI_PATH + "' " + args + " >'" + (tmp / "out").string() +
                          "' 2>'" + (tmp / "err").string() + "' </dev/null";
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream os;
    os << in.rdbuf();
    return os.str();
  };
  r.out = slurp(tmp / "out");
  r.err = slurp(tmp / "err");
  return r;
}

std::filesystem::path link_golden_model(const std::string& name, const std::filesystem::path& to) {
  namespace fs = std::filesystem;
  const fs::path src = golden_path(name);
  fs::create_directories(to);
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    const fs::path dst = to / fs::relative(e.path(), src);
    if (e.is_directory())
      fs::create_directories(dst);
    else
      fs::create_symlink(e.path(), dst);
  }
  return to;
}

pid_t spawn_tied_to_test(const std::vector<std::string>& argv, const std::string& stdout_path,
                         const std::string& stderr_path) {
  if (argv.empty()) return -1;
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // The child: only async-signal-safe calls from here to exec.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) _exit(127);  // the test died before prctl took effect
  auto redirect = [](int fd, const std::string& path, int flags) {
    const int f = open(path.empty() ? "/dev/null" : path.c_str(), flags, 0644);
    if (f < 0 || dup2(f, fd) < 0) _exit(127);
    if (f != fd) close(f);
  };
  redirect(0, "", O_RDONLY);
  redirect(1, stdout_path, O_WRONLY | O_CREAT | O_TRUNC);
  redirect(2, stderr_path, O_WRONLY | O_CREAT | O_TRUNC);
  execv(args[0], args.data());
  _exit(127);
}

int run_cli_signalled(const std::string& args, int sig, const std::function<bool()>& when) {
  const std::string cmd = std::string("exec '") + AMUSED_CLI_PATH + "' " + args;
  const pid_t pid = spawn_tied_to_test({"/bin/sh", "-c", cmd});
  if (pid < 0) return -1;
  bool sent = false;
  int status = 0;
  for (int i = 0; i < 20000 && !sent; ++i) {
    if (when()) {
      kill(pid, sig);
      sent = true;
      break;
    }
    if (waitpid(pid, &status, WNOHANG) == pid) return -1;  // it ended by itself
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
  }
  if (!sent) kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  if (!sent) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 256 + WTERMSIG(status) : -1;
}

bool run_cli_killed_mid_run(const std::string& args, const std::function<bool()>& kill_when,
                            const std::function<bool()>& finished) {
  const std::string cmd = std::string("exec '") + AMUSED_CLI_PATH + "' " + args;
  const pid_t pid = spawn_tied_to_test({"/bin/sh", "-c", cmd});
  if (pid < 0) return false;
  bool killed_mid_run = false;
  for (int i = 0; i < 20000; ++i) {
    if (kill_when()) {
      killed_mid_run = !finished();
      kill(pid, SIGKILL);
      break;
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;  // it ended by itself
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return killed_mid_run;
}

}  // namespace amused::testing
