#include "kiln/ckpt/internal/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace kiln::ckpt::internal {
namespace {

// A zero-length mapping is not allowed; an empty file maps to this.
std::byte kEmpty[1];

}  // namespace

Result<MappedFile> MappedFile::open_read(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status("open " + path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return errno_status("stat " + path, e);
  }
  auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return MappedFile(kEmpty, 0);
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) return errno_status("mmap " + path, e);
  return MappedFile(static_cast<std::byte*>(p), size);
}

Result<MappedFile> MappedFile::create(const std::string& path, std::size_t size) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_status("create " + path, errno);
  if (size == 0) {
    ::close(fd);
    return MappedFile(kEmpty, 0);
  }
  // posix_fallocate reserves the pages now, so a full tmpfs fails here with
  // ENOSPC instead of a SIGBUS when the receive touches a page.
  int err = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (err != 0) {
    ::close(fd);
    ::unlink(path.c_str());
    return errno_status("allocate " + std::to_string(size) + " bytes for " + path, err);
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) return errno_status("mmap " + path, e);
  return MappedFile(static_cast<std::byte*>(p), size);
}

MappedFile::MappedFile(MappedFile&& o) noexcept : data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && size_ > 0) ::munmap(data_, size_);
}

}  // namespace kiln::ckpt::internal
