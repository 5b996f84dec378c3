// Test helpers for kiln/data: scratch directories, a small synthetic dataset
// whose samples are a function of their id, and a fault-injecting store.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/data/index.h"
#include "kiln/objstore/object_store.h"

namespace kiln::data::testing {

// A fresh directory under $TMPDIR, removed when the object dies.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Schema: id int64, payload bytes (id-dependent length), vec float32 tensor [4].
Schema test_schema();
Sample test_sample(std::uint64_t id);

// Writes one shard file at `path` holding test samples 0..n-1 (no index);
// returns their encoded records, in order.
std::vector<std::vector<std::uint8_t>> write_test_shard(const std::string& path, int n);

// Writes `n` test samples to `dir` with shards of about `shard_bytes`.
DatasetIndex write_test_dataset(const std::string& dir, std::uint64_t n, std::uint64_t shard_bytes);

// Wraps a store; get_to_file flips a byte of the copy while corrupt_gets > 0
// (decrementing it), and counts gets.
class FaultyStore final : public objstore::ObjectStore {
 public:
  explicit FaultyStore(std::unique_ptr<objstore::ObjectStore> inner) : inner_(std::move(inner)) {}
  Status get_to_file(const std::string& key, const std::string& dst, Deadline deadline) override;
  Result<std::string> get(const std::string& key, Deadline deadline) override {
    return inner_->get(key, deadline);
  }
  Status put_file(const std::string& key, const std::string& src, Deadline deadline) override {
    return inner_->put_file(key, src, deadline);
  }
  Result<std::string> get_range(const std::string& key, std::uint64_t offset, std::uint64_t length,
                                Deadline deadline) override {
    return inner_->get_range(key, offset, length, deadline);
  }
  Result<objstore::ObjectInfo> head(const std::string& key, Deadline deadline) override {
    return inner_->head(key, deadline);
  }
  Result<std::vector<objstore::ObjectInfo>> list(const std::string& prefix,
                                                 Deadline deadline) override {
    return inner_->list(prefix, deadline);
  }
  Status remove(const std::string& key, Deadline deadline) override {
    return inner_->remove(key, deadline);
  }
  std::string describe() const override { return "faulty+" + inner_->describe(); }

  std::atomic<int> corrupt_gets{0};
  std::atomic<int> gets{0};

 private:
  std::unique_ptr<objstore::ObjectStore> inner_;
};

}  // namespace kiln::data::testing
