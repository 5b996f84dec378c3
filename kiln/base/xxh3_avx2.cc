// XXH3 for CPUs with AVX2 (compiled with -mavx2; called only where the CPU has it).
#include "kiln/base/xxh3_impl.h"

KILN_XXH3_IMPL(xxh3_avx2)
