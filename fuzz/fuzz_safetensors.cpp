// libFuzzer target: the safetensors header / tensor-table parser and the tensor views.
// Input: the bytes of a whole .safetensors file (handed over as a memfd, so the real mmap path
// runs). Every tensor is fetched and every byte of it read; only amused::Error may be thrown.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "amused/error.h"
#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  amused::fuzz::quiet_logs();
  const int fd = ::memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  if (fd < 0) return 0;
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  try {
    auto file = amused::io::SafeTensorsFile::open("/proc/self/fd/" + std::to_string(fd));
    for (const auto& key : file->keys()) {
      const torch::Tensor t = file->get(key);
      const auto& info = file->info(key);
      if (t.numel() * static_cast<int64_t>(t.element_size()) !=
              static_cast<int64_t>(info.end - info.begin) &&
          info.dtype != "U16" && info.dtype != "U32" && info.dtype != "F8_E4M3" &&
          info.dtype != "F8_E5M2")
        __builtin_trap();  // the view must cover exactly the declared span
      // Touch every byte of the view (an out-of-range view would fault here).
      const auto* p = static_cast<const uint8_t*>(t.data_ptr());
      uint8_t acc = 0;
      for (int64_t i = 0; i < t.numel() * static_cast<int64_t>(t.element_size()); ++i) acc ^= p[i];
      volatile uint8_t sink = acc;
      (void)sink;
    }
    (void)file->metadata();
  } catch (const amused::Error&) {
  }
  ::close(fd);
  return 0;
}
