// DatasetWriter: appends samples to rolling shard files under a directory and
// commits index.json last (by rename), so a reader never sees an index that
// names an incomplete shard. Not thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kiln/base/status.h"
#include "kiln/data/index.h"
#include "kiln/data/shard.h"

namespace kiln::data {

struct DatasetWriterOptions {
  std::uint64_t shard_bytes = 64ull << 20;  // a shard closes once it reaches this size
};

class DatasetWriter {
 public:
  // Creates `dir` if needed. Existing shards and index.json there are replaced.
  static Result<DatasetWriter> create(std::string dir, Schema schema,
                                      DatasetWriterOptions options = {});

  Status add(const Sample& sample);

  // Closes the last shard and commits index.json. Returns the index written.
  Result<DatasetIndex> finish();

 private:
  DatasetWriter(std::string dir, Schema schema, DatasetWriterOptions o)
      : dir_(std::move(dir)), options_(o) {
    index_.schema = std::move(schema);
  }
  Status close_shard();

  std::string dir_;
  DatasetWriterOptions options_;
  DatasetIndex index_;
  std::optional<ShardWriter> shard_;
  std::vector<std::uint8_t> scratch_;
};

}  // namespace kiln::data
