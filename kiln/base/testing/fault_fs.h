// FaultFs: an Fs (kiln/base/fs.h) that fails chosen operations (LevelDB's
// fault_injection_test). Decorates another Fs; thread-safe.
//
//   FaultFs fs(Fs::posix());
//   fs.fail(FsOp::kSync, "manifest.json", EIO);  // the manifest's fsync fails once
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "kiln/base/fs.h"

namespace kiln::testing {

enum class FsOp { kCreate, kAppend, kSync, kClose, kMakeDir, kSyncDir, kRename, kRemove };

class FaultFs final : public Fs {
 public:
  explicit FaultFs(Fs* base) : base_(base) {}

  // The next `times` calls of `op` on a path containing `path_part` (for
  // rename: the source) fail with errno `err`, after `skip` matching calls pass.
  void fail(FsOp op, std::string path_part, int err, int skip = 0, int times = 1);
  // How many injected failures happened so far.
  int injected() const;

  Result<std::unique_ptr<FsWriter>> create(const std::string& path) override;
  Status make_dir(const std::string& path) override;
  Status sync_dir(const std::string& path) override;
  Status rename(const std::string& from, const std::string& to) override;
  Status remove_tree(const std::string& path) override;

  // The failure to inject for `op` on `path`, or ok (used by the writer too).
  Status check(FsOp op, const std::string& path);

 private:
  struct Rule {
    FsOp op;
    std::string path_part;
    int err, skip, times;
  };
  Fs* base_;
  mutable std::mutex mu_;
  std::vector<Rule> rules_;  // guarded by mu_
  int injected_ = 0;         // guarded by mu_
};

}  // namespace kiln::testing
