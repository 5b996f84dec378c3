// ObjectStore: the remote tier (an object store reached by URL). Small on
// purpose so tests can fake and decorate it (fault injection).
//
//   file:///abs/dir      a directory (FileObjectStore)
//   s3://bucket/prefix   not yet implemented (Unimplemented -> FailedPrecondition)
//
// Keys are relative paths ("train/index.json"). All calls block up to the
// deadline and are safe to call from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::data {

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

  // A human-readable location for errors ("file:///data/mnist").
  virtual std::string describe() const = 0;
};

// Opens the store for a URL; a plain path is treated as file://.
Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& url);

}  // namespace kiln::data
