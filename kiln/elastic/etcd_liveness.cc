#include "kiln/elastic/etcd_liveness.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace kiln::elastic {
namespace {

std::string alive_key(const std::string& node_id) { return "alive/" + node_id; }

// How late etcd may delete an expired lease's keys (it sweeps periodically).
constexpr auto kExpirySweep = std::chrono::seconds(1);

std::chrono::seconds whole_seconds(Clock::duration d) {
  return std::max(std::chrono::seconds(1), std::chrono::ceil<std::chrono::seconds>(d));
}

// Holds the lease and, when etcd says it is gone (it lapsed while etcd
// was unreachable), grants a new one and puts the key again.
class LeasePublisher final : public LivenessPublisher {
 public:
  LeasePublisher(std::shared_ptr<store::etcd::EtcdStore> store, std::string node_id,
                 Clock::duration ttl)
      : store_(std::move(store)),
        key_(alive_key(node_id)),
        ttl_(ttl),
        last_success_(Clock::now()) {}

  Status start() {
    KILN_RETURN_IF_ERROR(renew());
    thread_ = std::thread([this] { loop(); });
    return Status::ok();
  }

  ~LeasePublisher() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    // A clean exit: the key goes now, not a TTL later.
    if (lease_) (void)lease_->revoke(Deadline::after(std::chrono::seconds(2)));
  }

  Clock::time_point last_success() const override {
    std::lock_guard lock(mu_);
    return lease_ ? std::max(last_success_, lease_->last_refresh()) : last_success_;
  }

  Status last_error() const override {
    std::lock_guard lock(mu_);
    if (!error_.is_ok()) return error_;
    return lease_ ? lease_->status() : Status::ok();
  }

 private:
  Status renew() {
    Deadline deadline = Deadline::after(ttl_);
    auto lease = store_->grant_lease(whole_seconds(ttl_), deadline);
    Status s = lease.status();
    if (s.is_ok()) s = store_->set(key_, "1", **lease);
    std::lock_guard lock(mu_);
    if (!s.is_ok()) {
      error_ = s.with_context(fmt::format("publishing {} on a lease", key_));
      return error_;
    }
    lease_ = std::move(*lease);
    last_success_ = Clock::now();
    error_ = Status::ok();
    return Status::ok();
  }

  void loop() {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, ttl_ / 5, [this] { return stop_; })) {
      bool gone = !lease_ || lease_->status().code() == Code::kNotFound;
      if (!gone && error_.is_ok()) continue;
      lock.unlock();
      (void)renew();
      lock.lock();
    }
  }

  std::shared_ptr<store::etcd::EtcdStore> store_;
  const std::string key_;
  const Clock::duration ttl_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                              // guarded by mu_
  std::unique_ptr<store::etcd::EtcdLease> lease_;  // guarded by mu_
  Clock::time_point last_success_;                 // guarded by mu_
  Status error_;                                   // guarded by mu_
  std::thread thread_;
};

class LeaseObserver final : public LivenessObserver {
 public:
  LeaseObserver(std::shared_ptr<store::etcd::EtcdStore> store, Clock::duration ttl)
      : store_(std::move(store)), ttl_(ttl) {}

  void watch(const std::vector<std::string>& node_ids) override {
    seen_.clear();
    watched_at_ = Clock::now();
    for (const auto& id : node_ids) seen_[id] = Clock::time_point{};
  }

  Result<std::vector<std::string>> lost(Clock::time_point now) override {
    std::vector<std::string> out;
    for (auto& [id, seen_at] : seen_) {
      std::string keys[] = {alive_key(id)};
      KILN_ASSIGN_OR_RETURN(bool present, store_->check(keys));
      if (present) {
        seen_at = now;
      } else if (seen_at != Clock::time_point{} || now - watched_at_ >= ttl_) {
        out.push_back(id);
      }
    }
    return out;
  }

  // A key outlives its holder by up to a TTL (and etcd's expiry sweep), so
  // only presence a TTL and a margin after `t` proves life after `t`.
  bool all_alive_since(Clock::time_point t) const override {
    auto proof = t + ttl_ + kExpirySweep;
    return std::all_of(seen_.begin(), seen_.end(),
                       [proof](const auto& kv) { return kv.second >= proof; });
  }

 private:
  std::shared_ptr<store::etcd::EtcdStore> store_;
  const Clock::duration ttl_;
  Clock::time_point watched_at_;
  std::map<std::string, Clock::time_point> seen_;  // when each key was last present
};

}  // namespace

LivenessBackend lease_liveness(std::shared_ptr<store::etcd::EtcdStore> store, Clock::duration ttl) {
  LivenessBackend b;
  b.publish = [store,
               ttl](const std::string& node_id) -> Result<std::unique_ptr<LivenessPublisher>> {
    auto p = std::make_unique<LeasePublisher>(store, node_id, ttl);
    KILN_RETURN_IF_ERROR(p->start());
    return std::unique_ptr<LivenessPublisher>(std::move(p));
  };
  b.observe = [store, ttl] {
    return std::unique_ptr<LivenessObserver>(std::make_unique<LeaseObserver>(store, ttl));
  };
  return b;
}

}  // namespace kiln::elastic
