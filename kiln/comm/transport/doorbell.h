// Doorbell: how a rank's waiting thread sleeps until something changes for it.
//
// Every event that may let a waiter progress (a shm peer filled or freed a
// slot, the tcp progress thread completed a request, an abort) rings the
// waiter's doorbell. The doorbell lives in the rank's shared-memory segment
// when it has local peers, so other processes can ring it; it is a
// process-shared futex word, so ringing costs no syscall unless the owner
// actually sleeps.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace kiln::comm::transport {

struct Doorbell {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> sleepers{0};

  std::uint32_t read() const { return seq.load(std::memory_order_seq_cst); }

  // Wakes the owner if it sleeps. Any thread or process may call it.
  void ring();

  // Sleeps until seq != seen, a ring, or the timeout. Spurious wakeups are fine.
  void sleep(std::uint32_t seen, std::chrono::nanoseconds timeout);
};

static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

}  // namespace kiln::comm::transport
