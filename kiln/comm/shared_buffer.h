// SharedBuffer: memory that ranks on the same host can read and write
// directly, as NCCL's registered buffers or MPI_Alloc_mem are.
//
// An allreduce between ranks of one host whose send and receive buffers are
// all SharedBuffers skips the FIFO copies: each rank reduces its share of
// the elements straight from every rank's input into every rank's output
// (Note [Direct allreduce on shared buffers], kiln/comm/algo/direct.cc).
// Anything else works on them as on any memory.
//
// Each buffer is a memfd of its own, mapped once here; a peer maps it on its
// first use through /proc/<pid>/fd/<fd> (same user, no name in /dev/shm, so
// a crash leaks nothing). Buffers may be allocated and freed from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "kiln/base/status.h"

namespace kiln::comm {

// Where a byte range inside a SharedBuffer lives, as a peer needs it to map
// the buffer: the owner's fd, a serial unique within the owner process (fd
// numbers are reused after a free), the buffer's size and the offset.
struct SharedRegion {
  std::int32_t fd = -1;
  std::uint64_t serial = 0;
  std::uint64_t buffer_bytes = 0;
  std::uint64_t offset = 0;
  // User memory shared in place (shared_in_place.h) rather than a
  // SharedBuffer: its owner says which such serials still live, and peers
  // forget the mappings of the others.
  bool in_place = false;
};

class SharedBuffer {
 public:
  // A zero-filled buffer of `bytes` (> 0), its pages populated.
  static Result<SharedBuffer> allocate(std::size_t bytes);

  SharedBuffer() = default;
  SharedBuffer(SharedBuffer&& other) noexcept;
  SharedBuffer& operator=(SharedBuffer&& other) noexcept;
  SharedBuffer(const SharedBuffer&) = delete;
  SharedBuffer& operator=(const SharedBuffer&) = delete;
  ~SharedBuffer();

  void* data() const { return data_; }
  std::size_t size() const { return bytes_; }

 private:
  void release();
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  int fd_ = -1;
  std::uint64_t serial_ = 0;
};

// The region holding [p, p + bytes) if it lies within one live SharedBuffer
// of this process.
std::optional<SharedRegion> find_shared_region(const void* p, std::size_t bytes);

// A serial that no other SharedBuffer or in-place share of this process has
// had or will have. Thread-safe.
std::uint64_t new_shared_serial();

}  // namespace kiln::comm
