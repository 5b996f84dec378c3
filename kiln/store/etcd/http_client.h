// HttpClient: the few HTTP exchanges the etcd gateway needs, over libcurl.
//
// Thread-safe: each exchange borrows a curl easy handle from a small pool (so
// kept-alive connections are reused) and returns it afterwards; exchanges
// from several threads run in parallel. Every exchange is bounded by its
// Deadline (curl's total timeout); Deadline::never() means no timeout.
//
// Errors are not Status here: the caller (EtcdClient) decides what to retry,
// and that depends on whether the request may have reached the server.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/deadline.h"

namespace kiln::store::etcd {

struct HttpExchange {
  enum class Outcome {
    kReplied,   // a whole HTTP reply arrived (any status)
    kStopped,   // stream(): the line handler asked to stop
    kNotSent,   // could not connect: the server never saw the request
    kBroken,    // the connection failed after the request went out
    kTimedOut,  // the deadline passed first
  };
  Outcome outcome = Outcome::kNotSent;
  long http_status = 0;  // of the reply, when one began
  std::string body;      // post(): the reply body
  std::string error;     // curl's description when not kReplied/kStopped
};

// etcd's own transport security (docs/security.md): PEM files as etcdctl's
// --cacert/--cert/--key take them, used for https:// endpoints. Empty: curl's
// defaults (the system CAs, no client certificate).
struct TlsFiles {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
};

class HttpClient {
 public:
  explicit HttpClient(TlsFiles tls = {});
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // POSTs `body` (JSON) to `url` and waits for the whole reply.
  HttpExchange post(const std::string& url, std::string_view body, Deadline deadline);

  // GET `url`, waits for the whole reply.
  HttpExchange get(const std::string& url, Deadline deadline);

  // POSTs `body` and hands each newline-terminated line of the streamed reply
  // to `on_line` as it arrives, until on_line returns false (kStopped), the
  // server ends the reply (kReplied) or the deadline passes (kTimedOut).
  // Lines of a non-2xx reply are collected into `body` instead.
  HttpExchange stream(const std::string& url, std::string_view body, Deadline deadline,
                      const std::function<bool(std::string_view line)>& on_line);

 private:
  struct Handle;
  std::unique_ptr<Handle> checkout();
  void checkin(std::unique_ptr<Handle> handle);
  HttpExchange perform(Handle& h, Deadline deadline, bool* stopped);

  const TlsFiles tls_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Handle>> idle_;  // guarded by mu_
};

}  // namespace kiln::store::etcd
