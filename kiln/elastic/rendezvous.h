// Rendezvous: the agents of a job (one per node) agree, round by round, on
// who is in the job and in which order.
//
// Note [Rendezvous rounds]: rounds are numbered by a generation that only
// grows. Round g is open once the store's "gen" key reads g; an agent joins
// it by taking a ticket (add on "g{g}/count") and writing its node info
// under that ticket. The round closes, exactly once (compare_set on
// "g{g}/closed"), when max_nodes joined, or min_nodes joined and either
// every expected node joined (the survivors of round g-1, written by
// whoever opened g) or the last-call window passed. Tickets at or past the
// closing count are late: those agents wait for round g+1, which opens when
// a member asks for it (a failure, or scale-up once it sees them waiting).
// Group ranks follow the sorted node ids, so the same nodes always get the
// same ranks, whatever order they joined in.
//
// All of it is store operations with deadlines, so it works over any
// kiln::store::Store (the embedded TCP store, etcd).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/store/store.h"

namespace kiln::elastic {

struct NodeInfo {
  std::string id;    // stable name of the node (--node-id, default hostname)
  std::string addr;  // address its workers are reached at
};

// A closed round as one member sees it.
struct Round {
  std::int64_t generation = 0;
  int group_rank = 0;           // this node's place in `nodes`
  std::vector<NodeInfo> nodes;  // sorted by id
  int num_nodes() const { return static_cast<int>(nodes.size()); }
};

// How a waiting agent learns that the job's keys changed, instead of
// re-reading them every poll_interval. On etcd a watch (etcd_change_feed.h).
class ChangeFeed {
 public:
  virtual ~ChangeFeed() = default;
  // Called before the keys are read: wait() then reports any change after
  // this moment, also one made while they were being read.
  virtual Status mark() = 0;
  // Blocks until a key changed since the last mark() (ok) or `deadline`
  // (DeadlineExceeded); another error (the store unreachable) means the
  // caller should read again after a pause.
  virtual Status wait(Deadline deadline) = 0;
};

struct RendezvousOptions {
  NodeInfo self;
  int min_nodes = 1;
  int max_nodes = 1;
  // After min_nodes joined, how long to wait for more before closing.
  Clock::duration last_call = std::chrono::seconds(2);
  // How often a waiting agent re-reads the round's keys, without `changes`.
  Clock::duration poll_interval = std::chrono::milliseconds(20);
  // Set: a waiting agent re-reads when the keys changed, when the last call
  // ends, and at least every `feed_recheck` (for the conditions that are
  // not keys: a node's first TTL of grace in running_round_gone).
  std::shared_ptr<ChangeFeed> changes;
  Clock::duration feed_recheck = std::chrono::seconds(1);
  // Asked (each poll) while this agent waits for a running round to open
  // the next one: whether that round's nodes are all gone (lost or
  // finished), so that nobody will. If so this agent opens the next round
  // itself — a job restarted after every node died, or rerun under the same
  // id. Unset: wait for the running round.
  std::function<bool(const Round&)> running_round_gone;
};

class Rendezvous {
 public:
  // `store` should be namespaced to the job (a PrefixStore "rdzv/JOB").
  Rendezvous(std::shared_ptr<store::Store> store, RendezvousOptions options);

  // Joins the first round numbered at least `min_generation` that admits
  // this node, and returns it once it closed. DeadlineExceeded names the
  // round and how many nodes had joined.
  Result<Round> join(std::int64_t min_generation, Deadline deadline);

  // The newest generation opened (1 before anyone asked for another).
  Result<std::int64_t> current_generation();

  // Opens round `from + 1` unless someone already did; `expected_nodes` is
  // how many of round `from`'s nodes are expected to come back (lets the new
  // round close without waiting for the last call). Returns the generation
  // now open.
  Result<std::int64_t> open_next(std::int64_t from, int expected_nodes);

  // How many agents hold a ticket for round `generation` (late agents of
  // generation-1 waiting for it count here).
  Result<int> joined(std::int64_t generation);

  // The members of a closed round, as this node would see them.
  Result<Round> members(std::int64_t generation, Deadline deadline);

  const RendezvousOptions& options() const { return options_; }

 private:
  struct Ticket {
    std::int64_t generation;
    int index;
  };
  Result<Ticket> take_ticket(std::int64_t generation);
  // Closes the round if its rule says so; returns the closing count, or 0
  // while it is still open.
  Result<int> try_close(std::int64_t generation, Clock::time_point& min_reached_at);
  Result<Round> read_members(std::int64_t generation, int closed_count, Deadline deadline);
  // Between two reads of a waiting join: until `changes` reports a change
  // (or the last call or the recheck is due), else poll_interval.
  void wait_for_change(const Status& marked, Clock::time_point min_reached_at, Deadline deadline);
  Result<std::int64_t> read_int(const std::string& key, std::int64_t missing);

  std::shared_ptr<store::Store> store_;
  RendezvousOptions options_;
};

}  // namespace kiln::elastic
