#include "amused/amused.h"
#include "core/threads.h"

namespace amused {
const char* version() { return AMUSED_VERSION; }
int set_threads(int threads) { return set_user_threads(threads); }
}  // namespace amused
