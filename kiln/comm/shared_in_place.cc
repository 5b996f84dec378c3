// Note [Sharing user memory in place]
// The direct allreduce (Note [Direct allreduce on shared buffers]) reaches
// 1.2 of the memory limit on SharedBuffers; plain memory goes through the
// FIFOs at ~0.5 (docs/perf.md, issue 24). UCX and NCCL close that gap by
// registering user buffers on first use and caching the registration; here
// registering means making the pages shared: copy the pages inside the
// buffer (but for the two holding its first and last byte) into a memfd and move a shared mapping
// of it over the same addresses (mremap), so the buffer keeps its address and contents and peers
// map the memfd through /proc/<pid>/fd as a SharedBuffer's. Later collectives on the same memory
// find the range in the cache and skip the copy. The pages at either end stay private; the direct
// allreduce runs the usual algorithm on them.
//
// Safety, case by case:
// - The user frees the memory (glibc unmaps large chunks): every call first
//   checks each cached range is still this memfd's mapping, exactly, with
//   PROCMAP_QUERY (one ioctl each); one that is not is dropped (fd closed),
//   and peers drop their mappings of it at the next direct allreduce (the
//   offer carries live_in_place_serials()). Until then the memfd's pages
//   stay allocated: at most kMaxInPlaceShares ranges.
// - mremap/realloc of the allocation: the pages holding the buffer's first
//   and last byte stay private, and so do its mapping's first and last
//   pages, so a remap of the whole allocation spans several mappings and
//   fails with EFAULT (glibc's realloc then copies) rather than growing a
//   memfd mapping past the file's end (SIGBUS).
// - fork(): MADV_DONTFORK on the range, so a child that touches it faults
//   instead of silently sharing writes with its parent. fork()+exec() and
//   children that leave the buffer alone are unaffected.
// - The allocator reuses the memory without unmapping it: shared pages do
//   not read back as zero after MADV_DONTNEED, and MADV_FREE fails on them.
//   glibc clears what it reuses (calloc only trusts freshly mapped chunks),
//   but an allocator that trusts MADV_DONTNEED to zero (jemalloc's purged
//   extents) would hand out stale bytes from a later calloc. This is why
//   the cache is opt-in (KILN_SHM_SHARE_IN_PLACE_BYTES), not the default.
// - Concurrent use: the copy runs inside a collective on the buffer, when
//   no one may write it; readers see the same bytes before and after the
//   move, which the kernel does under the mmap lock.
// Only private anonymous read-write mappings without a name are shared (not
// files, the stack, the brk heap), and only where the kernel answers
// PROCMAP_QUERY (Linux 6.11): without it nothing is shared.
#include "kiln/comm/shared_in_place.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "kiln/base/fd.h"
#include "kiln/base/logging.h"

namespace kiln::comm {
namespace {

// struct procmap_query of include/uapi/linux/fs.h (Linux 6.11): Debian 12's
// kernel headers predate it.
struct ProcmapQuery {
  std::uint64_t size, query_flags, query_addr;
  std::uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
  std::uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
  std::uint64_t vma_name_addr, build_id_addr;
};
static_assert(sizeof(ProcmapQuery) == 104, "the kernel's struct procmap_query");
constexpr unsigned long kProcmapQuery = _IOWR('f', 17, ProcmapQuery);
constexpr std::uint64_t kVmaReadable = 0x1, kVmaWritable = 0x2, kVmaExecutable = 0x4,
                        kVmaShared = 0x8;

struct Vma {
  std::uintptr_t start, end;
  std::uint64_t flags, offset, inode;
  std::uint32_t dev_major, dev_minor;
  bool named;
};

struct Entry {
  std::uintptr_t begin, end;
  int fd;
  std::uint64_t serial;
  std::uint64_t inode;
  std::uint32_t dev_major, dev_minor;
};

class Cache {
 public:
  std::optional<SharedSpan> share(std::uintptr_t begin, std::uintptr_t end) {
    std::lock_guard lock(mu_);
    if (!sweep()) return std::nullopt;
    for (const Entry& e : entries_) {
      if (e.begin <= begin && begin < e.end) return span(e, begin, std::min(end, e.end));
    }
    if (entries_.size() >= kMaxInPlaceShares) return std::nullopt;
    auto v = vma_at(begin);
    if (!v || v->named || v->inode != 0 || v->flags & (kVmaShared | kVmaExecutable) ||
        (v->flags & (kVmaReadable | kVmaWritable)) != (kVmaReadable | kVmaWritable)) {
      return std::nullopt;
    }
    // Strictly inside the mapping (the note's mremap case).
    const std::uintptr_t page = page_bytes();
    begin = std::max(begin, v->start + page);
    end = std::min(end, v->end - page);
    if (end <= begin) return std::nullopt;
    auto e = make_shared(begin, end);
    if (!e.is_ok()) {
      if (!warned_) {
        warned_ = true;
        log()->warn(
            "sharing user memory in place failed, running the usual allreduce (said "
            "once): {}",
            e.status().to_string());
      }
      return std::nullopt;
    }
    entries_.push_back(*e);
    return span(*e, begin, end);
  }

  std::vector<std::uint64_t> live() {
    std::lock_guard lock(mu_);
    std::vector<std::uint64_t> serials;
    for (const Entry& e : entries_) serials.push_back(e.serial);
    return serials;
  }

 private:
  static std::uintptr_t page_bytes() { return static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE)); }

  static SharedSpan span(const Entry& e, std::uintptr_t begin, std::uintptr_t end) {
    SharedRegion r{e.fd, e.serial, e.end - e.begin, begin - e.begin};
    r.in_place = true;
    return SharedSpan{reinterpret_cast<char*>(begin), reinterpret_cast<char*>(end), r};
  }

  // Drops the entries whose memory the user gave back; false when the
  // kernel cannot be asked. Opens /proc/self/maps anew in a forked child,
  // whose entries' ranges it did not inherit (MADV_DONTFORK).
  bool sweep() {
    if (maps_pid_ != getpid()) {
      maps_.reset(open("/proc/self/maps", O_RDONLY | O_CLOEXEC));
      maps_pid_ = getpid();
      for (const Entry& e : entries_) ::close(e.fd);
      entries_.clear();
      ProcmapQuery probe{};
      probe.size = sizeof(probe);
      probe.query_addr = reinterpret_cast<std::uintptr_t>(&probe);
      queryable_ = maps_.valid() && ioctl(maps_.get(), kProcmapQuery, &probe) == 0;
    }
    if (!queryable_) return false;
    std::erase_if(entries_, [this](const Entry& e) {
      auto v = vma_at(e.begin);
      const bool intact = v && v->start == e.begin && v->end == e.end && v->offset == 0 &&
                          v->inode == e.inode && v->dev_major == e.dev_major &&
                          v->dev_minor == e.dev_minor && (v->flags & kVmaShared) != 0;
      if (!intact) ::close(e.fd);
      return !intact;
    });
    return true;
  }

  std::optional<Vma> vma_at(std::uintptr_t addr) const {
    char name[256];
    ProcmapQuery q{};
    q.size = sizeof(q);
    q.query_addr = addr;
    q.vma_name_addr = reinterpret_cast<std::uintptr_t>(name);
    q.vma_name_size = sizeof(name);
    const int rc = ioctl(maps_.get(), kProcmapQuery, &q);
    // ENAMETOOLONG: a name longer than the buffer, so a name.
    if (rc != 0 && errno == ENAMETOOLONG) return Vma{0, 0, 0, 0, 0, 0, 0, true};
    if (rc != 0) return std::nullopt;
    return Vma{q.vma_start, q.vma_end,   q.vma_flags, q.vma_offset,
               q.inode,     q.dev_major, q.dev_minor, q.vma_name_size != 0};
  }

  // Copies [begin, end) into a new memfd and moves its shared mapping over
  // the same addresses.
  Result<Entry> make_shared(std::uintptr_t begin, std::uintptr_t end) {
    const std::size_t bytes = end - begin;
    Fd fd(memfd_create("kiln-in-place", MFD_CLOEXEC));
    if (!fd.valid()) return errno_status("share memory in place: memfd_create", errno);
    if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
      return errno_status(fmt::format("share memory in place: size a memfd to {} bytes", bytes),
                          errno);
    }
    void* copy =
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    if (copy == MAP_FAILED) {
      return errno_status(fmt::format("share memory in place: map {} bytes", bytes), errno);
    }
    std::memcpy(copy, reinterpret_cast<const void*>(begin), bytes);
    // The kernel checks what could fail (the map count) before it unmaps the
    // old pages, and moves the page tables with the mapping.
    void* moved =
        mremap(copy, bytes, bytes, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(begin));
    if (moved == MAP_FAILED) {
      const int err = errno;
      munmap(copy, bytes);
      return errno_status(
          fmt::format("share memory in place: move a shared mapping over {:#x}+{}", begin, bytes),
          err);
    }
    if (madvise(moved, bytes, MADV_DONTFORK) != 0) {
      // Still correct memory, only fork() would share it: keep it, say so.
      log()->warn("share memory in place: MADV_DONTFORK on {:#x}+{}: {}", begin, bytes,
                  std::strerror(errno));
    }
    auto v = vma_at(begin);
    if (!v)
      return internal_error(
          fmt::format("share memory in place: no mapping at {:#x} after "
                      "moving one there",
                      begin));
    return Entry{begin,    end,          fd.release(), new_shared_serial(),
                 v->inode, v->dev_major, v->dev_minor};
  }

  std::mutex mu_;
  std::vector<Entry> entries_;  // guarded by mu_, as all below
  Fd maps_;
  pid_t maps_pid_ = 0;
  bool queryable_ = false;
  bool warned_ = false;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: collectives may run during exit
  return *c;
}

}  // namespace

std::optional<SharedSpan> share_in_place(const void* p, std::size_t bytes) {
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  // Not the pages holding the first and last byte (the note's mremap case).
  const std::uintptr_t begin = (a / page + 1) * page,
                       end = ((a + bytes + page - 1) / page - 1) * page;
  if (bytes == 0 || end <= begin) return std::nullopt;
  return cache().share(begin, end);
}

std::vector<std::uint64_t> live_in_place_serials() { return cache().live(); }

}  // namespace kiln::comm
