// Snapshot files stay mapped across the renames that recycle them, are mapped
// anew when replaced or resized, and are let go once deleted.
#include "kiln/ckpt/internal/mapped_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "kiln/base/file.h"
#include "kiln/base/testing/temp_dir.h"

namespace kiln::ckpt::internal {
namespace {

TEST(MappedFile, ARenamedFileKeepsItsMappingAndItsBytes) {
  kiln::testing::TempDir tmp;
  const std::string a = tmp.path() + "/a.bin", b = tmp.path() + "/b.bin";
  auto first = map_for_write(a, 8192);
  ASSERT_TRUE(first.is_ok()) << first.status().to_string();
  std::memcpy((*first)->data() + 4096, "snapshot", 8);
  ASSERT_EQ(std::rename(a.c_str(), b.c_str()), 0);
  auto again = map_for_write(b, 8192);
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ((*again)->data(), (*first)->data()) << "a recycled file was mapped anew";
  EXPECT_EQ(std::memcmp((*again)->data() + 4096, "snapshot", 8), 0);
  auto text = read_file(b);  // the bytes are in the file, not only in the mapping
  ASSERT_TRUE(text.is_ok());
  EXPECT_EQ(text->substr(4096, 8), "snapshot");
}

TEST(MappedFile, ResizedOrDeletedFilesAreMappedAnewOrLetGo) {
  kiln::testing::TempDir tmp;
  const std::string a = tmp.path() + "/a.bin";
  release_unlinked_mappings();
  const std::size_t before = kept_mappings();
  auto small = map_for_write(a, 4096);
  ASSERT_TRUE(small.is_ok());
  EXPECT_EQ(kept_mappings(), before + 1);
  auto big = map_for_write(a, 3 * 4096);
  ASSERT_TRUE(big.is_ok());
  EXPECT_EQ((*big)->size(), 3u * 4096);
  EXPECT_EQ(kept_mappings(), before + 1) << "the old size's mapping was kept as well";
  auto existing = map_existing(a);
  ASSERT_TRUE(existing.is_ok());
  EXPECT_EQ((*existing)->data(), (*big)->data());
  ASSERT_EQ(::unlink(a.c_str()), 0);
  release_unlinked_mappings();
  EXPECT_EQ(kept_mappings(), before);
  auto gone = map_existing(a);
  EXPECT_EQ(gone.status().code(), Code::kNotFound) << gone.status().to_string();
  EXPECT_NE(gone.status().message().find(a), std::string::npos) << gone.status().to_string();
}

}  // namespace
}  // namespace kiln::ckpt::internal
