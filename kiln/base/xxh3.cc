#include "kiln/base/xxh3.h"

#include <new>

namespace kiln {

// The two copies (xxh3_impl.h).
#define KILN_XXH3_DECLARE(name)                                \
  namespace name {                                             \
  std::uint64_t oneshot(const void* p, std::size_t n);         \
  void* create();                                              \
  void destroy(void* s);                                       \
  void update(void* s, const void* p, std::size_t n);          \
  std::uint64_t digest(const void* s);                         \
  }
#if defined(__x86_64__)
KILN_XXH3_DECLARE(xxh3_avx2)
#endif
KILN_XXH3_DECLARE(xxh3_baseline)

namespace {

// Note [Checksums as fast as the copies]: every byte the in-memory tier
// stores or restores is checksummed in the same pass that copies it (Note
// [The successor checksums what it copies], Note [Stream chunks sized to
// the L2 cache]), so the checksum's speed in cache decides how far the pass
// is from a memcpy. The distribution's libxxhash is built for the x86-64
// baseline: 7 GB/s on this VM's EPYC, about a memcpy's speed out of memory,
// against 28 GB/s for the same XXH3 compiled for AVX2 (docs/perf.md, issue
// 19, session 12). The results are the same bits either way.
struct Impl {
  std::uint64_t (*oneshot)(const void*, std::size_t);
  void* (*create)();
  void (*destroy)(void*);
  void (*update)(void*, const void*, std::size_t);
  std::uint64_t (*digest)(const void*);
};

const Impl& impl() {
  static const Impl chosen = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
      return Impl{xxh3_avx2::oneshot, xxh3_avx2::create, xxh3_avx2::destroy, xxh3_avx2::update,
                  xxh3_avx2::digest};
    }
#endif
    return Impl{xxh3_baseline::oneshot, xxh3_baseline::create, xxh3_baseline::destroy,
                xxh3_baseline::update, xxh3_baseline::digest};
  }();
  return chosen;
}

}  // namespace

std::uint64_t xxh3(const void* data, std::size_t n) { return impl().oneshot(data, n); }

Xxh3::Xxh3() : state_(impl().create()) {
  if (state_ == nullptr) throw std::bad_alloc();
}
Xxh3::~Xxh3() { impl().destroy(state_); }
void Xxh3::update(const void* data, std::size_t n) { impl().update(state_, data, n); }
std::uint64_t Xxh3::digest() const { return impl().digest(state_); }

}  // namespace kiln
