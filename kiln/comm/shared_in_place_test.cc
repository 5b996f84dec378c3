#include "kiln/comm/shared_in_place.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "kiln/base/fd.h"

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

TEST_F(SharedInPlace, AForkedChildDoesNotSeeTheSharedPages) {
  Pages m(16);
  auto s = share_in_place(m.base, m.bytes);
  ASSERT_TRUE(s.has_value());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The first page is private: the child has its copy.
    if (m.base[0] != Pages::pattern(0)) _exit(3);
    volatile char c = s->begin[0];  // not inherited: faults
    _exit(c == 0 ? 4 : 5);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  // Killed by SIGSEGV (or, under ASan, its report's exit code 1).
  const bool faulted = (WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) ||
                       (WIFEXITED(status) && WEXITSTATUS(status) == 1);
  EXPECT_TRUE(faulted) << "status " << status;
  EXPECT_TRUE(m.intact());
}

}  // namespace
}  // namespace kiln::comm
