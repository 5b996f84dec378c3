// EtcdLease: an etcd lease kept alive from a background thread, so the keys
// put with it (EtcdStore::set(key, value, lease)) vanish once its holder
// dies: etcd deletes them when no keep-alive arrived for a TTL.
//
//   KILN_ASSIGN_OR_RETURN(auto lease, store->grant_lease(10s, Deadline::after(5s)));
//   KILN_RETURN_IF_ERROR(store->set("alive/" + node, "1", *lease));
//   ...
//   lease->revoke(Deadline::after(2s));  // a clean exit removes the keys at once
//
// Thread-safe. One thread (the keep-alive) per lease: it sends a keep-alive
// every ttl/3 (POST /v3/lease/keepalive, each attempt bounded by that
// interval) and, after a failure, retries every ttl/10 until it works again.
// Once etcd answers that the lease is gone (it expired while etcd was
// unreachable, or was revoked) the thread stops and status() says NotFound:
// the holder must grant a new lease and re-put its keys.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/store/etcd/client.h"

namespace kiln::store::etcd {

class EtcdLease {
 public:
  // Grants a lease of `ttl` (etcd rounds a TTL below its minimum up; ttl()
  // says what it granted) and starts the keep-alive thread. Errors as
  // EtcdClient::call, naming the lease grant.
  static Result<std::unique_ptr<EtcdLease>> grant(std::shared_ptr<EtcdClient> client,
                                                  std::chrono::seconds ttl, Deadline deadline);

  // Stops the keep-alive without revoking: the keys lapse after the TTL,
  // exactly as if this process had died.
  ~EtcdLease();
  EtcdLease(const EtcdLease&) = delete;
  EtcdLease& operator=(const EtcdLease&) = delete;

  std::int64_t id() const { return id_; }
  std::chrono::seconds ttl() const { return ttl_; }

  // Stops refreshing (blocks until the keep-alive thread has exited, at most
  // one keep-alive attempt). Idempotent.
  void stop_keepalive();

  // Stops the keep-alive, then revokes the lease: etcd deletes its keys now.
  // NotFound if it had already expired.
  Status revoke(Deadline deadline);

  // Ok while keep-alives succeed; the latest failure otherwise.
  Status status() const;
  // When etcd last confirmed the lease (the grant, at first).
  Clock::time_point last_refresh() const;

 private:
  EtcdLease(std::shared_ptr<EtcdClient> client, std::int64_t id, std::chrono::seconds ttl);
  void keepalive_loop();
  // One keep-alive; NotFound once the lease is gone.
  Status keepalive_once(Deadline deadline);

  const std::shared_ptr<EtcdClient> client_;
  const std::int64_t id_;
  const std::chrono::seconds ttl_;
  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;               // guarded by mu_
  Status status_;                   // guarded by mu_
  Clock::time_point last_refresh_;  // guarded by mu_
  std::thread thread_;              // the keep-alive; joined by stop_keepalive()
  std::once_flag joined_;
};

}  // namespace kiln::store::etcd
