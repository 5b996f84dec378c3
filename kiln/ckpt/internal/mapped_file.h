// Snapshot files mapped into this process once and kept mapped: the in-memory
// tier reads and writes its tmpfs files through these mappings with plain
// memcpy. Internal to kiln/ckpt.
//
// Note [Mapped snapshot files]: on this kind of host (a paravirtualised MMU,
// docs/perf.md issue 19) the first access by a process to a 4 KiB page costs
// several µs, paid again for every new mapping and even for the kernel's own
// copies in pread/pwrite (measured: the first pread of a 512 MiB tmpfs file by
// a process 0.8-1.0 s, the second 0.07 s; reading it through a mapping kept
// from an earlier access 0.04 s, a plain memcpy). Snapshot files are recycled
// from one store to the next (Note [Recycled snapshot files], memory_tier.cc)
// and a rename keeps the inode, so a mapping made once per file per process
// is reused by every later store and recovery, including those of a
// MemoryTier created anew after the group re-formed in the same process.
//
// A mapping keeps its file's pages alive after the file is deleted, so the
// tier calls release_unlinked_mappings() after it deletes snapshot files.
// Files are sized before they are mapped and never truncated while mapped by
// the tier (a truncation by another process would raise SIGBUS on access).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/base/fd.h"
#include "kiln/base/status.h"

namespace kiln::ckpt::internal {

class MappedFile {
 public:
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // Null when size() is 0.
  std::byte* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // The file's identity: the same on every process that maps it.
  dev_t dev() const { return dev_; }
  ino_t ino() const { return ino_; }

 private:
  friend class MappingCache;
  MappedFile(Fd fd, std::string path, std::byte* data, std::uint64_t size, dev_t dev, ino_t ino)
      : fd_(std::move(fd)),
        path_(std::move(path)),
        data_(data),
        size_(size),
        dev_(dev),
        ino_(ino) {}
  Fd fd_;
  std::string path_;
  std::byte* data_;
  std::uint64_t size_;
  dev_t dev_;
  ino_t ino_;
};

// `path` sized to exactly `size` bytes (created if absent, never truncated to
// zero first, missing pages reserved so a full memory filesystem fails here
// with ResourceExhausted rather than with SIGBUS later) and mapped read-write;
// this process's existing mapping of the same file is reused. Thread-safe.
Result<std::shared_ptr<MappedFile>> map_for_write(const std::string& path, std::uint64_t size);

// An existing file mapped read-only-in-spirit (the tier does not write it),
// reusing this process's mapping of it. NotFound/… naming the path.
Result<std::shared_ptr<MappedFile>> map_existing(const std::string& path);

// Drops the kept mappings of files that were deleted (so their memory is
// freed once no caller holds them). Thread-safe.
void release_unlinked_mappings();

// How many mappings this process keeps (tests).
std::size_t kept_mappings();

}  // namespace kiln::ckpt::internal
