#include "kiln/objstore/chunked_objects.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

#include "kiln/base/fd.h"
#include "kiln/base/logging.h"
#include "kiln/base/xxh3.h"

namespace kiln::objstore {

ChunkedUpload::ChunkedUpload(ObjectStore& store, std::function<std::string(std::size_t)> key_of,
                             Deadline deadline)
    : store_(store),
      key_of_(std::move(key_of)),
      deadline_(deadline),
      shape_(store.upload_shape()),
      uploaders_(shape_.parallelism, deadline, "chunked upload to " + store.describe(),
                 [this](BoundedUploaders::Piece& chunk) { return send(chunk); }) {
  buf_.reserve(shape_.part_bytes);
}

ChunkedUpload::~ChunkedUpload() { abort(); }

Status ChunkedUpload::append(const void* data, std::size_t n) {
  if (done_) return failed_precondition("chunked upload to " + store_.describe() + " is over");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    std::size_t k = std::min(n, shape_.part_bytes - buf_.size());
    buf_.append(p, k);
    p += k;
    n -= k;
    bytes_ += k;
    if (buf_.size() == shape_.part_bytes) KILN_RETURN_IF_ERROR(hand_over());
  }
  return Status::ok();
}

Status ChunkedUpload::hand_over() {
  KILN_RETURN_IF_ERROR(uploaders_.hand_over(key_of_(uploaders_.pieces()), std::move(buf_)));
  // A buffer a finished put gave back, if any: its pages are mapped
  // already, so filling it costs no page faults (a fresh 16 MiB buffer
  // costs ~4000 and the kernel's zeroing of them).
  buf_ = uploaders_.take_spare();
  buf_.reserve(shape_.part_bytes);
  return Status::ok();
}

Status ChunkedUpload::send(BoundedUploaders::Piece& chunk) {
  StoredChunk done{chunk.name, chunk.bytes.size(), xxh3(chunk.bytes.data(), chunk.bytes.size())};
  KILN_RETURN_IF_ERROR(store_.put(chunk.name, chunk.bytes, deadline_));
  std::lock_guard<std::mutex> l(mu_);
  stored_[chunk.index] = std::move(done);
  return Status::ok();
}

Result<std::vector<StoredChunk>> ChunkedUpload::finish() {
  if (done_) return failed_precondition("chunked upload to " + store_.describe() + " is over");
  if (!buf_.empty() || uploaders_.pieces() == 0) KILN_RETURN_IF_ERROR(hand_over());
  KILN_RETURN_IF_ERROR(uploaders_.drain());
  uploaders_.stop(Status::ok());
  done_ = true;
  std::vector<StoredChunk> out;
  out.reserve(stored_.size());
  for (auto& [index, chunk] : stored_) out.push_back(std::move(chunk));
  return out;
}

void ChunkedUpload::abort() {
  if (done_) return;
  done_ = true;
  // Chunks not yet sent never will be; a put in progress finishes (bounded
  // by the deadline) and counts as stored.
  uploaders_.stop(cancelled("chunked upload aborted"));
  // What is left is ordinary objects that the step's cleanup would find too;
  // removing them now keeps a failed writer from leaving anything.
  std::vector<std::string> keys;
  for (const auto& [index, chunk] : stored_) keys.push_back(chunk.key);
  Status s = store_.remove_many(keys, Deadline::after_seconds(10));
  if (!s.is_ok()) {
    log()->warn("chunked upload aborted: {} of its chunk(s) may be left behind ({})", keys.size(),
                s.to_string());
  }
  stored_.clear();
}

Status get_chunks_to_file(ObjectStore& store, const std::vector<StoredChunk>& chunks,
                          const std::string& dst, Deadline deadline) {
  Fd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!out.valid()) return errno_status("open " + dst, errno);
  std::vector<std::uint64_t> offsets;
  std::uint64_t total = 0;
  for (const auto& c : chunks) {
    offsets.push_back(total);
    total += c.bytes;
  }
  if (::ftruncate(out.get(), static_cast<off_t>(total)) != 0) {
    return errno_status("ftruncate " + dst, errno);
  }
  std::atomic<std::size_t> next{0};
  const int threads =
      std::max(1, std::min(store.upload_shape().parallelism, static_cast<int>(chunks.size())));
  std::vector<Status> failed(static_cast<std::size_t>(threads));
  auto fetch = [&](std::size_t i) -> Status {
    const StoredChunk& c = chunks[i];
    const std::string where = fmt::format("chunk {} of {} ({})", i, dst, store.describe() + "/" + c.key);
    KILN_ASSIGN_OR_RETURN(std::string bytes, store.get(c.key, deadline));
    if (bytes.size() != c.bytes) {
      return data_loss(
          fmt::format("{}: {} bytes, the listing of chunks says {}", where, bytes.size(), c.bytes));
    }
    std::uint64_t got = xxh3(bytes.data(), bytes.size());
    if (got != c.xxh3) {
      return data_loss(fmt::format("{}: checksum {:016x} != {:016x} (corrupt chunk)", where, got,
                                   c.xxh3));
    }
    for (std::size_t done = 0; done < bytes.size();) {
      ssize_t w = ::pwrite(out.get(), bytes.data() + done, bytes.size() - done,
                           static_cast<off_t>(offsets[i] + done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return errno_status("write " + where, errno);
      done += static_cast<std::size_t>(w);
    }
    return Status::ok();
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (std::size_t i; (i = next.fetch_add(1)) < chunks.size();) {
        Status s = fetch(i);
        if (!s.is_ok()) {
          failed[static_cast<std::size_t>(t)] = s;
          next = chunks.size();  // the others stop after their current chunk
          return;
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  for (auto& s : failed) KILN_RETURN_IF_ERROR(s);
  if (out.close() != 0) return errno_status("close " + dst, errno);
  return Status::ok();
}

}  // namespace kiln::objstore
