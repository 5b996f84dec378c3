// Element-wise reduction kernels. Transports call them through a Reducer when
// they combine incoming data in place (no staging copy).
#pragma once

#include <cstddef>

#include "kiln/comm/types.h"

namespace kiln::comm {

// dst[i] = a[i] OP b[i] for `count` elements. dst may alias a or b.
// kAvg reduces as kSum; the caller divides once at the end (finish_avg).
// float16/bfloat16 are widened to float32, combined, and rounded back.
void reduce(DataType t, ReduceOp op, void* dst, const void* a, const void* b, std::size_t count);

// Note [Streaming stores for large messages]: an allreduce of a buffer much
// larger than the caches is bound by memory traffic, and a plain store first
// reads the destination's cache line from memory (read for ownership) only to
// overwrite it: a third more traffic for the copy out of a slot, a quarter
// more for a reduction. Non-temporal stores write whole lines straight to
// memory. They also evict the result from the caches, so transports use
// these only for messages far larger than the caches (where the result would
// not stay cached anyway). Both end with a store fence (the data is visible
// to other threads before anything they publish afterwards) unless `fence` is
// false: a transport landing a message chunk by chunk fences once, when the
// whole message is in (streaming_fence()), since a fence per chunk drains the
// write-combining buffers and stalls the loop every chunk.
// reduce() with streaming stores to dst (float32 sum/avg; others as reduce()).
void reduce_streaming(DataType t, ReduceOp op, void* dst, const void* a, const void* b,
                      std::size_t count, bool fence = true);
// memcpy() with streaming stores to dst.
void copy_streaming(void* dst, const void* src, std::size_t bytes, bool fence = true);
// Orders every streaming store before it ahead of every store after it.
void streaming_fence();
// d0[i] = d1[i] = a[i] + b[i] (float32) with streaming stores and no fence,
// in one pass over a and b: the direct allreduce's kernel for two ranks
// (Note [Direct allreduce on shared buffers]). d0 and d1 must sit at the
// same offset within a cache line; returns false (and writes nothing) if not.
bool add_float32_streaming_to_two(float* d0, float* d1, const float* a, const float* b,
                                  std::size_t count);

// buf[i] /= divisor (integer types truncate toward zero).
void finish_avg(DataType t, void* buf, std::size_t count, int divisor);

// A bound reduction: what an algorithm hands a transport so it can fold
// incoming bytes into a destination as they arrive.
struct Reducer {
  DataType dtype;
  ReduceOp op;
  // Note [Averaging in the last reduction]: an average's last reduction step
  // (the one that completes a rank's share) also divides by the world size,
  // finish_avg on each piece right after it is folded in, while the piece is
  // still in the cache. The finished share is then not walked again from
  // memory after the whole message has arrived (~5 ms of a comm thread per
  // DDP step of 84 MB on two ranks, on the core backward runs on: docs/perf.md,
  // issue 24, session 16). Same operations in the same order: same bits.
  // 1: no division.
  int then_divide_by = 1;
  // dst = local OP incoming, over `bytes` bytes (a multiple of the element size).
  void operator()(void* dst, const void* local, const void* incoming, std::size_t bytes) const {
    const std::size_t count = bytes / dtype_size(dtype);
    reduce(dtype, op, dst, local, incoming, count);
    if (then_divide_by != 1) finish_avg(dtype, dst, count, then_divide_by);
  }
  // The same with streaming stores (Note [Streaming stores for large messages]).
  void streaming(void* dst, const void* local, const void* incoming, std::size_t bytes,
                 bool fence = true) const {
    const std::size_t count = bytes / dtype_size(dtype);
    if (then_divide_by != 1) {  // divide while the piece is in the cache, then store
      (*this)(dst, local, incoming, bytes);
      return;
    }
    reduce_streaming(dtype, op, dst, local, incoming, count, fence);
  }
};

// Note [16-bit floats accumulate in float32]: a float16/bfloat16 sum, average
// or product is carried in float32 from the first addition to the last and
// rounded to 16 bits once, so the result does not depend on how many hops
// the partial sums took (rounding a bfloat16 partial at each of a ring's n-1
// hops loses up to n-1 half-ulps of 8 bits each). Partials travel as
// float32; only final values travel as 16 bits (the ring's allgather, a
// broadcast). min and max are exact in any precision and are not widened.
bool accumulates_in_float32(DataType t, ReduceOp op);
// dst[i] = src[i] as float32 / src[i] rounded to nearest even into `t`.
void widen_to_float32(DataType t, const void* src, float* dst, std::size_t count);
void narrow_from_float32(DataType t, const float* src, void* dst, std::size_t count);

// float16 / bfloat16 conversions, exposed for tests and benchmarks.
float half_to_float(unsigned short h);
unsigned short float_to_half(float f);
float bf16_to_float(unsigned short h);
unsigned short float_to_bf16(float f);

}  // namespace kiln::comm
