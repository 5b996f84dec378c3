// One copy of xxHash's XXH3, compiled inline into the including file for
// that file's target (xxh3_avx2.cc, xxh3_baseline.cc); xxh3.cc picks one.
// xxHash's functions get internal linkage (XXH_INLINE_ALL) and the wrappers
// names of their own, so the linker never lets code compiled for AVX2 stand
// in for code a baseline CPU runs.
#pragma once

#include <cstddef>
#include <cstdint>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define KILN_XXH3_IMPL(name)                                                         \
  namespace kiln::name {                                             \
  std::uint64_t oneshot(const void* p, std::size_t n) { return XXH3_64bits(p, n); }  \
  void* create() {                                                                   \
    XXH3_state_t* s = XXH3_createState();                                            \
    if (s != nullptr) XXH3_64bits_reset(s);                                          \
    return s;                                                                        \
  }                                                                                  \
  void destroy(void* s) { XXH3_freeState(static_cast<XXH3_state_t*>(s)); }           \
  void update(void* s, const void* p, std::size_t n) {                               \
    XXH3_64bits_update(static_cast<XXH3_state_t*>(s), p, n);                         \
  }                                                                                  \
  std::uint64_t digest(const void* s) {                                              \
    return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(s));                  \
  }                                                                                  \
  }
