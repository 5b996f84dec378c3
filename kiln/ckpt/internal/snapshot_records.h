// The records of a rank's memory snapshots ("shard-RRRRR.json" beside the
// snapshot file in each step directory): written by MemoryTier::store,
// read by its recovery.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"

namespace kiln::ckpt::internal {

std::string record_name(int rank);

std::string record_json(std::int64_t step, int world, const ShardRecord& rec);

// The shard record inside a record JSON of step `step` taken at `world`
// ranks; DataLoss naming `where` otherwise.
Result<ShardRecord> parse_record(const std::string& text, std::int64_t step, int world,
                                 const std::string& where);

// A complete snapshot of `rank` taken at `world` ranks, or nullopt (absent,
// torn, or from another world size) — recovery then looks elsewhere.
std::optional<ShardRecord> read_snapshot(const std::string& step_dir, std::int64_t step, int rank,
                                         int world);

// Committed snapshot steps in a rank directory, newest first.
std::vector<std::int64_t> snapshot_steps(const std::string& rank_dir);

}  // namespace kiln::ckpt::internal
