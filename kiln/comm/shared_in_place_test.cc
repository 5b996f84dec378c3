#include "kiln/comm/shared_in_place.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "kiln/base/fd.h"
#include "kiln/comm/madvise_hook.h"

namespace kiln::comm {
namespace {

const std::size_t kPage = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));

// PROCMAP_QUERY came with Linux 6.11; without it nothing is shared.
bool kernel_can_tell() {
  utsname u{};
  int major = 0, minor = 0;
  return uname(&u) == 0 && std::sscanf(u.release, "%d.%d", &major, &minor) == 2 &&
         (major > 6 || (major == 6 && minor >= 11));
}

// `pages` pages of private anonymous memory, each byte set from its index.
struct Pages {
  explicit Pages(std::size_t pages) : bytes(pages * kPage) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
    for (std::size_t i = 0; base != nullptr && i < bytes; ++i) base[i] = pattern(i);
  }
  ~Pages() {
    if (base != nullptr) munmap(base, bytes);
  }
  static char pattern(std::size_t i) { return static_cast<char>(i * 7 + i / 4096); }
  bool intact() const {
    for (std::size_t i = 0; i < bytes; ++i) {
      if (base[i] != pattern(i)) return false;
    }
    return true;
  }
  std::size_t bytes;
  char* base;
};

bool is_live(std::uint64_t serial) {
  auto live = live_in_place_serials();
  return std::find(live.begin(), live.end(), serial) != live.end();
}

class SharedInPlace : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kernel_can_tell()) GTEST_SKIP() << "needs PROCMAP_QUERY (Linux 6.11)";
    // This binary exports Kiln's madvise (Note [Kiln's madvise]).
    ASSERT_TRUE(sharing_in_place_is_safe());
    reset_in_place_payback_for_testing();
  }
};

TEST_F(SharedInPlace, SharesTheWholePagesStrictlyInsideAndKeepsEveryByte) {
  Pages m(64);
  ASSERT_NE(m.base, nullptr);
  auto s = share_in_place(m.base + 100, m.bytes - 200);
  ASSERT_TRUE(s.has_value());
  // Not the pages holding the first and last byte (the note's mremap case).
  EXPECT_EQ(s->begin, m.base + kPage);
  EXPECT_EQ(s->end, m.base + 63 * kPage);
  EXPECT_EQ(s->region.offset, 0u);
  EXPECT_EQ(s->region.buffer_bytes, 62 * kPage);
  EXPECT_TRUE(s->region.in_place);
  EXPECT_TRUE(m.intact());
  EXPECT_TRUE(is_live(s->region.serial));

  // Shared: what a peer writes through the memfd, the buffer reads, and back.
  Fd fd(open(fmt::format("/proc/self/fd/{}", s->region.fd).c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  void* p = mmap(nullptr, s->region.buffer_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* peer = static_cast<char*>(p);
  peer[5 * kPage + 3] = 42;
  EXPECT_EQ(m.base[6 * kPage + 3], 42);
  m.base[kPage] = 17;
  EXPECT_EQ(peer[0], 17);
  munmap(p, s->region.buffer_bytes);

  // Found again, for the same range and for any inside it, without a copy.
  auto again = share_in_place(m.base + 100, m.bytes - 200);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->region.serial, s->region.serial);
  auto inner = share_in_place(m.base + 10 * kPage - 8, 5 * kPage);
  ASSERT_TRUE(inner.has_value());
  EXPECT_EQ(inner->region.serial, s->region.serial);
  EXPECT_EQ(inner->begin, m.base + 10 * kPage);
  EXPECT_EQ(inner->end, m.base + 14 * kPage);
  EXPECT_EQ(inner->region.offset, 9 * kPage);
}

TEST_F(SharedInPlace, MemoryTheUserFreesIsForgottenAndNewMemoryThereIsSharedAnew) {
  auto* m = new Pages(16);
  ASSERT_NE(m->base, nullptr);
  char* at = m->base;
  auto first = share_in_place(at, m->bytes);
  ASSERT_TRUE(first.has_value());
  delete m;  // unmapped
  void* p = mmap(at, 16 * kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  ASSERT_EQ(p, at) << "the address was taken meanwhile";
  std::memset(p, 9, 16 * kPage);
  auto second = share_in_place(p, 16 * kPage);
  ASSERT_TRUE(second.has_value());
  EXPECT_NE(second->region.serial, first->region.serial);
  EXPECT_FALSE(is_live(first->region.serial));
  EXPECT_TRUE(is_live(second->region.serial));
  EXPECT_EQ(static_cast<char*>(p)[5 * kPage], 9);
  munmap(p, 16 * kPage);
  EXPECT_FALSE(share_in_place(p, 16 * kPage).has_value());  // nothing mapped there now
  EXPECT_FALSE(is_live(second->region.serial));
}

TEST_F(SharedInPlace, OnlyPrivateAnonymousWritableMemoryIsShared) {
  // Too small: two pages, each holding an end.
  Pages small(2);
  EXPECT_FALSE(share_in_place(small.base, small.bytes).has_value());
  // Read-only.
  Pages ro(16);
  ASSERT_EQ(mprotect(ro.base, ro.bytes, PROT_READ), 0);
  EXPECT_FALSE(share_in_place(ro.base, ro.bytes).has_value());
  // A private file mapping.
  Fd file(memfd_create("kiln-test-file", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(file.get(), 16 * kPage), 0);
  void* f = mmap(nullptr, 16 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE, file.get(), 0);
  ASSERT_NE(f, MAP_FAILED);
  EXPECT_FALSE(share_in_place(f, 16 * kPage).has_value());
  munmap(f, 16 * kPage);
  // The stack.
  char frame[8 * 4096];
  std::memset(frame, 1, sizeof frame);
  EXPECT_FALSE(share_in_place(frame, sizeof frame).has_value());
  EXPECT_TRUE(ro.intact());
}

TEST_F(SharedInPlace, RemappingTheWholeAllocationFailsInsteadOfOutgrowingTheFile) {
  Pages m(16);
  ASSERT_TRUE(share_in_place(m.base, m.bytes).has_value());
  // As glibc's realloc of a large chunk does: one mremap of the whole.
  errno = 0;
  EXPECT_EQ(mremap(m.base, m.bytes, 2 * m.bytes, MREMAP_MAYMOVE), MAP_FAILED);
  EXPECT_EQ(errno, EFAULT);
  EXPECT_TRUE(m.intact());
}

TEST_F(SharedInPlace, AForkedChildHasItsOwnCopyOfTheSharedPages) {
  Pages m(16);
  auto s = share_in_place(m.base, m.bytes);
  ASSERT_TRUE(s.has_value());
  int parent_wrote[2];
  ASSERT_EQ(pipe(parent_wrote), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Every byte, the shared pages' included, as at the fork.
    if (!m.intact()) _exit(3);
    s->begin[0] = 99;  // must not reach the parent
    char c = 0;
    if (read(parent_wrote[0], &c, 1) != 1) _exit(4);
    // The parent's write after the fork must not reach this copy.
    _exit(s->begin[kPage] == Pages::pattern(2 * kPage) ? 0 : 5);
  }
  s->begin[kPage] = 55;
  ASSERT_EQ(write(parent_wrote[1], "w", 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  close(parent_wrote[0]);
  close(parent_wrote[1]);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  s->begin[kPage] = Pages::pattern(2 * kPage);
  EXPECT_TRUE(m.intact());  // the child's write is not here
  EXPECT_TRUE(is_live(s->region.serial));
}

// Note [Kiln's madvise]: the allocator's discards, through the process's
// madvise as an allocator calls it, leave zeros as on private memory, and
// the range stays shared.
TEST_F(SharedInPlace, DiscardedPagesReadZeroAndTheRestStaysShared) {
  Pages m(32);
  auto s = share_in_place(m.base, m.bytes);  // pages 1 to 30
  ASSERT_TRUE(s.has_value());
  ASSERT_EQ(madvise(m.base + 4 * kPage, 4 * kPage, MADV_DONTNEED), 0);
  // The kernel's MADV_FREE fails on shared mappings; this one does not.
  ASSERT_EQ(madvise(m.base + 10 * kPage, 2 * kPage, MADV_FREE), 0) << std::strerror(errno);
  // Across the private first page and the shared ones.
  ASSERT_EQ(madvise(m.base, 3 * kPage, MADV_DONTNEED), 0);
  auto discarded = [](std::size_t i) {
    const std::size_t page = i / kPage;
    return page < 3 || (page >= 4 && page < 8) || (page >= 10 && page < 12);
  };
  for (std::size_t i = 0; i < m.bytes; ++i) {
    const char want = discarded(i) ? 0 : Pages::pattern(i);
    ASSERT_EQ(m.base[i], want) << "byte " << i << " of page " << i / kPage;
  }
  ASSERT_TRUE(is_live(s->region.serial));
  Fd fd(open(fmt::format("/proc/self/fd/{}", s->region.fd).c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  void* p = mmap(nullptr, s->region.buffer_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  static_cast<char*>(p)[4 * kPage] = 7;  // page 5 of the buffer, discarded
  EXPECT_EQ(m.base[5 * kPage], 7);
  munmap(p, s->region.buffer_bytes);
}

// The kernel's own MADV_DONTNEED (not Kiln's) zeroes private pages only.
bool private_again(char* page) {
  page[0] = 1;
  return syscall(SYS_madvise, page, kPage, MADV_DONTNEED) == 0 && page[0] == 0;
}

TEST_F(SharedInPlace, OtherAdviceGivesTheRangeBackAsPrivateMemoryWithItsBytes) {
  Pages m(16);
  auto s = share_in_place(m.base, m.bytes);
  ASSERT_TRUE(s.has_value());
  ASSERT_EQ(madvise(m.base + 2 * kPage, kPage, MADV_DOFORK), 0);
  EXPECT_FALSE(is_live(s->region.serial));
  EXPECT_TRUE(m.intact());
  EXPECT_TRUE(private_again(m.base + 9 * kPage));
}

// Note [Giving memory back]: the huge-page hints allocators give on memory
// in use leave the range shared with its bytes (no copy that could lose a
// neighbour's write), answered as the kernel answers them on private memory.
TEST_F(SharedInPlace, HugePageHintsLeaveTheRangeSharedWithItsBytes) {
  Pages m(16), alone(4);
  auto s = share_in_place(m.base, m.bytes);
  ASSERT_TRUE(s.has_value());
  const auto returned = in_place_share_stats().returned;
  for (int advice : {MADV_HUGEPAGE, MADV_NOHUGEPAGE}) {
    const int on_private = static_cast<int>(syscall(SYS_madvise, alone.base, kPage, advice));
    EXPECT_EQ(madvise(m.base + 2 * kPage, 4 * kPage, advice), on_private) << "advice " << advice;
  }
  EXPECT_TRUE(is_live(s->region.serial));
  EXPECT_EQ(in_place_share_stats().returned, returned);
  EXPECT_TRUE(m.intact());
}

TEST_F(SharedInPlace, MadviseLeavesErrnoAloneWhenItSucceeds) {
  Pages m(16);
  auto s = share_in_place(m.base, m.bytes);
  ASSERT_TRUE(s.has_value());
  errno = 1234;
  ASSERT_EQ(madvise(m.base + 2 * kPage, kPage, MADV_DONTNEED), 0);
  EXPECT_EQ(errno, 1234);
}

// `body` run in a forked child, which must exit 0 within `seconds`; a hang
// is a failure, not a stuck test.
void expect_child_exits_cleanly_within(int seconds, const std::function<int()>& body) {
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(body());
  Fd pidfd(static_cast<int>(syscall(SYS_pidfd_open, child, 0)));
  ASSERT_TRUE(pidfd.valid()) << std::strerror(errno);
  pollfd p{pidfd.get(), POLLIN, 0};
  const int ready = poll(&p, 1, seconds * 1000);
  if (ready != 1) kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_EQ(ready, 1) << "the child did not finish within " << seconds << " s";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

// A file whose path is longer than PROCMAP_QUERY's name buffer, mapped over
// part of a shared range: the sweep still finds where that mapping ends, and
// what is left of the range goes back with its bytes (it looped forever).
TEST_F(SharedInPlace, WhatIsLeftOfARangeMappedOverByALongNamedFileBecomesPrivate) {
  char dir_template[] = "/tmp/kiln-in-place-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = std::string(dir_template) + "/" + std::string(200, 'd');
  const std::string file = dir + "/" + std::string(120, 'f');
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  {
    Fd fd(open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(ftruncate(fd.get(), static_cast<off_t>(2 * kPage)), 0);
  }
  expect_child_exits_cleanly_within(30, [&file] {
    Pages m(16);
    auto s = share_in_place(m.base, m.bytes);
    if (!s) return 2;
    Fd fd(open(file.c_str(), O_RDWR | O_CLOEXEC));
    if (mmap(m.base + 4 * kPage, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
             fd.get(), 0) != m.base + 4 * kPage) {
      return 3;
    }
    for (std::size_t i = 4 * kPage; i < 6 * kPage; ++i) m.base[i] = Pages::pattern(i);
    Pages ro(8);  // the next call looks, and shares nothing (read-only memory)
    if (mprotect(ro.base, ro.bytes, PROT_READ) != 0 || share_in_place(ro.base, ro.bytes)) return 4;
    if (is_live(s->region.serial)) return 5;
    if (!m.intact()) return 6;
    return private_again(m.base + 2 * kPage) && private_again(m.base + 9 * kPage) ? 0 : 7;
  });
  unlink(file.c_str());
  rmdir(dir.c_str());
  rmdir(dir_template);
}

TEST_F(SharedInPlace, WhatIsLeftOfARangeMappedOverInPartBecomesPrivateWithItsBytes) {
  Pages m(16);
  auto s = share_in_place(m.base, m.bytes);
  ASSERT_TRUE(s.has_value());
  void* p = mmap(m.base + 4 * kPage, 2 * kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ASSERT_EQ(p, m.base + 4 * kPage);
  for (std::size_t i = 4 * kPage; i < 6 * kPage; ++i) m.base[i] = Pages::pattern(i);
  // The next call looks (and shares nothing: read-only memory).
  Pages ro(8);
  ASSERT_EQ(mprotect(ro.base, ro.bytes, PROT_READ), 0);
  EXPECT_FALSE(share_in_place(ro.base, ro.bytes).has_value());
  EXPECT_FALSE(is_live(s->region.serial));
  EXPECT_TRUE(m.intact());
  EXPECT_TRUE(private_again(m.base + 2 * kPage));
  EXPECT_TRUE(private_again(m.base + 9 * kPage));
}

// A freed range's memory goes back to the system at the next look, though a
// peer still maps its memfd until the next direct allreduce tells it.
TEST_F(SharedInPlace, AFreedRangesPagesAreFreedWhileAPeerStillMapsThem) {
  Fd as_a_peer_holds_it;
  {
    Pages m(64);
    auto s = share_in_place(m.base, m.bytes);
    ASSERT_TRUE(s.has_value());
    as_a_peer_holds_it = Fd(open(fmt::format("/proc/self/fd/{}", s->region.fd).c_str(),
                                 O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(as_a_peer_holds_it.valid());
    struct stat st {};
    ASSERT_EQ(fstat(as_a_peer_holds_it.get(), &st), 0);
    ASSERT_GT(st.st_blocks, 0);
  }
  Pages ro(8);  // the next call looks (and shares nothing: read-only memory)
  ASSERT_EQ(mprotect(ro.base, ro.bytes, PROT_READ), 0);
  EXPECT_FALSE(share_in_place(ro.base, ro.bytes).has_value());
  struct stat st {};
  ASSERT_EQ(fstat(as_a_peer_holds_it.get(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0);
}

TEST_F(SharedInPlace, AProcessThatFreesItsBuffersBeforeTheyPayBackStopsSharingNewOnes) {
  for (int i = 0; i < 8; ++i) {
    Pages m(16);
    ASSERT_TRUE(share_in_place(m.base, m.bytes).has_value()) << "buffer " << i;
  }  // each freed after one use
  Pages m(16);
  EXPECT_FALSE(share_in_place(m.base, m.bytes).has_value());
  EXPECT_TRUE(m.intact());
  reset_in_place_payback_for_testing();
  // A buffer used often enough pays back: sharing goes on after it.
  for (int i = 0; i < 7; ++i) {
    Pages once(16);
    ASSERT_TRUE(share_in_place(once.base, once.bytes).has_value()) << "buffer " << i;
  }
  {
    Pages reused(16);
    for (int use = 0; use < 4; ++use) ASSERT_TRUE(share_in_place(reused.base, reused.bytes).has_value());
  }
  for (int i = 0; i < 7; ++i) {
    Pages once(16);
    ASSERT_TRUE(share_in_place(once.base, once.bytes).has_value()) << "buffer " << i;
  }
  reset_in_place_payback_for_testing();
}

// An allocator's free then calloc of the same memory, in a process of its
// own (the allocator preloaded): every byte calloc returns reads zero.
// Spawned by SharedInPlaceAllocators.ACallocAfterAFreeOfSharedMemoryReadsZero.
TEST(SharedInPlaceAllocatorChild, FreeThenCallocReadsZero) {
  if (std::getenv("KILN_TEST_ALLOCATOR_CHILD") == nullptr) GTEST_SKIP() << "spawned only";
  auto calloc_reads_zero = [](std::size_t n) {
    char* p = static_cast<char*>(std::malloc(n));
    std::memset(p, 0xab, n);
    const bool shared = share_in_place(p, n).has_value();
    std::free(p);
    auto* q = static_cast<char*>(std::calloc(1, n));
    const bool zero = std::all_of(q, q + n, [](char c) { return c == 0; });
    std::free(q);
    return shared && zero;
  };
  // Large chunks (glibc maps them anew; jemalloc purges and reuses them).
  for (int round = 0; round < 3; ++round) EXPECT_TRUE(calloc_reads_zero(std::size_t{48} << 20));
  // Smaller ones from a thread's arena (glibc trims its heap with
  // MADV_DONTNEED, then reuses it).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  std::thread t([&] {
    for (int round = 0; round < 3; ++round) EXPECT_TRUE(calloc_reads_zero(std::size_t{8} << 20));
  });
  t.join();
  std::printf("allocator child ran\n");
}

// Runs this test binary again with `environment` (VAR=value words) and
// `test` as its only test: its output and exit status.
std::string run_child(const std::string& environment, const std::string& test) {
  char self[4096] = {};
  if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0) return "no /proc/self/exe";
  const std::string command =
      fmt::format("{} '{}' --gtest_filter={} 2>&1", environment, self, test);
  FILE* f = popen(command.c_str(), "r");
  if (f == nullptr) return "popen failed";
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, f) != nullptr) out += buf;
  const int status = pclose(f);
  return out + fmt::format("\nexit status {}", status);
}

std::string run_allocator_child(const std::string& preload) {
  return run_child("KILN_TEST_ALLOCATOR_CHILD=1 " + preload,
                   "SharedInPlaceAllocatorChild.FreeThenCallocReadsZero");
}

TEST(SharedInPlaceAllocators, ACallocAfterAFreeOfSharedMemoryReadsZero) {
  if (!kernel_can_tell()) GTEST_SKIP() << "needs PROCMAP_QUERY (Linux 6.11)";
  const std::string ok = "allocator child ran";
  std::string out = run_allocator_child("");
  EXPECT_NE(out.find(ok), std::string::npos) << "glibc malloc:\n" << out;
  EXPECT_NE(out.find("exit status 0"), std::string::npos) << "glibc malloc:\n" << out;
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "jemalloc cannot be preloaded under AddressSanitizer";
#else
  const char* jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
  if (access(jemalloc, R_OK) != 0) GTEST_SKIP() << jemalloc << " is not installed";
  // Purged at once, so the calloc reuses the freed extent as zeroed.
  out = run_allocator_child(fmt::format(
      "LD_PRELOAD={} MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0", jemalloc));
  EXPECT_NE(out.find(ok), std::string::npos) << "jemalloc:\n" << out;
  EXPECT_NE(out.find("exit status 0"), std::string::npos) << "jemalloc:\n" << out;
#endif
}


// Kiln's madvise, with another interposer preloaded: the calls it does not
// answer itself reach that one, not the kernel directly. Spawned by
// MadviseHook.PassesCallsOnToTheNextMadvise.
TEST(MadviseHookChild, CallsReachThePreloadedMadvise) {
  if (std::getenv("KILN_TEST_MADVISE_CHILD") == nullptr) GTEST_SKIP() << "spawned only";
  using Calls = long (*)();
  const auto calls = reinterpret_cast<Calls>(dlsym(RTLD_DEFAULT, "kiln_test_madvise_counter_calls"));
  ASSERT_NE(calls, nullptr) << "the counting madvise is not preloaded";
  ASSERT_TRUE(madvise_hook_is_active()) << "Kiln's madvise is not the one bound";
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  const long before = calls();
  EXPECT_EQ(madvise(p, page, MADV_DONTNEED), 0);
  EXPECT_EQ(madvise(p, page, MADV_WILLNEED), 0);
  EXPECT_EQ(calls(), before + 2);
  munmap(p, page);
  std::printf("madvise child ran\n");
}

TEST(MadviseHook, PassesCallsOnToTheNextMadvise) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "a preloaded library cannot come before AddressSanitizer's runtime";
#else
  const std::string out = run_child(fmt::format("KILN_TEST_MADVISE_CHILD=1 LD_PRELOAD={}",
                                                KILN_TEST_MADVISE_COUNTER),
                                    "MadviseHookChild.CallsReachThePreloadedMadvise");
  EXPECT_NE(out.find("madvise child ran"), std::string::npos) << out;
  EXPECT_NE(out.find("exit status 0"), std::string::npos) << out;
#endif
}

}  // namespace
}  // namespace kiln::comm
