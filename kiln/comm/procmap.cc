#include "kiln/comm/procmap.h"

#include <sys/ioctl.h>

#include <cerrno>

namespace kiln::comm {
namespace {

// struct procmap_query of include/uapi/linux/fs.h (Linux 6.11): Debian 12's
// kernel headers predate it.
struct ProcmapQuery {
  std::uint64_t size, query_flags, query_addr;
  std::uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
  std::uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
  std::uint64_t vma_name_addr, build_id_addr;
};
static_assert(sizeof(ProcmapQuery) == 104, "the kernel's struct procmap_query");
constexpr unsigned long kProcmapQuery = _IOWR('f', 17, ProcmapQuery);
constexpr std::uint64_t kQueryCoveringOrNextVma = 0x10;

}  // namespace

std::optional<Vma> query_vma(int maps_fd, std::uintptr_t addr, VmaQuery which) {
  char name[256];
  ProcmapQuery q{};
  q.size = sizeof(q);
  q.query_flags = which == VmaQuery::kCoveringOrNext ? kQueryCoveringOrNextVma : 0;
  q.query_addr = addr;
  q.vma_name_addr = reinterpret_cast<std::uintptr_t>(name);
  q.vma_name_size = sizeof(name);
  int rc = ioctl(maps_fd, kProcmapQuery, &q);
  // ENAMETOOLONG: a name longer than the buffer (a file's long path), so a
  // name, and the kernel answered nothing else: asked again without it.
  const bool long_name = rc != 0 && errno == ENAMETOOLONG;
  if (long_name) {
    q.vma_name_addr = 0;
    q.vma_name_size = 0;
    rc = ioctl(maps_fd, kProcmapQuery, &q);
  }
  if (rc != 0) return std::nullopt;
  return Vma{q.vma_start, q.vma_end,   q.vma_flags, q.vma_offset,
             q.inode,     q.dev_major, q.dev_minor, long_name || q.vma_name_size != 0};
}

bool answers_procmap_query(int maps_fd) {
  ProcmapQuery probe{};
  probe.size = sizeof(probe);
  probe.query_addr = reinterpret_cast<std::uintptr_t>(&probe);  // the stack: always mapped
  return maps_fd >= 0 && ioctl(maps_fd, kProcmapQuery, &probe) == 0;
}

}  // namespace kiln::comm
