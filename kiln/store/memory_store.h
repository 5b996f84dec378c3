// MemoryStore: a Store inside one process. Ranks that are threads meet
// through it, and unit tests use it as the fake for every other store.
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>

#include "kiln/store/store.h"

namespace kiln::store {

class MemoryStore final : public Store {
 public:
  MemoryStore() = default;

  Status set(std::string_view key, std::string_view value) override;
  // Blocks on a condition variable until the key is set or the deadline.
  Result<std::string> get(std::string_view key, Deadline deadline) override;
  Result<std::int64_t> add(std::string_view key, std::int64_t delta) override;
  Result<std::string> compare_set(std::string_view key, std::string_view expected,
                                  std::string_view desired) override;
  Status wait(std::span<const std::string> keys, Deadline deadline) override;
  Result<bool> erase(std::string_view key) override;
  Result<bool> check(std::span<const std::string> keys) override;

  using Store::get;
  using Store::wait;

 private:
  // Blocks until pred() holds or the deadline passes; returns pred().
  template <typename Pred>
  bool wait_until(std::unique_lock<std::mutex>& lock, Deadline deadline, Pred pred);

  std::mutex mu_;
  std::condition_variable changed_;                    // notified when a key is created
  std::map<std::string, std::string, std::less<>> data_;  // guarded by mu_
};

}  // namespace kiln::store
