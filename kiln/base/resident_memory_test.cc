#include "kiln/base/resident_memory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace kiln {
namespace {

constexpr std::size_t kBytes = std::size_t{24} << 20;  // three of the helper's slices

// Pages of `m` that are not resident, by mincore(2).
std::size_t missing_pages(std::span<std::byte> m) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in((m.size() + page - 1) / page);
  EXPECT_EQ(::mincore(m.data(), m.size(), in.data()), 0);
  std::size_t missing = 0;
  for (unsigned char c : in) missing += (c & 1) ? 0 : 1;
  return missing;
}

TEST(ResidentMemory, EveryPageIsResidentAndZeroAfterTheWait) {
  auto m = ResidentMemory::map(kBytes + 123);  // not a whole number of pages or slices
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ(m->wait(), kBytes + 123);
  EXPECT_EQ(m->wait(), kBytes + 123);  // idempotent
  EXPECT_EQ(missing_pages(m->span()), 0u);
  for (std::size_t i = 0; i < m->span().size(); i += 4093) ASSERT_EQ(m->span()[i], std::byte{0});
}

// What a writer puts in the memory while the helper populates survives it,
// when the kernel populates without writing.
TEST(ResidentMemory, WritesWhilePopulatingAreKept) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    auto m = ResidentMemory::map(kBytes);
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    if (!m->writable_while_populating()) {
      GTEST_SKIP() << "this kernel has no MADV_POPULATE_WRITE (Linux < 5.14): callers wait first";
    }
    auto* words = reinterpret_cast<std::uint64_t*>(m->span().data());
    const std::size_t n = kBytes / sizeof(std::uint64_t);
    for (std::size_t i = 0; i < n; ++i) words[i] = i * 0x9e3779b97f4a7c15ull + attempt;
    m->wait();
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_EQ(words[i], i * 0x9e3779b97f4a7c15ull + attempt) << "word " << i << " was lost";
    }
    EXPECT_EQ(missing_pages(m->span()), 0u);
  }
}

// Helpers share the slices: every page made resident once, whatever their
// number (more helpers than slices included).
TEST(ResidentMemory, AnyNumberOfHelpersCoversEveryPage) {
  for (int helpers : {1, 2, 3, 7}) {
    auto m = ResidentMemory::map(kBytes - 4096, helpers);
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    EXPECT_EQ(m->wait(), kBytes - 4096) << helpers << " helpers";
    EXPECT_EQ(missing_pages(m->span()), 0u) << helpers << " helpers";
  }
}

TEST(ResidentMemory, DestroyedBeforeTheHelpersFinish) {
  // The destructor stops the helpers at their next slice and unmaps: no hang,
  // no use of the unmapped memory (ASan would see the latter).
  for (int i = 0; i < 8; ++i) {
    auto m = ResidentMemory::map(std::size_t{256} << 20);
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  }
  auto moved = ResidentMemory::map(kBytes);
  ASSERT_TRUE(moved.is_ok());
  ResidentMemory target = std::move(*moved);
  EXPECT_EQ(target.wait(), kBytes);
}

// KiB of the mapping holding `p` that transparent huge pages back
// (/proc/self/smaps' AnonHugePages); -1 when no mapping holds it.
long huge_page_kib(const void* p) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream smaps("/proc/self/smaps");
  bool in_it = false;
  for (std::string line; std::getline(smaps, line);) {
    std::uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream range(line);
    if (range >> std::hex >> begin >> dash >> end && dash == '-') {
      in_it = begin <= at && at < end;  // a mapping's first line
    } else if (in_it && line.rfind("AnonHugePages:", 0) == 0) {
      return std::stol(line.substr(line.find(':') + 1));
    }
  }
  return -1;
}

// Small pages: resident and zero like huge ones, and no huge page among them
// (Note [Small pages for a restart]).
TEST(ResidentMemory, SmallPagesAreResidentWithoutAHugePage) {
  auto m = ResidentMemory::map(kBytes, 2, ResidentMemory::Pages::kSmall);
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ(m->wait(), kBytes);
  EXPECT_EQ(missing_pages(m->span()), 0u);
  EXPECT_EQ(huge_page_kib(m->span().data()), 0);
  for (std::size_t i = 0; i < m->span().size(); i += 4093) ASSERT_EQ(m->span()[i], std::byte{0});
}

TEST(ResidentMemory, ZeroBytesIsRefused) {
  auto m = ResidentMemory::map(0);
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln
