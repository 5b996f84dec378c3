// RestartBudget: how much of `--max-restarts` a job has used. torchrun's
// meaning: only failures use it (a worker that exited non-zero, was
// killed or hung, a comm error, a node lost); re-forming for a scale-up, a
// scale-down or a preemption does not. TORCHELASTIC_RESTART_COUNT is this
// count.
//
// Note [Counting restarts across agents]: every member of a round must
// see the same count (it is in their workers' environment, and each agent
// applies --max-restarts on its own), and one failure is often seen by
// several agents (a worker killed on one node, comm errors on the others).
// So the count lives in the job's store, under the rendezvous' prefix:
//   "failures"       the job's count (add)
//   "g{G}/failed"    claimed (compare_set) by the first agent that decides
//                    round G failed; only that agent adds to "failures",
//                    so round G counts once however many agents saw it
//   "g{G}/restarts"  the count as round G starts, fixed (compare_set) by
//                    the first member that asks, so every member reads it
// An agent records a failure before it opens the next round, so the
// members of that round read a count that includes it.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "kiln/base/status.h"
#include "kiln/store/store.h"

namespace kiln::elastic {

class RestartBudget {
 public:
  // `store` is the job's rendezvous store (namespaced to the job).
  explicit RestartBudget(std::shared_ptr<store::Store> store) : store_(std::move(store)) {}

  // The failures before round `generation`: the same for every member of
  // the round, whenever each asks. Store errors pass through.
  Result<int> restarts_before(std::int64_t generation);

  // Records that round `generation` failed (seen by `node`). Any number of
  // calls for one round, from any agents, count it once. Returns whether
  // this call was the one that counted it.
  Result<bool> record_failure(std::int64_t generation, std::string_view node);

 private:
  Result<int> read_failures();

  std::shared_ptr<store::Store> store_;
};

}  // namespace kiln::elastic
