// `amused version`: library, LibTorch and machine details.
#include <torch/torch.h>

#include <cstdio>

#include "amused/amused.h"
#include "command.h"

namespace {
amused::cli::Registrar reg("version", "Print version and build information", [](CLI::App& sub) {
  return std::function<int()>([] {
    std::printf("amused %s\nLibTorch %s\nCUDA available: %s\n", amused::version(), TORCH_VERSION,
                torch::cuda::is_available() ? "yes" : "no");
    return 0;
  });
});
}  // namespace
