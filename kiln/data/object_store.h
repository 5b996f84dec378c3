// ObjectStore: the remote tier (an object store reached by URL). Small on
// purpose so tests can fake and decorate it (fault injection).
//
//   file:///abs/dir      a directory (file_object_store.cc)
//   s3://bucket/prefix   S3 REST with Signature V4 (s3/s3_object_store.h)
//
// Keys are relative paths ("train/index.json"), relative to the URL's root.
// All calls block up to the deadline and are safe to call from several
// threads. Codes: NotFound for an absent key; Unavailable for transient
// failures that outlived the store's own bounded retries; DeadlineExceeded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::data {

struct ObjectInfo {
  std::string key;  // relative to the store's root
  std::uint64_t bytes = 0;
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

  // A human-readable location for errors ("file:///data/mnist").
  virtual std::string describe() const = 0;
};

// Opens the store for a URL; a plain path is treated as file://. s3:// takes
// its endpoint, region and credentials from the environment (S3Options).
Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& url);

}  // namespace kiln::data
