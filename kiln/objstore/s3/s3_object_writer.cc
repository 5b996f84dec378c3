#include "kiln/objstore/s3/s3_object_writer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace kiln::objstore::s3 {

S3ObjectWriter::S3ObjectWriter(S3ObjectStore* store, std::string key, Deadline deadline)
    : store_(store),
      key_(std::move(key)),
      deadline_(deadline),
      part_bytes_(static_cast<std::size_t>(store->options().part_bytes)),
      parallelism_(store->options().upload_parallelism) {
  buf_.reserve(part_bytes_);
}

S3ObjectWriter::~S3ObjectWriter() { abort(); }

Status S3ObjectWriter::first_failure() {
  std::lock_guard<std::mutex> l(mu_);
  return failed_;
}

Status S3ObjectWriter::append(const void* data, std::size_t n) {
  if (done_) return failed_precondition("upload of " + store_->describe_key(key_) + " is over");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    // A full part goes up only once a byte after it arrives: an object of
    // at most one part is one PUT at commit, never a multipart upload of
    // one part (Note [One part is one PUT]).
    if (buf_.size() == part_bytes_) KILN_RETURN_IF_ERROR(hand_over());
    std::size_t k = std::min(n, part_bytes_ - buf_.size());
    buf_.append(p, k);
    p += k;
    n -= k;
    bytes_ += k;
  }
  return Status::ok();
}

Status S3ObjectWriter::hand_over() {
  {
    std::unique_lock<std::mutex> l(mu_);
    bool room = cv_.wait_until(l, deadline_.at(),
                               [&] { return pending_ < parallelism_ || !failed_.is_ok(); });
    if (!failed_.is_ok()) return failed_;
    if (!room) {
      return deadline_exceeded(fmt::format("upload of {}: deadline passed with {} parts in flight",
                                           store_->describe_key(key_), pending_));
    }
  }
  if (upload_id_.empty()) {
    KILN_ASSIGN_OR_RETURN(upload_id_, store_->initiate_multipart(key_, deadline_));
    for (int i = 0; i < parallelism_; ++i) uploaders_.emplace_back([this] { uploader(); });
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back(Part{next_part_++, std::move(buf_)});
    ++pending_;
  }
  cv_.notify_all();
  buf_ = std::string();
  buf_.reserve(part_bytes_);
  return Status::ok();
}

void S3ObjectWriter::uploader() {
  while (true) {
    Part part;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      part = std::move(queue_.front());
      queue_.pop_front();
      if (!failed_.is_ok()) {  // the upload is lost anyway: do not send more
        --pending_;
        cv_.notify_all();
        continue;
      }
    }
    S3Request req;
    req.body = std::move(part.bytes);
    auto etag = store_->upload_part(key_, upload_id_, part.number, std::move(req), deadline_);
    std::lock_guard<std::mutex> l(mu_);
    if (etag.is_ok()) {
      etags_[part.number] = std::move(etag).value();
    } else if (failed_.is_ok()) {
      failed_ = etag.status();
    }
    --pending_;
    cv_.notify_all();
  }
}

void S3ObjectWriter::stop_uploaders() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : uploaders_) t.join();
  uploaders_.clear();
}

// Note [One part is one PUT]: the writer used to hand a part over as soon
// as its buffer filled, so an object of exactly part_bytes (every object of
// `kiln bench ckpt`'s raw-PUT baseline) went up as initiate + one part +
// complete. On s3rver the completion reads the part back and writes the
// object again, which doubled the server's work per byte: the "raw PUTs"
// took 10.3-11.4 s per GiB against 4.5-5.7 s for the same PUTs made
// directly with libcurl or Python (docs/perf.md, issue 19, session 13).
// Real S3 pays the two extra requests per object too.
Status S3ObjectWriter::commit() {
  if (done_) return failed_precondition("upload of " + store_->describe_key(key_) + " is over");
  if (upload_id_.empty()) {
    // Never filled a part: one PUT (at most one part: the store's own put).
    Status s = store_->put(key_, buf_, deadline_);
    done_ = s.is_ok();
    return s;
  }
  if (!buf_.empty()) KILN_RETURN_IF_ERROR(hand_over());
  {
    std::unique_lock<std::mutex> l(mu_);
    bool drained = cv_.wait_until(l, deadline_.at(), [&] { return pending_ == 0; });
    if (!failed_.is_ok()) return failed_;
    if (!drained) {
      return deadline_exceeded(fmt::format("upload of {}: deadline passed with {} parts in flight",
                                           store_->describe_key(key_), pending_));
    }
  }
  stop_uploaders();
  std::vector<std::string> etags;
  for (auto& [number, etag] : etags_) etags.push_back(etag);
  KILN_RETURN_IF_ERROR(store_->complete_multipart(key_, upload_id_, etags, deadline_));
  done_ = true;
  return Status::ok();
}

void S3ObjectWriter::abort() {
  if (done_) return;
  done_ = true;
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.clear();  // parts not yet sent never will be
    if (failed_.is_ok()) failed_ = cancelled("upload aborted");
  }
  // An uploader in the middle of a part finishes it (bounded by the deadline).
  stop_uploaders();
  if (!upload_id_.empty()) store_->abort_multipart(key_, upload_id_);
}

}  // namespace kiln::objstore::s3
