// EtcdClient: calls on etcd's v3 JSON gateway (POST /v3/<service>/<method>,
// e.g. "kv/range"), with the retry rules every etcd user in Kiln shares.
//
//   KILN_ASSIGN_OR_RETURN(auto client, EtcdClient::create({"127.0.0.1:2379"}));
//   KILN_ASSIGN_OR_RETURN(Json reply, client->call("kv/range", {{"key", b64}},
//                                                  Deadline::after(5s), Retry::kAlways));
//
// Note [Which failures are retried]: a call that could not connect never
// reached etcd, so it is retried (with jittered exponential backoff, moving
// to the next endpoint) until its deadline, whatever it was. A call whose
// connection failed after the request went out, or that etcd answered with
// a 5xx (gRPC Unavailable: no leader, request timed out), may or may not
// have been applied: it is retried only if repeating it is harmless
// (Retry::kAlways); otherwise (add's compare-and-swap) it fails at once with
// Unavailable saying the outcome is unknown. Other replies are final: 4xx →
// the gRPC code's Status (NotFound for an unknown lease), a 2xx body that is
// not a JSON object → DataLoss.
//
// Errors name the endpoint, the method and the cause; callers add the
// operation and key. Once the deadline passes: Unavailable if any attempt
// failed to reach etcd, else DeadlineExceeded.
//
// Thread-safe; shared by an EtcdStore and its EtcdLeases.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/store/etcd/http_client.h"
#include "kiln/store/etcd/json_codec.h"

namespace kiln::store::etcd {

enum class Retry { kAlways, kOnlyIfNotSent };

class EtcdClient {
 public:
  // `endpoints`: "host:port" or "http://host:port", tried in turn.
  // InvalidArgument if there are none or one is empty.
  // `tls`: for https:// endpoints (HttpClient's TlsFiles).
  static Result<std::shared_ptr<EtcdClient>> create(std::vector<std::string> endpoints,
                                                    TlsFiles tls = {});

  // One unary call (see the Note for retries). Blocks until the reply or the
  // deadline.
  Result<Json> call(std::string_view method, const Json& request, Deadline deadline, Retry retry);

  // One attempt at a streaming call (watch, lease keep-alive): POSTs
  // `request` and hands each message's "result" to `on_message` until it
  // returns false (→ ok). Unavailable if the stream could not be opened or
  // broke (the caller re-reads and retries), DeadlineExceeded at the
  // deadline, DataLoss for a malformed message, the gRPC code's Status if
  // etcd answered with an error.
  Status stream(std::string_view method, const Json& request, Deadline deadline,
                const std::function<bool(const Json& result)>& on_message);

  // The endpoint calls go to first, and all of them ("a:1,b:2").
  std::string current_endpoint() const;
  std::string endpoints_text() const;

 private:
  EtcdClient(std::vector<std::string> endpoints, TlsFiles tls);
  std::string url(std::size_t endpoint, std::string_view method) const;
  // Moves on to the next endpoint after `failed` failed (no-op if another
  // thread already did).
  void rotate(std::size_t failed);

  const std::vector<std::string> endpoints_;  // with scheme, without trailing '/'
  std::atomic<std::size_t> current_{0};
  HttpClient http_;
};

// The Status for a gateway error reply (HTTP status and body).
Status gateway_error(long http_status, std::string_view body);

}  // namespace kiln::store::etcd
