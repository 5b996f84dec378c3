#include "kiln/comm/shared_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>
#include <utility>

#include <fmt/format.h>

#include "kiln/base/fd.h"

namespace kiln::comm {
namespace {

struct Live {
  std::size_t bytes;
  int fd;
  std::uint64_t serial;
};

// Live buffers by start address. Looked up once per large collective.
std::mutex& registry_mu() {
  static std::mutex mu;
  return mu;
}
std::map<std::uintptr_t, Live>& registry() {
  static std::map<std::uintptr_t, Live> live;
  return live;
}
std::atomic<std::uint64_t> next_serial{1};

}  // namespace

Result<SharedBuffer> SharedBuffer::allocate(std::size_t bytes) {
  if (bytes == 0) return invalid_argument("shared buffer: size must be > 0");
  Fd fd(memfd_create("kiln-shared-buffer", MFD_CLOEXEC));
  if (!fd.valid()) return errno_status("shared buffer: memfd_create", errno);
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return errno_status(fmt::format("shared buffer: size a memfd to {} bytes", bytes), errno);
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  if (p == MAP_FAILED) {
    return errno_status(fmt::format("shared buffer: map {} bytes (is /dev/shm's limit too low?)", bytes),
                        errno);
  }
  SharedBuffer b;
  b.data_ = p;
  b.bytes_ = bytes;
  b.fd_ = fd.release();
  b.serial_ = new_shared_serial();
  std::lock_guard lock(registry_mu());
  registry()[reinterpret_cast<std::uintptr_t>(p)] = Live{bytes, b.fd_, b.serial_};
  return b;
}

SharedBuffer::SharedBuffer(SharedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      fd_(std::exchange(other.fd_, -1)),
      serial_(std::exchange(other.serial_, 0)) {}

SharedBuffer& SharedBuffer::operator=(SharedBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    fd_ = std::exchange(other.fd_, -1);
    serial_ = std::exchange(other.serial_, 0);
  }
  return *this;
}

SharedBuffer::~SharedBuffer() { release(); }

void SharedBuffer::release() {
  if (data_ == nullptr) return;
  {
    std::lock_guard lock(registry_mu());
    registry().erase(reinterpret_cast<std::uintptr_t>(data_));
  }
  munmap(data_, bytes_);
  ::close(fd_);
  data_ = nullptr;
  fd_ = -1;
}

std::uint64_t new_shared_serial() { return next_serial.fetch_add(1, std::memory_order_relaxed); }

std::optional<SharedRegion> find_shared_region(const void* p, std::size_t bytes) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard lock(registry_mu());
  auto& live = registry();
  auto it = live.upper_bound(a);
  if (it == live.begin()) return std::nullopt;
  --it;
  const std::uintptr_t start = it->first;
  if (a - start > it->second.bytes || bytes > it->second.bytes - (a - start)) return std::nullopt;
  return SharedRegion{it->second.fd, it->second.serial, it->second.bytes, a - start};
}

}  // namespace kiln::comm
