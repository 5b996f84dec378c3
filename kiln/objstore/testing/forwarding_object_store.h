// A decorator base for tests: forwards every ObjectStore call to `inner`,
// so a fault-injecting store overrides only the calls it changes.
#pragma once

#include <string>
#include <vector>

#include "kiln/objstore/object_store.h"

namespace kiln::objstore::testing {

class ForwardingObjectStore : public ObjectStore {
 public:
  // `inner` must outlive this store.
  explicit ForwardingObjectStore(ObjectStore& inner) : inner_(inner) {}

  Status get_to_file(const std::string& key, const std::string& dst, Deadline d) override {
    return inner_.get_to_file(key, dst, d);
  }
  Result<std::string> get(const std::string& key, Deadline d) override {
    return inner_.get(key, d);
  }
  Status put_file(const std::string& key, const std::string& src, Deadline d) override {
    return inner_.put_file(key, src, d);
  }
  Result<std::unique_ptr<ObjectWriter>> open_writer(const std::string& key, Deadline d) override {
    return inner_.open_writer(key, d);
  }
  Status put(const std::string& key, std::string_view bytes, Deadline d) override {
    return inner_.put(key, bytes, d);
  }
  Status put_if_absent(const std::string& key, std::string_view bytes, Deadline d) override {
    return inner_.put_if_absent(key, bytes, d);
  }
  Result<std::string> get_range(const std::string& key, std::uint64_t offset, std::uint64_t length,
                                Deadline d) override {
    return inner_.get_range(key, offset, length, d);
  }
  Result<ObjectInfo> head(const std::string& key, Deadline d) override {
    return inner_.head(key, d);
  }
  Result<std::vector<ObjectInfo>> list(const std::string& prefix, Deadline d) override {
    return inner_.list(prefix, d);
  }
  Status remove(const std::string& key, Deadline d) override { return inner_.remove(key, d); }
  // remove_many is not forwarded: the default calls this store's remove()
  // for each key, so a decorator that fails removes fails them in batches too.
  Result<std::vector<PendingUpload>> list_pending_uploads(const std::string& prefix,
                                                          Deadline d) override {
    return inner_.list_pending_uploads(prefix, d);
  }
  Status abort_pending_upload(const PendingUpload& upload, Deadline d) override {
    return inner_.abort_pending_upload(upload, d);
  }
  UploadShape upload_shape() const override { return inner_.upload_shape(); }
  std::string describe() const override { return inner_.describe(); }

 protected:
  ObjectStore& inner_;
};

}  // namespace kiln::objstore::testing
