// Returning freed heap memory to the operating system between pipeline phases.
#pragma once

namespace amused {

// Gives the pages of free heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).
// The denoising loop leaves its activations' freed pages resident in the allocator's free lists;
// released before the VQ decode (whose tensors are larger and seldom fit those holes) and after a
// generation, they no longer add to the peak or to an idle server's footprint. Costs a few ms.
void release_free_memory();

}  // namespace amused
