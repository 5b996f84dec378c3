// Node liveness over the rendezvous store, with no clock shared between
// hosts: each agent bumps its own counter ("hb/NODE") every `interval`, and
// an observer calls a node lost when the counter it reads has not moved
// for `ttl` of the observer's own time. (etcd leases would do the same
// with a server-side TTL; the counter needs nothing but add/get.)
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/store/store.h"

namespace kiln::elastic {

std::string heartbeat_key(const std::string& node_id);

// Publishes this node's heartbeat from a background thread.
class HeartbeatPublisher {
 public:
  HeartbeatPublisher(std::shared_ptr<store::Store> store, std::string node_id,
                     Clock::duration interval);
  ~HeartbeatPublisher();  // stops the thread

  // When the last heartbeat reached the store (the start time before any
  // did). An agent whose heartbeats stopped reaching the store for a TTL is
  // the one cut off.
  Clock::time_point last_success() const;
  // The error of the most recent failed attempt, ok if the last one worked.
  Status last_error() const;

 private:
  void loop();

  std::shared_ptr<store::Store> store_;
  const std::string key_;
  const Clock::duration interval_;
  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;               // guarded by mu_
  Clock::time_point last_success_;  // guarded by mu_
  Status last_error_;               // guarded by mu_
  std::thread thread_;
};

// Watches other nodes' heartbeats. Not thread-safe: one caller polls it.
class LivenessMonitor {
 public:
  LivenessMonitor(std::shared_ptr<store::Store> store, Clock::duration ttl);

  // Starts watching `node_ids` afresh (each gets a full TTL from now).
  void watch(const std::vector<std::string>& node_ids);

  // Reads every watched counter and returns the nodes whose counter has not
  // moved for a TTL. A store error is returned as such: the caller decides
  // whether the store or the nodes are gone.
  Result<std::vector<std::string>> lost(Clock::time_point now = Clock::now());

  // Whether every watched node's counter moved after `t` (they are alive).
  bool all_moved_since(Clock::time_point t) const;

 private:
  struct Seen {
    std::string value;
    Clock::time_point changed_at;
  };
  std::shared_ptr<store::Store> store_;
  const Clock::duration ttl_;
  std::map<std::string, Seen> seen_;
};

}  // namespace kiln::elastic
