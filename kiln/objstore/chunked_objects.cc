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
    : store_(store), key_of_(std::move(key_of)), deadline_(deadline), shape_(store.upload_shape()) {
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
  {
    std::unique_lock<std::mutex> l(mu_);
    bool room = cv_.wait_until(
        l, deadline_.at(), [&] { return in_flight_ < shape_.parallelism || !failed_.is_ok(); });
    if (!failed_.is_ok()) return failed_;
    if (!room) {
      return deadline_exceeded(fmt::format("chunked upload to {}: deadline passed with {} in flight",
                                           store_.describe(), in_flight_));
    }
  }
  if (uploaders_.empty()) {
    for (int i = 0; i < shape_.parallelism; ++i) uploaders_.emplace_back([this] { uploader(); });
  }
  std::string key = key_of_(next_index_);
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back(Pending{next_index_++, std::move(key), std::move(buf_)});
    ++in_flight_;
  }
  cv_.notify_all();
  // A buffer a finished put gave back, if any: its pages are mapped
  // already, so filling it costs no page faults (a fresh 16 MiB buffer
  // costs ~4000 and the kernel's zeroing of them).
  buf_ = std::string();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!spare_.empty()) {
      buf_ = std::move(spare_.back());
      spare_.pop_back();
    }
  }
  buf_.clear();
  buf_.reserve(shape_.part_bytes);
  return Status::ok();
}

void ChunkedUpload::uploader() {
  while (true) {
    Pending chunk;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      chunk = std::move(queue_.front());
      queue_.pop_front();
      if (!failed_.is_ok()) {  // the upload is lost anyway: do not send more
        --in_flight_;
        cv_.notify_all();
        continue;
      }
    }
    StoredChunk done{chunk.key, chunk.bytes.size(), xxh3(chunk.bytes.data(), chunk.bytes.size())};
    Status s = store_.put(chunk.key, chunk.bytes, deadline_);
    std::lock_guard<std::mutex> l(mu_);
    if (s.is_ok()) {
      stored_[chunk.index] = std::move(done);
    } else if (failed_.is_ok()) {
      failed_ = s;
    }
    spare_.push_back(std::move(chunk.bytes));
    --in_flight_;
    cv_.notify_all();
  }
}

void ChunkedUpload::stop_uploaders() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : uploaders_) t.join();
  uploaders_.clear();
}

Result<std::vector<StoredChunk>> ChunkedUpload::finish() {
  if (done_) return failed_precondition("chunked upload to " + store_.describe() + " is over");
  if (!buf_.empty() || next_index_ == 0) KILN_RETURN_IF_ERROR(hand_over());
  {
    std::unique_lock<std::mutex> l(mu_);
    bool drained = cv_.wait_until(l, deadline_.at(), [&] { return in_flight_ == 0; });
    if (!failed_.is_ok()) return failed_;
    if (!drained) {
      return deadline_exceeded(fmt::format("chunked upload to {}: deadline passed with {} in flight",
                                           store_.describe(), in_flight_));
    }
  }
  stop_uploaders();
  done_ = true;
  std::vector<StoredChunk> out;
  out.reserve(stored_.size());
  for (auto& [index, chunk] : stored_) out.push_back(std::move(chunk));
  return out;
}

void ChunkedUpload::abort() {
  if (done_) return;
  done_ = true;
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.clear();  // chunks not yet sent never will be
    if (failed_.is_ok()) failed_ = cancelled("chunked upload aborted");
  }
  // An uploader in the middle of a put finishes it (bounded by the deadline).
  stop_uploaders();
  // What is left is ordinary objects that the step's cleanup would find too;
  // removing them now keeps a failed writer from leaving anything.
  const Deadline cleanup = Deadline::after_seconds(10);
  for (const auto& [index, chunk] : stored_) {
    Status s = store_.remove(chunk.key, cleanup);
    if (!s.is_ok()) {
      log()->warn("chunked upload aborted: {} left behind ({})", chunk.key, s.to_string());
    }
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
