#include "kiln/base/resident_memory.h"

#include <fmt/format.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it
#endif

namespace kiln {
namespace {

// Populated a slice at a time: helpers share the work by taking the next
// slice, a destructor need not wait for the rest, and a writer coming from
// the front meets the helpers within a slice.
constexpr std::size_t kSlice = std::size_t{8} << 20;

// The CPUs this process may run on.
int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

}  // namespace

struct ResidentMemory::State {
  std::byte* data = nullptr;
  std::size_t bytes = 0;
  std::size_t page = 4096;
  bool kernel_populates = false;
  std::atomic<bool> stop{false};
  // The end of the part no helper has taken yet (whole pages: the
  // mapping's, so that every slice starts on one); helpers take slices
  // from the back.
  std::atomic<std::size_t> untaken{0};
  std::atomic<std::size_t> resident{0};
  std::mutex join_mu;
  std::vector<std::thread> helpers;  // joined under join_mu

  void populate() {
    while (!stop.load(std::memory_order_relaxed)) {
      std::size_t end = untaken.load();
      std::size_t begin = 0;
      do {
        if (end == 0) return;
        begin = end > kSlice ? end - kSlice : 0;
      } while (!untaken.compare_exchange_weak(end, begin));
      if (kernel_populates) {
        if (::madvise(data + begin, end - begin, MADV_POPULATE_WRITE) != 0) return;
      } else {
        for (std::size_t at = begin; at < end; at += page) {
          *reinterpret_cast<volatile std::byte*>(data + at) = std::byte{0};
        }
      }
      resident.fetch_add(end - begin, std::memory_order_relaxed);
    }
  }

  std::size_t join() {
    std::lock_guard<std::mutex> lock(join_mu);
    for (auto& h : helpers) {
      if (h.joinable()) h.join();
    }
    return std::min(resident.load(), bytes);
  }

  ~State() {
    stop.store(true);
    join();
    if (data != nullptr) ::munmap(data, bytes);
  }
};

Result<ResidentMemory> ResidentMemory::map(std::size_t bytes, int helpers, Pages pages) {
  if (bytes == 0) return invalid_argument("ResidentMemory: 0 bytes");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return resource_exhausted(
        fmt::format("map {} bytes of anonymous memory: {}", bytes, std::strerror(errno)));
  }
  auto s = std::make_unique<State>();
  s->data = static_cast<std::byte*>(p);
  s->bytes = bytes;
  s->page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  // Advice: without huge pages it still works.
  ::madvise(p, bytes, pages == Pages::kHuge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  // Whether the kernel populates (EINVAL before 5.14), asked of the last
  // page, which the helpers would populate first anyway.
  const std::size_t last = (bytes - 1) / s->page * s->page;
  s->kernel_populates = ::madvise(s->data + last, bytes - last, MADV_POPULATE_WRITE) == 0;
  const std::size_t mapped = last + s->page;
  s->untaken.store(mapped);
  if (helpers <= 0) helpers = usable_cpus();
  helpers = static_cast<int>(std::min<std::size_t>(helpers, (mapped + kSlice - 1) / kSlice));
  State* raw = s.get();
  for (int i = 0; i < helpers; ++i) s->helpers.emplace_back([raw] { raw->populate(); });
  return ResidentMemory(std::move(s));
}

ResidentMemory::ResidentMemory(std::unique_ptr<State> s) : s_(std::move(s)) {}
ResidentMemory::ResidentMemory(ResidentMemory&&) noexcept = default;
ResidentMemory& ResidentMemory::operator=(ResidentMemory&&) noexcept = default;
ResidentMemory::~ResidentMemory() = default;

std::span<std::byte> ResidentMemory::span() const { return {s_->data, s_->bytes}; }

bool ResidentMemory::writable_while_populating() const { return s_->kernel_populates; }

std::size_t ResidentMemory::wait() { return s_->join(); }

}  // namespace kiln
