#include "kiln/comm/shared_buffer.h"

#include <cstring>

#include <gtest/gtest.h>

namespace kiln::comm {
namespace {

TEST(SharedBuffer, IsZeroFilledAndFoundByAnyRangeInsideIt) {
  auto b = SharedBuffer::allocate(3 * 4096 + 5);
  ASSERT_TRUE(b.is_ok()) << b.status().to_string();
  auto* p = static_cast<char*>(b->data());
  for (std::size_t i = 0; i < b->size(); ++i) ASSERT_EQ(p[i], 0) << i;
  std::memset(p, 7, b->size());

  auto whole = find_shared_region(p, b->size());
  ASSERT_TRUE(whole.has_value());
  EXPECT_EQ(whole->offset, 0u);
  EXPECT_EQ(whole->buffer_bytes, b->size());
  EXPECT_GE(whole->fd, 0);
  auto tail = find_shared_region(p + 100, b->size() - 100);
  ASSERT_TRUE(tail.has_value());
  EXPECT_EQ(tail->offset, 100u);
  EXPECT_EQ(tail->serial, whole->serial);
  EXPECT_TRUE(find_shared_region(p + b->size(), 0).has_value());  // empty range at the end

  EXPECT_FALSE(find_shared_region(p + 100, b->size()).has_value());  // runs past the end
  EXPECT_FALSE(find_shared_region(p - 1, 2).has_value());            // starts before
  char outside[16];
  EXPECT_FALSE(find_shared_region(outside, sizeof outside).has_value());
}

TEST(SharedBuffer, EachBufferHasItsOwnSerialAndIsForgottenWhenFreed) {
  auto a = SharedBuffer::allocate(4096);
  auto b = SharedBuffer::allocate(4096);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  auto ra = find_shared_region(a->data(), 1);
  auto rb = find_shared_region(b->data(), 1);
  ASSERT_TRUE(ra && rb);
  EXPECT_NE(ra->serial, rb->serial);
  EXPECT_NE(ra->fd, rb->fd);

  void* freed = a->data();
  *a = SharedBuffer();  // frees
  EXPECT_FALSE(find_shared_region(freed, 1).has_value());
  SharedBuffer moved = std::move(*b);
  EXPECT_EQ(b->data(), nullptr);
  auto rm = find_shared_region(moved.data(), 1);
  ASSERT_TRUE(rm.has_value());
  EXPECT_EQ(rm->serial, rb->serial);
}

TEST(SharedBuffer, ZeroBytesIsAnError) {
  auto b = SharedBuffer::allocate(0);
  ASSERT_FALSE(b.is_ok());
  EXPECT_NE(b.status().to_string().find("size"), std::string::npos) << b.status().to_string();
}

}  // namespace
}  // namespace kiln::comm
