// FileStore: a Store in a directory that several processes (or hosts, over a
// shared file system) open at once.
//
// Layout: one file per key, named "k-" + the key with bytes outside
// [A-Za-z0-9._-] written as %XX (long keys are cut and end in "~" + a 64-bit
// hash); ".lock" serializes writers; "k-*.tmp.*" are writes in flight
// (kiln::temp_path_for).
//
// Every write is a temp file renamed over the key's file, so a reader sees
// the old value or the new one, never a torn one. set/add/compare_set/erase
// hold an exclusive flock(2) on ".lock" while they run, which makes add and
// compare_set atomic across processes. get/wait poll with a short backoff
// (1 ms growing to 50 ms) until the deadline. Values are not fsync'd: the
// store coordinates live processes; a restart uses a fresh PrefixStore round.
#pragma once

#include <memory>
#include <string>

#include "kiln/store/store.h"

namespace kiln::store {

class FileStore final : public Store {
 public:
  // Creates `dir` (and its parents) if missing and checks it is writable.
  // Returns FailedPrecondition/NotFound/... naming the path otherwise.
  static Result<std::unique_ptr<FileStore>> open(const std::string& dir);

  // Writers wait for the lock up to the default timeout (DeadlineExceeded).
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

  const std::string& dir() const { return dir_; }

  // The file name that holds `key` (relative to dir()).
  static std::string file_name(std::string_view key);

 private:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {}

  std::string path(std::string_view key) const;
  // Writes value to a temp file and renames it over key's file.
  Status write_value(std::string_view op, std::string_view key, std::string_view value);
  // Reads key's value into *value; false if the key is missing.
  Result<bool> read_value(std::string_view op, std::string_view key, std::string* value);

  std::string dir_;
};

}  // namespace kiln::store
