// XXH3-64 (seed 0), the checksum of checkpoints, dataset shards and
// parameter digests, at the speed of the CPU's widest vectors: the same
// function and results as libxxhash's XXH3_64bits, picked at run time from
// copies compiled for AVX2 and for the x86-64 baseline (Note [Checksums as fast as the copies], xxh3.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace kiln {

std::uint64_t xxh3(const void* data, std::size_t n);
inline std::uint64_t xxh3(std::span<const std::uint8_t> bytes) {
  return xxh3(bytes.data(), bytes.size());
}

// Streaming: update() with consecutive pieces gives xxh3() of their
// concatenation.
class Xxh3 {
 public:
  Xxh3();
  ~Xxh3();
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;

  void update(const void* data, std::size_t n);
  std::uint64_t digest() const;

 private:
  void* state_;
};

}  // namespace kiln
