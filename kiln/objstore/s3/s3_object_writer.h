// S3ObjectWriter: Note [S3 streaming upload] (s3_object_store.h).
//
// append() fills a part buffer of S3Options::part_bytes; a full buffer is
// handed to one of upload_parallelism uploader threads (started with the
// first full part, which also initiates the multipart upload) once a byte
// after it arrives, and append() goes on with a fresh buffer, blocking only
// while upload_parallelism parts are already in flight. So at most
// (upload_parallelism + 1) parts are held. commit() uploads the last part,
// waits for all of them and completes the upload; an object of at most one
// part is a single PUT (Note [One part is one PUT], .cc). Any failure
// (after the store's own retries, Note [S3 retries]) is kept, stops further
// parts, and is returned by the next append() or commit(); abort(), or the
// destructor, then aborts the multipart upload so no parts linger. The
// queue of uploader threads is objstore::BoundedUploaders.
// One thread uses a writer; its uploader threads are its own.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "kiln/objstore/bounded_uploaders.h"
#include "kiln/objstore/s3/s3_object_store.h"

namespace kiln::objstore::s3 {

class S3ObjectWriter final : public ObjectWriter {
 public:
  // `store` must outlive the writer.
  S3ObjectWriter(S3ObjectStore* store, std::string key, Deadline deadline);
  ~S3ObjectWriter() override;

  Status append(const void* data, std::size_t n) override;
  Status commit() override;
  void abort() override;
  std::uint64_t bytes() const override { return bytes_; }

 private:
  // Queues buf_ as the next part, after waiting for room.
  Status hand_over();
  // On an uploader thread: uploads one part (number = piece index + 1).
  Status send(BoundedUploaders::Piece& part);

  S3ObjectStore* const store_;
  const std::string key_;
  const Deadline deadline_;
  const std::size_t part_bytes_;

  // The caller's thread only (the uploaders read upload_id_, set before the
  // first part is handed over).
  std::string buf_;          // the part being filled
  std::uint64_t bytes_ = 0;  // appended so far
  std::string upload_id_;    // empty until the first part is handed over
  bool done_ = false;        // committed or aborted

  std::mutex mu_;
  std::map<int, std::string> etags_;  // guarded by mu_: part number -> ETag
  // Last: its threads, which call send(), stop before the members above go.
  BoundedUploaders uploaders_;
};

}  // namespace kiln::objstore::s3
