// Communicator: a group of ranks and the collectives they run together.
//
// Every collective is asynchronous: it returns a Work at once and runs on
// the communicator's engine, in issue order (see work.h). Buffers belong to
// the caller and must stay valid until the Work is done. Every rank must
// issue the same operations in the same order with matching counts, dtypes
// and roots; KILN_COMM_CHECK=1 verifies that before each operation and turns
// a mismatch into an error naming both sides.
//
// Failure: the first error of any operation (a peer died, a link went down,
// the op timeout passed, a mismatch) aborts the communicator: that and every
// later operation fail with an error naming the operation, the peer and its
// host, and peers blocked on this rank are told at once (shared-memory flag,
// closed sockets). Re-form a new communicator to continue (the launcher does).
//
// Thread safety: collectives may be issued from any thread (issue order is
// the order of the calls); abort() from any thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/algo/group.h"
#include "kiln/comm/transport/select.h"
#include "kiln/comm/tuning.h"
#include "kiln/comm/types.h"
#include "kiln/comm/work.h"
#include "kiln/store/store.h"

namespace kiln::comm {

class Communicator;

// KILN_COMM_TIMEOUT (seconds, default 300) as a duration.
std::chrono::milliseconds default_op_timeout();

struct CommOptions {
  // Per-operation timeout (KILN_COMM_TIMEOUT, seconds; default 300).
  std::chrono::milliseconds timeout{0};  // 0 = from the environment
  // Allreduce algorithm (KILN_ALGO); kAuto = the cost model decides.
  AllreduceAlgo algo = AllreduceAlgo::kAuto;
  bool algo_from_env = true;
  // Exchange operation fingerprints before each op (KILN_COMM_CHECK).
  bool check = false;
  bool check_from_env = true;
  transport::ConnectOptions connect;  // transport mode (KILN_TRANSPORT), addresses, tag
  bool transport_from_env = true;
};

class Communicator {
 public:
  // Connects `rank` of `size` through the store; blocks until all ranks have
  // joined or the timeout passes. `options.connect.tag` must be the same on
  // every rank and unique per group instance (it namespaces the store keys).
  static Result<std::unique_ptr<Communicator>> create(std::shared_ptr<store::Store> store, int rank,
                                                      int size, CommOptions options);
  ~Communicator();

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& tag() const { return options_.connect.tag; }

  WorkPtr allreduce(const void* send, void* recv, std::size_t count, DataType dtype, ReduceOp op);
  WorkPtr allreduce(void* buf, std::size_t count, DataType dtype, ReduceOp op) {
    return allreduce(buf, buf, count, dtype, op);
  }
  WorkPtr broadcast(void* buf, std::size_t count, DataType dtype, int root);
  // recv is written on the root only (may be null elsewhere).
  WorkPtr reduce(const void* send, void* recv, std::size_t count, DataType dtype, ReduceOp op,
                 int root);
  // recv holds size() blocks of `count` elements, in rank order.
  WorkPtr allgather(const void* send, void* recv, std::size_t count, DataType dtype);
  // Rank i contributes counts[i] elements; recv holds them back to back.
  WorkPtr allgatherv(const void* send, void* recv, std::vector<std::size_t> counts, DataType dtype);
  // send holds size() blocks of recv_count elements; rank i gets block i reduced.
  // recv may be block rank() of send (in place); send's other blocks are
  // left as they were.
  WorkPtr reduce_scatter(const void* send, void* recv, std::size_t recv_count, DataType dtype,
                         ReduceOp op);
  // Block j of send goes to rank j; block i of recv came from rank i.
  WorkPtr alltoall(const void* send, void* recv, std::size_t count_per_rank, DataType dtype);
  WorkPtr send(const void* buf, std::size_t count, DataType dtype, int peer);
  WorkPtr recv(void* buf, std::size_t count, DataType dtype, int peer);
  // Sends to `to` and receives from `from` concurrently (a ring shift when
  // every rank calls it with to = rank+1, from = rank-1).
  WorkPtr sendrecv(const void* send, std::size_t send_count, int to, void* recv,
                   std::size_t recv_count, int from, DataType dtype);
  WorkPtr barrier();

  // Collective over this communicator: ranks with the same color form a new
  // communicator, ordered by (key, rank). color < 0 opts out (returns null).
  Result<std::unique_ptr<Communicator>> split(int color, int key);

  // Fails every pending and later operation with `why`. Any thread.
  void abort(const Status& why);

  // Forces the allreduce algorithm of operations that start executing after
  // the call (kAuto: back to the cost model). For tests and benchmarks.
  void set_allreduce_algo(AllreduceAlgo a) { forced_algo_.store(a); }

  // The allreduce algorithm the cost model (or KILN_ALGO) picks for `bytes`.
  AllreduceAlgo choose_allreduce(std::size_t bytes) const;
  std::string describe() const;  // "rank 1/4, shm:2 tcp:1, 2 hosts"
  // Hosts, ranks per host, whether any pair crosses hosts.
  const Topology& topology() const { return topology_; }
  // Whether an allreduce of `bytes` first offers direct access when its
  // buffers are SharedBuffers (algo/direct.cc): callers that choose where to
  // put their buffers (DDP's buckets) allocate shared memory only then.
  bool direct_allreduce_applies(std::size_t bytes) const;
  // Allreduces issued on this communicator so far (tests count a model's
  // collectives: Megatron's two per layer each way).
  std::uint64_t allreduces() const { return allreduces_.load(std::memory_order_relaxed); }
  // Allreduces so far that ran directly on SharedBuffers (Note [Direct
  // allreduce on shared buffers]).
  std::uint64_t direct_allreduces() const { return direct_allreduces_.load(); }
  // Of those, the ones on this rank's plain memory shared in place (Note
  // [Sharing user memory in place], KILN_SHM_SHARE_IN_PLACE_BYTES).
  std::uint64_t in_place_allreduces() const { return in_place_allreduces_.load(); }
  // Allreduces so far that ran through cross-memory attach (Note
  // [Single-copy allreduce through the kernel]).
  std::uint64_t cma_allreduces() const { return cma_allreduces_.load(); }

 private:
  Communicator(std::shared_ptr<store::Store> store, int rank, int size, CommOptions options,
               std::unique_ptr<transport::Context> ctx);

  // Queues `body` as operation `name` (with a fingerprint check if enabled).
  // `signature` describes the call's shape ("float32 x 1024, sum") and must be
  // identical on every rank.
  // `check_peer` >= 0: a point-to-point operation, checked with that peer only.
  WorkPtr enqueue(const char* name, std::string signature,
                  std::function<Status(const algo::Env&)> body, int check_peer = -1);
  Status check_fingerprints(const algo::Env& env, const std::string& mine, int peer);
  // Whether an allreduce of `bytes` then tries cross-memory attach (algo/cma.cc).
  bool cma_allreduce_applies(std::size_t bytes) const;
  WorkPtr point_to_point(bool sending, void* buf, std::size_t count, DataType dtype, int peer);

  std::shared_ptr<store::Store> store_;
  int rank_;
  int size_;
  CommOptions options_;
  std::unique_ptr<transport::Context> ctx_;
  Topology topology_;
  CostModel cost_;
  std::uint64_t next_seq_ = 0;  // guarded by issue_mu_
  std::mutex issue_mu_;
  int splits_ = 0;
  algo::Scratch scratch_;         // used only by the one executing operation
  std::vector<int> world_ranks_;  // 0..size-1: the Group of world-wide operations
  std::atomic<AllreduceAlgo> forced_algo_{AllreduceAlgo::kAuto};  // set_allreduce_algo()
  std::int64_t direct_from_bytes_;  // KILN_SHM_DIRECT_BYTES, read once
  bool all_shm_ = true;             // every peer is reached through shared memory
  std::int64_t cma_from_bytes_;     // KILN_SHM_CMA_BYTES, read once
  // KILN_SHM_SHARE_IN_PLACE_BYTES, read once; 0 where sharing in place is
  // not safe (sharing_in_place_is_safe).
  std::int64_t in_place_from_bytes_;
  std::atomic<std::uint64_t> allreduces_{0};
  std::atomic<std::uint64_t> in_place_allreduces_{0};
  std::atomic<std::uint64_t> direct_allreduces_{0};
  std::atomic<std::uint64_t> cma_allreduces_{0};
  std::unique_ptr<Engine> engine_;
};

}  // namespace kiln::comm
