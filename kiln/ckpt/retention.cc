#include "kiln/ckpt/retention.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/remote.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {

// Bounds listing an object store's steps (its requests retry within it).
constexpr double kListTimeoutS = 300;

Result<std::vector<std::int64_t>> list_committed_steps(const std::string& root) {
  if (objstore::is_object_store_url(root)) {
    KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(root));
    return list_remote_committed_steps(*store, Deadline::after_seconds(kListTimeoutS));
  }
  KILN_ASSIGN_OR_RETURN(auto names, list_dir(root));
  std::vector<std::int64_t> steps;
  for (const auto& n : names) {
    if (auto s = parse_step_dir_name(n)) steps.push_back(*s);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

Result<std::vector<std::string>> list_uncommitted(const std::string& root) {
  KILN_ASSIGN_OR_RETURN(auto names, list_dir(root));
  std::vector<std::string> out;
  for (const auto& n : names) {
    if (parse_tmp_step_dir_name(n)) out.push_back(n);
  }
  return out;
}

Result<StepReadLock> StepReadLock::acquire(const std::string& step_dir) {
  Fd fd(::open(step_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return errno_status(fmt::format("open checkpoint {}", step_dir), errno);
  while (::flock(fd.get(), LOCK_SH) != 0) {
    if (errno == EINTR) continue;
    return errno_status(fmt::format("lock checkpoint {}", step_dir), errno);
  }
  // Retention may have renamed the directory away between open and flock.
  struct stat by_fd, by_path;
  if (::fstat(fd.get(), &by_fd) != 0 || ::stat(step_dir.c_str(), &by_path) != 0 ||
      by_fd.st_ino != by_path.st_ino || by_fd.st_dev != by_path.st_dev) {
    return not_found(
        fmt::format("checkpoint {} was deleted by retention while being opened", step_dir));
  }
  return StepReadLock(std::move(fd));
}

namespace {

// Deletes one committed step unless a reader holds it. Returns whether it did.
Result<bool> delete_step(const std::string& root, std::int64_t step) {
  std::string dir = root + "/" + step_dir_name(step);
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid())
    return errno == ENOENT ? Result<bool>(false) : errno_status(fmt::format("open {}", dir), errno);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    log()->info("checkpoint retention: {} is being loaded; deleting it after a later commit", dir);
    return false;
  }
  std::string trash = fmt::format("{}/.trash-{}", root, step_dir_name(step));
  Status st = Fs::posix()->rename(dir, trash);
  fd.reset();  // releases the lock
  KILN_RETURN_IF_ERROR(st);
  KILN_RETURN_IF_ERROR(Fs::posix()->sync_dir(root));
  KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(trash));
  return true;
}

}  // namespace

Result<std::vector<std::string>> apply_retention(const std::string& root,
                                                 const RetentionPolicy& policy) {
  KILN_ASSIGN_OR_RETURN(auto steps, list_committed_steps(root));
  std::vector<std::string> deleted;
  if (steps.empty()) return deleted;
  std::size_t keep = static_cast<std::size_t>(std::max(policy.keep_last, 1));
  for (std::size_t i = keep; i < steps.size(); ++i) {
    if (policy.keep_every > 0 && steps[i] % policy.keep_every == 0) continue;
    KILN_ASSIGN_OR_RETURN(bool gone, delete_step(root, steps[i]));
    if (gone) deleted.push_back(step_dir_name(steps[i]));
  }
  KILN_ASSIGN_OR_RETURN(auto names, list_dir(root));
  for (const auto& n : names) {
    auto tmp_step = parse_tmp_step_dir_name(n);
    bool stale_tmp = tmp_step && *tmp_step < steps.front();
    bool trash = n.rfind(".trash-", 0) == 0;
    if (stale_tmp || trash) {
      KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(root + "/" + n));
      deleted.push_back(n);
    }
  }
  return deleted;
}

}  // namespace kiln::ckpt
