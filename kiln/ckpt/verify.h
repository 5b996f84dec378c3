// Reading and checking a committed step directory (used by the loader and by
// `kiln ckpt verify`/`inspect`).
#pragma once

#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"

namespace kiln::ckpt {

// Reads and parses <step_dir>/manifest.json. NotFound if it is missing (an
// uncommitted or half-deleted step), DataLoss if malformed.
Result<Manifest> read_manifest(const std::string& step_dir);

// Reads entry `rec` of shard `shard` under `step_dir`, checks its checksum and
// decompresses it. DataLoss names the file and entry.
Result<std::vector<std::byte>> read_entry(const std::string& step_dir, const ShardRecord& shard,
                                          const EntryRecord& rec);

// One problem verify found.
struct ShardProblem {
  int rank = 0;
  std::string file;
  Status why;
};

// The step directory name <root>/latest points at ("step-42"); NotFound if
// there is none yet. A hint only: loaders scan the step directories.
Result<std::string> read_latest(const std::string& root);

// Checks every shard: present, the size the manifest says, every entry's
// checksum. Reads every byte. Returns the manifest and the problems found
// (empty when the step is intact); fails only if the manifest is unreadable.
Result<std::pair<Manifest, std::vector<ShardProblem>>> verify_step(const std::string& step_dir);

// verify_step as one Status: ok, or DataLoss naming each bad shard and why.
Status verify_step_status(const std::string& step_dir);

}  // namespace kiln::ckpt
