// Store: the small key-value service that ranks meet through.
//
// Keys are strings, values are byte strings. Every blocking call takes a
// Deadline; the overloads without one use the store's default timeout.
// Implementations: MemoryStore (one process, tests), FileStore (a shared
// directory), PrefixStore (a namespace over another store), TcpStore (client
// of a TcpStoreServer embedded in rank 0 or run by `kiln store serve`).
//
// Thread safety: every Store may be called from several threads at once.
// Codes returned: DeadlineExceeded (wait/get ran out of time, message names
// the keys still missing), Unavailable (server unreachable after the
// reconnect budget), InvalidArgument (empty key, bad value), DataLoss
// (malformed reply).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::store {

class Store {
 public:
  virtual ~Store() = default;

  // Sets key to value (overwrites).
  virtual Status set(std::string_view key, std::string_view value) = 0;

  // Blocks until key exists, then returns its value.
  virtual Result<std::string> get(std::string_view key, Deadline deadline) = 0;

  // Atomically adds delta to the integer stored at key (missing = 0) and
  // returns the new value. The value is stored as decimal text.
  virtual Result<std::int64_t> add(std::string_view key, std::int64_t delta) = 0;

  // Atomically: if the current value equals `expected` (a missing key equals
  // the empty string), set it to `desired`. Returns the value after the call
  // (`desired` on success, the current value otherwise).
  virtual Result<std::string> compare_set(std::string_view key, std::string_view expected,
                                          std::string_view desired) = 0;

  // Blocks until every key exists. DeadlineExceeded names the missing ones.
  virtual Status wait(std::span<const std::string> keys, Deadline deadline) = 0;

  // Removes key. Returns whether it existed.
  virtual Result<bool> erase(std::string_view key) = 0;

  // Non-blocking: whether every key exists now.
  virtual Result<bool> check(std::span<const std::string> keys) = 0;

  // The timeout used by the overloads below.
  std::chrono::milliseconds default_timeout() const { return default_timeout_; }
  void set_default_timeout(std::chrono::milliseconds t) { default_timeout_ = t; }

  Result<std::string> get(std::string_view key) {
    return get(key, Deadline::after(default_timeout_));
  }
  Status wait(std::span<const std::string> keys) {
    return wait(keys, Deadline::after(default_timeout_));
  }

 private:
  std::chrono::milliseconds default_timeout_{std::chrono::seconds(300)};
};

}  // namespace kiln::store
