#include "kiln/comm/transport/shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include <fmt/format.h>

#include "kiln/base/fd.h"

namespace kiln::comm::transport::shm {

Result<std::unique_ptr<Segment>> Segment::create(const std::string& name, SegmentLayout layout,
                                                 int owner_rank) {
  Fd fd(shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600));
  if (!fd.valid()) return errno_status(fmt::format("create shared memory {}", name), errno);
  std::size_t size = layout.total();
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    int err = errno;
    fd.reset();
    shm_unlink(name.c_str());
    return errno_status(fmt::format("size shared memory {} to {} bytes", name, size), err);
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  int err = errno;
  fd.reset();  // the mapping keeps the memory
  if (base == MAP_FAILED) {
    shm_unlink(name.c_str());
    return errno_status(fmt::format("map shared memory {} ({} bytes; is /dev/shm full?)", name, size),
                        err);
  }
  std::unique_ptr<Segment> seg(new Segment(name, base, size, layout, true));
  auto* h = new (base) SegmentHeader{};
  h->nfifos = layout.nfifos;
  h->nslots = layout.nslots;
  h->slot_bytes = layout.slot_bytes;
  h->owner_rank = owner_rank;
  h->owner_pid = static_cast<std::int32_t>(getpid());
  for (std::uint32_t i = 0; i < layout.nfifos; ++i) new (seg->fifo(i)) FifoHeader{};
  std::atomic_thread_fence(std::memory_order_release);
  h->magic = kSegmentMagic;
  return seg;
}

Result<std::unique_ptr<Segment>> Segment::open(const std::string& name, int expected_owner) {
  Fd fd(shm_open(name.c_str(), O_RDWR, 0600));
  if (!fd.valid()) {
    return errno_status(fmt::format("open rank {}'s shared memory {}", expected_owner, name),
                        errno);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0 || static_cast<std::size_t>(st.st_size) < sizeof(SegmentHeader)) {
    return data_loss(fmt::format("rank {}'s shared memory {} is too small", expected_owner, name));
  }
  std::size_t size = static_cast<std::size_t>(st.st_size);
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  int err = errno;
  fd.reset();  // the mapping keeps the memory
  if (base == MAP_FAILED) return errno_status(fmt::format("map shared memory {}", name), err);
  auto* h = static_cast<SegmentHeader*>(base);
  SegmentLayout layout{h->nfifos, h->nslots, h->slot_bytes};
  if (h->magic != kSegmentMagic || h->owner_rank != expected_owner || layout.total() != size) {
    munmap(base, size);
    return data_loss(fmt::format("shared memory {} does not belong to rank {} (bad header)", name,
                                 expected_owner));
  }
  return std::unique_ptr<Segment>(new Segment(name, base, size, layout, false));
}

void Segment::unlink() {
  if (owner_ && !unlinked_) {
    shm_unlink(name_.c_str());
    unlinked_ = true;
  }
}

Segment::~Segment() {
  unlink();
  munmap(base_, size_);
}

}  // namespace kiln::comm::transport::shm
