// file:// object store: a directory. A put is an atomic replace (Note
// [Atomic replace] in kiln/base/fs.h): a reader never sees a partial object,
// and once put_file returns the object survives a crash, so "manifest last"
// commits on a file:// remote hold as they do on S3.
#include "kiln/objstore/file_object_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/base/logging.h"

namespace kiln::objstore {
namespace {

constexpr std::size_t kCopyChunk = 4 << 20;

// Once per process: a root whose filesystem refuses hard links commits
// without put_if_absent's guarantee.
void warn_no_links_once(const std::string& path, int error) {
  static std::atomic<bool> warned{false};
  if (warned.exchange(true)) return;
  log()->warn("{}: this filesystem refuses hard links ({}); a conditional put falls back to a "
              "rename, and two concurrent commits of one step rely on the commit's own check",
              path, std::strerror(error));
}

// Appends all of `src` to `out`.
Status copy_into(const std::string& src, FsWriter& out, Deadline deadline) {
  Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return errno_status("open " + src, errno);
  std::vector<char> buf(kCopyChunk);
  while (true) {
    if (deadline.expired()) return deadline_exceeded(fmt::format("copy {}: deadline passed", src));
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_status("read " + src, errno);
    if (n == 0) return Status::ok();
    KILN_RETURN_IF_ERROR(out.append(buf.data(), static_cast<std::size_t>(n)));
  }
}

// Streams into a temp file beside the key's file; commit is the atomic
// replace of Note [Atomic replace] (kiln/base/fs.h), done step by step.
class FileObjectWriter final : public ObjectWriter {
 public:
  FileObjectWriter(Fs* fs, std::string path, std::string what)
      : fs_(fs), path_(std::move(path)), tmp_(temp_path_for(path_)), what_(std::move(what)) {}
  ~FileObjectWriter() override { abort(); }

  Status open() {
    KILN_RETURN_IF_ERROR(make_dirs(std::filesystem::path(path_).parent_path().string()));
    KILN_ASSIGN_OR_RETURN(out_, fs_->create(tmp_));
    return Status::ok();
  }
  Status append(const void* data, std::size_t n) override {
    if (out_ == nullptr) return failed_precondition(what_ + ": append after commit or abort");
    KILN_RETURN_IF_ERROR(out_->append(data, n).with_context(what_));
    bytes_ += n;
    return Status::ok();
  }
  Status commit() override {
    if (out_ == nullptr) return failed_precondition(what_ + ": commit after commit or abort");
    KILN_RETURN_IF_ERROR(out_->sync().with_context(what_));
    Status closed = out_->close();
    out_.reset();
    KILN_RETURN_IF_ERROR(closed.with_context(what_));
    KILN_RETURN_IF_ERROR(fs_->rename(tmp_, path_).with_context(what_));
    committed_ = true;
    return fs_->sync_dir(std::filesystem::path(path_).parent_path().string()).with_context(what_);
  }
  void abort() override {
    if (committed_) return;
    if (out_ != nullptr) (void)out_->close();
    out_.reset();
    (void)fs_->remove_tree(tmp_);
  }
  std::uint64_t bytes() const override { return bytes_; }

 private:
  Fs* const fs_;
  const std::string path_, tmp_, what_;
  std::unique_ptr<FsWriter> out_;
  std::uint64_t bytes_ = 0;
  bool committed_ = false;
};

class FileObjectStore final : public ObjectStore {
 public:
  FileObjectStore(std::string root, Fs* fs) : root_(std::move(root)), fs_(fs) {}

  Status get_to_file(const std::string& key, const std::string& dst, Deadline deadline) override {
    auto copy = [&]() -> Status {
      KILN_ASSIGN_OR_RETURN(auto out, Fs::posix()->create(dst));
      KILN_RETURN_IF_ERROR(copy_into(root_ + "/" + key, *out, deadline));
      return out->close();
    };
    return copy().with_context("get " + describe_key(key));
  }

  Result<std::string> get(const std::string& key, Deadline) override {
    auto r = read_file(root_ + "/" + key);
    if (!r) return r.status().with_context("get " + describe_key(key));
    return r;
  }

  Status put_file(const std::string& key, const std::string& src, Deadline deadline) override {
    std::string dst = root_ + "/" + key;
    Status s = make_dirs(std::filesystem::path(dst).parent_path().string());
    if (s.is_ok()) {
      s = write_file_atomic(*fs_, dst,
                            [&](FsWriter& out) { return copy_into(src, out, deadline); });
    }
    return s.with_context("put " + describe_key(key));
  }

  // A temp file, fsynced, then link(2) to the key's path: link creates the
  // path only where nothing is (EEXIST otherwise), atomically, as rename
  // cannot be asked to.
  Status put_if_absent(const std::string& key, std::string_view bytes, Deadline) override {
    const std::string dst = root_ + "/" + key;
    const std::string dir = std::filesystem::path(dst).parent_path().string();
    auto put = [&]() -> Status {
      KILN_RETURN_IF_ERROR(make_dirs(dir));
      const std::string tmp = temp_path_for(dst);
      KILN_ASSIGN_OR_RETURN(auto out, fs_->create(tmp));
      Status s = out->append(bytes.data(), bytes.size());
      if (s.is_ok()) s = out->sync();
      Status closed = out->close();
      if (s.is_ok()) s = closed;
      if (s.is_ok() && ::link(tmp.c_str(), dst.c_str()) != 0) {
        const int e = errno;
        if (e == EPERM || e == ENOTSUP || e == EOPNOTSUPP || e == EXDEV || e == ENOSYS) {
          // A filesystem without hard links (FUSE mounts of object stores,
          // some SMB shares): the plain rename, as put() does. The commit's
          // own check before it stands, as on an S3 endpoint that ignores
          // If-None-Match.
          warn_no_links_once(dst, e);
          s = fs_->rename(tmp, dst);
        } else {
          s = e == EEXIST ? already_exists(dst + " exists already")
                          : errno_status(fmt::format("link {} to {}", tmp, dst), e);
        }
      }
      (void)fs_->remove_tree(tmp);
      KILN_RETURN_IF_ERROR(s);
      return fs_->sync_dir(dir);
    };
    return put().with_context("put (if absent) " + describe_key(key));
  }

  Result<std::unique_ptr<ObjectWriter>> open_writer(const std::string& key, Deadline) override {
    auto w = std::make_unique<FileObjectWriter>(fs_, root_ + "/" + key, "put " + describe_key(key));
    KILN_RETURN_IF_ERROR(w->open());
    return std::unique_ptr<ObjectWriter>(std::move(w));
  }

  Result<std::string> get_range(const std::string& key, std::uint64_t offset, std::uint64_t length,
                                Deadline) override {
    std::string path = root_ + "/" + key;
    KILN_ASSIGN_OR_RETURN(std::uint64_t size, head_bytes(key));
    if (offset > size || (offset == size && length > 0)) {
      return invalid_argument(fmt::format("get_range {}: offset {} is past the end ({} bytes)",
                                          describe_key(key), offset, size));
    }
    std::string out(std::min(length, size - offset), '\0');
    KILN_RETURN_IF_ERROR(read_at(path, offset, out.data(), out.size())
                             .with_context("get_range " + describe_key(key)));
    return out;
  }

  Result<ObjectInfo> head(const std::string& key, Deadline) override {
    KILN_ASSIGN_OR_RETURN(std::uint64_t bytes, head_bytes(key));
    return ObjectInfo{key, bytes};
  }

  Result<std::vector<ObjectInfo>> list(const std::string& prefix, Deadline) override {
    std::vector<ObjectInfo> out;
    Status walked = walk_files_under(prefix, [&](std::string key, std::uint64_t bytes) {
      // Temp names of a put in flight are not objects yet.
      if (is_temp_name(key) || key.rfind(prefix, 0) != 0) return;
      out.push_back({std::move(key), bytes});
    });
    if (!walked.is_ok()) return walked.with_context("list " + describe_key(prefix));
    std::sort(out.begin(), out.end(),
              [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
    return out;
  }

  // A writer's temp file is `KEY.tmp.HOST.PID.N` (temp_path_for).
  Result<std::vector<PendingUpload>> list_pending_uploads(const std::string& prefix,
                                                          Deadline) override {
    std::vector<PendingUpload> out;
    Status walked = walk_files_under(prefix, [&](std::string id, std::uint64_t) {
      auto tmp = id.find(".tmp.");
      if (tmp == std::string::npos) return;
      std::string key = id.substr(0, tmp);
      if (key.rfind(prefix, 0) != 0) return;
      out.push_back({std::move(key), std::move(id)});
    });
    if (!walked.is_ok()) return walked.with_context("list pending uploads " + describe_key(prefix));
    std::sort(out.begin(), out.end(), [](const PendingUpload& a, const PendingUpload& b) {
      return a.key != b.key ? a.key < b.key : a.id < b.id;
    });
    return out;
  }

  Status abort_pending_upload(const PendingUpload& upload, Deadline) override {
    // Only a temp file inside the root: the id may come from a caller.
    if (!is_temp_name(upload.id) || upload.id.find("..") != std::string::npos ||
        upload.id.rfind('/', 0) == 0) {
      return invalid_argument(fmt::format("abort upload '{}' of {}: not a temp file of this store",
                                          upload.id, describe_key(upload.key)));
    }
    std::string path = root_ + "/" + upload.id;
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return errno_status("abort upload " + describe_key(upload.id), errno);
    }
    return Status::ok();
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

  // Every regular file in the directories `prefix` can reach ("train/shard-"
  // walks train/), as its path relative to the root and its size.
  Status walk_files_under(const std::string& prefix,
                          const std::function<void(std::string, std::uint64_t)>& visit) const {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::string dir = root_;
    if (auto slash = prefix.rfind('/'); slash != std::string::npos) {
      dir += "/" + prefix.substr(0, slash);
    }
    if (!fs::is_directory(dir, ec)) return Status::ok();
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      std::string rel = fs::relative(it->path(), root_, ec).string();
      visit(std::move(rel), static_cast<std::uint64_t>(it->file_size(ec)));
    }
    return ec ? errno_status("walk " + dir, ec.value()) : Status::ok();
  }

  Result<std::uint64_t> head_bytes(const std::string& key) const {
    struct stat st {};
    std::string path = root_ + "/" + key;
    if (::stat(path.c_str(), &st) != 0) return errno_status("head " + describe_key(key), errno);
    if (!S_ISREG(st.st_mode)) return not_found("head " + describe_key(key) + ": not a file");
    return static_cast<std::uint64_t>(st.st_size);
  }

  const std::string root_;
  Fs* const fs_;
};

}  // namespace

std::unique_ptr<ObjectStore> make_file_object_store(std::string root, Fs* fs) {
  return std::make_unique<FileObjectStore>(std::move(root), fs != nullptr ? fs : Fs::posix());
}

}  // namespace kiln::objstore
