// MemoryTier: the in-memory checkpoint tier (Gemini, Wang et al. SOSP'23).
// Each rank keeps its newest snapshot in host memory, plus a replica of its
// ring predecessor's, so a job that lost processes (or one host) restores
// the step from memory instead of reading storage.
//
// "Host memory" is a directory on a memory filesystem (tmpfs, /dev/shm by
// default), not the process heap: a snapshot must outlive the process whose
// crash it recovers from. Layout, host-local:
//
//   <dir>/rank-<r>/step-<N>/shard-<r>.bin     rank r's own snapshot
//   <dir>/rank-<r>/step-<N>/shard-<r>.json    its record, written last
//   <dir>/rank-<r>/step-<N>/shard-<p>.bin     replica of rank p = (r-1) mod W
//   <dir>/rank-<r>/step-<N>/shard-<p>.json
//   <dir>/rank-<r>/spare/shard-*.bin          a retired step's files, no
//                                             records: the next store writes
//                                             over them (Note [Recycled
//                                             snapshot files], memory_tier.cc)
//
// A .bin has the checkpoint shard format (docs/formats.md); a .json is
// {"step", "world_size", "shard": <shard record>}: its presence marks the
// .bin complete (it is renamed into place after the .bin is written).
//
// Recovery needs the world size the snapshots were taken with: after a
// re-form onto another size, recover() finds nothing and the caller loads
// from storage (which re-slices).
//
// Collective: every rank of the communicator calls store() for the same
// steps and recover() together; the communicator must be used by nothing
// else meanwhile (the Checkpointer's writer thread owns it during saves).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/shard_writer.h"
#include "kiln/ckpt/state.h"
#include "kiln/comm/communicator.h"

namespace kiln::ckpt {

namespace internal {
class Bounce;
class ChunkSource;
class MappedFile;
}  // namespace internal

struct MemoryTierOptions {
  // Host-local, memory-backed; shared by the job's ranks on this host.
  // Empty: default_memory_dir() of the checkpoint root.
  std::string dir;
  comm::Communicator* comm = nullptr;         // null: one rank, no replica
  std::chrono::milliseconds timeout{600000};  // bounds each collective
  // recover() returns each tensor in the rows this rank saved instead of its
  // even_rows: for states whose ranks save another split (a 3D run's
  // canonical rows) and assemble whole tensors afterwards (gather.h).
  bool rows_as_saved = false;
};

// /dev/shm/kiln-ckpt-<hash of the absolute checkpoint root>: the ranks of a
// restarted job find their predecessors' snapshots there.
std::string default_memory_dir(const std::string& checkpoint_root);

// Caller memory that recover() restores a tensor into instead of allocating:
// the rank's rows of it (even_rows(shape[0], rank, world)), exactly that many
// bytes. Memory a process has already touched (its model's parameters)
// restores at the speed of a copy; a fresh buffer pays its page faults.
struct RecoverTarget {
  std::string name;
  std::byte* data = nullptr;
  std::size_t bytes = 0;
};

// Where this rank's part of the last recover() went, in seconds of wall
// time (diagnostics: `kiln bench ckpt` reports them).
struct RecoveryPhases {
  double list_s = 0;     // listing what this rank holds, and learning what every rank does
  double headers_s = 0;  // records and sizes exchanged with the ring neighbours, parsed
  double stream_s = 0;   // the replica's stream (sent, received, or neither), in all
  double stream_wait_s = 0;     // of which waiting on the communicator for a round
  double stream_into_s = 0;     // of which placing and checksumming received chunks
  double stream_source_s = 0;   // of which producing the chunks sent
  double stream_own_copy_s = 0;  // of which this rank's own snapshot copied in the waits
  double finish_s = 0;  // the rest of the own copy, checksums compared
  double agree_s = 0;   // every rank agreeing on the outcome
};

struct MemoryRecoveryStats {
  std::int64_t step = -1;
  RecoveryPhases phases;
  int from_replica = 0;           // ranks whose snapshot came from their buddy
  std::size_t fetched_bytes = 0;  // bytes this rank received from its buddy
  // Steps whose restore began: when > 0, the recover targets were written
  // to, also by a recovery that failed in the end.
  int attempts = 0;
};

struct MemoryStoreStats {
  std::int64_t step = -1;
  bool staged = false;           // the bytes were staged in the snapshot file: no copy
  bool replica_on_host = false;  // the predecessor's replica was copied from its file here
  // This rank's checksums came from its successor, made as it copied the
  // snapshot (Note [The successor checksums what it copies], memory_tier.cc).
  bool sums_from_successor = false;
};

class MemoryTier {
 public:
  // Creates dir/rank-<r>. Errors name the directory.
  static Result<std::unique_ptr<MemoryTier>> open(MemoryTierOptions options);
  ~MemoryTier();

  // Memory to stage this rank's next snapshot in: `bytes` bytes of the file
  // the next store() turns into the snapshot (rank_dir/spare, a retired
  // step's file when there is one: Note [Recycled snapshot files]). A
  // caller that copies its state here, entries back to back in order, and
  // passes this pointer to store() as `staging` pays no snapshot copy of its
  // own (Note [Staged in the snapshot], memory_tier.cc). The spare has no
  // record, so a crash while staging or storing leaves the newest complete
  // snapshot as it was. Valid until the next stage() or the tier's
  // destruction, also after store() (the snapshot's bytes; nothing writes
  // them until a later stage() returns). Not collective; never while a
  // store() or recover() runs. ResourceExhausted when the memory filesystem
  // is full; errors name the file. Null for 0 bytes.
  Result<std::byte*> stage(std::uint64_t bytes);

  // Collective. Writes this rank's snapshot of `step` (the entries, bytes in
  // `staging`, laid out as StagedEntry::staging_offset says), sends it to
  // rank r+1 and keeps rank r-1's as its replica; then deletes this rank's
  // older snapshots. Blocks for the copies and the exchange. `staging` from
  // stage() with the entries back to back: only checksummed, not copied.
  // A replica whose sender is on this host is copied from the sender's
  // snapshot file rather than streamed through the communicator (Note
  // [Replicas on one host]). A local failure (memory filesystem full:
  // ResourceExhausted) is returned after the exchange completes, so peers
  // never wait on a rank that gave up; Aborted/DeadlineExceeded when the
  // exchange fails.
  Status store(std::int64_t step, const std::vector<StagedEntry>& entries,
               const std::byte* staging);

  // Collective. Restores the newest step >= `min_step` that every rank can
  // get from memory — its own snapshot, or the replica its successor holds,
  // fetched over the communicator — with every entry checksummed. Tensors
  // are cut to the rank's even_rows, as load_step returns them (unless
  // options.rows_as_saved); a tensor
  // named in `into` is written to that memory instead (its entry comes back
  // with in_place set and no data; after a failed attempt the target holds
  // unspecified bytes). NotFound when there is none (then load from
  // storage); the same outcome on every rank, its message saying why each
  // step every rank held failed (e.g. "step 6 failed: DataLoss: rank 1: ..."
  // for a corrupt chunk of a replica). A buddy's deleted snapshot this
  // process still maps is freed by the next store(), not here (Note
  // [Reclaiming a dead buddy's memory], memory_tier.cc).
  Result<LoadedState> recover(std::int64_t min_step = 0, std::span<const RecoverTarget> into = {});

  MemoryRecoveryStats last_recovery() const { return stats_; }
  MemoryStoreStats last_store() const { return store_stats_; }

  // Deletes this rank's snapshots and replicas (a job that finished), and
  // the directory once no rank's is left in it.
  Status clear();

  const std::string& rank_dir() const { return rank_dir_; }

 private:
  explicit MemoryTier(MemoryTierOptions options);
  Status prepare_step_dir(const std::string& dir);
  void retire_older_than(std::int64_t step);
  Status exchange(std::int64_t step, const std::string& dir, internal::ChunkSource* source,
                  const internal::MappedFile* own, std::uint64_t send_bytes,
                  std::span<const std::uint64_t> entry_bytes,
                  const std::function<std::string(std::span<const std::uint64_t>)>& record);
  // The replica of rank `from`'s snapshot of `step` copied from its file on
  // this host (`identity` is what `from` said of it), or null when that file
  // is not reachable from here.
  std::shared_ptr<internal::MappedFile> buddy_file_on_this_host(std::int64_t step, int from,
                                                                const std::int64_t identity[3],
                                                                std::uint64_t bytes) const;
  Result<LoadedState> restore(std::int64_t step, bool need_fetch, bool predecessor_needs,
                              std::span<const RecoverTarget> into);

  const MemoryTierOptions options_;
  const int rank_;
  const int world_;
  const int pred_;  // whose replica this rank keeps: (rank - 1) mod world
  const std::string rank_dir_;
  MemoryRecoveryStats stats_;
  MemoryStoreStats store_stats_;
  std::unique_ptr<internal::Bounce> bounce_;  // reused by every transfer
  // What stage() returned last (kept mapped for the caller).
  std::shared_ptr<internal::MappedFile> staged_;
};

// Collective. The tier's newest step if it is at least as new as the newest
// committed under `root` (rank 0's listing decides, so every rank asks for
// the same minimum); NotFound, the same on every rank, when memory cannot
// serve one (then load from storage). `into` as MemoryTier::recover's.
Result<LoadedState> recover_if_not_older(const std::string& root, MemoryTier& tier,
                                         const LoadOptions& options,
                                         std::span<const RecoverTarget> into = {});

// Collective. The newest checkpoint from either tier: the in-memory one when
// it holds a step at least as new as the newest committed under `root`
// (it is faster and usually newer), else load_latest(root, options).
// `tier` may be null. `from_memory`, when given, tells which tier it was.
Result<LoadedState> recover_latest(const std::string& root, MemoryTier* tier,
                                   const LoadOptions& options, bool* from_memory = nullptr);

}  // namespace kiln::ckpt
