#include "kiln/ckpt/internal/snapshot_stream.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "kiln/base/deadline.h"

namespace kiln::ckpt::internal {
namespace {

using comm::DataType;

std::size_t chunk_bytes(std::uint64_t total, std::uint64_t round) {
  const std::uint64_t off = round * kStreamChunk;
  return off >= total ? 0 : static_cast<std::size_t>(std::min<std::uint64_t>(kStreamChunk, total - off));
}

std::uint64_t rounds_for(std::uint64_t bytes) { return (bytes + kStreamChunk - 1) / kStreamChunk; }

// Adds the time from its construction to its destruction to `*into`.
class Timed {
 public:
  explicit Timed(double* into) : into_(into), t0_(Clock::now()) {}
  ~Timed() { *into_ += seconds_since(t0_); }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  double* into_;
  Clock::time_point t0_;
};

}  // namespace

std::byte* Bounce::send(int slot) {
  if (buf_.empty()) buf_.resize(4 * kStreamChunk);
  return buf_.data() + static_cast<std::size_t>(slot) * kStreamChunk;
}

std::byte* Bounce::recv(int slot) { return send(2 + slot); }

MemorySource::MemorySource(std::vector<Region> regions, std::shared_ptr<const void> keep)
    : regions_(std::move(regions)), keep_(std::move(keep)) {
  std::uint64_t at = 0;
  for (const auto& r : regions_) {
    starts_.push_back(at);
    at += r.size;
  }
}

Result<const std::byte*> MemorySource::chunk(std::uint64_t offset, std::size_t n,
                                             std::byte* bounce) {
  // The region holding `offset`: the last one starting at or before it.
  auto it = std::upper_bound(starts_.begin(), starts_.end(), offset);
  std::size_t i = static_cast<std::size_t>(it - starts_.begin()) - 1;
  if (offset + n <= starts_[i] + regions_[i].size) return regions_[i].data + (offset - starts_[i]);
  // Across regions: gathered.
  for (std::size_t done = 0; done < n; ++i) {
    if (i >= regions_.size()) return internal_error("MemorySource: chunk past the regions' end");
    const std::uint64_t from = offset + done - starts_[i];
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n - done, regions_[i].size - from));
    std::memcpy(bounce + done, regions_[i].data + from, take);
    done += take;
  }
  return static_cast<const std::byte*>(bounce);
}

Result<Fd> open_for_overwrite(const std::string& path, std::uint64_t size) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status("create " + path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return errno_status("stat " + path, errno);
  const auto have = static_cast<std::uint64_t>(st.st_size);
  if (have != size && ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return errno_status(fmt::format("resize {} to {} bytes", path, size), errno);
  }
  // Pages it lacks are reserved now, so a full tmpfs fails here with ENOSPC
  // instead of mid-transfer. A recycled file already has them all.
  const auto allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
  if (size > 0 && (have < size || allocated < size)) {
    int err = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(size));
    if (err != 0) {
      return errno_status(fmt::format("allocate {} bytes for {}", size, path), err);
    }
  }
  return fd;
}

std::byte* MappedSink::place(std::uint64_t offset, std::size_t, std::byte*) {
  return file_->data() + offset;
}

Status stream_ring(comm::Communicator& comm, int to, ChunkSource* source, std::uint64_t send_bytes,
                   int from, ChunkSink* sink, std::uint64_t recv_bytes,
                   std::chrono::milliseconds timeout, Bounce& bounce, Status* local_error,
                   FileCopy* meanwhile, StreamTimes* times) {
  StreamTimes unused;
  StreamTimes& t = times != nullptr ? *times : unused;
  t = StreamTimes{};
  Timed all(&t.total_s);
  if (source == nullptr) send_bytes = 0;
  if (sink == nullptr) recv_bytes = 0;
  // Every rank runs the same number of rounds (a sendrecv per round, empty
  // where a side has nothing left), so each send meets its receive.
  std::int64_t rounds =
      static_cast<std::int64_t>(std::max(rounds_for(send_bytes), rounds_for(recv_bytes)));
  KILN_RETURN_IF_ERROR(
      comm.allreduce(&rounds, 1, DataType::kInt64, comm::ReduceOp::kMax)->wait(timeout));
  *local_error = Status::ok();
  auto note = [&](Status s) {
    if (local_error->is_ok() && !s.is_ok()) *local_error = std::move(s);
  };
  comm::WorkPtr inflight[2];
  std::byte* received_at[2] = {nullptr, nullptr};
  // Finishes round k: its transfer, then the sink's part (in round order).
  auto finish = [&](std::int64_t k) -> Status {
    if (k < 0) return Status::ok();
    const int slot = static_cast<int>(k % 2);
    if (!inflight[slot]) return Status::ok();
    {
      Timed waiting(&t.wait_s);
      KILN_RETURN_IF_ERROR(inflight[slot]->wait(timeout));
    }
    inflight[slot].reset();
    const std::size_t n = chunk_bytes(recv_bytes, static_cast<std::uint64_t>(k));
    if (n > 0) {
      Timed sinking(&t.sink_s);
      note(sink->done(static_cast<std::uint64_t>(k) * kStreamChunk, n, received_at[slot]));
    }
    return Status::ok();
  };
  for (std::int64_t k = 0; k < rounds; ++k) {
    const int slot = static_cast<int>(k % 2);
    KILN_RETURN_IF_ERROR(finish(k - 2));  // frees this slot's buffers
    const auto off = static_cast<std::uint64_t>(k) * kStreamChunk;
    const std::size_t out_n = chunk_bytes(send_bytes, static_cast<std::uint64_t>(k));
    const std::size_t in_n = chunk_bytes(recv_bytes, static_cast<std::uint64_t>(k));
    const std::byte* out = nullptr;
    if (out_n > 0) {
      Timed sourcing(&t.source_s);
      auto c = source->chunk(off, out_n, bounce.send(slot));
      if (c.is_ok()) {
        out = *c;
      } else {
        note(c.status());
        std::memset(bounce.send(slot), 0, out_n);
        out = bounce.send(slot);
      }
    }
    received_at[slot] = in_n > 0 ? sink->place(off, in_n, bounce.recv(slot)) : nullptr;
    inflight[slot] = comm.sendrecv(out, out_n, to, received_at[slot], in_n, from, DataType::kUInt8);
    if (meanwhile != nullptr) {
      Timed copying(&t.meanwhile_s);
      meanwhile->step(kStreamChunk);
    }
  }
  for (std::int64_t k = std::max<std::int64_t>(0, rounds - 2); k < rounds; ++k) {
    KILN_RETURN_IF_ERROR(finish(k));
  }
  return Status::ok();
}

void FileCopy::step(std::uint64_t bytes) {
  constexpr std::size_t kPiece = std::size_t{1} << 20;
  for (std::uint64_t copied = 0; copied < bytes && !done(); copied += kPiece) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kPiece, file_.size() - off_));
    status_ = sink_.done(off_, n, file_.data() + off_);
    off_ += n;
  }
}

Status FileCopy::finish() {
  step(file_.size());
  return status_;
}

}  // namespace kiln::ckpt::internal
