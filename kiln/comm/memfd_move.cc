#include "kiln/comm/memfd_move.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "kiln/base/fd.h"
#include "kiln/base/logging.h"

namespace kiln::comm {
namespace {

// Bytes moved at a time, either way.
constexpr std::size_t kMoveChunkBytes = std::size_t{8} << 20;

// All n bytes at offset `at` through `io` (pread or pwrite), retrying
// interrupted and short transfers; false (errno set) where one fails or
// reaches the end.
template <typename Byte, typename Io>
bool transfer_all_at(Io io, int fd, Byte* p, std::size_t n, off_t at) {
  while (n > 0) {
    const ssize_t k = io(fd, p, n, at);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
    at += k;
  }
  return true;
}

std::atomic<bool> g_warned_give_back{false};

// Undoes a move_into_memfd that moved [r.begin, moved_end) before it failed.
void give_back_moved(int maps_fd, MemfdRange r, std::uintptr_t moved_end) {
  r.end = moved_end;
  if (auto v = query_vma(maps_fd, r.begin)) {
    r.inode = v->inode;
    r.dev_major = v->dev_major;
    r.dev_minor = v->dev_minor;
    give_back(maps_fd, r);
  }
}

}  // namespace

Result<MemfdRange> move_into_memfd(int maps_fd, std::uintptr_t begin, std::uintptr_t end) {
  const std::size_t bytes = end - begin;
  Fd fd(memfd_create("kiln-in-place", MFD_CLOEXEC));
  if (!fd.valid()) return errno_status("share memory in place: memfd_create", errno);
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return errno_status(fmt::format("share memory in place: size a memfd to {} bytes", bytes),
                        errno);
  }
  MemfdRange r{begin, end, fd.get(), 0, 0, 0};
  for (std::size_t off = 0; off < bytes; off += kMoveChunkBytes) {
    const std::size_t n = std::min(kMoveChunkBytes, bytes - off);
    const auto at = static_cast<off_t>(off);
    void* chunk = nullptr;
    if (transfer_all_at(pwrite, fd.get(), reinterpret_cast<const char*>(begin + off), n, at)) {
      chunk = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), at);
    }
    if (chunk == nullptr || chunk == MAP_FAILED ||
        mremap(chunk, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(begin + off)) ==
            MAP_FAILED) {
      const int err = errno;
      if (chunk != nullptr && chunk != MAP_FAILED) munmap(chunk, n);
      if (off > 0) give_back_moved(maps_fd, r, begin + off);
      return errno_status(
          fmt::format("share memory in place: move {:#x}+{} into a memfd", begin + off, n), err);
    }
  }
  auto v = query_vma(maps_fd, begin);
  if (!v || v->start != begin || v->end != end) {
    // Not one mapping: a check of the range would fail at once.
    give_back_moved(maps_fd, r, end);
    return internal_error(fmt::format(
        "share memory in place: the chunks moved over {:#x}+{} did not merge into one mapping",
        begin, bytes));
  }
  r.inode = v->inode;
  r.dev_major = v->dev_major;
  r.dev_minor = v->dev_minor;
  fd.release();
  return r;
}

bool give_back(int maps_fd, const MemfdRange& r) {
  bool all_moved = true;
  for (std::uintptr_t at = r.begin; at < r.end;) {
    auto v = query_vma(maps_fd, at, VmaQuery::kCoveringOrNext);
    if (!v || v->start >= r.end || v->end <= at) break;
    const std::uintptr_t lo = std::max(at, v->start),
                         hi = std::min({r.end, v->end, lo + kMoveChunkBytes});
    at = hi;
    if (!r.maps(*v)) continue;
    const std::size_t n = hi - lo;
    const int prot = (v->flags & kVmaReadable ? PROT_READ : 0) |
                     (v->flags & kVmaWritable ? PROT_WRITE : 0) |
                     (v->flags & kVmaExecutable ? PROT_EXEC : 0);
    void* fresh = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const bool moved =
        fresh != MAP_FAILED &&
        transfer_all_at(pread, r.fd, static_cast<char*>(fresh), n,
                        static_cast<off_t>(v->offset + (lo - v->start))) &&
        mprotect(fresh, n, prot) == 0 &&
        mremap(fresh, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(lo)) !=
            MAP_FAILED;
    if (!moved) {
      if (fresh != MAP_FAILED) munmap(fresh, n);
      if (!g_warned_give_back.exchange(true)) {
        log()->warn("memory shared in place at {:#x}+{} could not become private again: {}", lo,
                    n, std::strerror(errno));
      }
      all_moved = false;
    }
  }
  return all_moved;
}

}  // namespace kiln::comm
