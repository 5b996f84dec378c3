// Node liveness: each agent publishes that it is alive, and judges the
// others by what they publish. Two backends:
//   counters (any Store)  each agent bumps "hb/NODE" every TTL/5; an
//                         observer calls a node lost when the counter has
//                         not moved for a TTL of the observer's own clock
//                         (no clock is shared between hosts);
//   leases (etcd)         etcd_liveness.h: each agent's "alive/NODE" key
//                         lives on a lease it keeps alive; etcd deletes it a
//                         TTL after the agent stops (a server-side TTL).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
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

// This node's side: keeps saying it is alive, from a background thread.
class LivenessPublisher {
 public:
  virtual ~LivenessPublisher() = default;
  // When the store last confirmed this node alive (the start time before it
  // did). An agent not confirmed for a TTL is the one cut off.
  virtual Clock::time_point last_success() const = 0;
  // The latest failure, ok while publishing works.
  virtual Status last_error() const = 0;
};

// The other nodes' side, polled by one caller.
class LivenessObserver {
 public:
  virtual ~LivenessObserver() = default;
  // Starts watching `node_ids` afresh (each gets a full TTL from now).
  virtual void watch(const std::vector<std::string>& node_ids) = 0;
  // The watched nodes that are lost now. A store error is returned as such:
  // the caller decides whether the store or the nodes are gone.
  virtual Result<std::vector<std::string>> lost(Clock::time_point now = Clock::now()) = 0;
  // Whether every watched node showed it was alive after `t` (as of the
  // last lost() call).
  virtual bool all_alive_since(Clock::time_point t) const = 0;
};

// How an agent publishes and observes liveness.
struct LivenessBackend {
  std::function<Result<std::unique_ptr<LivenessPublisher>>(const std::string& node_id)> publish;
  std::function<std::unique_ptr<LivenessObserver>()> observe;
};

// Heartbeat counters over `store` (any Store).
LivenessBackend counter_liveness(std::shared_ptr<store::Store> store, Clock::duration ttl);

std::string heartbeat_key(const std::string& node_id);

// Publishes this node's heartbeat counter from a background thread.
class HeartbeatPublisher final : public LivenessPublisher {
 public:
  HeartbeatPublisher(std::shared_ptr<store::Store> store, std::string node_id,
                     Clock::duration interval);
  ~HeartbeatPublisher() override;  // stops the thread

  Clock::time_point last_success() const override;
  Status last_error() const override;

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

// Watches other nodes' heartbeat counters: lost once a counter has not
// moved for a TTL. Not thread-safe: one caller polls it.
class LivenessMonitor final : public LivenessObserver {
 public:
  LivenessMonitor(std::shared_ptr<store::Store> store, Clock::duration ttl);

  void watch(const std::vector<std::string>& node_ids) override;
  Result<std::vector<std::string>> lost(Clock::time_point now = Clock::now()) override;
  bool all_alive_since(Clock::time_point t) const override;

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
