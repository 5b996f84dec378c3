// The streaming-store kernels (Note [Streaming stores for large messages])
// must give exactly what the plain ones give, at any alignment and length;
// an average divided in its last reduction (Note [Averaging in the last
// reduction]) exactly what a division after it gives.
#include <cstdint>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "kiln/comm/reduce.h"

namespace kiln::comm {
namespace {

TEST(ReduceStreaming, MatchesPlainReduceAtEveryAlignmentAndLength) {
  for (std::size_t shift : {0, 1, 3, 7, 15}) {      // floats off a cache line
    for (std::size_t count : {0, 1, 5, 16, 17, 1000, 4099}) {
      std::vector<float> a(count + 32), b(count + 32), want(count + 32), got(count + 32, -1.f);
      for (std::size_t i = 0; i < a.size(); ++i) {
        a[i] = 0.5f * static_cast<float>(i);
        b[i] = 1.0f / static_cast<float>(i + 1);
      }
      reduce(DataType::kFloat32, ReduceOp::kSum, want.data() + shift, a.data() + 1, b.data() + 2,
             count);
      reduce_streaming(DataType::kFloat32, ReduceOp::kSum, got.data() + shift, a.data() + 1,
                       b.data() + 2, count);
      for (std::size_t i = 0; i < count; ++i) {
        ASSERT_EQ(got[shift + i], want[shift + i]) << "shift " << shift << " count " << count << " at " << i;
      }
      EXPECT_EQ(got[shift + count], -1.f) << "wrote past the end: shift " << shift << " count " << count;
      if (shift > 0) {
        EXPECT_EQ(got[shift - 1], -1.f) << "wrote before the start";
      }
    }
  }
}

TEST(ReduceStreaming, InPlaceAndOtherTypesFallBack) {
  std::vector<float> x(100, 2.f), y(100, 3.f);
  reduce_streaming(DataType::kFloat32, ReduceOp::kAvg, x.data(), x.data(), y.data(), 100);
  EXPECT_EQ(x[0], 5.f);  // kAvg sums; the caller divides
  EXPECT_EQ(x[99], 5.f);
  std::vector<std::int32_t> i(33, 4), j(33, 9);
  reduce_streaming(DataType::kInt32, ReduceOp::kMax, i.data(), i.data(), j.data(), 33);
  EXPECT_EQ(i[32], 9);
}

TEST(CopyStreaming, MatchesMemcpyAtEveryAlignmentAndLength) {
  for (std::size_t shift : {0, 1, 13, 63}) {
    for (std::size_t bytes : {0, 1, 63, 64, 65, 4096, 100003}) {
      std::vector<unsigned char> src(bytes + 128), got(bytes + 128, 0xee);
      for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 7 + 1);
      copy_streaming(got.data() + shift, src.data() + 5, bytes);
      ASSERT_EQ(std::memcmp(got.data() + shift, src.data() + 5, bytes), 0) << shift << " " << bytes;
      EXPECT_EQ(got[shift + bytes], 0xee);
      if (shift > 0) {
        EXPECT_EQ(got[shift - 1], 0xee);
      }
    }
  }
}

}  // namespace
}  // namespace kiln::comm

namespace kiln::comm {
namespace {

// Reduces in two pieces, as a transport folds a message in as it arrives.
template <typename T>
void expect_division_in_the_reduction_matches_after_it(DataType t, int n) {
  std::vector<T> local(1001), incoming(1001);
  for (std::size_t i = 0; i < local.size(); ++i) {
    local[i] = static_cast<T>(0.37 * static_cast<double>(i) - 90);
    incoming[i] = static_cast<T>(1000.0 / static_cast<double>(i + 3));
  }
  std::vector<T> want(local.size()), plain(local.size()), streamed(local.size());
  reduce(t, ReduceOp::kAvg, want.data(), local.data(), incoming.data(), want.size());
  finish_avg(t, want.data(), want.size(), n);
  const Reducer last{t, ReduceOp::kAvg, n};
  const std::size_t cut = 333 * sizeof(T), bytes = local.size() * sizeof(T);
  auto* l = reinterpret_cast<const char*>(local.data());
  auto* in = reinterpret_cast<const char*>(incoming.data());
  auto* p = reinterpret_cast<char*>(plain.data());
  auto* s = reinterpret_cast<char*>(streamed.data());
  last(p, l, in, cut);
  last(p + cut, l + cut, in + cut, bytes - cut);
  last.streaming(s, l, in, cut, /*fence=*/false);
  last.streaming(s + cut, l + cut, in + cut, bytes - cut);
  for (std::size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(std::memcmp(&plain[i], &want[i], sizeof(T)), 0) << "element " << i << ", n " << n;
    ASSERT_EQ(std::memcmp(&streamed[i], &want[i], sizeof(T)), 0) << "streaming, element " << i;
  }
}

TEST(ReducerAverage, DividingInTheLastReductionGivesTheBitsOfDividingAfterIt) {
  for (int n : {2, 3, 7}) {
    expect_division_in_the_reduction_matches_after_it<float>(DataType::kFloat32, n);
    expect_division_in_the_reduction_matches_after_it<double>(DataType::kFloat64, n);
    expect_division_in_the_reduction_matches_after_it<std::int32_t>(DataType::kInt32, n);
  }
}

TEST(ReducerAverage, WithoutADivisorItOnlySums) {
  std::vector<float> x(64, 2.f), y(64, 3.f);
  Reducer{DataType::kFloat32, ReduceOp::kAvg}(x.data(), x.data(), y.data(), 64 * sizeof(float));
  EXPECT_EQ(x[63], 5.f);
}

}  // namespace
}  // namespace kiln::comm
