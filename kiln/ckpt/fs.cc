#include "kiln/ckpt/fs.h"

#include <filesystem>

#include "kiln/ckpt/internal/file.h"

namespace kiln::ckpt {
namespace {

class PosixWriter final : public FsWriter {
 public:
  explicit PosixWriter(internal::WriteFile f) : f_(std::move(f)) {}
  Status append(const void* data, std::size_t n) override { return f_.append(data, n); }
  void start_writeback(std::uint64_t offset, std::uint64_t n) override {
    f_.start_writeback(offset, n);
  }
  Status sync() override { return f_.sync(); }
  Status close() override { return f_.close(); }

 private:
  internal::WriteFile f_;
};

class PosixFs final : public Fs {
 public:
  Result<std::unique_ptr<FsWriter>> create(const std::string& path) override {
    KILN_ASSIGN_OR_RETURN(auto f, internal::WriteFile::create(path));
    return std::unique_ptr<FsWriter>(new PosixWriter(std::move(f)));
  }
  Status make_dir(const std::string& path) override { return internal::make_dir(path); }
  Status sync_dir(const std::string& path) override { return internal::sync_dir(path); }
  Status rename(const std::string& from, const std::string& to) override {
    return internal::rename_path(from, to);
  }
  Status remove_tree(const std::string& path) override { return internal::remove_tree(path); }
};

}  // namespace

Fs* Fs::posix() {
  static Fs* fs = new PosixFs();  // never destroyed: usable from static destructors
  return fs;
}

Status write_file_synced(Fs& fs, const std::string& path, const std::string& contents) {
  KILN_ASSIGN_OR_RETURN(auto f, fs.create(path));
  KILN_RETURN_IF_ERROR(f->append(contents.data(), contents.size()));
  KILN_RETURN_IF_ERROR(f->sync());
  return f->close();
}

Status write_file_atomic(Fs& fs, const std::string& path, const std::string& contents) {
  std::string tmp = path + ".tmp";
  KILN_RETURN_IF_ERROR(write_file_synced(fs, tmp, contents));
  KILN_RETURN_IF_ERROR(fs.rename(tmp, path));
  return fs.sync_dir(std::filesystem::path(path).parent_path().string());
}

}  // namespace kiln::ckpt
