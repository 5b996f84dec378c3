// verify_dataset: re-hashes every shard of a dataset against its index.json
// (size and xxh3-64), wherever the dataset lives.
#pragma once

#include <string>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/data/index.h"
#include "kiln/objstore/object_store.h"

namespace kiln::data {

struct ShardVerdict {
  std::string file;
  bool ok = false;
  std::string
      problem;  // when !ok: "missing", "12 bytes, index says 40", "xxh3 ..., index says ..."
};

struct VerifyOptions {
  // Where the dataset is a local directory: hash the shards in place.
  // Otherwise each shard is downloaded to `scratch_dir` (created if
  // missing), hashed and deleted.
  std::string local_dir;
  std::string scratch_dir;
};

// One verdict per shard, in index order. A bad shard is a verdict, not an
// error; errors are what stops the check (the store unreachable, the
// scratch directory unwritable).
Result<std::vector<ShardVerdict>> verify_dataset(objstore::ObjectStore* store,
                                                 const DatasetIndex& index,
                                                 const VerifyOptions& options, Deadline deadline);

}  // namespace kiln::data
