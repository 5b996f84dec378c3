#include "kiln/store/etcd/etcd_store.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "kiln/base/backoff.h"
#include "kiln/store/etcd/base64.h"
#include "kiln/store/internal/keys.h"

namespace kiln::store::etcd {
namespace {

using internal::quote_key;
using internal::quote_keys;

// etcd's default --max-txn-ops: a read of more keys takes several txns.
constexpr std::size_t kMaxTxnOps = 128;

// Note [Read grace]: a get or wait whose deadline has (nearly) passed still
// reads the keys once, with at least this long for the reply, so a key that
// is already there is returned rather than reported missing.
constexpr auto kReadGrace = std::chrono::milliseconds(250);

constexpr BackoffOptions kReconnectBackoff{.base = std::chrono::milliseconds(50),
                                           .cap = std::chrono::seconds(1)};

// See Note [Add contention].
constexpr BackoffOptions kContentionBackoff{.base = std::chrono::microseconds(500),
                                            .cap = std::chrono::milliseconds(20)};

Json compare_mod_revision(const std::string& key64, std::int64_t revision) {
  return {{"key", key64},
          {"target", "MOD"},
          {"result", "EQUAL"},
          {"mod_revision", std::to_string(revision)}};
}

// The reply's one response_range (the failure branch of a txn) as the key's
// current value; nullopt for a missing key.
Result<std::optional<KeyValue>> failure_range(const Json& txn, std::string_view what) {
  auto responses = txn.find("responses");
  if (responses == txn.end() || !responses->is_array() || responses->size() != 1 ||
      !(*responses)[0].contains("response_range")) {
    return data_loss(fmt::format("{}: txn reply without its range: {:.200}", what, txn.dump()));
  }
  KILN_ASSIGN_OR_RETURN(auto kvs, parse_kvs((*responses)[0]["response_range"], what));
  if (kvs.empty()) return std::optional<KeyValue>();
  return std::optional<KeyValue>(std::move(kvs.front()));
}

// The etcd key range holding every key that starts with `prefix`: [key,
// range_end) as etcd's clientv3.WithPrefix computes it ("\0" as range_end
// means every key from `key` on).
std::pair<std::string, std::string> prefix_range(const std::string& prefix) {
  if (prefix.empty()) return {std::string(1, '\0'), std::string(1, '\0')};
  std::string end = prefix;
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (end.empty()) return {prefix, std::string(1, '\0')};
  end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
  return {prefix, end};
}

}  // namespace

EtcdStore::EtcdStore(std::shared_ptr<EtcdClient> client, std::string prefix)
    : client_(std::move(client)), prefix_(std::move(prefix)) {}

Result<std::unique_ptr<EtcdStore>> EtcdStore::open(EtcdStoreOptions options) {
  KILN_ASSIGN_OR_RETURN(auto client, EtcdClient::create(std::move(options.endpoints),
                                                                std::move(options.tls)));
  std::unique_ptr<EtcdStore> store(new EtcdStore(std::move(client), std::move(options.prefix)));
  store->set_default_timeout(options.default_timeout);
  return store;
}

std::string EtcdStore::etcd_key(std::string_view key) const {
  std::string full = prefix_;
  full.append(key);
  return base64_encode(full);
}

std::string EtcdStore::context(std::string_view op, std::string_view keys) const {
  return fmt::format("store {} {}", op, keys);
}

Status EtcdStore::put(std::string_view key, std::string_view value, std::int64_t lease) {
  Json req = {{"key", etcd_key(key)}, {"value", base64_encode(value)}};
  if (lease != 0) req["lease"] = std::to_string(lease);
  return client_->call("kv/put", req, Deadline::after(default_timeout()), Retry::kAlways)
      .status()
      .with_context(context("set", quote_key(key)));
}

Status EtcdStore::set(std::string_view key, std::string_view value) {
  KILN_RETURN_IF_ERROR(internal::validate_key("set", key));
  return put(key, value, 0);
}

Status EtcdStore::set(std::string_view key, std::string_view value, const EtcdLease& lease) {
  KILN_RETURN_IF_ERROR(internal::validate_key("set", key));
  return put(key, value, lease.id());
}

Result<std::unique_ptr<EtcdLease>> EtcdStore::grant_lease(std::chrono::seconds ttl,
                                                          Deadline deadline) {
  return EtcdLease::grant(client_, ttl, deadline);
}

Result<EtcdStore::Snapshot> EtcdStore::read(std::span<const std::string> keys, Deadline deadline) {
  Snapshot snap;
  constexpr std::string_view kWhat = "etcd txn reply";
  for (std::size_t begin = 0; begin < keys.size(); begin += kMaxTxnOps) {
    std::size_t end = std::min(keys.size(), begin + kMaxTxnOps);
    Json ops = Json::array();
    for (std::size_t i = begin; i < end; ++i) {
      Json range = {{"key", etcd_key(keys[i])}};
      // Later chunks read at the first one's revision: one consistent view.
      if (snap.revision != 0) range["revision"] = std::to_string(snap.revision);
      ops.push_back({{"request_range", std::move(range)}});
    }
    KILN_ASSIGN_OR_RETURN(Json reply, client_->call("kv/txn", {{"success", std::move(ops)}},
                                                    deadline, Retry::kAlways));
    if (snap.revision == 0) {
      KILN_ASSIGN_OR_RETURN(snap.revision, header_revision(reply, kWhat));
    }
    auto responses = reply.find("responses");
    if (responses == reply.end() || !responses->is_array() || responses->size() != end - begin) {
      return data_loss(
          fmt::format("{}: expected {} ranges in {:.200}", kWhat, end - begin, reply.dump()));
    }
    for (std::size_t i = begin; i < end; ++i) {
      const Json& r = (*responses)[i - begin];
      if (!r.is_object() || !r.contains("response_range")) {
        return data_loss(fmt::format("{}: not a range response: {:.200}", kWhat, r.dump()));
      }
      KILN_ASSIGN_OR_RETURN(auto kvs, parse_kvs(r["response_range"], kWhat));
      if (kvs.empty()) {
        snap.missing.push_back(keys[i]);
      } else if (i == 0) {
        snap.first_value = std::move(kvs.front().value);
      }
    }
  }
  return snap;
}

Result<std::string> EtcdStore::await(std::span<const std::string> keys, Deadline deadline,
                                     std::string_view op) {
  const std::string ctx = context(op, op == "get" ? quote_key(keys.front()) : quote_keys(keys));
  const auto start = Clock::now();
  Backoff backoff(kReconnectBackoff);
  while (true) {
    Deadline read_deadline = deadline.remaining() < kReadGrace ? Deadline::after(kReadGrace)
                                                               : deadline;  // Note [Read grace]
    Result<Snapshot> snap = read(keys, read_deadline);
    Status failed = snap.status();
    if (snap.is_ok()) {
      if (snap->missing.empty()) return snap->first_value.value_or("");
      if (deadline.expired()) {
        return internal::deadline_error(Clock::now() - start,
                                        op == "get" ? std::span<const std::string>()
                                                    : std::span<const std::string>(snap->missing))
            .with_context(fmt::format("{} on etcd {}", ctx, client_->endpoints_text()));
      }
      // Watch the span of the keys from just after the revision read, so
      // every change since is seen, and track which are present: one
      // deleted meanwhile is missing again.
      std::set<std::string> wanted;  // etcd keys (with the prefix)
      for (const auto& k : keys) wanted.insert(prefix_ + k);
      std::set<std::string> missing;
      for (const auto& k : snap->missing) missing.insert(prefix_ + k);
      std::optional<std::string> first_value = snap->first_value;
      const std::string first_key = prefix_ + keys.front();
      bool cancelled = false;
      Status bad;
      Json req = {{"create_request",
                   {{"key", base64_encode(*wanted.begin())},
                    {"range_end", base64_encode(*wanted.rbegin() + std::string(1, '\0'))},
                    {"start_revision", std::to_string(snap->revision + 1)}}}};
      failed = client_->stream("watch", req, deadline, [&](const Json& result) {
        if (json_flag(result, "canceled")) {
          cancelled = true;  // e.g. the start revision was compacted away: read again
          return false;
        }
        auto events = result.find("events");
        if (events == result.end()) return true;
        if (!events->is_array()) {
          bad =
              data_loss(fmt::format("etcd watch: 'events' is not a list: {:.200}", events->dump()));
          return false;
        }
        for (const Json& ev : *events) {
          auto kv = ev.is_object() && ev.contains("kv")
                        ? parse_kv(ev["kv"], "etcd watch event")
                        : Result<KeyValue>(data_loss(
                              fmt::format("etcd watch: event without kv: {:.200}", ev.dump())));
          if (!kv.is_ok()) {
            bad = kv.status();
            return false;
          }
          if (!wanted.contains(kv->key)) continue;
          if (json_string(ev, "type", "PUT") == "DELETE") {
            missing.insert(kv->key);
            if (kv->key == first_key) first_value.reset();
          } else {
            missing.erase(kv->key);
            if (kv->key == first_key) first_value = std::move(kv->value);
          }
        }
        return !missing.empty();
      });
      if (!bad.is_ok()) return bad.with_context(ctx);
      if (failed.is_ok() && !cancelled) return first_value.value_or("");
      if (failed.is_ok()) continue;
      if (failed.code() == Code::kDeadlineExceeded) {
        std::vector<std::string> still;
        for (const auto& k : missing) still.push_back(k.substr(prefix_.size()));
        return internal::deadline_error(Clock::now() - start,
                                        op == "get" ? std::span<const std::string>()
                                                    : std::span<const std::string>(still))
            .with_context(fmt::format("{} on etcd {}", ctx, client_->endpoints_text()));
      }
    }
    // etcd went away (or never answered): try again until the deadline, and
    // say it was unreachable rather than that the keys were missing.
    if (failed.code() != Code::kUnavailable) return failed.with_context(ctx);
    if (!backoff.sleep_before_retry(deadline)) return failed.with_context(ctx);
  }
}

Result<std::string> EtcdStore::get(std::string_view key, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_key("get", key));
  std::string k(key);
  return await(std::span<const std::string>(&k, 1), deadline, "get");
}

Status EtcdStore::wait(std::span<const std::string> keys, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("wait", keys));
  if (keys.empty()) return Status::ok();
  return await(keys, deadline, "wait").status();
}

Result<bool> EtcdStore::check(std::span<const std::string> keys) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("check", keys));
  if (keys.empty()) return true;
  auto snap = read(keys, Deadline::after(default_timeout()));
  if (!snap.is_ok()) return snap.status().with_context(context("check", quote_keys(keys)));
  return snap->missing.empty();
}

Result<bool> EtcdStore::erase(std::string_view key) {
  KILN_RETURN_IF_ERROR(internal::validate_key("erase", key));
  auto reply = client_->call("kv/deleterange", {{"key", etcd_key(key)}},
                             Deadline::after(default_timeout()), Retry::kAlways);
  if (!reply.is_ok()) return reply.status().with_context(context("erase", quote_key(key)));
  auto deleted = json_int64(*reply, "deleted", "etcd deleterange reply");
  if (!deleted.is_ok()) return deleted.status().with_context(context("erase", quote_key(key)));
  return *deleted > 0;
}

Result<std::int64_t> EtcdStore::add(std::string_view key, std::int64_t delta) {
  KILN_RETURN_IF_ERROR(internal::validate_key("add", key));
  const std::string ctx = context("add", quote_key(key));
  const std::string key64 = etcd_key(key);
  const Deadline deadline = Deadline::after(default_timeout());
  constexpr std::string_view kWhat = "etcd add txn reply";
  // A compare-and-swap on the key's mod_revision (0 = missing): the read
  // that a failed swap returns is the next attempt's starting point.
  auto first = client_->call("kv/range", {{"key", key64}}, deadline, Retry::kAlways);
  if (!first.is_ok()) return first.status().with_context(ctx);
  auto kvs = parse_kvs(*first, kWhat);
  if (!kvs.is_ok()) return kvs.status().with_context(ctx);
  std::optional<KeyValue> current;
  if (!kvs->empty()) current = std::move(kvs->front());
  Backoff contention(kContentionBackoff);
  while (true) {
    KILN_ASSIGN_OR_RETURN(std::int64_t sum,
                          internal::add_to_value(key, current ? &current->value : nullptr, delta));
    Json txn = {
        {"compare",
         Json::array({compare_mod_revision(key64, current ? current->mod_revision : 0)})},
        {"success",
         Json::array(
             {{{"request_put", {{"key", key64}, {"value", base64_encode(std::to_string(sum))}}}}})},
        {"failure", Json::array({{{"request_range", {{"key", key64}}}}})}};
    // See Note [Which failures are retried]: a repeated swap could add twice.
    auto reply = client_->call("kv/txn", txn, deadline, Retry::kOnlyIfNotSent);
    if (!reply.is_ok()) return reply.status().with_context(ctx);
    if (json_flag(*reply, "succeeded")) return sum;
    auto now = failure_range(*reply, kWhat);
    if (!now.is_ok()) return now.status().with_context(ctx);
    current = std::move(now).value();
    // Note [Add contention]: lost a race with another adder. Waiting a
    // random moment lets the adders spread out instead of colliding again.
    if (!contention.sleep_before_retry(deadline)) {
      return unavailable("gave up after losing the compare-and-swap until the timeout")
          .with_context(ctx);
    }
  }
}

Result<std::string> EtcdStore::compare_set(std::string_view key, std::string_view expected,
                                           std::string_view desired) {
  KILN_RETURN_IF_ERROR(internal::validate_key("compare_set", key));
  const std::string ctx = context("compare_set", quote_key(key));
  const std::string key64 = etcd_key(key);
  const Deadline deadline = Deadline::after(default_timeout());
  constexpr std::string_view kWhat = "etcd compare_set txn reply";
  // A missing key equals "", which etcd's value compare cannot express (it
  // fails on a missing key): expecting "" compares the mod_revision instead,
  // first against 0 (missing), then against the revision of a present empty
  // value if that is what the failed swap found.
  std::int64_t empty_at = 0;
  while (true) {
    Json cmp = expected.empty() ? compare_mod_revision(key64, empty_at)
                                : Json{{"key", key64},
                                       {"target", "VALUE"},
                                       {"result", "EQUAL"},
                                       {"value", base64_encode(expected)}};
    Json txn = {
        {"compare", Json::array({cmp})},
        {"success",
         Json::array({{{"request_put", {{"key", key64}, {"value", base64_encode(desired)}}}}})},
        {"failure", Json::array({{{"request_range", {{"key", key64}}}}})}};
    // Repeating a swap whose reply was lost finds `desired` and reports it,
    // as the first attempt would have.
    auto reply = client_->call("kv/txn", txn, deadline, Retry::kAlways);
    if (!reply.is_ok()) return reply.status().with_context(ctx);
    if (json_flag(*reply, "succeeded")) return std::string(desired);
    auto now = failure_range(*reply, kWhat);
    if (!now.is_ok()) return now.status().with_context(ctx);
    std::string value = *now ? (*now)->value : std::string();
    if (value != expected) return value;
    empty_at = *now ? (*now)->mod_revision : 0;  // present with "": swap against that revision
  }
}

Result<std::int64_t> EtcdStore::revision(Deadline deadline) {
  auto [key, end] = prefix_range(prefix_);
  auto reply = client_->call(
      "kv/range",
      {{"key", base64_encode(key)}, {"range_end", base64_encode(end)}, {"count_only", true}},
      deadline, Retry::kAlways);
  if (!reply.is_ok()) return reply.status().with_context(context("revision", quote_key(prefix_)));
  return header_revision(*reply, "etcd range reply");
}

Status EtcdStore::await_change(std::int64_t revision, Deadline deadline) {
  auto [key, end] = prefix_range(prefix_);
  Json req = {{"create_request",
               {{"key", base64_encode(key)},
                {"range_end", base64_encode(end)},
                {"start_revision", std::to_string(revision + 1)}}}};
  Status bad;
  Status s = client_->stream("watch", req, deadline, [&](const Json& result) {
    if (json_flag(result, "canceled")) return false;  // compacted: the caller reads again
    auto events = result.find("events");
    if (events == result.end()) return true;  // "created", or a progress notice
    if (!events->is_array()) {
      bad = data_loss(fmt::format("etcd watch: 'events' is not a list: {:.200}", events->dump()));
    }
    return false;
  });
  if (!bad.is_ok()) s = bad;
  return s.with_context(fmt::format("{} on etcd {}", context("await_change", quote_key(prefix_)),
                                    client_->endpoints_text()));
}

}  // namespace kiln::store::etcd
