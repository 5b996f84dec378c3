// Context: one rank's connections to every peer of a communicator, and the
// one place where a rank waits for them.
//
// It owns the pairs, the rank's doorbell, the transports' resources (shared
// memory segments, the tcp progress thread) and the abort state. Principle:
// no wait without a deadline, and one failure reaches every waiter: the
// first error aborts the context, which fails every pending request on every
// pair, tells local peers through their segments and closes tcp connections
// so remote peers fail fast too.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/comm/transport/doorbell.h"
#include "kiln/comm/transport/pair.h"

namespace kiln::comm::transport {

class Context {
 public:
  Context(int rank, int size);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // The pair to `peer` (never this rank's own).
  Pair& pair(int peer) { return *pairs_[peer]; }
  bool has_pair(int peer) const { return pairs_[peer] != nullptr; }

  // Blocks until every request is done, or fails: the first failed request,
  // an abort, or the deadline. On failure the context is aborted (which
  // completes every request) before returning, so the caller may release
  // the requests' buffers. `what` names the operation for errors.
  Status wait(std::span<Request* const> requests, Deadline deadline, const std::string& what);
  Status wait(std::initializer_list<Request*> requests, Deadline deadline, const std::string& what) {
    return wait(std::span<Request* const>(requests.begin(), requests.size()), deadline, what);
  }

  // Fails everything pending and every later wait with `why`. Safe from any
  // thread, idempotent (the first reason wins).
  void abort(const Status& why);
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  Status abort_status() const;

  // Transports ring this when they complete something for this rank.
  Doorbell& doorbell() { return *doorbell_; }

  // --- set up by the transport selection (select.cc) ---
  void set_pair(int peer, std::unique_ptr<Pair> pair) { pairs_[peer] = std::move(pair); }
  void set_doorbell(Doorbell* bell) { doorbell_ = bell; }
  // Called by abort(): e.g. flag local peers' segments, close sockets.
  void add_abort_hook(std::function<void(const Status&)> hook);
  // Objects that must outlive the pairs (segments, progress thread), released
  // in reverse order after the pairs.
  void keep_alive(std::shared_ptr<void> resource) { resources_.push_back(std::move(resource)); }
  // Host index (0..hosts-1) of every rank, from the host ids exchanged at setup.
  void set_hosts(std::vector<int> host_of) { host_of_ = std::move(host_of); }
  const std::vector<int>& host_of() const { return host_of_; }

  // Returns the rank that aborted the group through shared memory, or -1.
  void set_remote_abort_probe(std::function<int()> probe) { remote_abort_probe_ = std::move(probe); }

 private:
  Status fail_wait(std::span<Request* const> requests, Status why);
  // The peers of the requests not yet done, named for errors.
  static std::string peers_pending(std::span<Request* const> requests);

  const int rank_;
  const int size_;
  std::vector<std::unique_ptr<Pair>> pairs_;
  Doorbell local_doorbell_;
  Doorbell* doorbell_ = &local_doorbell_;

  std::atomic<bool> aborted_{false};
  mutable std::mutex abort_mu_;
  Status abort_status_;  // guarded by abort_mu_
  std::vector<std::function<void(const Status&)>> abort_hooks_;
  std::function<int()> remote_abort_probe_;
  std::vector<std::shared_ptr<void>> resources_;
  std::vector<int> host_of_;
};

}  // namespace kiln::comm::transport
