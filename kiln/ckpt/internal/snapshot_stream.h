// Moving in-memory snapshots at memory speed: a snapshot's bytes flow in
// fixed-size chunks between caller memory, tmpfs files and peers, through
// small reused bounce buffers, never through a freshly allocated (and so
// page-faulted) buffer of the snapshot's size. Internal to kiln/ckpt.
//
// Note [Snapshot bytes at memory speed]: on this hardware the cost of a
// recovery is dominated not by copying but by page faults (first touch of
// fresh memory, or of a new mapping of a tmpfs file: ~0.1 s per GiB on bare
// metal, several times that under a paravirtualised MMU, where even the
// kernel's copies in pread/pwrite pay it once per process and page). So
// snapshot files are mapped once per process and kept mapped (Note [Mapped
// snapshot files], mapped_file.h), received straight into those mappings or
// into caller memory that is already touched, and recycled from one snapshot
// to the next so their pages stay allocated. Chunks are small enough that a
// chunk just received or copied is still in cache when it is checksummed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/base/fs.h"
#include "kiln/base/status.h"
#include "kiln/ckpt/internal/mapped_file.h"
#include "kiln/comm/communicator.h"

namespace kiln::ckpt::internal {

// Note [Stream chunks sized to the L2 cache]: a stream moves one chunk per
// round (a sendrecv each way), and the receiver checksums each chunk right
// after its round lands it in place, while it is still in the core's L2
// (1 MiB per core on the hosts measured; the chunk leaves room for the
// transport's slots): one pass over memory per rank, not a copy followed by a
// checksum read back from further out. Short rounds also keep each round on
// the thread that waits for it (Note [Deferred engine wake], comm/work.cc): a
// 4 MiB round outlived the engine's hand-off period, so the communicator's
// engine thread took later rounds over and ran beside the caller, two busy
// threads per rank on a host with a core per rank (docs/perf.md, issue 19,
// session 9: buddy recovery's stream 0.23 s → 0.16 s at 1 GiB).
inline constexpr std::size_t kStreamChunk = std::size_t{512} << 10;

// Scratch chunks reused across transfers (two each way: one in flight on the
// communicator while the caller works on the other). Touched once.
class Bounce {
 public:
  std::byte* send(int slot);
  std::byte* recv(int slot);

 private:
  std::vector<std::byte> buf_;
};

// Where a stream's bytes come from: bytes [offset, offset + n) of it, either
// where they already lie contiguously or copied into `bounce` (kStreamChunk
// bytes). An error leaves the stream running on zeros (peers are not left
// waiting) and is returned when it ends.
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  virtual Result<const std::byte*> chunk(std::uint64_t offset, std::size_t n,
                                         std::byte* bounce) = 0;
};

// Where a stream's bytes go: place() names the memory bytes [offset,
// offset + n) are received or read into (the sink's own, or `bounce`); done()
// is told once they are there. Chunks come in order, each exactly once. A
// local copy (copy_from) calls done() alone, with the bytes where they lie:
// the sink copies them where they belong.
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  virtual std::byte* place(std::uint64_t offset, std::size_t n, std::byte* bounce) = 0;
  virtual Status done(std::uint64_t offset, std::size_t n, const std::byte* at) = 0;
};

// The concatenation of memory regions (a staged state's entries, in order).
class MemorySource final : public ChunkSource {
 public:
  struct Region {
    const std::byte* data;
    std::size_t size;
  };
  // `keep` (optional) owns the regions' memory for the source's life.
  explicit MemorySource(std::vector<Region> regions, std::shared_ptr<const void> keep = {});
  Result<const std::byte*> chunk(std::uint64_t offset, std::size_t n, std::byte* bounce) override;

 private:
  std::vector<Region> regions_;
  std::vector<std::uint64_t> starts_;
  std::shared_ptr<const void> keep_;
};

// Into a mapped file (mapped_file.h): bytes are received straight into it.
class MappedSink final : public ChunkSink {
 public:
  explicit MappedSink(std::shared_ptr<MappedFile> file) : file_(std::move(file)) {}
  std::byte* place(std::uint64_t offset, std::size_t n, std::byte* bounce) override;
  Status done(std::uint64_t, std::size_t, const std::byte*) override { return Status::ok(); }

 private:
  std::shared_ptr<MappedFile> file_;
};

// Drops what it gets (a replica that could not be kept still has to be drained).
class DiscardSink final : public ChunkSink {
 public:
  std::byte* place(std::uint64_t, std::size_t, std::byte* bounce) override { return bounce; }
  Status done(std::uint64_t, std::size_t, const std::byte*) override { return Status::ok(); }
};

// Opens `path` for writing over its existing pages: created if absent, never
// truncated first; sized to `size` (reserving missing pages: ResourceExhausted
// when the filesystem is full). Errors name the path.
Result<Fd> open_for_overwrite(const std::string& path, std::uint64_t size);

// Local: the whole of `file` into `sink`, a cache-sized piece at a time
// (the sink copies each piece where it belongs and checksums it there), in
// steps a caller can interleave with a stream (stream_ring's `meanwhile`).
class FileCopy {
 public:
  FileCopy(const MappedFile& file, ChunkSink& sink) : file_(file), sink_(sink) {}
  bool done() const { return off_ >= file_.size() || !status_.is_ok(); }
  // Copies about `bytes` more (whole pieces); nothing after an error.
  void step(std::uint64_t bytes);
  // Copies the rest; the first error of any step.
  Status finish();

 private:
  const MappedFile& file_;
  ChunkSink& sink_;
  std::uint64_t off_ = 0;
  Status status_;
};

inline Status copy_from(const MappedFile& file, ChunkSink& sink) {
  return FileCopy(file, sink).finish();
}

// Where a stream's wall time went on this rank (stream_ring's `times`):
// waiting on the communicator for a round, the sink placing and
// checksumming what came, the source producing what goes, and the local
// copy advanced in the waits (`meanwhile`). Diagnostics for the bench.
struct StreamTimes {
  double total_s = 0, wait_s = 0, sink_s = 0, source_s = 0, meanwhile_s = 0;
};

// Collective over the ring: sends `send_bytes` of `source` to `to` while
// receiving `recv_bytes` from `from` into `sink`, kStreamChunk per message,
// in as many rounds as the longest stream of any rank needs (agreed first),
// one round in flight while the previous one is read or written. Either side
// may be empty (0 bytes; null source or sink). Returns the communicator's
// failure (Aborted/DeadlineExceeded) at once. A source or sink error does not
// stop the stream (no peer waits on this rank): the first one is stored in
// `local_error` and the stream runs to its end.
//
// `meanwhile` (optional): a local copy advanced by a round's bytes after
// each round is posted, while the peers' side of it is under way (Note [A
// local restore beside the stream], memory_tier.cc); the caller finishes
// what is left of it. `times` (optional) gets where the time went.
Status stream_ring(comm::Communicator& comm, int to, ChunkSource* source, std::uint64_t send_bytes,
                   int from, ChunkSink* sink, std::uint64_t recv_bytes,
                   std::chrono::milliseconds timeout, Bounce& bounce, Status* local_error,
                   FileCopy* meanwhile = nullptr, StreamTimes* times = nullptr);

}  // namespace kiln::ckpt::internal
