// EtcdStore: the Store on an etcd v3 cluster, spoken through etcd's JSON
// gateway (docs/etcd.md has the key layout and what each call maps to).
//
//   KILN_ASSIGN_OR_RETURN(auto store, EtcdStore::open({.endpoints = {"10.0.0.1:2379"},
//                                                      .prefix = "/kiln/job42/"}));
//   KILN_ASSIGN_OR_RETURN(auto lease, store->grant_lease(10s, Deadline::after(5s)));
//   KILN_RETURN_IF_ERROR(store->set("alive/node3", "1", *lease));
//
// Every key lives under `prefix` (raw bytes, prepended), so jobs sharing an
// etcd never see each other's keys. Blocking get/wait read the keys, then
// watch them from the revision they were read at, so no change in between is
// missed and nothing polls.
//
// Thread-safe. set/add/compare_set/erase/check are bounded by
// default_timeout(); get/wait by their deadline. Retries follow Note [Which
// failures are retried] (client.h): an unreachable etcd is retried with
// backoff until the deadline, then Unavailable naming the endpoint, the
// operation and the key. add is a compare-and-swap loop on the key's
// mod_revision; its request is never repeated once it may have been
// applied, so an add cut off mid-request returns Unavailable rather than
// risk adding twice. A retried erase may report false for a key it removed.
//
// Errors: "store get 'rank/3' on etcd 127.0.0.1:2379: deadline exceeded
// after 30s"; DeadlineExceeded (get/wait timed out while etcd answered),
// Unavailable (etcd unreachable, or still unreachable when the deadline
// passed), InvalidArgument (empty key, add to a non-integer), DataLoss
// (a reply that is not what the gateway sends).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/store/etcd/client.h"
#include "kiln/store/etcd/lease.h"
#include "kiln/store/store.h"

namespace kiln::store::etcd {

struct EtcdStoreOptions {
  std::vector<std::string> endpoints;  // "host:port" or "http://host:port"
  std::string prefix;                  // prepended to every key
  // etcd's own TLS (https:// endpoints; docs/security.md).
  TlsFiles tls;
  // Store::default_timeout(): bounds calls made without a deadline.
  std::chrono::milliseconds default_timeout{std::chrono::seconds(300)};
};

class EtcdStore final : public Store {
 public:
  // Does not contact etcd (an unreachable one is reported by the first
  // call). InvalidArgument for no or empty endpoints.
  static Result<std::unique_ptr<EtcdStore>> open(EtcdStoreOptions options);

  Status set(std::string_view key, std::string_view value) override;
  Result<std::string> get(std::string_view key, Deadline deadline) override;
  Result<std::int64_t> add(std::string_view key, std::int64_t delta) override;
  Result<std::string> compare_set(std::string_view key, std::string_view expected,
                                  std::string_view desired) override;
  Status wait(std::span<const std::string> keys, Deadline deadline) override;
  Result<bool> erase(std::string_view key) override;
  Result<bool> check(std::span<const std::string> keys) override;

  using Store::get;
  using Store::wait;

  // Sets key to value attached to `lease`: etcd deletes it when the lease
  // expires or is revoked. NotFound if the lease has already expired.
  Status set(std::string_view key, std::string_view value, const EtcdLease& lease);

  // Grants a lease with `ttl` kept alive from a background thread (see
  // lease.h) on this store's etcd.
  Result<std::unique_ptr<EtcdLease>> grant_lease(std::chrono::seconds ttl, Deadline deadline);

  // For waiting on "anything changed" instead of polling (the rendezvous
  // does, kiln/elastic/etcd_change_feed.h): the store's current revision,
  // then await_change(revision) blocks until a key under the prefix is put
  // or deleted after it (ok at once if one already was), or until the
  // deadline (DeadlineExceeded). Unavailable when etcd could not be reached
  // or the watch broke, ok also when etcd cancelled the watch (its start
  // revision was compacted): either way, read again.
  Result<std::int64_t> revision(Deadline deadline);
  Status await_change(std::int64_t revision, Deadline deadline);

  const std::string& prefix() const { return prefix_; }
  const std::shared_ptr<EtcdClient>& client() const { return client_; }

 private:
  EtcdStore(std::shared_ptr<EtcdClient> client, std::string prefix);

  // The etcd key (prefix + key), base64 for the gateway.
  std::string etcd_key(std::string_view key) const;
  // "store OP KEYS on etcd ENDPOINT".
  std::string context(std::string_view op, std::string_view keys) const;
  Status put(std::string_view key, std::string_view value, std::int64_t lease);

  // Which of `keys` are missing at one revision of the store, and that
  // revision.
  struct Snapshot {
    std::int64_t revision = 0;
    std::vector<std::string> missing;
    std::optional<std::string> first_value;  // the value of keys[0] if present
  };
  Result<Snapshot> read(std::span<const std::string> keys, Deadline deadline);
  // Blocks until every key is present at once (or the deadline), tracking
  // them by watch from `snap`. Returns the value of keys[0].
  Result<std::string> await(std::span<const std::string> keys, Deadline deadline,
                            std::string_view op);

  std::shared_ptr<EtcdClient> client_;
  const std::string prefix_;
};

}  // namespace kiln::store::etcd
