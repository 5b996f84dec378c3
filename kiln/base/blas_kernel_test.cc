#include "kiln/base/blas_kernel.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

namespace kiln {
namespace {

constexpr CpuVectorFeatures kSse3Only{};
constexpr CpuVectorFeatures kAvx2{.avx2_fma = true};
constexpr CpuVectorFeatures kAvx512{.avx2_fma = true, .avx512 = true};

TEST(BlasKernel, TheGenericFallbackIsReplacedByWhatTheCpuRuns) {
  EXPECT_EQ(better_openblas_core("Prescott", kAvx512), "SkylakeX");
  EXPECT_EQ(better_openblas_core("Prescott", kAvx2), "Haswell");
  EXPECT_EQ(better_openblas_core("prescott", kAvx2), "Haswell");
}

TEST(BlasKernel, AKnownCoreOrAnOldCpuIsLeftAlone) {
  EXPECT_EQ(better_openblas_core("Prescott", kSse3Only), "");
  EXPECT_EQ(better_openblas_core("SkylakeX", kAvx512), "");
  EXPECT_EQ(better_openblas_core("Haswell", kAvx512), "");
  EXPECT_EQ(better_openblas_core("Zen", kAvx2), "");
  EXPECT_EQ(better_openblas_core("", kAvx512), "");
  EXPECT_EQ(better_openblas_core("Prescott2", kAvx512), "");
}

// Note [OpenBLAS's own thread pool]: the cap reaches OpenBLAS however it was
// loaded (here by hand, as LibTorch loads it in `kiln train`).
TEST(BlasThreads, CapsOpenBlasPoolWhereOpenBlasIsLoaded) {
  void* lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_GLOBAL);
  if (lib == nullptr) GTEST_SKIP() << "libopenblas.so.0 is not installed";
  auto threads = reinterpret_cast<int (*)()>(dlsym(lib, "openblas_get_num_threads"));
  ASSERT_NE(threads, nullptr);
  const int started_with = threads();
  ASSERT_TRUE(set_openblas_threads(1));
  EXPECT_EQ(threads(), 1);
  if (started_with > 1) {
    ASSERT_TRUE(set_openblas_threads(2));
    EXPECT_EQ(threads(), 2);
  }
  set_openblas_threads(started_with);
}

}  // namespace
}  // namespace kiln
