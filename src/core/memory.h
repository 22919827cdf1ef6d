// Heap layout and returning freed heap memory to the operating system.
#pragma once

namespace amused {

// Gives the pages of free heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).
// The denoising loop leaves its activations' freed pages resident in the allocator's free lists;
// released before the VQ decode (whose tensors are larger and seldom fit those holes) and after a
// generation, they no longer add to the peak or to an idle server's footprint. Costs a few ms.
void release_free_memory();

// While one is alive (a model loading), every allocation of 128 KiB or more, i.e. every weight,
// gets its own memory mapping (glibc's mmap threshold fixed at its initial value). When the last
// one ends, the thresholds are set to the values glibc's own adaptive rule settles at in a long
// run (allocations up to 32 MiB from the heap, 64 MiB of free heap top kept), so activations keep
// reusing heap memory as before. Without this, the adaptive rule moves most weights into the heap
// between the holes their conversions leave, and each denoising step's activations scatter over
// those holes: measured on amused-256 (bfloat16), 50-70 MiB more resident memory in the loop at
// the same speed (docs/PERFORMANCE.md). A no-op outside glibc. These settings are process-wide.
class WeightAllocationScope {
 public:
  WeightAllocationScope();
  ~WeightAllocationScope();
  WeightAllocationScope(const WeightAllocationScope&) = delete;
  WeightAllocationScope& operator=(const WeightAllocationScope&) = delete;

  static constexpr int kWeightMmapThreshold = 128 * 1024;
  static constexpr int kRunMmapThreshold = 32 * 1024 * 1024;
  static constexpr int kRunTrimThreshold = 64 * 1024 * 1024;
};

}  // namespace amused
