#include "kiln/store/memory_store.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace kiln::store {
namespace {

TEST(MemoryStore, NeverDeadlineWaitersAllWakeOnSet) {
  MemoryStore store;
  constexpr int kWaiters = 8;
  std::vector<Result<std::string>> got(kWaiters, internal_error("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] { got[i] = store.get("go", Deadline::never()); });
  }
  ASSERT_TRUE(store.set("go", "now").is_ok());
  for (auto& t : threads) t.join();
  for (const auto& g : got) {
    ASSERT_TRUE(g.is_ok()) << g.status().to_string();
    EXPECT_EQ(*g, "now");
  }
}

TEST(MemoryStore, CompareSetCreatingAKeyWakesAWaiter) {
  MemoryStore store;
  Status waited = internal_error("not run");
  std::thread t([&] {
    waited = store.wait(std::vector<std::string>{"leader"}, Deadline::after_seconds(20));
  });
  EXPECT_EQ(*store.compare_set("leader", "", "rank0"), "rank0");
  t.join();
  EXPECT_TRUE(waited.is_ok()) << waited.to_string();
}

TEST(MemoryStore, DefaultTimeoutOverloadIsVisibleOnTheConcreteType) {
  MemoryStore store;
  store.set_default_timeout(std::chrono::milliseconds(10));
  EXPECT_EQ(store.get("absent").status().code(), Code::kDeadlineExceeded);
}

}  // namespace
}  // namespace kiln::store
