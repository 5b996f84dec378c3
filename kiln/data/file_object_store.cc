// file:// object store: a directory. Copies go through a temp name and a
// rename so a reader of the destination never sees a partial object.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "kiln/data/file_object_store.h"
#include "kiln/data/internal/file_util.h"

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

  Result<std::string> get_range(const std::string& key, std::uint64_t offset, std::uint64_t length,
                                Deadline) override {
    std::string path = root_ + "/" + key;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno_status("get_range " + describe_key(key), errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      return errno_status("stat " + describe_key(key), e);
    }
    auto size = static_cast<std::uint64_t>(st.st_size);
    if (offset > size || (offset == size && length > 0)) {
      ::close(fd);
      return invalid_argument(fmt::format("get_range {}: offset {} is past the end ({} bytes)",
                                          describe_key(key), offset, size));
    }
    std::string out(std::min(length, size - offset), '\0');
    std::size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd, out.data() + done, out.size() - done,
                          static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int e = n < 0 ? errno : EIO;
        ::close(fd);
        return errno_status("read " + describe_key(key), e);
      }
      done += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return out;
  }

  Result<ObjectInfo> head(const std::string& key, Deadline) override {
    struct stat st {};
    std::string path = root_ + "/" + key;
    if (::stat(path.c_str(), &st) != 0) return errno_status("head " + describe_key(key), errno);
    if (!S_ISREG(st.st_mode)) return not_found("head " + describe_key(key) + ": not a file");
    return ObjectInfo{key, static_cast<std::uint64_t>(st.st_size)};
  }

  Result<std::vector<ObjectInfo>> list(const std::string& prefix, Deadline) override {
    namespace fs = std::filesystem;
    std::vector<ObjectInfo> out;
    std::error_code ec;
    // Only the directories the prefix can reach: "train/shard-" lists train/.
    std::string dir = root_;
    if (auto slash = prefix.rfind('/'); slash != std::string::npos) {
      dir += "/" + prefix.substr(0, slash);
    }
    if (!fs::is_directory(dir, ec)) return out;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      std::string key = fs::relative(it->path(), root_, ec).string();
      // Temp names of a put in flight are not objects yet.
      if (key.find(".tmp.") != std::string::npos || key.rfind(prefix, 0) != 0) continue;
      out.push_back({key, static_cast<std::uint64_t>(it->file_size(ec))});
    }
    if (ec) return errno_status("list " + describe_key(prefix), ec.value());
    std::sort(out.begin(), out.end(),
              [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
    return out;
  }

  Status remove(const std::string& key, Deadline) override {
    std::string path = root_ + "/" + key;
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return errno_status("remove " + describe_key(key), errno);
    }
    return Status::ok();
  }

  std::string describe() const override { return "file://" + root_; }

 private:
  std::string describe_key(const std::string& key) const { return describe() + "/" + key; }
  std::string root_;
};

}  // namespace

std::unique_ptr<ObjectStore> make_file_object_store(std::string root) {
  return std::make_unique<FileObjectStore>(std::move(root));
}

}  // namespace kiln::data
