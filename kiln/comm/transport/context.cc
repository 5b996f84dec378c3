#include "kiln/comm/transport/context.h"

#include <sched.h>

#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"

namespace kiln::comm::transport {
namespace {

// Note [Spin, then yield, then sleep]: a waiter first polls (a peer on another
// core answers in well under a microsecond), then yields (an oversubscribed
// peer may need this core), then sleeps on its doorbell. While asleep it wakes
// every kLivenessPeriod to check that the peers it waits for still live.
// Waits on tcp pairs alone skip the yields: the Device's epoll thread drives
// those sockets and rings the doorbell, so a yield only polls a socket
// somebody already watches, and on a host whose cores compute fills (DDP's
// backward beside its buckets) every yield hands the core to compute and
// takes it back a slice later: 16 of them per wait, ~12 waits a step, were
// most of the training thread's ~300 preemptions a step (docs/perf.md,
// issue 24, session 9).
constexpr auto kSpinFor = std::chrono::microseconds(50);
const Knob<std::int64_t> kWaitYields{
    "KILN_WAIT_YIELDS", 16,
    "sched_yield calls a communicator's waiter makes between spinning and sleeping, in waits that "
    "involve a shared-memory pair (Note [Spin, then yield, then sleep])"};
constexpr auto kLivenessPeriod = std::chrono::milliseconds(50);

}  // namespace

Context::Context(int rank, int size)
    : rank_(rank), size_(size), pairs_(size), host_of_(size, 0) {}

Context::~Context() {
  // The progress thread first (it calls into pairs), then the pairs; shared
  // memory segments live until the last pair that maps them is gone.
  while (!resources_.empty()) resources_.pop_back();
  pairs_.clear();
}

void Context::add_abort_hook(std::function<void(const Status&)> hook) {
  abort_hooks_.push_back(std::move(hook));
}

Status Context::abort_status() const {
  std::lock_guard lock(abort_mu_);
  return abort_status_;
}

void Context::abort(const Status& why) {
  {
    std::lock_guard lock(abort_mu_);
    if (aborted_.load(std::memory_order_relaxed)) return;
    abort_status_ = why.is_ok() ? ::kiln::aborted("communicator aborted") : why;
    aborted_.store(true, std::memory_order_release);
  }
  Status s = abort_status();
  log()->debug("rank {} aborting its connections: {}", rank_, s.to_string());
  for (auto& p : pairs_) {
    if (p) p->abort(s);
  }
  for (auto& hook : abort_hooks_) hook(s);
  doorbell_->ring();
}

// Note [Who stalled]
// In a ring, a SIGSTOPped rank 2 of 3 holds up rank 0 (which receives from
// it) and, through rank 0, rank 1. Both time out at about the same moment;
// whichever fires first aborts the group. If it is rank 1, its own error
// names rank 0, which is healthy, and rank 0 learns of the abort before its
// own deadline. So an abort seen from a peer is reported with the peers this
// rank was still waiting for: rank 0's error then names rank 2.
std::string Context::peers_pending(std::span<Request* const> requests) {
  std::vector<const Pair*> pending;
  for (Request* r : requests) {
    if (!r->done() && std::find(pending.begin(), pending.end(), r->pair) == pending.end()) {
      pending.push_back(r->pair);
    }
  }
  std::string names;
  for (const Pair* p : pending) {
    if (!names.empty()) names += ", ";
    names += p->peer_name();
  }
  return names.empty() ? std::string("no peer") : names;
}

Status Context::fail_wait(std::span<Request* const> requests, Status why) {
  abort(why);
  // abort() failed every pending tcp request and flagged every shm pair; a
  // flagged shm pair fails its requests on its next progress() call.
  for (Request* r : requests) {
    while (!r->done()) {
      r->pair->progress();
      if (!r->done()) sched_yield();
    }
  }
  return abort_status();
}

Status Context::wait(std::span<Request* const> requests, Deadline deadline,
                     const std::string& what) {
  static const int kYields = static_cast<int>(std::max<std::int64_t>(0, kWaitYields.get()));
  const bool on_shm = std::any_of(requests.begin(), requests.end(), [](Request* r) {
    return r->pair != nullptr && r->pair->is_shm();
  });
  const int max_yields = on_shm ? kYields : 0;
  auto spin_until = Clock::now() + kSpinFor;
  int yields = 0;
  auto next_liveness = Clock::now() + kLivenessPeriod;
  while (true) {
    std::uint32_t seen = doorbell_->read();
    bool all_done = true;
    for (Request* r : requests) {
      if (r->done()) {
        if (r->failed()) return fail_wait(requests, r->status().with_context(what));
        continue;
      }
      all_done = false;
      r->pair->progress();
      if (r->done()) {
        if (r->failed()) return fail_wait(requests, r->status().with_context(what));
      }
    }
    if (all_done) return Status::ok();
    bool now_done = true;
    for (Request* r : requests) now_done = now_done && r->done();
    if (now_done) continue;  // report failures through the loop above

    if (aborted()) return fail_wait(requests, abort_status());
    auto now = Clock::now();
    if (now < spin_until) continue;
    if (yields < max_yields) {
      ++yields;
      sched_yield();
      continue;
    }
    if (now >= deadline.at()) {
      return fail_wait(requests, deadline_exceeded(fmt::format(
                                     "{}: timed out waiting for {} (is it stalled, or is the link "
                                     "to it down?)",
                                     what, peers_pending(requests))));
    }
    if (remote_abort_probe_) {
      int by = remote_abort_probe_();
      if (by >= 0) {
        // Say whom this rank was still waiting for too: when a stalled rank
        // holds up a chain of waits, the first rank to time out may be one
        // that waited on a healthy neighbour, and only the ranks further
        // along know the stalled one (Note [Who stalled]).
        return fail_wait(requests, ::kiln::aborted(fmt::format(
                                       "{}: rank {} aborted the group after a failure, while this "
                                       "rank was still waiting for {}",
                                       what, by, peers_pending(requests))));
      }
    }
    if (now >= next_liveness) {
      next_liveness = now + kLivenessPeriod;
      for (Request* r : requests) {
        if (r->done()) continue;
        Status alive = r->pair->check_alive();
        if (!alive.is_ok()) return fail_wait(requests, alive.with_context(what));
      }
    }
    auto nap = std::min<Clock::duration>(deadline.at() - now, next_liveness - now);
    doorbell_->sleep(seen, nap);
    // After a real sleep, poll a little again: the next event is likely near.
    spin_until = Clock::now() + kSpinFor / 5;
  }
}

}  // namespace kiln::comm::transport
