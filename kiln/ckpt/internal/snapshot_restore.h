// One in-memory snapshot restored as its bytes stream in (from the rank's own
// tmpfs file or from its buddy): each entry lands in the caller's memory when
// a RecoverTarget fits it exactly, else in a buffer of its own, and is
// checksummed chunk by chunk while the chunk is still in cache
// (Note [Snapshot bytes at memory speed]). Internal to kiln/ckpt.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/internal/snapshot_stream.h"
#include "kiln/base/xxh3.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/ckpt/state.h"

namespace kiln::ckpt::internal {

class RestoreSink final : public ChunkSink {
 public:
  // Restores `record` (a shard record of `rank`'s snapshot) for `rank` of
  // `world`; `where` names the snapshot in errors. `rows_as_saved`: tensors
  // keep the rows the snapshot holds instead of being cut to even_rows.
  RestoreSink(ShardRecord record, int rank, int world, std::span<const RecoverTarget> into,
              std::string where, bool rows_as_saved = false);
  ~RestoreSink() override;

  std::byte* place(std::uint64_t offset, std::size_t n, std::byte* bounce) override;
  Status done(std::uint64_t offset, std::size_t n, const std::byte* at) override;

  // Once every byte came: the entries as load_step would return them (tensors
  // cut to the rank's even_rows; those restored into a target have in_place
  // set and no data). DataLoss naming the entry on a checksum mismatch or
  // rows the snapshot lacks; InvalidArgument when a target's size is not the
  // entry's.
  Result<std::vector<LoadedEntry>> finish();

 private:
  struct Slot {
    std::byte* dst = nullptr;          // where the stored bytes go
    std::vector<std::byte> own;        // when not into a target
    const RecoverTarget* target = nullptr;
    bool direct = false;               // dst is the target's memory
    std::unique_ptr<Xxh3> hash;
  };
  // The entry whose stored bytes hold `offset`, or -1.
  int entry_at(std::uint64_t offset) const;

  ShardRecord record_;
  int rank_, world_;
  bool rows_as_saved_;
  std::string where_;
  std::vector<Slot> slots_;
};

}  // namespace kiln::ckpt::internal
