// `kiln bench ckpt`'s object-store part: a checkpoint written straight to a
// local s3rver against raw PUTs of the same bytes at the same parallelism.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"
#include "kiln/comm/communicator.h"

namespace kiln::cli {

struct S3CkptTimes {
  double raw_put_s = 0;  // median, slowest rank
  double write_s = 0;    // median: shard upload + commit, slowest rank
  double ratio = 0;      // median of raw_put_s / write_s per round
  int rounds = 0;
  // Each round's, in order: raw PUTs, then the checkpoint's upload and commit.
  std::vector<double> raw_put_each_s, write_each_s, commit_each_s;
  // Each round's {"raw": [per rank], "checkpoint": [per rank]}: Note
  // [Where an upload's time goes] (bench_ckpt_s3_breakdown.h).
  nlohmann::json breakdown = nlohmann::json::array();
};

// How the raw-PUT baseline names its objects (Note [The raw PUTs' server
// state], bench_ckpt_s3_cmd.cc).
enum class RawPutKeys {
  kFresh,      // new objects each round, removed when the round ends
  kOverwrite,  // the same objects every round (before session 16; A/B only)
};

// Collective on `c`. Rank 0 starts s3rver (nullopt on every rank where it is
// not installed, with `skipped` saying why); every rank then, `rounds` times,
// PUTs its `state` as part-sized objects from upload_parallelism threads and
// saves it as a checkpoint step to s3:// with its shards stored as
// `layout` (the raw PUTs first, or after the save with `raw_after`: an A/B
// of the order), and finally loads the last step back and checks every byte.
Result<std::optional<S3CkptTimes>> measure_s3_checkpoint(comm::Communicator& c,
                                                         const std::vector<char>& state,
                                                         std::int64_t rows, std::int64_t cols,
                                                         int rounds, ckpt::ObjectLayout layout,
                                                         RawPutKeys raw_keys, bool raw_after,
                                                         std::string* skipped);

}  // namespace kiln::cli
