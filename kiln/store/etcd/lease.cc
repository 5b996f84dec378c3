#include "kiln/store/etcd/lease.h"

#include <fmt/format.h>

#include <algorithm>

namespace kiln::store::etcd {

Result<std::unique_ptr<EtcdLease>> EtcdLease::grant(std::shared_ptr<EtcdClient> client,
                                                    std::chrono::seconds ttl, Deadline deadline) {
  if (ttl.count() <= 0) {
    return invalid_argument(
        fmt::format("etcd lease grant: TTL must be positive, got {}s", ttl.count()));
  }
  // Repeating a grant only leaves an unused lease behind, which expires.
  auto reply =
      client->call("lease/grant", {{"TTL", std::to_string(ttl.count())}}, deadline, Retry::kAlways);
  if (!reply.is_ok()) return reply.status().with_context("etcd lease grant");
  constexpr std::string_view kWhat = "etcd lease grant reply";
  KILN_ASSIGN_OR_RETURN(std::int64_t id, json_int64(*reply, "ID", kWhat));
  KILN_ASSIGN_OR_RETURN(std::int64_t granted, json_int64(*reply, "TTL", kWhat));
  if (id == 0 || granted <= 0) {
    return data_loss(fmt::format("{}: no lease ID or TTL in {:.200}", kWhat, reply->dump()));
  }
  return std::unique_ptr<EtcdLease>(
      new EtcdLease(std::move(client), id, std::chrono::seconds(granted)));
}

EtcdLease::EtcdLease(std::shared_ptr<EtcdClient> client, std::int64_t id, std::chrono::seconds ttl)
    : client_(std::move(client)), id_(id), ttl_(ttl), last_refresh_(Clock::now()) {
  thread_ = std::thread([this] { keepalive_loop(); });
}

EtcdLease::~EtcdLease() { stop_keepalive(); }

void EtcdLease::stop_keepalive() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  std::call_once(joined_, [this] { thread_.join(); });
}

Status EtcdLease::revoke(Deadline deadline) {
  stop_keepalive();
  auto reply =
      client_->call("lease/revoke", {{"ID", std::to_string(id_)}}, deadline, Retry::kAlways);
  return reply.status().with_context(fmt::format("etcd lease revoke {}", id_));
}

Status EtcdLease::status() const {
  std::lock_guard lock(mu_);
  return status_;
}

Clock::time_point EtcdLease::last_refresh() const {
  std::lock_guard lock(mu_);
  return last_refresh_;
}

Status EtcdLease::keepalive_once(Deadline deadline) {
  // The gateway's keep-alive is a stream; one request gets one answer.
  std::int64_t ttl_left = -1;
  Status parsed;
  Status s = client_->stream("lease/keepalive", {{"ID", std::to_string(id_)}}, deadline,
                             [&](const Json& result) {
                               auto ttl = json_int64(result, "TTL", "etcd lease keep-alive");
                               if (ttl.is_ok()) ttl_left = *ttl;
                               parsed = ttl.status();
                               return false;
                             });
  KILN_RETURN_IF_ERROR(s);
  KILN_RETURN_IF_ERROR(parsed);
  // etcd answers an unknown (expired or revoked) lease with TTL 0.
  if (ttl_left <= 0) return not_found(fmt::format("etcd lease {} expired or was revoked", id_));
  return Status::ok();
}

void EtcdLease::keepalive_loop() {
  const Clock::duration interval = std::max<Clock::duration>(ttl_ / 3, Millis(50));
  const Clock::duration retry = std::max<Clock::duration>(ttl_ / 10, Millis(20));
  Clock::duration next = interval;
  std::unique_lock lock(mu_);
  while (!stop_cv_.wait_for(lock, next, [this] { return stop_; })) {
    lock.unlock();
    Status s = keepalive_once(Deadline::after(interval));
    lock.lock();
    if (s.is_ok()) {
      status_ = Status::ok();
      last_refresh_ = Clock::now();
      next = interval;
      continue;
    }
    status_ = s.with_context(fmt::format("etcd lease {} keep-alive", id_));
    if (s.code() == Code::kNotFound) return;  // gone for good: nothing left to refresh
    next = retry;
  }
}

}  // namespace kiln::store::etcd
