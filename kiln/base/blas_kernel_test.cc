#include "kiln/base/blas_kernel.h"

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

}  // namespace
}  // namespace kiln
