#include "kiln/store/prefix_store.h"

#include <gtest/gtest.h>

#include "kiln/store/memory_store.h"

namespace kiln::store {
namespace {

TEST(PrefixStore, RoundsDoNotSeeEachOthersKeys) {
  auto base = std::make_shared<MemoryStore>();
  PrefixStore round1("round1", base);
  PrefixStore round2("round2", base);
  ASSERT_TRUE(round1.set("rank/0", "old").is_ok());
  EXPECT_FALSE(*round2.check(std::vector<std::string>{"rank/0"}));
  EXPECT_EQ(round2.get("rank/0", Deadline::after_ms(10)).status().code(), Code::kDeadlineExceeded);
  EXPECT_EQ(*round2.add("count", 3), 3);
  EXPECT_EQ(*round1.add("count", 1), 1);
  EXPECT_FALSE(*round2.erase("rank/0"));
  EXPECT_EQ(*base->get("round1/rank/0", Deadline::after_ms(10)), "old");
}

TEST(PrefixStore, NestedPrefixesCompose) {
  auto base = std::make_shared<MemoryStore>();
  auto round = std::make_shared<PrefixStore>("round3", base);
  PrefixStore group("pg0", round);
  ASSERT_TRUE(group.set("k", "v").is_ok());
  EXPECT_TRUE(*base->check(std::vector<std::string>{"round3/pg0/k"}));
  EXPECT_EQ(*group.compare_set("k", "v", "w"), "w");
  EXPECT_TRUE(group.wait(std::vector<std::string>{"k"}, Deadline::after_ms(10)).is_ok());
}

TEST(PrefixStore, ErrorsNameTheFullKeyAndInheritTheTimeout) {
  auto base = std::make_shared<MemoryStore>();
  base->set_default_timeout(std::chrono::milliseconds(20));
  PrefixStore store("round9", base);
  EXPECT_EQ(store.default_timeout(), std::chrono::milliseconds(20));
  auto r = store.get("missing");
  ASSERT_EQ(r.status().code(), Code::kDeadlineExceeded);
  EXPECT_NE(r.status().message().find("'round9/missing'"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(store.set("", "v").code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::store
