// Heap layout and returning freed heap memory to the operating system.
#pragma once

#include <cstdint>

namespace amused {

// Bytes this process can still allocate: the smallest of the memory the system reports available
// (MemAvailable + SwapFree), the address-space limit (ulimit -v) less what is mapped now, and the
// cgroup's memory.max less what it uses besides the page cache (memory.current - file). UINT64_MAX
// when none of them is known.
uint64_t allocatable_bytes();

// Gives the pages of free heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).
// The denoising loop leaves its activations' freed pages resident in the allocator's free lists;
// released before the VQ decode (whose tensors are larger and seldom fit those holes) and after a
// generation, they no longer add to the peak or to an idle server's footprint. Costs a few ms.
void release_free_memory();

// Allocator settings by phase (glibc; no-ops elsewhere; process-wide). Outside any scope they are
// the values glibc's own adaptive rule settles at in a long run: allocations up to 32 MiB come from
// the heap, larger ones get their own memory mapping, and up to 64 MiB of free heap top is kept.
// With several scopes alive (a server loading a model while a job runs) the first phase listed
// wins.
enum class AllocationPhase {
  // A model loading: every allocation of 128 KiB or more, i.e. every weight, gets its own memory
  // mapping. Without this, the adaptive rule moves most weights into the heap between the holes
  // their conversions leave, and each denoising step's activations scatter over those holes:
  // measured on amused-256 (bfloat16), 50-70 MiB more resident memory in the loop at the same speed.
  kLoadWeights,
  // A VQ decode: allocations of 8 MiB or more get their own mapping, returned to the system when
  // freed. The decoder's large float32 activations then never sit in the heap's free lists, where
  // their placement moved the peak by 50-80 MiB between otherwise identical runs: measured on
  // amused-256 (bfloat16), peak RSS 2019 -> 1938 MiB for about 8% more decode time.
  kDecode,
  // A denoising loop: large activations come from the heap too and stay there when freed (no
  // memory mappings, no automatic trimming), so each step reuses the previous step's memory
  // instead of mapping, zero-filling and unmapping fresh pages for every tensor over 32 MiB
  // (batches of 2 or more images): measured on amused-256 at batch 4, 1.4x faster steps. Ending
  // this scope hands the free heap back (release_free_memory).
  kDenoise,
};

// Applies `phase`'s settings while alive (docs/PERFORMANCE.md has the measurements).
class AllocationScope {
 public:
  explicit AllocationScope(AllocationPhase phase);
  ~AllocationScope();
  AllocationScope(const AllocationScope&) = delete;
  AllocationScope& operator=(const AllocationScope&) = delete;

 private:
  AllocationPhase phase_;
};

}  // namespace amused
