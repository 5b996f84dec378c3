// Note [Sharing user memory in place]
// The direct allreduce (Note [Direct allreduce on shared buffers]) reaches
// 1.2 of the memory limit on SharedBuffers; plain memory goes through the
// FIFOs at ~0.5 (docs/perf.md, issue 24). UCX and NCCL close that gap by
// registering user buffers on first use and caching the registration; here
// registering means making the pages shared: move the pages inside the
// buffer (but for the two holding its first and last byte) into a memfd, a
// chunk at a time (write the chunk into the file, move a shared mapping of
// it over the same addresses with mremap), so the buffer keeps its address
// and contents and peers map the memfd through /proc/<pid>/fd as a
// SharedBuffer's. Later collectives on the same memory find the range in
// the cache and skip the copy. The pages at either end stay private; the
// direct allreduce runs the usual algorithm on them.
//
// The copy is paid back by later allreduces on the buffer (each about half
// the ring's time): a process that frees kMaxUnpaidInARow shared buffers in
// a row before kUsesThatPayBack uses each (a fresh buffer per allreduce)
// stops sharing new ones, and says so.
//
// First use: writing into the file (pwrite) allocates each page without
// zeroing it, where a populated mapping zeroes every page first, and a
// chunk's move frees the user's private pages that the next chunk's file
// pages can reuse, where this VM's fresh memory is slow (docs/perf.md,
// issue 24, session 11).
//
// Safety, case by case; the memory must keep the meaning private anonymous
// memory has, for the user and for the allocator:
// - The allocator discards pages (MADV_DONTNEED, MADV_FREE), then trusts
//   them to read zero (jemalloc's calloc of a purged extent): Kiln's madvise
//   (Note [Kiln's madvise]) punches those pages out of the memfd instead
//   (MADV_REMOVE), so they read zero and their memory is freed, and the
//   range stays shared. Huge-page hints pass through to the shared mapping.
//   Other advice that could tell the two apart (fork inheritance, KSM, ...)
//   first gives the range back as private memory with its bytes (give_back,
//   Note [Giving memory back]). Without that madvise in place
//   (sharing_in_place_is_safe), nothing is shared.
// - The user frees the memory (glibc unmaps large chunks), or maps, remaps
//   or protects over part of it: every call first checks each cached range
//   is still this memfd's mapping, exactly, with PROCMAP_QUERY (one ioctl
//   each); what is left of one that is not goes back to private memory and
//   the range is dropped (fd closed), and peers drop their mappings of it at
//   the next direct allreduce (the offer carries live_in_place_serials()).
//   Until then the memfd's pages stay allocated: at most kMaxInPlaceShares
//   ranges.
// - mremap/realloc of the allocation: the pages holding the buffer's first
//   and last byte stay private, and so do its mapping's first and last
//   pages, so a remap of the whole allocation spans several mappings and
//   fails with EFAULT (glibc's realloc then copies) rather than growing a
//   memfd mapping past the file's end (SIGBUS).
// - fork(): MADV_DONTFORK on the range, and in the child (pthread_atfork)
//   private memory with the bytes the range held at the fork (Note [Forking
//   with memory shared in place]): writes in neither process reach the
//   other. A child made by a raw clone (no atfork handlers) faults on the
//   range instead of sharing writes with its parent.
// - Concurrent use: the copy runs inside a collective on the buffer, when
//   no one may write it; readers see the same bytes before and after the
//   move, which the kernel does under the mmap lock.
// Only private anonymous read-write mappings without a name are shared (not
// files, the stack, the brk heap), and only where the kernel answers
// PROCMAP_QUERY (Linux 6.11): without it nothing is shared.
#include "kiln/comm/shared_in_place.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include "kiln/base/fd.h"
#include "kiln/base/logging.h"
#include "kiln/comm/madvise_hook.h"
#include "kiln/comm/memfd_move.h"
#include "kiln/comm/procmap.h"

namespace kiln::comm {
namespace {

std::uintptr_t page_bytes() { return static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE)); }

// Kiln's own madvise calls go to the kernel, not through the hook.
int kernel_madvise(std::uintptr_t p, std::size_t n, int advice) {
  return static_cast<int>(syscall(SYS_madvise, p, n, advice));
}

// Advice that cannot tell shared memory from private: passed on as it is.
// The huge-page hints among them on purpose: allocators give them on memory
// they hand out while its neighbours are in use (PyTorch's CPU allocator
// asks for huge pages on every large block), and giving a range back as
// private memory copies it, which would lose a neighbour's write landing
// between the copy and the remap (Note [Giving memory back]). On shared
// memory the hint may go unheeded (shmem's own huge-page setting decides):
// a cost in speed only.
bool harmless(int advice) {
  switch (advice) {
    case MADV_HUGEPAGE:
    case MADV_NOHUGEPAGE:
    case MADV_NORMAL:
    case MADV_RANDOM:
    case MADV_SEQUENTIAL:
    case MADV_WILLNEED:
    case MADV_DONTDUMP:
    case MADV_DODUMP:
    case MADV_COLD:
    case MADV_PAGEOUT:
    case MADV_POPULATE_READ:
    case MADV_POPULATE_WRITE: return true;
    default: return false;
  }
}

// Advice after which private pages may read zero: on shared memory in place,
// the pages are punched out of the memfd, so they do.
bool discards(int advice) {
  constexpr int kDontneedLocked = 24;  // MADV_DONTNEED_LOCKED, Linux 5.18
  return advice == MADV_DONTNEED || advice == MADV_FREE || advice == kDontneedLocked;
}

struct Entry : MemfdRange {
  std::uint64_t serial;
  std::uint64_t uses;  // share() calls that found it, its first included
  char* snapshot;      // its bytes across a fork (Note [Forking with memory shared in place])
};

// Sharing a buffer costs a copy, which its later allreduces pay back (about
// half the ring's time each): a process whose buffers are freed before
// kUsesThatPayBack uses, kMaxUnpaidInARow times in a row, stops sharing new
// ones (fresh buffers for every allreduce).
constexpr std::uint64_t kUsesThatPayBack = 4;
constexpr std::size_t kMaxUnpaidInARow = 8;

// Nothing shared: madvise goes straight to the kernel.
std::atomic<std::size_t> g_entry_count{0};

// Every member function but the fork handlers takes mu_, which is recursive:
// the allocator may call madvise (so madvise_shared_in_place) from inside a
// malloc that runs under it. So nothing iterates entries_ across a call that
// may allocate, and entries_ is a fixed array.
class Cache {
 public:
  Cache() { pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child); }

  std::optional<SharedSpan> share(std::uintptr_t begin, std::uintptr_t end) {
    if (!sharing_in_place_is_safe()) return std::nullopt;
    std::string failure;
    std::optional<SharedSpan> found;
    {
      std::lock_guard lock(mu_);
      if (!sweep()) return std::nullopt;
      for (std::size_t i = 0; i < count_; ++i) {
        Entry& e = entries_[i];
        if (e.begin <= begin && begin < e.end) {
          e.uses += 1;
          return span(e, begin, std::min(end, e.end));
        }
      }
      if (count_ >= kMaxInPlaceShares || unpaid_in_a_row_ >= kMaxUnpaidInARow) {
        if (count_ < kMaxInPlaceShares && !warned_unpaid_) {
          warned_unpaid_ = true;
          failure = fmt::format(
              "the last {} buffers shared in place were freed before {} uses, so sharing stops "
              "for new ones (each costs a copy)",
              kMaxUnpaidInARow, kUsesThatPayBack);
        }
        found = std::nullopt;
      } else {
        found = share_new(begin, end, failure);
      }
    }
    if (!failure.empty()) {
      log()->warn("sharing user memory in place: {}; running the usual allreduce (said once)",
                  failure);
    }
    return found;
  }

  std::vector<std::uint64_t> live() {
    std::array<std::uint64_t, kMaxInPlaceShares> serials{};
    std::size_t n = 0;
    {
      std::lock_guard lock(mu_);
      for (; n < count_; ++n) serials[n] = entries_[n].serial;
    }
    return {serials.begin(), serials.begin() + static_cast<std::ptrdiff_t>(n)};
  }

  InPlaceShareStats stats() {
    std::lock_guard lock(mu_);
    return stats_;
  }

  void reset_payback() {
    std::lock_guard lock(mu_);
    unpaid_in_a_row_ = 0;
  }

  std::optional<int> madvise(std::uintptr_t begin, std::uintptr_t end, int advice) {
    std::lock_guard lock(mu_);
    // A child forked without the atfork handlers (a raw clone) has none of
    // the ranges (MADV_DONTFORK), and maps_ still reads its parent's map.
    if (maps_pid_ != getpid()) sweep();
    bool overlaps = false;
    for (std::size_t i = 0; i < count_; ++i) {
      overlaps = overlaps || (entries_[i].begin < end && begin < entries_[i].end);
    }
    if (!overlaps || harmless(advice)) return std::nullopt;
    if (!discards(advice)) {
      // Private memory again, then the kernel's answer as for any.
      for (std::size_t i = 0; i < count_;) {
        const bool overlapping = entries_[i].begin < end && begin < entries_[i].end;
        if (!overlapping || !drop(i)) ++i;
      }
      return std::nullopt;
    }
    // Piece by piece: the parts shared in place punched out of their memfd
    // (they read zero, their memory is freed, MADV_FREE included: zero is
    // one of its outcomes), the rest advised as asked. A range no longer
    // whole (the user unmapped or mapped over it since the last sweep) is
    // dropped first: its addresses may now hold anyone's memory.
    int result = 0, err = 0;
    auto advise = [&](std::uintptr_t lo, std::uintptr_t hi, int a) {
      if (lo >= hi || kernel_madvise(lo, hi - lo, a) == 0) return true;
      if (result == 0) {
        result = -1;
        err = errno;
      }
      return false;
    };
    std::uintptr_t at = begin;
    while (at < end) {
      std::size_t next = count_;
      for (std::size_t i = 0; i < count_; ++i) {
        const Entry& e = entries_[i];
        if (e.end > at && e.begin < end && (next == count_ || e.begin < entries_[next].begin)) {
          next = i;
        }
      }
      if (next == count_) {
        advise(at, end, advice);
        break;
      }
      const Entry& e = entries_[next];
      const std::uintptr_t lo = std::max(at, e.begin), hi = std::min(end, e.end);
      advise(at, lo, advice);
      const bool punched = intact(e) && kernel_madvise(lo, hi - lo, MADV_REMOVE) == 0;
      if (!punched) {
        drop(next);
        advise(lo, hi, advice);
      }
      at = hi;
    }
    if (result != 0) errno = err;
    return result;
  }

 private:
  // Past the lookup in share(): [begin, end) shared anew, if it may be.
  std::optional<SharedSpan> share_new(std::uintptr_t begin, std::uintptr_t end,
                                      std::string& failure) {
    auto v = query_vma(maps_.get(), begin);
    if (!v || v->named || v->inode != 0 || v->flags & (kVmaShared | kVmaExecutable) ||
        !v->readable_and_writable()) {
      return std::nullopt;
    }
    // Strictly inside the mapping (the note's mremap case).
    const std::uintptr_t page = page_bytes();
    begin = std::max(begin, v->start + page);
    end = std::min(end, v->end - page);
    if (end <= begin) return std::nullopt;
    const auto t0 = std::chrono::steady_clock::now();
    auto moved = move_into_memfd(maps_.get(), begin, end);
    if (!moved.is_ok()) {
      if (!warned_) {
        warned_ = true;
        failure = moved.status().to_string();
      }
      return std::nullopt;
    }
    if (kernel_madvise(begin, end - begin, MADV_DONTFORK) != 0) {
      // Still correct memory, only fork() would share it: keep it, say so.
      log()->warn("share memory in place: MADV_DONTFORK on {:#x}+{}: {}", begin, end - begin,
                  std::strerror(errno));
    }
    const Entry e{*moved, new_shared_serial(), 1, nullptr};
    entries_[count_++] = e;
    g_entry_count.store(count_, std::memory_order_release);
    stats_.shares += 1;
    stats_.bytes += end - begin;
    stats_.seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return span(e, begin, end);
  }


  static void before_fork();
  static void after_fork_in_parent();
  static void after_fork_in_child();

  static SharedSpan span(const Entry& e, std::uintptr_t begin, std::uintptr_t end) {
    SharedRegion r{e.fd, e.serial, e.end - e.begin, begin - e.begin};
    r.in_place = true;
    return SharedSpan{reinterpret_cast<char*>(begin), reinterpret_cast<char*>(end), r};
  }

  // Drops the entries whose memory the user gave back, unmapped or mapped
  // over (what is left of them becomes private memory again); false when
  // the kernel cannot be asked. Opens /proc/self/maps anew in a process
  // forked without the atfork handlers, whose entries' ranges it did not
  // inherit (MADV_DONTFORK).
  bool sweep() {
    if (maps_pid_ != getpid()) {
      maps_.reset(open("/proc/self/maps", O_RDONLY | O_CLOEXEC));
      maps_pid_ = getpid();
      for (std::size_t i = 0; i < count_; ++i) ::close(entries_[i].fd);
      count_ = 0;
      g_entry_count.store(0, std::memory_order_release);
      queryable_ = answers_procmap_query(maps_.get());
    }
    if (!queryable_) return false;
    for (std::size_t i = 0; i < count_;) {
      if (intact(entries_[i]) || !drop(i)) ++i;
    }
    return true;
  }

  // Whether e's range is still exactly one read-write mapping of its memfd.
  bool intact(const Entry& e) const {
    auto v = query_vma(maps_.get(), e.begin);
    return v && v->start == e.begin && v->end == e.end && v->offset == 0 && e.maps(*v) &&
           v->readable_and_writable();
  }

  // Entry i's memory, where it is still its memfd's mapping, becomes private
  // memory with the same bytes, and the entry goes (true). Its file's pages
  // are freed at once, not when each peer unmaps them at the next direct
  // allreduce: no one may read them now. Where some of it could not be given
  // back (out of memory), the entry stays, so its discards still read zero,
  // and the next sweep tries again (false).
  bool drop(std::size_t i) {
    const Entry e = entries_[i];
    if (!give_back(maps_.get(), e)) return false;
    unpaid_in_a_row_ = e.uses < kUsesThatPayBack ? unpaid_in_a_row_ + 1 : 0;
    entries_[i] = entries_[--count_];
    g_entry_count.store(count_, std::memory_order_release);
    fallocate(e.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
              static_cast<off_t>(e.end - e.begin));
    ::close(e.fd);
    stats_.returned += 1;
    return true;
  }


  std::recursive_mutex mu_;
  std::array<Entry, kMaxInPlaceShares> entries_{};  // [0, count_) guarded by mu_, as all below
  std::size_t count_ = 0;
  Fd maps_;
  pid_t maps_pid_ = 0;
  bool queryable_ = false;
  bool warned_ = false;
  bool warned_unpaid_ = false;
  std::size_t unpaid_in_a_row_ = 0;  // entries dropped with fewer than kUsesThatPayBack uses
  InPlaceShareStats stats_;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: collectives may run during exit
  return *c;
}

// Note [Forking with memory shared in place]: the child must get the bytes
// the range held at the fork, as with private memory, and its own copy of
// them. The child inherits no mapping of the range (MADV_DONTFORK), and
// reading the memfd from the child would race with the parent, which
// returns from fork() at once and may write the range (the forking thread
// included). So the parent, just before the fork, copies each range into
// private memory (a snapshot, which the child inherits copy-on-write) and
// drops its own after; the child moves its inherited snapshot over the
// range. The parent's ranges are checked first, so each entry is whole;
// nothing changes them meanwhile (mu_ is held across the fork). Cost: one
// copy of what is shared per fork.
void Cache::before_fork() {
  Cache& c = cache();
  c.mu_.lock();
  c.sweep();
  for (std::size_t i = 0; i < c.count_; ++i) {
    Entry& e = c.entries_[i];
    const std::size_t n = e.end - e.begin;
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    e.snapshot = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
    // Without one the child has a hole there, and faults rather than read
    // other bytes.
    if (e.snapshot != nullptr) std::memcpy(e.snapshot, reinterpret_cast<const void*>(e.begin), n);
  }
}

void Cache::after_fork_in_parent() {
  Cache& c = cache();
  for (std::size_t i = 0; i < c.count_; ++i) {
    Entry& e = c.entries_[i];
    if (e.snapshot != nullptr) munmap(e.snapshot, e.end - e.begin);
    e.snapshot = nullptr;
  }
  c.mu_.unlock();
}

// The entries go (the child shares nothing with the parent's peers), the
// mutex is made anew (the parent's thread held it; this one has another id).
void Cache::after_fork_in_child() {
  Cache& c = cache();
  for (std::size_t i = 0; i < c.count_; ++i) {
    const Entry& e = c.entries_[i];
    const std::size_t n = e.end - e.begin;
    if (e.snapshot != nullptr &&
        mremap(e.snapshot, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(e.begin)) ==
            MAP_FAILED) {
      munmap(e.snapshot, n);
    }
    ::close(e.fd);
  }
  c.count_ = 0;
  c.unpaid_in_a_row_ = 0;
  g_entry_count.store(0, std::memory_order_release);
  c.maps_.reset(open("/proc/self/maps", O_RDONLY | O_CLOEXEC));
  c.maps_pid_ = getpid();
  new (&c.mu_) std::recursive_mutex;
}

bool kernel_answers_procmap_query() {
  static const bool answers = [] {
    Fd maps(open("/proc/self/maps", O_RDONLY | O_CLOEXEC));
    return answers_procmap_query(maps.get());
  }();
  return answers;
}

}  // namespace

bool sharing_in_place_is_safe() { return madvise_hook_is_active() && kernel_answers_procmap_query(); }

std::optional<SharedSpan> share_in_place(const void* p, std::size_t bytes) {
  const auto page = page_bytes();
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  // Not the pages holding the first and last byte (the note's mremap case).
  const std::uintptr_t begin = (a / page + 1) * page,
                       end = ((a + bytes + page - 1) / page - 1) * page;
  if (bytes == 0 || end <= begin) return std::nullopt;
  return cache().share(begin, end);
}

std::vector<std::uint64_t> live_in_place_serials() { return cache().live(); }

InPlaceShareStats in_place_share_stats() { return cache().stats(); }

void reset_in_place_payback_for_testing() { cache().reset_payback(); }

std::optional<int> madvise_shared_in_place(void* addr, std::size_t len, int advice) {
  if (g_entry_count.load(std::memory_order_acquire) == 0 || len == 0) return std::nullopt;
  const auto begin = reinterpret_cast<std::uintptr_t>(addr);
  const auto page = page_bytes();
  // The kernel's own rounding; a misaligned start is its EINVAL to give.
  if (begin % page != 0) return std::nullopt;
  const std::uintptr_t end = begin + (len + page - 1) / page * page;
  return cache().madvise(begin, end, advice);
}

}  // namespace kiln::comm
