// open_object_store: the one place a URL (dataset or checkpoint) becomes a store.
#include "kiln/objstore/object_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <thread>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/objstore/file_object_store.h"
#include "kiln/objstore/s3/s3_object_store.h"

namespace kiln::objstore {

namespace {

// ObjectStore::open_writer's default: the bytes go to an unlinked-on-exit
// temp file, uploaded whole by put_file at commit.
class SpoolWriter final : public ObjectWriter {
 public:
  SpoolWriter(ObjectStore* store, std::string key, Deadline deadline, Fd fd, std::string path)
      : store_(store),
        key_(std::move(key)),
        deadline_(deadline),
        fd_(std::move(fd)),
        path_(std::move(path)) {}
  ~SpoolWriter() override { abort(); }

  Status append(const void* data, std::size_t n) override {
    KILN_RETURN_IF_ERROR(
        write_all(fd_.get(), std::string_view(static_cast<const char*>(data), n), path_));
    bytes_ += n;
    return Status::ok();
  }
  Status commit() override {
    Status s = store_->put_file(key_, path_, deadline_);
    if (s.is_ok()) abort();  // only the spool file is left to drop
    return s;
  }
  void abort() override {
    if (path_.empty()) return;
    ::unlink(path_.c_str());
    path_.clear();
    fd_.reset();
  }
  std::uint64_t bytes() const override { return bytes_; }

 private:
  ObjectStore* store_;
  std::string key_;
  Deadline deadline_;
  Fd fd_;
  std::string path_;
  std::uint64_t bytes_ = 0;
};

}  // namespace

Result<std::unique_ptr<ObjectWriter>> ObjectStore::open_writer(const std::string& key,
                                                               Deadline deadline) {
  const char* tmp = std::getenv("TMPDIR");
  std::string path =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/kiln-upload-XXXXXX";
  Fd fd(::mkostemp(path.data(), O_CLOEXEC));
  if (!fd.valid()) return errno_status("spool the upload of " + key + ": mkstemp " + path, errno);
  return std::unique_ptr<ObjectWriter>(
      new SpoolWriter(this, key, deadline, std::move(fd), std::move(path)));
}

Result<std::vector<PendingUpload>> ObjectStore::list_pending_uploads(const std::string&,
                                                                    Deadline) {
  return std::vector<PendingUpload>{};
}

Status ObjectStore::abort_pending_upload(const PendingUpload&, Deadline) { return Status::ok(); }

Status ObjectStore::put(const std::string& key, std::string_view bytes, Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(auto w, open_writer(key, deadline));
  Status s = w->append(bytes.data(), bytes.size());
  if (s.is_ok()) s = w->commit();
  if (!s.is_ok()) w->abort();
  return s;
}

Status ObjectStore::put_if_absent(const std::string& key, std::string_view bytes,
                                  Deadline deadline) {
  return put(key, bytes, deadline);
}

Status ObjectStore::remove_many(const std::vector<std::string>& keys, Deadline deadline) {
  if (keys.empty()) return Status::ok();  // most commits: no strays, no thread
  const int threads =
      std::max(1, std::min(upload_shape().parallelism, static_cast<int>(keys.size())));
  std::atomic<std::size_t> next{0};
  std::vector<Status> failed(static_cast<std::size_t>(threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (std::size_t i; (i = next.fetch_add(1)) < keys.size();) {
        Status s = remove(keys[i], deadline);
        if (!s.is_ok() && failed[static_cast<std::size_t>(t)].is_ok()) {
          failed[static_cast<std::size_t>(t)] = s;
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  for (auto& s : failed) KILN_RETURN_IF_ERROR(s);
  return Status::ok();
}

bool is_object_store_url(std::string_view s) {
  return s.rfind("s3://", 0) == 0 || s.rfind("file://", 0) == 0;
}

Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& url) {
  std::string path;
  if (url.rfind("file://", 0) == 0) {
    path = url.substr(7);
  } else if (url.rfind("s3://", 0) == 0) {
    KILN_ASSIGN_OR_RETURN(auto s3, s3::S3ObjectStore::open(url));
    return std::unique_ptr<ObjectStore>(std::move(s3));
  } else if (url.find("://") != std::string::npos) {
    return invalid_argument(fmt::format("object store '{}': unknown scheme (file://, s3://)", url));
  } else {
    path = url;
  }
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path.empty()) return invalid_argument("object store '" + url + "': empty path");
  std::error_code ec;
  auto abs = std::filesystem::absolute(path, ec);
  if (ec) return invalid_argument("object store '" + url + "': " + ec.message());
  return make_file_object_store(abs.string());
}

}  // namespace kiln::objstore
