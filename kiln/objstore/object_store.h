// ObjectStore: an object store reached by URL, the storage floor below
// datasets (kiln/data) and checkpoints (kiln/ckpt). Small on purpose so tests
// can fake and decorate it (testing/forwarding_object_store.h).
//
//   file:///abs/dir      a directory (file_object_store.cc)
//   s3://bucket/prefix   S3 REST with Signature V4 (s3/s3_object_store.h)
//
// Keys are relative paths ("train/index.json"), relative to the URL's root.
// All calls block up to the deadline and are safe to call from several
// threads. Codes: NotFound for an absent key; Unavailable for transient
// failures that outlived the store's own bounded retries; DeadlineExceeded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::objstore {

// How a large object is best cut for a parallel upload: pieces of
// `part_bytes`, at most `parallelism` of them in flight (S3: S3Options'
// part_bytes and upload_parallelism). Writers of several objects at once
// (ChunkedUpload) follow it so they hold no more memory than one streaming
// upload does.
struct UploadShape {
  std::size_t part_bytes = std::size_t{16} << 20;
  int parallelism = 4;
};

struct ObjectInfo {
  std::string key;  // relative to the store's root
  std::uint64_t bytes = 0;
};

// An upload that was begun and neither committed nor aborted: what a writer
// that died mid-upload (SIGKILL, a lost host) leaves behind. S3 keeps (and
// bills) its parts until it is aborted.
struct PendingUpload {
  std::string key;  // the key it would have published, relative to the root
  std::string id;   // S3: the UploadId; file://: the temp file, relative to the root
};

// An object being uploaded, from its start, by one thread. Nothing is
// visible under its key until commit() returns ok (S3: the multipart upload
// completes; file://: the rename), so a writer that dies mid-upload leaves
// no object, only parts or a temp file that abort() or the store's cleanup
// removes. Memory is bounded by the implementation (S3: a few parts).
class ObjectWriter {
 public:
  // Aborts the upload unless it was committed.
  virtual ~ObjectWriter() = default;
  // May block while the parts already handed over are uploaded (bounded
  // memory). A failure is final: the writer must then be aborted.
  virtual Status append(const void* data, std::size_t n) = 0;
  // Uploads what is left and publishes the object; blocks until it is
  // durable in the store. On failure nothing is published (call abort()).
  virtual Status commit() = 0;
  // Drops the upload (S3: AbortMultipartUpload; file://: the temp file).
  // Best effort, idempotent, never after a successful commit().
  virtual void abort() = 0;
  // Bytes appended so far.
  virtual std::uint64_t bytes() const = 0;
};

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // Copies object `key` to the local file `dst` (created or truncated).
  // NotFound if absent; Unavailable for transient failures (retry with backoff).
  virtual Status get_to_file(const std::string& key, const std::string& dst, Deadline deadline) = 0;

  // Reads a small object whole (index.json).
  virtual Result<std::string> get(const std::string& key, Deadline deadline) = 0;

  // Uploads the local file `src` as `key`.
  virtual Status put_file(const std::string& key, const std::string& src, Deadline deadline) = 0;

  // Starts a streaming upload of `key`; `deadline` bounds all of it, commit
  // included. The default spools to a local temp file and put_file()s it at
  // commit; file:// and s3:// stream (s3: parts uploaded in parallel).
  virtual Result<std::unique_ptr<ObjectWriter>> open_writer(const std::string& key,
                                                            Deadline deadline);

  // Stores `bytes` as `key` (small objects: manifests, indexes).
  virtual Status put(const std::string& key, std::string_view bytes, Deadline deadline);

  // put(), unless an object is under `key` already: then AlreadyExists and
  // nothing changes, decided by the store at the moment of the write, so of
  // two concurrent calls at most one succeeds (S3: a conditional write,
  // If-None-Match: *; file://: link(2)). The default, and an S3 endpoint
  // that ignores the header (s3rver), stores unconditionally: a caller that
  // must not overwrite checks first as well. A retried request whose first
  // attempt landed gets AlreadyExists too (the caller reads the object back).
  virtual Status put_if_absent(const std::string& key, std::string_view bytes, Deadline deadline);

  // Reads `length` bytes at `offset`; fewer only where the object ends first.
  // InvalidArgument if `offset` is past the end.
  virtual Result<std::string> get_range(const std::string& key, std::uint64_t offset,
                                        std::uint64_t length, Deadline deadline) = 0;

  // The object's size. NotFound if absent.
  virtual Result<ObjectInfo> head(const std::string& key, Deadline deadline) = 0;

  // Every object whose key starts with `prefix` ("" = all), sorted by key.
  virtual Result<std::vector<ObjectInfo>> list(const std::string& prefix, Deadline deadline) = 0;

  // Deletes `key`; removing an absent key is not an error (as in S3).
  virtual Status remove(const std::string& key, Deadline deadline) = 0;

  // Deletes `keys` (a step's chunk objects; absent ones are not an error).
  // The default: one remove() each, from up to upload_shape().parallelism
  // threads at once; s3:// sends DeleteObjects requests of up to 1000 keys.
  // Returns the first failure; the other keys are still tried.
  virtual Status remove_many(const std::vector<std::string>& keys, Deadline deadline);

  // Uploads under `prefix` begun and never committed or aborted (S3:
  // ListMultipartUploads; file://: writers' temp files), sorted by key. Some
  // may still be in flight: only a caller that knows no writer is at work on
  // a key may abort its uploads. The default (a store whose writers spool
  // locally) has none.
  virtual Result<std::vector<PendingUpload>> list_pending_uploads(const std::string& prefix,
                                                                  Deadline deadline);

  // Drops one (S3: AbortMultipartUpload, which frees its parts; file://: the
  // temp file). One already gone is not an error.
  virtual Status abort_pending_upload(const PendingUpload& upload, Deadline deadline);

  // The part size and in-flight count this store's uploads use (UploadShape).
  virtual UploadShape upload_shape() const { return {}; }

  // A human-readable location for errors ("file:///data/mnist").
  virtual std::string describe() const = 0;
};

// True for "s3://..." and "file://..." (a plain path is not a URL here).
bool is_object_store_url(std::string_view s);

// Opens the store for a URL; a plain path is treated as file://. s3:// takes
// its endpoint, region and credentials from the environment (S3Options).
Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& url);

}  // namespace kiln::objstore
