// PrefixStore: a namespace over another store. Every key becomes
// "PREFIX/key", so each process group and each restart round gets its own
// keys and never reads a stale value from an earlier one:
//
//   auto round = std::make_shared<PrefixStore>(fmt::format("round{}", n), base);
//   auto group = std::make_shared<PrefixStore>("pg0", round);   // "round3/pg0/..."
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/store/store.h"

namespace kiln::store {

class PrefixStore final : public Store {
 public:
  // Shares ownership of `base`. Inherits base's default timeout. `prefix`
  // must not be empty (a KILN_CHECK).
  PrefixStore(std::string prefix, std::shared_ptr<Store> base);

  Status set(std::string_view key, std::string_view value) override;
  Result<std::string> get(std::string_view key, Deadline deadline) override;
  Result<std::int64_t> add(std::string_view key, std::int64_t delta) override;
  Result<std::string> compare_set(std::string_view key, std::string_view expected,
                                  std::string_view desired) override;
  Status wait(std::span<const std::string> keys, Deadline deadline) override;
  Result<bool> erase(std::string_view key) override;
  Result<bool> check(std::span<const std::string> keys) override;

  using Store::get;
  using Store::wait;

  const std::string& prefix() const { return prefix_; }
  const std::shared_ptr<Store>& base() const { return base_; }

 private:
  // An empty key stays empty so the base store rejects it with its usual error.
  std::string full_key(std::string_view key) const;
  std::vector<std::string> full_keys(std::span<const std::string> keys) const;

  std::string prefix_;
  std::shared_ptr<Store> base_;
};

}  // namespace kiln::store
