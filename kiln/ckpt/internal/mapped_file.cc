#include "kiln/ckpt/internal/mapped_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <mutex>
#include <vector>

#include "kiln/ckpt/internal/snapshot_stream.h"

namespace kiln::ckpt::internal {

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

// The process's kept mappings, looked up by inode (a rename keeps it).
class MappingCache {
 public:
  static MappingCache& instance() {
    static MappingCache* cache = new MappingCache;  // never destroyed: used at exit
    return *cache;
  }

  Result<std::shared_ptr<MappedFile>> map(const std::string& path, Fd fd) {
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return errno_status("stat " + path, errno);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    std::lock_guard lock(mu_);
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      const auto& m = *it;
      if (m->dev_ != st.st_dev || m->ino_ != st.st_ino) continue;
      if (m->size_ == size) {
        m->path_ = path;
        return m;
      }
      kept_.erase(it);  // resized: mapped anew below
      break;
    }
    std::byte* data = nullptr;
    if (size > 0) {
      void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
      if (p == MAP_FAILED) {
        return errno_status(fmt::format("map {} ({} bytes)", path, size), errno);
      }
      data = static_cast<std::byte*>(p);
    }
    auto m = std::shared_ptr<MappedFile>(
        new MappedFile(std::move(fd), path, data, size, st.st_dev, st.st_ino));
    kept_.push_back(m);
    return m;
  }

  void release_unlinked() {
    // Unmapped after the lock is released: freeing a large file's pages
    // takes tens of ms, and map() must not wait for it (Note [Reclaiming a
    // dead buddy's memory], memory_tier.cc).
    std::vector<std::shared_ptr<MappedFile>> dropped;
    {
      std::lock_guard lock(mu_);
      auto gone = std::stable_partition(kept_.begin(), kept_.end(), [](const auto& m) {
        struct stat st;
        return ::fstat(m->fd_.get(), &st) == 0 && st.st_nlink > 0;
      });
      std::move(gone, kept_.end(), std::back_inserter(dropped));
      kept_.erase(gone, kept_.end());
    }
  }

  std::size_t size() {
    std::lock_guard lock(mu_);
    return kept_.size();
  }

 private:
  std::mutex mu_;
  std::vector<std::shared_ptr<MappedFile>> kept_;  // GUARDED_BY(mu_)
};

Result<std::shared_ptr<MappedFile>> map_for_write(const std::string& path, std::uint64_t size) {
  KILN_ASSIGN_OR_RETURN(Fd fd, open_for_overwrite(path, size));
  return MappingCache::instance().map(path, std::move(fd));
}

Result<std::shared_ptr<MappedFile>> map_existing(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return errno_status("open " + path, errno);
  return MappingCache::instance().map(path, std::move(fd));
}

void release_unlinked_mappings() { MappingCache::instance().release_unlinked(); }

std::size_t kept_mappings() { return MappingCache::instance().size(); }

}  // namespace kiln::ckpt::internal
