#include "kiln/comm/reduce.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>

#include "kiln/base/check.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// The loops below are the hot path of every reducing collective: built at -O3
// (see CMakeLists.txt) and cloned for AVX2 so one binary runs everywhere and
// vectorizes wide where it can.
// (Not under clang, whose target_clones does not take function templates:
// `make fuzz` builds with it.)
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) && \
    !defined(__clang__)
#define KILN_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KILN_VECTOR_CLONES
#endif

namespace kiln::comm {
namespace {

template <typename T>
struct Sum { static T apply(T a, T b) { return a + b; } };
template <typename T>
struct Prod { static T apply(T a, T b) { return a * b; } };
template <typename T>
struct Min { static T apply(T a, T b) { return b < a ? b : a; } };
template <typename T>
struct Max { static T apply(T a, T b) { return a < b ? b : a; } };

template <typename T, template <typename> class Op>
KILN_VECTOR_CLONES void combine(void* dst, const void* a, const void* b, std::size_t n) {
  // dst may alias a or b exactly (never partially), so no __restrict here;
  // the compiler checks aliasing at run time and picks the vector loop.
  T* d = static_cast<T*>(dst);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (std::size_t i = 0; i < n; ++i) d[i] = Op<T>::apply(x[i], y[i]);
}

inline float bf16_bits_to_float(std::uint16_t h) { return std::bit_cast<float>(std::uint32_t{h} << 16); }
inline std::uint16_t float_to_bf16_bits(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<std::uint16_t>(u >> 16);
}

template <template <typename> class Op>
KILN_VECTOR_CLONES void combine_bf16(void* dst, const void* a, const void* b, std::size_t n) {
  auto* d = static_cast<std::uint16_t*>(dst);
  const auto* x = static_cast<const std::uint16_t*>(a);
  const auto* y = static_cast<const std::uint16_t*>(b);
  for (std::size_t i = 0; i < n; ++i) {
    d[i] = float_to_bf16_bits(Op<float>::apply(bf16_bits_to_float(x[i]), bf16_bits_to_float(y[i])));
  }
}

template <template <typename> class Op>
void combine_fp16(void* dst, const void* a, const void* b, std::size_t n) {
  auto* d = static_cast<std::uint16_t*>(dst);
  const auto* x = static_cast<const std::uint16_t*>(a);
  const auto* y = static_cast<const std::uint16_t*>(b);
  for (std::size_t i = 0; i < n; ++i) {
    d[i] = float_to_half(Op<float>::apply(half_to_float(x[i]), half_to_float(y[i])));
  }
}

template <template <typename> class Op>
void dispatch_type(DataType t, void* dst, const void* a, const void* b, std::size_t n) {
  switch (t) {
    case DataType::kFloat32: return combine<float, Op>(dst, a, b, n);
    case DataType::kFloat64: return combine<double, Op>(dst, a, b, n);
    case DataType::kInt32: return combine<std::int32_t, Op>(dst, a, b, n);
    case DataType::kInt64: return combine<std::int64_t, Op>(dst, a, b, n);
    case DataType::kUInt8: return combine<std::uint8_t, Op>(dst, a, b, n);
    case DataType::kBFloat16: return combine_bf16<Op>(dst, a, b, n);
    case DataType::kFloat16: return combine_fp16<Op>(dst, a, b, n);
  }
}

template <typename T>
void divide(void* buf, std::size_t n, int divisor) {
  T* p = static_cast<T*>(buf);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<T>(p[i] / static_cast<T>(divisor));
}

}  // namespace

float half_to_float(unsigned short h) {
  std::uint32_t sign = (std::uint32_t{h} & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1f;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

unsigned short float_to_half(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  std::uint32_t sign = (u >> 16) & 0x8000u;
  std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<unsigned short>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // overflow → inf
  if (abs < 0x38800000u) {  // subnormal or zero in half
    if (abs < 0x33000000u) return static_cast<unsigned short>(sign);
    std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    int shift = 126 - static_cast<int>(abs >> 23);  // 14..24
    std::uint32_t half_mant = mant >> (shift);
    std::uint32_t rem = mant & ((1u << shift) - 1);
    std::uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1u))) ++half_mant;
    return static_cast<unsigned short>(sign | half_mant);
  }
  std::uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even
  return static_cast<unsigned short>(sign | ((rounded - 0x38000000u) >> 13));
}

float bf16_to_float(unsigned short h) { return bf16_bits_to_float(h); }
unsigned short float_to_bf16(float f) { return float_to_bf16_bits(f); }

void reduce(DataType t, ReduceOp op, void* dst, const void* a, const void* b, std::size_t count) {
  if (count == 0) return;
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return dispatch_type<Sum>(t, dst, a, b, count);
    case ReduceOp::kProd: return dispatch_type<Prod>(t, dst, a, b, count);
    case ReduceOp::kMin: return dispatch_type<Min>(t, dst, a, b, count);
    case ReduceOp::kMax: return dispatch_type<Max>(t, dst, a, b, count);
  }
}

#if defined(__x86_64__)
namespace {
constexpr std::uintptr_t kLine = 64;
std::size_t bytes_to_line(const void* p) {
  return (kLine - reinterpret_cast<std::uintptr_t>(p) % kLine) % kLine;
}

// Note [Whole-line streaming kernels]: one 64-byte store per cache line
// (AVX-512) where the CPU has it, four 16-byte ones (SSE2, in every x86-64)
// otherwise. The loads are unaligned: a message chunk lands at any offset.
// Both run over whole lines of an aligned dst; the callers do the edges.
__attribute__((target("avx512f"))) void add_lines_avx512(float* d, const float* x,
                                                         const float* y, std::size_t lines) {
  for (std::size_t l = 0; l < lines; ++l, d += 16, x += 16, y += 16) {
    _mm512_stream_ps(d, _mm512_add_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(y)));
  }
}
__attribute__((target("avx512f"))) void copy_lines_avx512(char* d, const char* s,
                                                          std::size_t lines) {
  for (std::size_t l = 0; l < lines; ++l, d += kLine, s += kLine) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
  }
}
void add_lines_sse2(float* d, const float* x, const float* y, std::size_t lines) {
  for (std::size_t l = 0; l < lines; ++l, d += 16, x += 16, y += 16) {
    for (std::size_t k = 0; k < 16; k += 4) {
      _mm_stream_ps(d + k, _mm_add_ps(_mm_loadu_ps(x + k), _mm_loadu_ps(y + k)));
    }
  }
}
__attribute__((target("avx512f"))) void add_lines_to_two_avx512(float* d0, float* d1,
                                                                const float* x, const float* y,
                                                                std::size_t lines) {
  for (std::size_t l = 0; l < lines; ++l, d0 += 16, d1 += 16, x += 16, y += 16) {
    const __m512 v = _mm512_add_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(y));
    _mm512_stream_ps(d0, v);
    _mm512_stream_ps(d1, v);
  }
}
void add_lines_to_two_sse2(float* d0, float* d1, const float* x, const float* y,
                           std::size_t lines) {
  for (std::size_t l = 0; l < lines; ++l, d0 += 16, d1 += 16, x += 16, y += 16) {
    for (std::size_t k = 0; k < 16; k += 4) {
      const __m128 v = _mm_add_ps(_mm_loadu_ps(x + k), _mm_loadu_ps(y + k));
      _mm_stream_ps(d0 + k, v);
      _mm_stream_ps(d1 + k, v);
    }
  }
}
void copy_lines_sse2(char* d, const char* s, std::size_t lines) {
  for (std::size_t l = 0; l < lines; ++l, d += kLine, s += kLine) {
    for (std::size_t k = 0; k < kLine; k += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + k),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)));
    }
  }
}
bool has_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}
}  // namespace

void streaming_fence() { _mm_sfence(); }

void reduce_streaming(DataType t, ReduceOp op, void* dst, const void* a, const void* b,
                      std::size_t count, bool fence) {
  if (t != DataType::kFloat32 || (op != ReduceOp::kSum && op != ReduceOp::kAvg) ||
      bytes_to_line(dst) % sizeof(float) != 0) {
    return reduce(t, op, dst, a, b, count);
  }
  auto* d = static_cast<float*>(dst);
  const auto* x = static_cast<const float*>(a);
  const auto* y = static_cast<const float*>(b);
  std::size_t head = std::min(count, bytes_to_line(d) / sizeof(float));
  reduce(t, op, d, x, y, head);
  const std::size_t lines = (count - head) / 16;
  (has_avx512f() ? add_lines_avx512 : add_lines_sse2)(d + head, x + head, y + head, lines);
  const std::size_t i = head + lines * 16;
  reduce(t, op, d + i, x + i, y + i, count - i);
  if (fence) _mm_sfence();
}

bool add_float32_streaming_to_two(float* d0, float* d1, const float* a, const float* b,
                                  std::size_t count) {
  if (bytes_to_line(d0) != bytes_to_line(d1) || bytes_to_line(d0) % sizeof(float) != 0) return false;
  auto add = [](float* x, float* y, const float* p, const float* q, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) x[i] = y[i] = p[i] + q[i];
  };
  const std::size_t head = std::min(count, bytes_to_line(d0) / sizeof(float));
  add(d0, d1, a, b, head);
  const std::size_t lines = (count - head) / 16;
  (has_avx512f() ? add_lines_to_two_avx512 : add_lines_to_two_sse2)(d0 + head, d1 + head, a + head,
                                                                  b + head, lines);
  const std::size_t i = head + lines * 16;
  add(d0 + i, d1 + i, a + i, b + i, count - i);
  return true;
}

void copy_streaming(void* dst, const void* src, std::size_t bytes, bool fence) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  std::size_t head = std::min(bytes, bytes_to_line(d));
  std::memcpy(d, s, head);
  const std::size_t lines = (bytes - head) / kLine;
  (has_avx512f() ? copy_lines_avx512 : copy_lines_sse2)(d + head, s + head, lines);
  const std::size_t i = head + lines * kLine;
  std::memcpy(d + i, s + i, bytes - i);
  if (fence) _mm_sfence();
}
#else
void streaming_fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
void reduce_streaming(DataType t, ReduceOp op, void* dst, const void* a, const void* b,
                      std::size_t count, bool) {
  reduce(t, op, dst, a, b, count);
}
void copy_streaming(void* dst, const void* src, std::size_t bytes, bool) {
  std::memcpy(dst, src, bytes);
}
bool add_float32_streaming_to_two(float* d0, float* d1, const float* a, const float* b,
                                  std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) d0[i] = d1[i] = a[i] + b[i];
  return true;
}
#endif

bool accumulates_in_float32(DataType t, ReduceOp op) {
  return (t == DataType::kFloat16 || t == DataType::kBFloat16) && op != ReduceOp::kMin &&
         op != ReduceOp::kMax;
}

namespace {
// The bfloat16 halves of the conversions: bit operations that vectorize.
KILN_VECTOR_CLONES void widen_bf16(const std::uint16_t* s, float* dst, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) dst[i] = bf16_bits_to_float(s[i]);
}
KILN_VECTOR_CLONES void narrow_bf16(const float* src, std::uint16_t* d, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) d[i] = float_to_bf16_bits(src[i]);
}
}  // namespace

void widen_to_float32(DataType t, const void* src, float* dst, std::size_t count) {
  KILN_CHECK(t == DataType::kFloat16 || t == DataType::kBFloat16);
  const auto* s = static_cast<const std::uint16_t*>(src);
  if (t == DataType::kBFloat16) {
    widen_bf16(s, dst, count);
  } else {
    for (std::size_t i = 0; i < count; ++i) dst[i] = half_to_float(s[i]);
  }
}

void narrow_from_float32(DataType t, const float* src, void* dst, std::size_t count) {
  KILN_CHECK(t == DataType::kFloat16 || t == DataType::kBFloat16);
  auto* d = static_cast<std::uint16_t*>(dst);
  if (t == DataType::kBFloat16) {
    narrow_bf16(src, d, count);
  } else {
    for (std::size_t i = 0; i < count; ++i) d[i] = float_to_half(src[i]);
  }
}

void finish_avg(DataType t, void* buf, std::size_t count, int divisor) {
  KILN_CHECK(divisor > 0);
  if (divisor == 1 || count == 0) return;
  switch (t) {
    case DataType::kFloat32: return divide<float>(buf, count, divisor);
    case DataType::kFloat64: return divide<double>(buf, count, divisor);
    case DataType::kInt32: return divide<std::int32_t>(buf, count, divisor);
    case DataType::kInt64: return divide<std::int64_t>(buf, count, divisor);
    case DataType::kUInt8: return divide<std::uint8_t>(buf, count, divisor);
    case DataType::kBFloat16: {
      auto* p = static_cast<std::uint16_t*>(buf);
      for (std::size_t i = 0; i < count; ++i) p[i] = float_to_bf16(bf16_to_float(p[i]) / divisor);
      return;
    }
    case DataType::kFloat16: {
      auto* p = static_cast<std::uint16_t*>(buf);
      for (std::size_t i = 0; i < count; ++i) p[i] = float_to_half(half_to_float(p[i]) / divisor);
      return;
    }
  }
}

}  // namespace kiln::comm
