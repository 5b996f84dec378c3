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
      uploaders_(store->options().upload_parallelism, deadline,
                 "upload of " + store->describe_key(key_),
                 [this](BoundedUploaders::Piece& part) { return send(part); }) {
  buf_.reserve(part_bytes_);
}

S3ObjectWriter::~S3ObjectWriter() { abort(); }

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
  if (upload_id_.empty()) {
    KILN_ASSIGN_OR_RETURN(upload_id_, store_->initiate_multipart(key_, deadline_));
  }
  KILN_RETURN_IF_ERROR(uploaders_.hand_over("", std::move(buf_)));
  buf_ = uploaders_.take_spare();
  buf_.reserve(part_bytes_);
  return Status::ok();
}

Status S3ObjectWriter::send(BoundedUploaders::Piece& part) {
  const int number = static_cast<int>(part.index) + 1;
  S3Request req;
  req.body_view = part.bytes;
  KILN_ASSIGN_OR_RETURN(std::string etag,
                        store_->upload_part(key_, upload_id_, number, std::move(req), deadline_));
  std::lock_guard<std::mutex> l(mu_);
  etags_[number] = std::move(etag);
  return Status::ok();
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
  KILN_RETURN_IF_ERROR(uploaders_.drain());
  uploaders_.stop(Status::ok());
  std::vector<std::string> etags;
  for (auto& [number, etag] : etags_) etags.push_back(etag);
  KILN_RETURN_IF_ERROR(store_->complete_multipart(key_, upload_id_, etags, deadline_));
  done_ = true;
  return Status::ok();
}

void S3ObjectWriter::abort() {
  if (done_) return;
  done_ = true;
  // Parts not yet sent never will be; one in progress finishes (bounded by
  // the deadline).
  uploaders_.stop(cancelled("upload aborted"));
  if (!upload_id_.empty()) store_->abort_multipart(key_, upload_id_);
}

}  // namespace kiln::objstore::s3
