// XXH3 for any x86-64 (SSE2) or other CPU.
#include "kiln/base/xxh3_impl.h"

KILN_XXH3_IMPL(xxh3_baseline)
