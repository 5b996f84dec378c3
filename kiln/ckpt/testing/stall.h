// Stall: stops a fault-injecting store's call until the test lets it go.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>

namespace kiln::ckpt::testing {

// Where a fault-injecting store stops a call until the test lets it go: the
// first call through makes reached() true and waits for let_go(). let_go()
// may run twice (the test's own call and a LetGoAtExit's), so a failed
// assertion never leaves a stopped thread for a destructor to wait on.
class Stall {
 public:
  void stop_first() {
    if (stopped_once_.exchange(true)) return;
    entered_.set_value();
    // Bounded, as every wait: a test that never lets go fails here, loudly,
    // rather than hanging the suite until ctest's timeout.
    if (released_.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      std::fprintf(stderr, "Stall: not let go within 60 s\n");
      std::abort();
    }
  }
  bool reached(std::chrono::seconds within) {
    return entered_future_.wait_for(within) == std::future_status::ready;
  }
  void let_go() {
    if (!let_go_.exchange(true)) release_.set_value();
  }

 private:
  std::atomic<bool> stopped_once_{false}, let_go_{false};
  std::promise<void> entered_, release_;
  std::future<void> entered_future_ = entered_.get_future();
  std::shared_future<void> released_ = release_.get_future().share();
};

// Lets a Stall go when the test's scope ends: declared after what waits for
// the stopped call (a Checkpointer), it runs before that waits.
struct LetGoAtExit {
  Stall& stall;
  ~LetGoAtExit() { stall.let_go(); }
};

}  // namespace kiln::ckpt::testing
