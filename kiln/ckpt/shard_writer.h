// Writes one rank's shard file from staged bytes (the background writer's
// first half; commit.h is the second).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/fs.h"

namespace kiln::ckpt {

// An entry copied into staging memory at `staging_offset`.
struct StagedEntry {
  std::string name;
  bool is_tensor = false;
  TensorSpec spec;
  std::size_t staging_offset = 0;
  std::size_t bytes = 0;
};

struct ShardWriteOptions {
  Compression compression = Compression::kNone;
  int zstd_level = 1;
};

// Where write_shard_to's time went, seconds.
struct ShardWriteTimes {
  double compress_s = 0;  // zstd
  double checksum_s = 0;  // xxh3 of what is stored
  double append_s = 0;    // inside out.append (for an upload: copying into
                          // parts and waiting for a free upload slot)
  double close_s = 0;     // out.sync + out.close (an upload's last parts and commit)
};

// Writes `entries` (bytes in `staging`) to `dir`/shard_file_name(rank), entry
// after entry, checksumming what it stores, then fsyncs the file. Blocks for
// the whole write. ResourceExhausted when the disk is full; the file is then
// left behind for the commit to discard.
Result<ShardRecord> write_shard(Fs& fs, const std::string& dir, int rank,
                                const std::vector<StagedEntry>& entries, const std::byte* staging,
                                const ShardWriteOptions& options, ShardWriteTimes* times = nullptr);

// The same into `out` (e.g. an upload to an object store), which it syncs
// and closes at the end; `out` receives the shard file's bytes in order.
// `times`, when given, gets where the time went.
Result<ShardRecord> write_shard_to(FsWriter& out, int rank, const std::vector<StagedEntry>& entries,
                                   const std::byte* staging, const ShardWriteOptions& options,
                                   ShardWriteTimes* times = nullptr);

// Bytes of `rec` decompressed; DataLoss if `stored` does not match its checksum
// or does not decompress to raw_bytes.
Result<std::vector<std::byte>> decode_entry(const EntryRecord& rec, std::vector<std::byte> stored,
                                            const std::string& where);

}  // namespace kiln::ckpt
