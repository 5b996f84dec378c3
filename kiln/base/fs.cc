#include "kiln/base/fs.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"

namespace kiln {
namespace {

class PosixWriter final : public FsWriter {
 public:
  PosixWriter(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

  Status append(const void* data, std::size_t n) override {
    return write_all(fd_.get(), std::string_view(static_cast<const char*>(data), n), path_);
  }
  void start_writeback(std::uint64_t offset, std::uint64_t n) override {
    // Advisory: an error here resurfaces at fsync, which is checked.
    (void)::sync_file_range(fd_.get(), static_cast<off64_t>(offset), static_cast<off64_t>(n),
                            SYNC_FILE_RANGE_WRITE);
  }
  Status sync() override {
    if (::fsync(fd_.get()) != 0) return errno_status(fmt::format("fsync {}", path_), errno);
    return Status::ok();
  }
  Status close() override {
    // close() can report a failed write-back (NFS), so its result counts.
    if (fd_.close() != 0) return errno_status(fmt::format("close {}", path_), errno);
    return Status::ok();
  }

 private:
  Fd fd_;
  std::string path_;
};

class PosixFs final : public Fs {
 public:
  Result<std::unique_ptr<FsWriter>> create(const std::string& path) override {
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid()) return errno_status(fmt::format("create {}", path), errno);
    return std::unique_ptr<FsWriter>(new PosixWriter(std::move(fd), path));
  }
  Status make_dir(const std::string& path) override {
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
      return errno_status(fmt::format("mkdir {}", path), errno);
    }
    return Status::ok();
  }
  Status sync_dir(const std::string& path) override {
    std::string p = path.empty() ? "." : path;
    Fd fd(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return errno_status(fmt::format("open directory {}", p), errno);
    if (::fsync(fd.get()) != 0) return errno_status(fmt::format("fsync directory {}", p), errno);
    return Status::ok();
  }
  Status rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return errno_status(fmt::format("rename {} to {}", from, to), errno);
    }
    return Status::ok();
  }
  Status remove_tree(const std::string& path) override {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
    if (ec) return errno_status(fmt::format("remove {}", path), ec.value());
    return Status::ok();
  }
};

std::string parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

}  // namespace

Fs* Fs::posix() {
  static Fs* fs = new PosixFs();  // never destroyed: usable from static destructors
  return fs;
}

Status write_file_synced(Fs& fs, const std::string& path, std::string_view contents) {
  KILN_ASSIGN_OR_RETURN(auto f, fs.create(path));
  KILN_RETURN_IF_ERROR(f->append(contents.data(), contents.size()));
  KILN_RETURN_IF_ERROR(f->sync());
  return f->close();
}

std::string temp_path_for(const std::string& path) {
  static std::atomic<std::uint64_t> counter{0};
  static const std::string host = [] {
    char name[64] = {};
    if (::gethostname(name, sizeof(name) - 1) != 0) name[0] = '\0';
    return std::string(name);
  }();
  return fmt::format("{}.tmp.{}.{}.{}", path, host, ::getpid(), counter.fetch_add(1));
}

bool is_temp_name(std::string_view name) { return name.find(".tmp.") != std::string_view::npos; }

Status write_file_atomic(Fs& fs, const std::string& path,
                         const std::function<Status(FsWriter&)>& fill, Durability durability) {
  const bool durable = durability == Durability::kDurable;
  const std::string tmp = temp_path_for(path);
  auto write_tmp = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(auto f, fs.create(tmp));
    Status s = fill(*f);
    if (s.is_ok() && durable) s = f->sync();
    Status c = f->close();
    return s.is_ok() ? c : s;
  };
  Status s = write_tmp();
  if (s.is_ok()) s = fs.rename(tmp, path);
  if (!s.is_ok()) {
    (void)fs.remove_tree(tmp);  // best effort: the first failure is the one to report
    return s;
  }
  return durable ? fs.sync_dir(parent_dir(path)) : Status::ok();
}

Status write_file_atomic(Fs& fs, const std::string& path, std::string_view contents,
                         Durability durability) {
  return write_file_atomic(
      fs, path, [&](FsWriter& w) { return w.append(contents.data(), contents.size()); },
      durability);
}

Status write_file_atomic(const std::string& path, std::string_view contents,
                         Durability durability) {
  return write_file_atomic(*Fs::posix(), path, contents, durability);
}

}  // namespace kiln
