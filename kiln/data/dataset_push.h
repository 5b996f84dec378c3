// push_dataset: copies a local dataset directory to an object store (the
// remote tier), shards first and index.json last, so a reader that finds the
// index also finds every shard it names.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/data/index.h"
#include "kiln/objstore/object_store.h"

namespace kiln::data {

struct PushStats {
  std::uint64_t shards = 0;
  std::uint64_t bytes = 0;  // shard bytes uploaded (index.json not counted)
};

// Reads DIR/index.json, checks each local shard's size against it (a
// mismatch is DataLoss naming the shard: the directory is not the dataset
// its index describes), uploads the shards under their index names, then
// index.json. Blocks up to `deadline`; errors from the store name the key.
Result<PushStats> push_dataset(const std::string& dir, objstore::ObjectStore* dst,
                               Deadline deadline);

// Reads and parses index.json from `store`.
Result<DatasetIndex> read_index(objstore::ObjectStore* store, Deadline deadline);

}  // namespace kiln::data
