#include "kiln/elastic/liveness.h"

#include <fmt/format.h>

namespace kiln::elastic {

std::string heartbeat_key(const std::string& node_id) { return "hb/" + node_id; }

LivenessBackend counter_liveness(std::shared_ptr<store::Store> store, Clock::duration ttl) {
  LivenessBackend b;
  b.publish = [store,
               ttl](const std::string& node_id) -> Result<std::unique_ptr<LivenessPublisher>> {
    return std::unique_ptr<LivenessPublisher>(
        std::make_unique<HeartbeatPublisher>(store, node_id, ttl / 5));
  };
  b.observe = [store, ttl] {
    return std::unique_ptr<LivenessObserver>(std::make_unique<LivenessMonitor>(store, ttl));
  };
  return b;
}

HeartbeatPublisher::HeartbeatPublisher(std::shared_ptr<store::Store> store, std::string node_id,
                                       Clock::duration interval)
    : store_(std::move(store)),
      key_(heartbeat_key(node_id)),
      interval_(interval),
      last_success_(Clock::now()),
      thread_([this] { loop(); }) {}

HeartbeatPublisher::~HeartbeatPublisher() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  thread_.join();
}

Clock::time_point HeartbeatPublisher::last_success() const {
  std::lock_guard lock(mu_);
  return last_success_;
}

Status HeartbeatPublisher::last_error() const {
  std::lock_guard lock(mu_);
  return last_error_;
}

void HeartbeatPublisher::loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    lock.unlock();
    Status s = internal::to_status(store_->add(key_, 1));
    lock.lock();
    if (s.is_ok()) {
      last_success_ = Clock::now();
      last_error_ = Status::ok();
    } else {
      last_error_ = s.with_context(fmt::format("publishing heartbeat {}", key_));
    }
    stop_cv_.wait_for(lock, interval_, [this] { return stop_; });
  }
}

LivenessMonitor::LivenessMonitor(std::shared_ptr<store::Store> store, Clock::duration ttl)
    : store_(std::move(store)), ttl_(ttl) {}

void LivenessMonitor::watch(const std::vector<std::string>& node_ids) {
  seen_.clear();
  auto now = Clock::now();
  for (const auto& id : node_ids) seen_[id] = Seen{"", now};
}

bool LivenessMonitor::all_alive_since(Clock::time_point t) const {
  for (const auto& [id, seen] : seen_) {
    if (seen.changed_at <= t) return false;
  }
  return true;
}

Result<std::vector<std::string>> LivenessMonitor::lost(Clock::time_point now) {
  std::vector<std::string> out;
  for (auto& [id, seen] : seen_) {
    std::string key = heartbeat_key(id);
    std::string keys[] = {key};
    KILN_ASSIGN_OR_RETURN(bool present, store_->check(keys));
    std::string value;
    if (present) {
      KILN_ASSIGN_OR_RETURN(value, store_->get(key, Deadline::after(ttl_)));
    }
    if (value != seen.value) {
      seen.value = std::move(value);
      seen.changed_at = now;
    } else if (now - seen.changed_at >= ttl_) {
      out.push_back(id);
    }
  }
  return out;
}

}  // namespace kiln::elastic
