#include "kiln/comm/transport/doorbell.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <ctime>

namespace kiln::comm::transport {
namespace {

// Not FUTEX_PRIVATE_FLAG: the word may sit in memory shared between processes.
long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t val, const timespec* ts) {
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, val, ts, nullptr, 0);
}

}  // namespace

void Doorbell::ring() {
  // seq_cst on both sides (here and in sleep) orders "bump seq, then look for
  // sleepers" against "announce sleeper, then re-check seq": either the
  // sleeper sees the new seq, or we see the sleeper and wake it.
  seq.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers.load(std::memory_order_seq_cst) != 0) futex(&seq, FUTEX_WAKE, INT_MAX, nullptr);
}

void Doorbell::sleep(std::uint32_t seen, std::chrono::nanoseconds timeout) {
  if (timeout <= std::chrono::nanoseconds::zero()) return;
  sleepers.fetch_add(1, std::memory_order_seq_cst);
  if (seq.load(std::memory_order_seq_cst) == seen) {
    timespec ts{static_cast<time_t>(timeout.count() / 1'000'000'000),
                static_cast<long>(timeout.count() % 1'000'000'000)};
    futex(&seq, FUTEX_WAIT, seen, &ts);
  }
  sleepers.fetch_sub(1, std::memory_order_seq_cst);
}

}  // namespace kiln::comm::transport
