// file:// object store: a directory. Copies go through a temp name and a
// rename so a reader of the destination never sees a partial object.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "kiln/data/internal/file_util.h"
#include "kiln/data/object_store.h"

namespace kiln::data {
namespace {

Status copy_file(const std::string& src, const std::string& dst, Deadline deadline) {
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return errno_status("open " + src, errno);
  int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    int e = errno;
    ::close(in);
    return errno_status("create " + dst, e);
  }
  Status s;
  std::vector<char> buf(4 << 20);
  while (s.is_ok()) {
    if (deadline.expired()) {
      s = deadline_exceeded(fmt::format("copy {} to {}: deadline passed", src, dst));
      break;
    }
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      s = errno_status("read " + src, errno);
      break;
    }
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::write(out, buf.data() + off, static_cast<std::size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        s = errno_status("write " + dst, errno);
        break;
      }
      off += w;
    }
  }
  ::close(in);
  if (::close(out) != 0 && s.is_ok()) s = errno_status("close " + dst, errno);
  return s;
}

class FileObjectStore final : public ObjectStore {
 public:
  explicit FileObjectStore(std::string root) : root_(std::move(root)) {}

  Status get_to_file(const std::string& key, const std::string& dst, Deadline deadline) override {
    return copy_file(root_ + "/" + key, dst, deadline).with_context("get " + describe_key(key));
  }

  Result<std::string> get(const std::string& key, Deadline) override {
    auto r = internal::read_file(root_ + "/" + key);
    if (!r) return r.status().with_context("get " + describe_key(key));
    return r;
  }

  Status put_file(const std::string& key, const std::string& src, Deadline deadline) override {
    std::string dst = root_ + "/" + key;
    KILN_RETURN_IF_ERROR(
        internal::make_dirs(std::filesystem::path(dst).parent_path().string()));
    std::string tmp = fmt::format("{}.tmp.{}", dst, ::getpid());
    Status s = copy_file(src, tmp, deadline);
    if (s.is_ok() && ::rename(tmp.c_str(), dst.c_str()) != 0) s = errno_status("rename " + tmp, errno);
    if (!s.is_ok()) ::unlink(tmp.c_str());
    return s.with_context("put " + describe_key(key));
  }

  std::string describe() const override { return "file://" + root_; }

 private:
  std::string describe_key(const std::string& key) const { return describe() + "/" + key; }
  std::string root_;
};

}  // namespace

Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& url) {
  std::string path;
  if (url.rfind("file://", 0) == 0) {
    path = url.substr(7);
  } else if (url.rfind("s3://", 0) == 0) {
    return failed_precondition(fmt::format(
        "object store {}: s3:// is not implemented yet in this build (issue 3); use file://", url));
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
  return std::unique_ptr<ObjectStore>(new FileObjectStore(abs.string()));
}

}  // namespace kiln::data
