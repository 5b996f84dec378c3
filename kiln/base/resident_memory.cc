#include "kiln/base/resident_memory.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it
#endif

namespace kiln {
namespace {

// Populated a slice at a time, so that a destructor need not wait for the
// rest and a writer coming from the front meets the helper within a slice.
constexpr std::size_t kSlice = std::size_t{8} << 20;

}  // namespace

struct ResidentMemory::State {
  std::byte* data = nullptr;
  std::size_t bytes = 0;
  bool kernel_populates = false;
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> resident{0};
  std::mutex join_mu;
  std::thread helper;  // joined under join_mu

  void populate() {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    // Whole pages (the mapping's), so that every slice starts on one.
    const std::size_t mapped = (bytes + page - 1) / page * page;
    for (std::size_t end = mapped; end > 0 && !stop.load(std::memory_order_relaxed);) {
      const std::size_t begin = end > kSlice ? end - kSlice : 0;
      if (kernel_populates) {
        if (::madvise(data + begin, end - begin, MADV_POPULATE_WRITE) != 0) return;
      } else {
        for (std::size_t at = begin; at < end; at += page) {
          *reinterpret_cast<volatile std::byte*>(data + at) = std::byte{0};
        }
      }
      resident.fetch_add(end - begin, std::memory_order_relaxed);
      end = begin;
    }
  }

  std::size_t join() {
    std::lock_guard<std::mutex> lock(join_mu);
    if (helper.joinable()) helper.join();
    return std::min(resident.load(), bytes);
  }

  ~State() {
    stop.store(true);
    join();
    if (data != nullptr) ::munmap(data, bytes);
  }
};

Result<ResidentMemory> ResidentMemory::map(std::size_t bytes) {
  if (bytes == 0) return invalid_argument("ResidentMemory: 0 bytes");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return resource_exhausted(
        fmt::format("map {} bytes of anonymous memory: {}", bytes, std::strerror(errno)));
  }
  auto s = std::make_unique<State>();
  s->data = static_cast<std::byte*>(p);
  s->bytes = bytes;
  ::madvise(p, bytes, MADV_HUGEPAGE);  // advice: without huge pages it still works
  // Whether the kernel populates (EINVAL before 5.14), asked of the last
  // page, which the helper would populate first anyway.
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t last = (bytes - 1) / page * page;
  s->kernel_populates = ::madvise(s->data + last, bytes - last, MADV_POPULATE_WRITE) == 0;
  State* raw = s.get();
  s->helper = std::thread([raw] { raw->populate(); });
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
