#include "kiln/base/testing/fault_fs.h"

#include <fmt/format.h>

namespace kiln::testing {
namespace {

const char* op_name(FsOp op) {
  switch (op) {
    case FsOp::kCreate:
      return "create";
    case FsOp::kAppend:
      return "write";
    case FsOp::kSync:
      return "fsync";
    case FsOp::kClose:
      return "close";
    case FsOp::kMakeDir:
      return "mkdir";
    case FsOp::kSyncDir:
      return "fsync directory";
    case FsOp::kRename:
      return "rename";
    case FsOp::kRemove:
      return "remove";
  }
  return "?";
}

class FaultWriter final : public FsWriter {
 public:
  FaultWriter(FaultFs* fs, std::string path, std::unique_ptr<FsWriter> base)
      : fs_(fs), path_(std::move(path)), base_(std::move(base)) {}
  Status append(const void* data, std::size_t n) override {
    KILN_RETURN_IF_ERROR(fs_->check(FsOp::kAppend, path_));
    return base_->append(data, n);
  }
  void start_writeback(std::uint64_t offset, std::uint64_t n) override {
    base_->start_writeback(offset, n);
  }
  Status sync() override {
    KILN_RETURN_IF_ERROR(fs_->check(FsOp::kSync, path_));
    return base_->sync();
  }
  Status close() override {
    KILN_RETURN_IF_ERROR(fs_->check(FsOp::kClose, path_));
    return base_->close();
  }

 private:
  FaultFs* fs_;
  std::string path_;
  std::unique_ptr<FsWriter> base_;
};

}  // namespace

void FaultFs::fail(FsOp op, std::string path_part, int err, int skip, int times) {
  std::lock_guard<std::mutex> l(mu_);
  rules_.push_back({op, std::move(path_part), err, skip, times});
}

int FaultFs::injected() const {
  std::lock_guard<std::mutex> l(mu_);
  return injected_;
}

Status FaultFs::check(FsOp op, const std::string& path) {
  std::lock_guard<std::mutex> l(mu_);
  for (auto& r : rules_) {
    if (r.op != op || r.times == 0 || path.find(r.path_part) == std::string::npos) continue;
    if (r.skip > 0) {
      --r.skip;
      continue;
    }
    --r.times;
    ++injected_;
    return errno_status(fmt::format("{} {} (injected)", op_name(op), path), r.err);
  }
  return Status::ok();
}

Result<std::unique_ptr<FsWriter>> FaultFs::create(const std::string& path) {
  KILN_RETURN_IF_ERROR(check(FsOp::kCreate, path));
  KILN_ASSIGN_OR_RETURN(auto w, base_->create(path));
  return std::unique_ptr<FsWriter>(new FaultWriter(this, path, std::move(w)));
}

Status FaultFs::make_dir(const std::string& path) {
  KILN_RETURN_IF_ERROR(check(FsOp::kMakeDir, path));
  return base_->make_dir(path);
}

Status FaultFs::sync_dir(const std::string& path) {
  KILN_RETURN_IF_ERROR(check(FsOp::kSyncDir, path));
  return base_->sync_dir(path);
}

Status FaultFs::rename(const std::string& from, const std::string& to) {
  KILN_RETURN_IF_ERROR(check(FsOp::kRename, from));
  return base_->rename(from, to);
}

Status FaultFs::remove_tree(const std::string& path) {
  KILN_RETURN_IF_ERROR(check(FsOp::kRemove, path));
  return base_->remove_tree(path);
}

}  // namespace kiln::testing
