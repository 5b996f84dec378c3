// Note [Where an upload's time goes]: `kiln bench ckpt --s3` sets a
// checkpoint's upload beside raw PUTs of the same bytes; when the ratio
// falls short, these diagnostic keys say where the checkpoint's seconds
// went, per rank and round, from the store's request log
// (objstore::s3::S3RequestLog) and the checkpointer's own timings
// (ckpt::SaveStats): the shard's size, whether it went up as a multipart
// upload and in how many parts, or as how many chunk objects (whose PUTs
// then fill the part keys); how many requests were in flight
// (the most at once, and the mean over the span from the first part's
// start to the last part's end); each PUT or part's time; the multipart
// upload's initiation and completion; the checksum, the copies into parts
// and the waits for a free upload slot; the manifest commit, retention and
// every other round trip (listing, deletes, aborts). Times on the
// checkpoint's timeline count from the start of its save.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/comm/communicator.h"
#include "kiln/objstore/s3/s3_request_log.h"

namespace kiln::cli {

// Named values, in an order every rank shares (they are allgathered).
using S3Breakdown = std::vector<std::pair<std::string, double>>;

// Raw PUTs made from `start` on.
S3Breakdown raw_put_breakdown(const std::vector<objstore::s3::S3RequestRecord>& log,
                              Clock::time_point start);

// A checkpoint save that began at `start`: its requests and its stats.
S3Breakdown checkpoint_breakdown(const std::vector<objstore::s3::S3RequestRecord>& log,
                                 Clock::time_point start, const ckpt::SaveStats& stats);

// Collective on `c`: every rank's breakdown, as a JSON array by rank.
Result<nlohmann::json> every_ranks_breakdown(comm::Communicator& c, const S3Breakdown& mine);

}  // namespace kiln::cli
